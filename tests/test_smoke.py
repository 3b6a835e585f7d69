"""Every trainer mode and experiment variant: a few CPU steps at 16x16, finite losses, a reloadable checkpoint and a
resume that continues at the right step (pytorch-CycleGAN's test_before_push, as pytest)."""
import json
import math

import pytest
import torch
from test_training import ToyPairs
from torch.utils.data import Dataset

from frankenstein_utils.study.variants import VARIANTS, output_spread, run_variants, variant_config
from frankenstein_utils.train.trainer import Trainer, load_run


class Only(Dataset):
    def __init__(self, base, keys):
        self.base, self.keys = base, keys

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        item = self.base[i]
        return {k: item[k] for k in self.keys}


def streams():
    return {"paired": ToyPairs(16), "synthetic": Only(ToyPairs(16), ("depth", "mask", "index")),
            "real": Only(ToyPairs(16), ("image", "index"))}


SMALL = dict(image_size=16, width=8, d_width=8, encoder_width=8, z_dim=4, batch_size=4, log_every=1,
             sample_every=2, checkpoint_every=2, pretrain_steps=2, wgan_burst=3, wgan_burst_until=1, adaptive_max_d=3)


# loss terms each variant must log: a mode missing part of its objective fails here (CycleGAN #1163)
TERMS = {"supervised-l1": {"l1"}, "gan-wgan-gp": {"gp", "d_real", "g_adv"}, "gan+recon": {"recon"},
         "gan+cycle": {"recon", "cycle"}, "l1+gan": {"l1", "g_adv"}, "l1+gan+replay+fm": {"l1", "feature_matching"},
         "cvae-gan": {"l1", "kl", "latent", "g_adv"}, "cross-encoder": {"code", "g_adv"}, "adaptive": {"margin"},
         "feature-matching": {"feature_matching"}, "bottleneck-kl": {"bottleneck_kl"}}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_runs_and_resumes(tmp_path, name):
    cfg = variant_config(name, out_dir=str(tmp_path), steps=2, **SMALL)
    t = Trainer(cfg, streams())
    init = {k: [p.detach().clone() for p in n.parameters()] for k, n in t.nets.items()}
    hist = t.fit(progress=False)
    assert t.step == 2
    assert all(math.isfinite(v) for row in hist for k, v in row.items())
    logged = {k for row in hist for k in row}
    assert TERMS.get(name, {"d_real", "d_fake", "g_adv"}) <= logged, logged
    for k, n in t.nets.items():  # every network of the mode is trained (a step that never runs fails here)
        assert any(not torch.equal(a, b) for a, b in zip(init[k], n.parameters())), f"{k} never changed"
    if cfg.replay_size:
        assert t.replay.count > 0
    run = load_run(tmp_path / "checkpoint.pt")
    assert run.step == 2 and run.cfg.mode == cfg.mode
    cfg3 = variant_config(name, out_dir=str(tmp_path), steps=3, **SMALL)
    t3 = Trainer(cfg3, streams())
    assert t3.step == 2
    t3.fit(progress=False)
    assert t3.step == 3 and t3.history[-1]["step"] == 3
    out = run.generate(torch.rand(2, 1, 16, 16), torch.ones(2, 1, 16, 16))
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["gan-lsgan", "replay", "adaptive", "l1+gan+replay+fm", "cvae-gan"])
def test_adversarial_resume_is_exact(tmp_path, name):
    full = Trainer(variant_config(name, out_dir=str(tmp_path / "a"), steps=4, **SMALL), streams())
    full.fit(progress=False)
    part = Trainer(variant_config(name, out_dir=str(tmp_path / "b"), steps=2, **SMALL), streams())
    part.fit(progress=False)
    rest = Trainer(variant_config(name, out_dir=str(tmp_path / "b"), steps=4, **SMALL), streams())
    rest.fit(progress=False)
    assert rest.history == full.history


