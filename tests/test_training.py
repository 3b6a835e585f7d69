import math
from dataclasses import asdict

import pytest
import torch
from torch.utils.data import Dataset

from frankenstein_utils.apps.apply import apply_folder
from frankenstein_utils.data.depth_sets import generate_depth_dataset
from frankenstein_utils.render.rasterize import RenderConfig
from frankenstein_utils.train.config import TrainConfig, supervised_config
from frankenstein_utils.train.trainer import NonFiniteLossError, ResumableBatchSampler, Trainer, load_run


class ToyPairs(Dataset):
    """Depth = a random blob, image = a fixed colour function of depth: learnable from depth alone."""

    def __init__(self, n=64, size=16, poison=False):
        g = torch.Generator().manual_seed(0)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        c = torch.rand(n, 2, generator=g) - 0.5
        r = torch.rand(n, generator=g) * 0.4 + 0.4
        d2 = (xx[None] - c[:, 0, None, None]) ** 2 + (yy[None] - c[:, 1, None, None]) ** 2
        self.depth = (1 - d2 / r[:, None, None] ** 2).clamp(0, 1)[:, None]
        self.mask = (self.depth > 0).float()
        self.image = torch.cat([self.depth * 2 - 1, 1 - self.depth * 2, self.depth.pow(2) * 2 - 1], 1)
        if poison:
            self.image[:] = float("nan")

    def __len__(self):
        return len(self.depth)

    def __getitem__(self, i):
        return {"image": self.image[i], "depth": self.depth[i], "mask": self.mask[i], "index": i}


def cfg(tmp_path, **kw):
    base = dict(image_size=16, width=8, batch_size=8, steps=6, lr=2e-3, out_dir=str(tmp_path), sample_every=3,
                checkpoint_every=3, log_every=1, encoder_width=8, z_dim=4)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("name", ["U", "V", "F", "NU", "cvae"])
def test_every_supervised_model_trains_and_reloads(tmp_path, name):
    c = supervised_config(name, **{k: v for k, v in vars(cfg(tmp_path)).items() if k not in ("mode", "generator")})
    t = Trainer(c, {"paired": ToyPairs()}, ToyPairs(8))
    hist = t.fit(progress=False)
    assert len(hist) == 6 and all(math.isfinite(v) for row in hist for k, v in row.items() if k != "step")
    assert (tmp_path / "samples" / "step_000003.png").exists()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    run = load_run(tmp_path / "checkpoint.pt")
    assert run.step == 6 and run.cfg == TrainConfig.from_dict({**vars(c), "out_dir": str(tmp_path), "device": "cpu"})
    b = ToyPairs(4)
    out = run.generate(b.depth, b.mask, b.image)
    assert out.shape == (4, 3, 16, 16)


def test_loss_falls(tmp_path):
    t = Trainer(cfg(tmp_path, steps=60, checkpoint_every=0, sample_every=0), {"paired": ToyPairs(128)})
    h = [row["l1"] for row in t.fit(progress=False)]
    assert sum(h[-10:]) / 10 < 0.6 * sum(h[:10]) / 10


@pytest.mark.parametrize("mode", ["l1", "cvae"])
def test_resume_is_exact(tmp_path, mode):
    data = {"paired": ToyPairs()}
    full = Trainer(cfg(tmp_path / "full", mode=mode, steps=7), data)
    full.fit(progress=False)
    part = Trainer(cfg(tmp_path / "part", mode=mode, steps=3), data)
    part.fit(progress=False)
    resumed = Trainer(cfg(tmp_path / "part", mode=mode, steps=7), data)  # picks up checkpoint.pt at step 3
    assert resumed.step == 3
    resumed.fit(progress=False)
    assert resumed.history == full.history  # same losses, bit for bit
    for k in full.nets:
        for a, b in zip(full.nets[k].state_dict().values(), resumed.nets[k].state_dict().values()):
            assert torch.equal(a, b)