def test_adaptive_schedule_is_the_originals(tmp_path, monkeypatch):
    """dvg13/image-model basic_gan: one G step every step; D 0 times if the last measured margin >= 0.95, else once,
    and again while the margin stays < 0.05; with no D step the margin is measured after the G step."""
    t = Trainer(variant_config("adaptive", out_dir=str(tmp_path), steps=5, **SMALL), streams())
    assert (t.cfg.adaptive_low, t.cfg.adaptive_high) == (0.05, 0.95)
    # margins in the order they are measured (each D pass, or the measurement after a G step without D)
    margins = iter([0.01, 0.02, 0.5, 0.97, 0.99, 0.6, 0.04, 0.3])
    monkeypatch.setattr(t.objective, "_local_margin", lambda r, f: torch.tensor([next(margins)]))
    snap = lambda n: [p.detach().clone() for p in t.nets[n].parameters()]
    changed = lambda before, n: any(not torch.equal(a, b) for a, b in zip(before, t.nets[n].parameters()))
    seen = []
    for _ in range(5):
        g0, d0 = snap("G"), snap("D")
        log = t.objective.step()
        t.step += 1
        seen.append((int(log["d_steps"]), changed(d0, "D"), changed(g0, "G"), round(t.objective.margin, 2)))
    # start 0 < low: D until >= low (0.01, 0.02, 0.5: 3 steps); 0.5: one D step (-> 0.97); 0.97 >= high: no D,
    # measured after G (0.99); again none (-> 0.6); 0.6: one D step (-> 0.04 < low) and again (-> 0.3)
    assert seen == [(3, True, True, 0.5), (1, True, True, 0.97), (0, False, True, 0.99), (0, False, True, 0.6),
                    (2, True, True, 0.3)]


def test_diverging_variant_is_recorded_and_others_go_on(tmp_path):
    bad = streams()
    bad["real"] = Only(ToyPairs(16, poison=True), ("image", "index"))
    fixed = torch.rand(3, 1, 16, 16)
    res = run_variants(["gan-lsgan", "supervised-l1"], bad, None, fixed, torch.ones_like(fixed), tmp_path,
                       progress=False, steps=2, **{k: v for k, v in SMALL.items()})
    assert res["gan-lsgan"]["status"] == "diverged" and "d_real" in res["gan-lsgan"]["message"]
    assert res["supervised-l1"]["status"] == "ok" and res["supervised-l1"]["output_spread"] >= 0
    assert (tmp_path / "results.json").exists()


def test_output_spread():
    same = torch.ones(4, 3, 8, 8)
    assert output_spread(same) == 0.0
    two = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)])
    assert output_spread(two) == pytest.approx(1.0)


def test_memmap_pool_is_kept_beside_the_checkpoint_and_only_the_trainer_writes_it(tmp_path):
    """The pool is not inside the checkpoint (a 20 GB pool would need twice that in RAM); a resumed memmap run equals
    an uninterrupted RAM one; load_run (apply, notebooks) never opens a running trainer's pool file for writing."""
    kw = dict(SMALL, overrides={"replay": {"replay_size": 6}})  # full after 2 steps of 4 fakes
    full = Trainer(variant_config("replay", out_dir=str(tmp_path / "ram"), steps=4, **kw), streams())
    full.fit(progress=False)
    pool = tmp_path / "pool.npy"
    part = Trainer(variant_config("replay", out_dir=str(tmp_path / "mm"), steps=2, replay_memmap=str(pool), **kw),
                   streams())
    part.fit(progress=False)
    ck = torch.load(tmp_path / "mm" / "checkpoint.pt", weights_only=False)
    assert "replay" not in ck and ck["replay_pools"] == {"world": 1}
    assert sorted(p.name for p in (tmp_path / "mm" / "replay").iterdir()) == ["rank0.step00000002.npy",
                                                                              "rank0.step00000002.pt"]
    import numpy as np

    live = np.load(pool, mmap_mode="r+")  # the running trainer's pool moves on after the checkpoint
    live[0] = 7.0
    live.flush()
    load_run(tmp_path / "mm" / "checkpoint.pt").generate(torch.rand(1, 1, 16, 16), torch.ones(1, 1, 16, 16))
    assert (np.load(pool)[0] == 7.0).all()  # untouched by load_run
    rest = Trainer(variant_config("replay", out_dir=str(tmp_path / "mm"), steps=4, replay_memmap=str(pool), **kw),
                   streams())
    rest.fit(progress=False)
    assert rest.history == full.history
    assert sorted(p.name for p in (tmp_path / "mm" / "replay").iterdir()) == ["rank0.step00000004.npy",
                                                                              "rank0.step00000004.pt"]


def test_conclusions_are_computed_from_the_numbers():
    from frankenstein_utils.study.variants import supervised_conclusion, variants_conclusion

    row = lambda m, db, psnr: {"model": m, "dB vs mean (mask)": db, "psnr": psnr}
    rows = [row("mean training photo", 0.0, 11.0), row("linear map of depth", -0.5, 10.0), row("U", 0.4, 11.5),
            row("V", 0.7, 11.2), row("cvae, z = E(photo)", 1.9, 14.0), row("cvae, z ~ N(0, I)", -0.3, 10.5)]
    text = supervised_conclusion(rows)
    assert "V, is better than the mean training photo inside the face (+0.70 dB) and +0.20 dB over the whole" in text
    assert "cvae scores +1.90 dB (+1.20 dB against the best depth-only generator)" in text and "-0.30 dB" in text
    rows[3]["dB vs mean (mask)"] = rows[2]["dB vs mean (mask)"] = -0.1
    assert "U, is no better than the mean training photo" in supervised_conclusion(rows)
    res = {"a": {"status": "ok", "output_spread": 0.2}, "supervised-l1": {"status": "ok", "output_spread": 0.4},
           "b": {"status": "diverged"}}
    assert variants_conclusion(res, ["a", "supervised-l1", "b"]) == (
        "2 of 3 variants finished; b diverged. Least varied outputs on the fixed depth maps: a (spread 0.200, 0.50x "
        "the supervised L1 model's); most varied: supervised-l1 (0.400). A spread near 0 means one output for every "
        "input (collapse).")


def test_checkpoints_from_before_the_hardening_still_resume_exactly(tmp_path):
    """A checkpoint as written before: the replay pool inside it, no keys added since, the adaptive thresholds of
    the old default (the schedule off). It loads and resumes exactly."""
    import shutil

    from frankenstein_utils.train.replay import ReplayBuffer

    kw = dict(SMALL, overrides={"replay": {"replay_size": 6}})
    Trainer(variant_config("replay", out_dir=str(tmp_path / "old"), steps=2, **kw), streams()).fit(progress=False)
    ck = torch.load(tmp_path / "old" / "checkpoint.pt", weights_only=False)
    pool = ReplayBuffer(6)
    pool.load(tmp_path / "old" / "replay" / "rank0.step00000002")
    ck["replay"], ck["adaptive_state"] = pool.state_dict(), "D"
    for k in ("replay_pools", "margin", "config_history"):
        del ck[k]
    for k in ("adaptive_max_d", "max_param", "input_convention"):
        del ck["config"][k]
    ck["config"].update(adaptive_low=0.1, adaptive_high=0.5)
    shutil.rmtree(tmp_path / "old" / "replay")
    torch.save(ck, tmp_path / "old" / "checkpoint.pt")
    full = Trainer(variant_config("replay", out_dir=str(tmp_path / "full"), steps=4, **kw), streams())
    full.fit(progress=False)
    rest = Trainer(variant_config("replay", out_dir=str(tmp_path / "old"), steps=4, **kw), streams())
    assert rest.step == 2
    rest.fit(progress=False)
    assert rest.history == full.history