def test_nan_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    Trainer(cfg(tmp_path, steps=3), {"paired": ToyPairs()}).fit(progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    t = Trainer(cfg(tmp_path, steps=6), {"paired": ToyPairs(poison=True)})
    with pytest.raises(NonFiniteLossError, match=r"loss 'l1' = nan at step 4.*last good checkpoint kept"):
        t.fit(progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert load_run(tmp_path / "checkpoint.pt").step == 3


def test_config_checks(tmp_path):
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({"stpes": 3})
    with pytest.raises(ValueError, match="steps must be int"):
        TrainConfig.from_dict({"steps": "3"})
    for mode in ("flagship", "pix2pix", "bicyclegan"):  # their objectives train with Adam, whatever the config says
        with pytest.raises(ValueError, match="trains with Adam"):
            TrainConfig(mode=mode, optimizer="rmsprop")
    with pytest.raises(ValueError, match="unknown mode"):
        TrainConfig(mode="diffusion")
    Trainer(cfg(tmp_path, steps=3), {"paired": ToyPairs()}).fit(progress=False)
    with pytest.raises(ValueError, match="another configuration"):
        Trainer(cfg(tmp_path, steps=3, width=16), {"paired": ToyPairs()})
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pt"):
        load_run(tmp_path / "junk.pt")


def test_batch_sampler_is_a_function_of_position():
    a = ResumableBatchSampler(10, 3, seed=1)
    it = iter(a)
    first = [next(it) for _ in range(7)]
    it2 = iter(ResumableBatchSampler(10, 3, seed=1, start=4))
    assert [next(it2) for _ in range(3)] == first[4:7]
    assert sorted(sum(first[:3], [])) == sorted(set(sum(first[:3], [])))  # no repeats within an epoch


def test_apply_command_on_a_folder(tmp_path, face_model, capsys):
    """apply writes what Trainer.generate gives for the same depth maps; a bigger set is resized to the checkpoint's
    size; a set of another convention is refused with what differs; a broken PNG stops or is skipped."""
    import numpy as np
    from PIL import Image

    from frankenstein_utils.apps.apply import main, read_depth
    from frankenstein_utils.train.cli import input_convention

    c = cfg(tmp_path / "run", steps=2, input_convention=input_convention(RenderConfig(resolution=16), "test"))
    Trainer(c, {"paired": ToyPairs()}).fit(progress=False)
    ckpt = str(tmp_path / "run" / "checkpoint.pt")
    gen = generate_depth_dataset(3, tmp_path / "depthset", render=RenderConfig(resolution=16), model=face_model,
                                 progress=False)
    assert main(["--checkpoint", ckpt, "--input", str(gen / "depth"), "--output", str(tmp_path / "faces")]) == 0
    outs = sorted((tmp_path / "faces").glob("*.png"))
    assert [p.name for p in outs] == ["000000.png", "000001.png", "000002.png"]
    run = load_run(ckpt)
    for p in outs:
        d = read_depth(gen / "depth" / p.name)
        m = torch.from_numpy(np.array(Image.open(gen / "mask" / p.name)) > 127).float()[None, None]
        want = ((run.generate(d, m)[0].clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
        got = np.array(Image.open(p))
        assert got.shape == (16, 16, 3) and np.array_equal(got, want)
    # a 32 px set of the same convention: resized to 16 px, told so
    big = generate_depth_dataset(1, tmp_path / "big", render=RenderConfig(resolution=32), model=face_model,
                                 progress=False)
    assert main(["--checkpoint", ckpt, "--input", str(big / "depth"), "--output", str(tmp_path / "x")]) == 0
    assert Image.open(tmp_path / "x" / "000000.png").size == (16, 16)
    assert "resized to the checkpoint's 16x16" in capsys.readouterr().err
    # another convention: refused, one line naming the set's config and what differs
    other = generate_depth_dataset(1, tmp_path / "other", render=RenderConfig(resolution=16, depth_mode="minmax",
                                                                             region="chin"),
                                   model=face_model, progress=False)
    assert main(["--checkpoint", ckpt, "--input", str(other / "depth"), "--output", str(tmp_path / "y")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other/config.json" in err
    assert "depth_mode: checkpoint 'fixed', input 'minmax'" in err and "region: checkpoint 'face', input 'chin'" in err
    assert not (tmp_path / "y").exists()
    # a truncated PNG: stops (naming it) by default, skipped and counted with --on-error skip
    bad = gen / "depth" / "000001.png"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(ValueError, match="000001.png: cannot read image"):
        apply_folder(ckpt, gen / "depth", tmp_path / "z", progress=False)
    assert main(["--checkpoint", ckpt, "--input", str(gen / "depth"), "--output", str(tmp_path / "z"),
                 "--on-error", "skip"]) == 0
    assert sorted(p.name for p in (tmp_path / "z").glob("*.png")) == ["000000.png", "000002.png"]
    assert "skipped 1" in capsys.readouterr().out


def test_nan_guard_checks_parameters_and_a_resume_may_change_optimisation(tmp_path):
    """Weights can blow up while the losses stay finite (tanh saturates): lr=1e6 must trip the guard, and with
    lr=inf no checkpoint may hold non-finite weights. Afterwards a lower lr resumes the run (recorded)."""
    data = {"paired": ToyPairs()}
    Trainer(cfg(tmp_path, steps=3), data).fit(progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(NonFiniteLossError, match=r"network G: largest \|parameter\|"):
        Trainer(cfg(tmp_path, steps=6, lr=1e6), data).fit(progress=False)
    # the check before every checkpoint (here: each step; the per-step check only every 100)
    with pytest.raises(NonFiniteLossError, match=r"network G.*at step 4.*last good checkpoint kept"):
        Trainer(cfg(tmp_path, steps=6, lr=float("inf"), checkpoint_every=1, log_every=100), data).fit(progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    t = Trainer(cfg(tmp_path, steps=6, lr=1e-3, max_loss=50.0), data)
    assert t.step == 3 and t.opts["G"].param_groups[0]["lr"] == 1e-3  # not the saved 2e-3
    t.fit(progress=False)
    run = load_run(tmp_path / "checkpoint.pt")
    assert run.step == 6 and run.cfg.lr == 1e-3
    assert run.config_history == [{"step": 3, "changed": {"steps": [3, 6], "lr": [2e-3, 1e-3],
                                                          "max_loss": [1e4, 50.0]}}]
    # bf16 autocast and the memory layout change a CUDA run's numerics: switching them on resume is recorded too
    Trainer(cfg(tmp_path, steps=7, lr=1e-3, max_loss=50.0, amp=False, channels_last=False), data).fit(progress=False)
    assert load_run(tmp_path / "checkpoint.pt").config_history[-1] == {
        "step": 6, "changed": {"steps": [6, 7], "amp": [True, False], "channels_last": [True, False]}}
    assert all(torch.isfinite(p).all() for n in run.nets.values() for p in n.parameters())


def test_a_second_writer_fails_clearly(tmp_path):
    """Two runs with different configs in one out_dir: the second fails instead of silently replacing the first."""
    from frankenstein_utils.io.files import FolderBusyError, FolderLock

    data = {"paired": ToyPairs()}
    a = Trainer(cfg(tmp_path, steps=3), data)
    b = Trainer(cfg(tmp_path, steps=3, width=16), data)  # created before a wrote anything
    a.fit(progress=False)
    with pytest.raises(FolderBusyError, match="checkpoint.pt: another run wrote this checkpoint"):
        b.fit(progress=False)
    assert load_run(tmp_path / "checkpoint.pt").cfg.width == 8
    with FolderLock(tmp_path, "a test"):  # another writer holds the folder
        with pytest.raises(FolderBusyError, match=r"another process is writing here \(pid \d+, a test\)"):
            Trainer(cfg(tmp_path, steps=6), data).fit(progress=False)
    Trainer(cfg(tmp_path, steps=4), data).fit(progress=False)  # the lock went with its holder


def test_resume_removes_orphan_temporary_files_and_names_a_bad_checkpoint(tmp_path):
    data = {"paired": ToyPairs()}
    Trainer(cfg(tmp_path, steps=3), data).fit(progress=False)
    orphans = [tmp_path / ".checkpoint.pt.k9x2.tmp", tmp_path / "samples" / ".step_000006.png.a1.tmp"]
    for p in orphans:
        p.write_bytes(b"\0" * 1000)  # what a kill -9 during a write leaves
    Trainer(cfg(tmp_path, steps=4), data).fit(progress=False)
    assert not any(p.exists() for p in orphans)
    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"checkpoint.pt: not a readable checkpoint"):
        Trainer(cfg(tmp_path, steps=5), data)


def test_config_rejects_silent_nonsense():
    for bad in (dict(steps=-5), dict(steps=0), dict(batch_size=0), dict(image_size=30), dict(lr=float("nan")),
                dict(out_channels=2), dict(gan_loss="lsgann"), dict(adaptive_low=0.9, adaptive_high=0.1)):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_train_cli_checks_options_before_building_data(monkeypatch, capsys):
    """Every bad option fails in one line, before the paired set is built (30-60 s at real size)."""
    from frankenstein_utils.data import pairs as datasets
    from frankenstein_utils.train import cli as train

    monkeypatch.setattr(datasets, "PairedFaceDataset", lambda *a, **k: pytest.fail("data built before checks"))
    for argv, msg in ((["--masked-l1", "ture"], "expected true or false, got 'ture'"),
                      (["--steps", "-5"], "steps must be >= 1"), (["--batch-size", "0"], "batch_size must be >= 1"),
                      (["--mode", "diffusion"], "unknown mode 'diffusion'"),
                      (["--gan-loss", "x"], "unknown gan_loss 'x'"), (["--size", "30"], "multiple of 4, got 30"),
                      (["--preset", "nope"], "invalid choice: 'nope'")):
        with pytest.raises(SystemExit) as e:
            train.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err, argv


def test_original_preset_is_the_original_greyscale_setting():
    from frankenstein_utils.train import cli as train
    from frankenstein_utils.train.config import preset_config

    c = preset_config("original")
    assert (c.out_channels, c.image_size, c.optimizer, c.d_lr, c.lr, c.batch_size) == (1, 128, "rmsprop", 1e-4, 1e-3, 8)
    a, c2 = train.parse_args(["--preset", "original", "--lr", "0.01"])  # explicit options win over the preset
    assert (c2.out_channels, c2.image_size, c2.optimizer, c2.lr) == (1, 128, "rmsprop", 0.01)
    t = Trainer(preset_config("original", mode="gan", image_size=16, width=8, d_width=8, out_dir="unused"), {})
    assert isinstance(t.opts["G"], torch.optim.RMSprop) and isinstance(t.opts["D"], torch.optim.RMSprop)
    assert (t.opts["G"].param_groups[0]["lr"], t.opts["D"].param_groups[0]["lr"]) == (1e-3, 1e-4)
    assert t.generate(torch.rand(2, 1, 16, 16), torch.ones(2, 1, 16, 16)).shape == (2, 1, 16, 16)  # greyscale
    _, p = train.parse_args(["--preset", "pix2pix"])  # the peers' papers' settings through the same option
    assert (p.mode, p.l1_weight, p.beta1, p.masked_l1) == ("pix2pix", 100.0, 0.5, False)
    _, f = train.parse_args(["--preset", "flagship", "--width", "24"])
    assert (f.mode, f.gan_loss, f.spectral_norm, f.width) == ("flagship", "hinge", True, 24)


def test_train_cli_trains_on_fitted_pairs_and_inputs_drawn_from_the_fits(tmp_path, face_model, capsys):
    """By default the CLI pairs photos with the fitted model's depth and draws the synthetic inputs' pose and
    expression from the photos' fits (not the earlier frontal jitter, neutral faces); both are recorded in the
    checkpoint's input convention; the old inputs stay an explicit option; apply checks the recorded render
    configuration and notes a set drawn otherwise."""
    import numpy as np

    from frankenstein_utils.apps.apply import main as apply_main
    from frankenstein_utils.data.pairs import PairedConfig, PairedFaceDataset
    from frankenstein_utils.train import cli as train

    cache, out = tmp_path / "cache", tmp_path / "run"
    common = ["--size", "32", "--limit", "60", "--n-synthetic", "12", "--cache-dir", str(cache), "--steps", "1",
              "--batch-size", "4", "--width", "8", "--d-width", "8", "--sample-every", "0", "--log-every", "1"]
    assert train.main(common + ["--mode", "gan", "--out-dir", str(out)]) == 0
    conv = load_run(out / "checkpoint.pt").cfg.input_convention
    assert conv["paired_depth"] == "fitted" and load_run(out / "checkpoint.pt").cfg.data["paired"]["depth_source"] \
        == "fitted"
    syn_rec = conv["synthetic"]
    assert (syn_rec["pose"], syn_rec["expressions"], syn_rec["n"], syn_rec["n_components"]) == ("fitted", "fitted",
                                                                                                12, 15)
    assert syn_rec["table"].startswith("paired_celeba_") and ":train#" in syn_rec["table"]
    # the stream the CLI trains on: every pose is a fitted photo's pose, the expressions are the photos' (not 0)
    a, c = train.parse_args(common + ["--mode", "gan", "--out-dir", str(out)])
    ds = PairedFaceDataset("train", PairedConfig(size=32, limit=60), cache_dir=cache, model=face_model)
    syn = train.synthetic_inputs(ds, a, c.seed, face_model)
    table = ds.face_params()
    rows = [np.flatnonzero((table.poses == p).all(1)) for p in syn.poses.numpy()]
    assert all(len(r) for r in rows), "a synthetic pose that no fitted photo has"
    assert all(np.array_equal(syn.expressions[i].numpy(), table.expressions[r[0]]) for i, r in enumerate(rows))
    assert float(syn.expressions.abs().sum(1).min()) > 0
    assert conv["render"] == ds.render_config(face_model).to_dict()
    # the earlier inputs, asked for explicitly: jitter poses, neutral faces, recorded so
    old = tmp_path / "old"
    assert train.main(common + ["--mode", "l1", "--out-dir", str(old), "--synthetic-pose", "jitter",
                                "--synthetic-expressions", "neutral", "--depth-source", "landmarks"]) == 0
    run_old = load_run(old / "checkpoint.pt")
    conv_old = run_old.cfg.input_convention
    assert (conv_old["paired_depth"], conv_old["synthetic"]["pose"], conv_old["synthetic"]["expressions"]) == (
        "landmarks", "jitter", "neutral") and run_old.cfg.data["paired"]["depth_source"] == "landmarks"
    a_old, _ = train.parse_args(common + ["--synthetic-pose", "jitter", "--synthetic-expressions", "neutral"])
    assert float(train.synthetic_inputs(ds, a_old, 0, face_model).expressions.abs().max()) == 0
    # apply: a set with the checkpoint's RenderConfig passes the check; drawn otherwise than training, it is noted
    capsys.readouterr()
    render = RenderConfig.from_dict(conv["render"])
    plain = generate_depth_dataset(2, tmp_path / "plain", render=render, model=face_model, progress=False)
    assert apply_main(["--checkpoint", str(out / "checkpoint.pt"), "--input", str(plain / "depth"), "--output",
                       str(tmp_path / "f1")]) == 0
    err = capsys.readouterr().err
    assert "drawn otherwise" in err and "pose jitter (trained on fitted)" in err and "expressions neutral" in err
    like = generate_depth_dataset(2, tmp_path / "like", render=render, model=face_model, progress=False, table=table,
                                  pose_source="fitted", expression_source="fitted")
    assert apply_main(["--checkpoint", str(out / "checkpoint.pt"), "--input", str(like / "depth"), "--output",
                       str(tmp_path / "f2")]) == 0
    assert "drawn otherwise" not in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args(["--depth-source", "mesh"])
    assert "invalid choice: 'mesh'" in capsys.readouterr().err


def test_init_from_starts_a_new_run_from_another_runs_networks(tmp_path):
    """A fine-tune on new data: networks and optimizer moments come from the source run, the step and data order
    start at 0, the source is recorded, and a resume of the new run is its own (not the source again)."""
    data = {"paired": ToyPairs()}
    src = Trainer(cfg(tmp_path / "src", mode="cvae", steps=3), data)
    src.fit(progress=False)
    ck = str(tmp_path / "src" / "checkpoint.pt")
    t = Trainer(cfg(tmp_path / "ft", mode="cvae", steps=2, lr=1e-3, init_from=ck), {"paired": ToyPairs(32)})
    assert t.step == 0 and t.positions == {}
    for k, net in src.nets.items():
        assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), t.nets[k].state_dict().values())), k
    assert t.opts["G"].state_dict()["state"] and t.opts["G"].param_groups[0]["lr"] == 1e-3
    t.fit(progress=False)
    run = load_run(tmp_path / "ft" / "checkpoint.pt")
    assert run.step == 2 and run.config_history[0]["init_from"] == ck and run.config_history[0]["source_step"] == 3
    again = Trainer(cfg(tmp_path / "ft", mode="cvae", steps=4, lr=1e-3, init_from=ck), {"paired": ToyPairs(32)})
    assert again.step == 2  # resumed from its own checkpoint
    with pytest.raises(ValueError, match=r"checkpoint.pt: its network shapes differ"):
        Trainer(cfg(tmp_path / "bad", mode="cvae", width=16, init_from=ck), data)
    with pytest.raises(ValueError, match=r"checkpoint.pt: its networks \['E', 'G'\] are not this run's \['G'\]"):
        Trainer(cfg(tmp_path / "bad2", init_from=ck), data)


def test_wgan_gp_trains_with_objectives_that_score_paired_and_synthetic_fakes(tmp_path):
    """l1+gan and cvae-gan hand the critic 2B fakes against B reals; with --gan-loss wgan-gp they crashed (issue 23)."""
    from frankenstein_utils.train import cli as train

    common = ["--size", "32", "--limit", "60", "--n-synthetic", "12", "--cache-dir", str(tmp_path / "cache"),
              "--steps", "1", "--batch-size", "4", "--width", "8", "--d-width", "8", "--sample-every", "0",
              "--gan-loss", "wgan-gp"]
    for mode in ("l1+gan", "cvae-gan"):
        assert train.main(common + ["--mode", mode, "--out-dir", str(tmp_path / mode)]) == 0
        assert load_run(tmp_path / mode / "checkpoint.pt").step == 1


def test_wgan_losses_from_the_command_line_get_their_papers_critic_schedules(tmp_path):
    """``--gan-loss wgan`` / ``wgan-gp`` from the command line kept n_critic = 1 (one critic step per generator step,
    against the papers' 5), and wgan-gp took the weight-clipping WGAN's burst of 100 critic steps (issue 23). Unset,
    each loss now gets its own schedule; given explicitly, the user's value wins; a run does what its config says."""
    from frankenstein_utils.objectives.losses import wgan_critic_steps
    from frankenstein_utils.train.cli import parse_args

    base = ["--mode", "gan", "--out-dir", str(tmp_path / "r")]
    got = {loss: parse_args(base + ["--gan-loss", loss])[1] for loss in ("wgan", "wgan-gp", "lsgan", "hinge")}
    assert (got["wgan"].n_critic, got["wgan"].wgan_burst) == (5, 100)
    assert (got["wgan-gp"].n_critic, got["wgan-gp"].wgan_burst) == (5, 0)
    assert got["lsgan"].n_critic == got["hinge"].n_critic == 1
    mine = parse_args(base + ["--gan-loss", "wgan-gp", "--n-critic", "2", "--wgan-burst", "7"])[1]
    assert (mine.n_critic, mine.wgan_burst) == (2, 7)
    # the Python API resolves the same way, and a saved config keeps the resolved numbers
    c = TrainConfig(mode="gan", gan_loss="wgan-gp")
    assert (c.n_critic, c.wgan_burst) == (5, 0) and TrainConfig.from_dict(asdict(c)) == c
    # the critic steps a generator step takes: the burst only where the loss has one
    assert [wgan_critic_steps(s, got["wgan"].n_critic, got["wgan"].wgan_burst) for s in (0, 30)] == [100, 5]
    # and a run with the command line's wgan-gp config takes 5 critic steps per generator step
    from test_smoke import streams

    run_cfg = TrainConfig(**{**asdict(got["wgan-gp"]), "image_size": 16, "width": 8, "d_width": 8, "batch_size": 4,
                             "steps": 1, "log_every": 1, "sample_every": 0, "checkpoint_every": 0})
    hist = Trainer(run_cfg, streams()).fit(progress=False)
    assert [row["d_steps"] for row in hist] == [5.0]


def test_resume_of_a_run_older_than_a_setting(tmp_path):
    """Resuming compares every setting with the checkpoint's. A wgan-gp run saved before the losses' critic schedules
    (n_critic 1, burst 100, as the command line stored them) resumes with its own schedule when the user gives none,
    and is refused when the user asks for another; a setting the checkpoint predates counts as its default, so
    turning on a new option (here the generator's input blur) mid-run is refused, not silently taken."""
    from test_smoke import streams

    small = dict(mode="gan", gan_loss="wgan-gp", image_size=16, width=8, d_width=8, batch_size=4, log_every=1,
                 sample_every=0, checkpoint_every=1)
    t = Trainer(TrainConfig(**small, steps=1, out_dir=str(tmp_path / "wgan")), streams())
    t.fit(progress=False)
    path = tmp_path / "wgan" / "checkpoint.pt"
    ck = torch.load(path, weights_only=True)
    # what the command line stored before the schedules was n_critic 1, burst 100; a smaller burst keeps this short
    ck["config"].update(n_critic=1, wgan_burst=7)
    torch.save(ck, path)
    again = Trainer(TrainConfig(**small, steps=2, out_dir=str(tmp_path / "wgan")), streams())
    assert again.step == 1 and (again.cfg.n_critic, again.cfg.wgan_burst) == (1, 7)
    assert {"step": 1, "kept_from_checkpoint": {"n_critic": [1, 5], "wgan_burst": [7, 0]}} in again.config_history
    assert [row["d_steps"] for row in again.fit(progress=False)][-1] == 7.0  # its burst of the first 25 steps
    with pytest.raises(ValueError, match="n_critic"):
        Trainer(TrainConfig(**small, steps=3, n_critic=3, out_dir=str(tmp_path / "wgan")), streams())

    from test_flagship import SMALL as FS
    from test_flagship import streams as fs_streams

    fcfg = lambda **kw: TrainConfig(**{**FS, "mode": "flagship", "out_dir": str(tmp_path / "fs"), **kw})
    Trainer(fcfg(steps=1), fs_streams()).fit(progress=False)
    path = tmp_path / "fs" / "checkpoint.pt"
    ck = torch.load(path, weights_only=True)
    del ck["config"]["fs_input_blur"]  # a checkpoint made before the setting existed
    torch.save(ck, path)
    assert Trainer(fcfg(steps=2), fs_streams()).step == 1
    with pytest.raises(ValueError, match="fs_input_blur"):
        Trainer(fcfg(steps=2, fs_input_blur=1.0), fs_streams())