def test_study_synthetic_inputs_are_drawn_from_the_photos_fits(tmp_path, face_model):
    """Notebook 03's synthetic sets (``synthetic_sets``) take whole (pose, expression) rows of the photos' fitted table
    by default; the fixed grid inputs are other faces; jitter / neutral (the earlier inputs) only when asked."""
    import numpy as np

    from frankenstein_utils.data.pairs import PairedConfig, PairedFaceDataset
    from frankenstein_utils.study.variants import synthetic_sets

    train = PairedFaceDataset("train", PairedConfig(size=32, limit=60), cache_dir=tmp_path, model=face_model)
    table = train.face_params()
    syn, fixed = synthetic_sets(train, face_model, 10, seed=3)
    assert (len(syn), len(fixed)) == (10, 8) and not torch.equal(syn.coeffs[:8], fixed.coeffs)
    for s in (syn, fixed):
        assert (s.config.pose_source, s.config.expression_source) == ("fitted", "fitted")
        for p, e in zip(s.poses.numpy(), s.expressions.numpy()):
            row = np.flatnonzero((table.poses == p).all(1))
            assert len(row) and np.array_equal(table.expressions[row[0]], e)
        assert float(s.expressions.sum(1).min()) > 0
    assert s.render_batch([0])[0].shape == (1, 1, 32, 32)
    old, _ = synthetic_sets(train, face_model, 10, seed=3, pose="jitter", expressions="neutral")
    assert float(old.expressions.abs().max()) == 0 and not any((table.poses == p).all(1).any() for p in old.poses.numpy())


def test_streams_read_says_which_models_train_on_pairs():
    """Observed, not declared: the supervised models read only pairs, the pure adversarial variants never do, the
    semi-supervised ones read all three (bench/pairs_study.py trains only models that read pairs)."""
    from frankenstein_utils.study.variants import streams_read

    def read(name):
        return streams_read(name, streams(), image_size=16)

    assert read("U") == {"paired"}
    assert read("U") == {"paired"}  # again: nothing left behind that a second look would trip over
    assert read("cvae") == {"paired"}
    assert read("gan-log") == {"synthetic", "real"}
    assert read("gan+cycle") == {"synthetic", "real"}
    assert read("l1+gan") == {"paired", "synthetic", "real"}


def test_settled_curves():
    from frankenstein_utils.study.variants import settled

    pts = lambda *v: [{"step": i, "nme": x} for i, x in enumerate(v)]
    assert settled(pts(0.3, 0.10, 0.105, 0.1), "nme")  # flat tail (5 % spread)
    assert not settled(pts(0.3, 0.2, 0.15, 0.1), "nme")  # still falling
    assert not settled(pts(0.1, 0.1), "nme")  # too few points to tell


def test_curve_trend():
    from frankenstein_utils.study.variants import trend

    pts = lambda *v: [{"step": i, "nme": x} for i, x in enumerate(v)]
    assert trend(pts(0.2, 0.2, 0.1, 0.1), "nme", window=2) == pytest.approx(-0.5)  # halved over the last stretch
    zigzag = pts(*[0.1, 0.13] * 5)  # never settled (30 % spread), flat on average
    assert abs(trend(zigzag, "nme", window=4)) < 1e-9
    assert trend(pts(0.1, 0.1, 0.1), "nme", window=2) is None  # too few points


def test_curve_figure_puts_kid_on_a_log_axis():
    """KID spans three decades from near-real to broken models: on a linear axis every good curve is a flat line at
    the bottom. A log axis where every value is positive; linear for other metrics, and for KID with a value <= 0
    (the unbiased estimate can go below 0 for a near-real model)."""
    import matplotlib

    matplotlib.use("Agg")
    from frankenstein_utils.io.figures import plot_metric_curves

    curves = {"a": [{"step": 1, "kid": 2.0, "nme": 0.1}, {"step": 2, "kid": 0.01, "nme": 0.05}]}
    fig = plot_metric_curves(curves, keys=("kid", "nme"))
    assert [ax.get_yscale() for ax in fig.axes[:2]] == ["log", "linear"]
    curves["b"] = [{"step": 1, "kid": -0.001, "nme": 0.1}]
    assert plot_metric_curves(curves, keys=("kid",)).axes[0].get_yscale() == "linear"


def test_loss_curve_figure_draws_one_panel_per_loss():
    """``plot_loss_curves`` (notebooks 02-03): one panel per loss name, one smoothed line per run that logged it."""
    import matplotlib

    matplotlib.use("Agg")
    from frankenstein_utils.io.figures import plot_loss_curves

    h = {"a": [{"step": i, "g": 1.0 / (i + 1), "d": 0.5} for i in range(40)],
         "b": [{"step": i, "g": 0.2} for i in range(5)]}
    fig = plot_loss_curves(h, window=10)
    assert [ax.get_title() for ax in fig.axes] == ["d", "g"]
    assert [len(ax.lines) for ax in fig.axes] == [1, 2] and len(fig.axes[1].lines[0].get_xdata()) == 31


def test_ranking_agreement():
    from frankenstein_utils.study.variants import ranking_agreement

    curve = lambda *v: [{"nme": x} for x in v]
    same_order = {"a": curve(0.1, 0.1, 0.11, 0.09), "b": curve(0.2, 0.2, 0.19, 0.2), "c": curve(0.3, 0.3, 0.3, 0.31)}
    assert ranking_agreement(same_order, "nme", window=2) == pytest.approx(1.0)
    swapped = {"a": curve(0.1, 0.1, 0.3, 0.3), "b": curve(0.2, 0.2, 0.2, 0.2), "c": curve(0.3, 0.3, 0.1, 0.1)}
    assert ranking_agreement(swapped, "nme", window=2) == pytest.approx(-1.0)
    assert ranking_agreement({"a": curve(0.1, 0.2)}, "nme", window=2) is None


def test_one_runner_keeps_going_skips_what_is_done_and_retrains_what_changed(tmp_path):
    """``study.runner.run_each`` (variants, the equal-budget study, the ablation): an error in one run is recorded and
    the next runs; a finished run with the same config is neither trained nor scored again; a changed config trains
    (resuming); ``rescore`` scores the finished checkpoint again; a curve has a point per segment."""
    from frankenstein_utils.study.runner import run_each

    scored = []

    def config_of(name, folder):
        if name == "broken":  # reads the poisoned unpaired photos: a non-finite loss at its first step
            return variant_config("gan-lsgan", None, out_dir=str(folder), steps=2, **SMALL)
        return variant_config("supervised-l1", None, out_dir=str(folder), steps=steps[name], **SMALL)

    def score(trainer):
        scored.append(trainer.step)
        return {"score": float(trainer.step)}

    steps = {"a (first)": 2, "b": 2}
    data = streams()
    data["real"] = Only(ToyPairs(16, poison=True), ("image", "index"))
    res = run_each(["broken", "a (first)", "b"], config_of, data, tmp_path, score=score)
    assert res["broken"]["status"] == "diverged" and "d_real" in res["broken"]["message"]
    assert res["a (first)"]["status"] == "ok" and res["a (first)"]["score"] == 2.0 and scored == [2, 2]
    assert (tmp_path / "a_first" / "checkpoint.pt").exists()  # its folder: no spaces or parentheses
    again = run_each(["a (first)", "b"], config_of, streams(), tmp_path, score=score)
    assert scored == [2, 2] and again["b"]["score"] == 2.0  # same config: nothing trained or scored
    steps["b"] = 4
    again = run_each(["a (first)", "b"], config_of, streams(), tmp_path, score=score)
    assert scored == [2, 2, 4] and again["b"]["steps"] == 4  # changed: trained on from its checkpoint, scored
    run_each(["a (first)"], config_of, streams(), tmp_path, score=score, rescore=True)
    assert scored == [2, 2, 4, 2]
    c_config = lambda n, f: variant_config("supervised-l1", None, out_dir=str(f), steps=4, **SMALL)  # noqa: E731
    curve = run_each(["c"], c_config, streams(), tmp_path, score=score, curve_every=2)
    assert [p["step"] for p in json.loads((tmp_path / "c" / "curve.json").read_text())["points"]] == [2, 4]
    assert curve["c"]["step"] == 4 and curve["c"]["score"] == 4.0 and curve["c"]["steps"] == 4
    again = run_each(["c"], c_config, streams(), tmp_path, score=score, curve_every=2)  # every point there already
    assert scored == [2, 2, 4, 2, 2, 4] and again["c"]["steps"] == 4 and again["c"]["history"]
    # an entry of the older ablation runner (no status, no config) counts as done, as it did
    results = json.loads((tmp_path / "results.json").read_text())
    (tmp_path / "results.json").write_text(json.dumps({**results, "old": {"kid": 1.0, "n": 3}}))
    assert run_each(["old"], c_config, streams(), tmp_path, score=score)["old"] == {"kid": 1.0, "n": 3}
    assert scored == [2, 2, 4, 2, 2, 4]
