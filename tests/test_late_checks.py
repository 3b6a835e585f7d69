"""Issue 23, points 4 and 5: values that gave silent wrong results, checks that came too late, and tracebacks where
one line naming the file or option should be. Each test fails without its fix."""
import copy
import json
import math

import pytest
import torch
from test_training import ToyPairs, cfg

from frankenstein_utils.apps import notebooks
from frankenstein_utils.train.config import TrainConfig
from frankenstein_utils.train.trainer import Trainer, load_run


def train_cli_error(monkeypatch, capsys, argv) -> str:
    """``train.main(argv)``: must exit 2 with one ``error:`` line (argparse's usage above it), before any data is
    built; returns that line."""
    from frankenstein_utils.data import pairs as datasets
    from frankenstein_utils.train import cli as train

    monkeypatch.setattr(datasets, "PairedFaceDataset", lambda *a, **k: pytest.fail("data built before checks"))
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    assert e.value.code == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if "error:" in x]
    assert len(lines) == 1, err
    return lines[0]


# ---- point 4: silent wrong results ---------------------------------------------------------------------------------
def test_nan_guard_thresholds_must_be_finite_and_positive(monkeypatch, capsys):
    """``--max-param nan --max-loss nan`` switched the NaN guard off (every comparison with NaN is false)."""
    line = train_cli_error(monkeypatch, capsys, ["--max-param", "nan", "--max-loss", "nan"])
    assert "max_loss must be a finite number > 0" in line and "nan" in line
    for k in ("max_loss", "max_param"):
        for bad in (float("nan"), float("inf"), 0.0, -1.0):
            with pytest.raises(ValueError, match=f"{k} must be a finite number > 0"):
                TrainConfig(**{k: bad})
    TrainConfig(max_loss=50.0, max_param=1e3)  # still fine


def test_a_resume_with_fewer_steps_than_the_checkpoint_is_refused(tmp_path):
    """It exited 0 saying nothing (the loop never ran); now it names the checkpoint and both step counts."""
    data = {"paired": ToyPairs()}
    Trainer(cfg(tmp_path, steps=3), data).fit(progress=False)
    with pytest.raises(ValueError) as e:
        Trainer(cfg(tmp_path, steps=2), data)
    msg = str(e.value)
    assert str(tmp_path / "checkpoint.pt") in msg and "step 3" in msg and "steps=2" in msg, msg
    assert "\n" not in msg
    t = Trainer(cfg(tmp_path, steps=3), data)  # the finished run itself: nothing to do, no error
    assert t.step == 3 and t.fit(progress=False)[-1]["step"] == 3
    Trainer(cfg(tmp_path, steps=4), data).fit(progress=False)  # going on still works
    assert load_run(tmp_path / "checkpoint.pt").step == 4


def test_a_negative_mask_dilation_is_refused(monkeypatch, capsys):
    """``--mask-dilate -1`` was taken as 0."""
    line = train_cli_error(monkeypatch, capsys, ["--masked-l1", "true", "--mask-dilate", "-1"])
    assert "mask_dilate must be >= 0" in line and "-1" in line
    with pytest.raises(ValueError, match="mask_dilate must be >= 0"):
        TrainConfig(mask_dilate=-2)
    TrainConfig(mask_dilate=0)


# ---- point 5: a traceback instead of a line ------------------------------------------------------------------------
def test_device_that_this_machine_lacks_is_one_line(monkeypatch, capsys):
    """``--device cuda`` on a CPU build raised "Torch not compiled with CUDA enabled" after the data was built."""
    if torch.cuda.is_available():  # a GPU machine: a device index it does not have
        dev = f"cuda:{torch.cuda.device_count()}"
        want = "CUDA GPU(s)"
    else:
        dev = "cuda"
        want = "without CUDA" if torch.version.cuda is None else "no CUDA GPU is available"
    line = train_cli_error(monkeypatch, capsys, ["--device", dev])
    assert f"--device {dev}" in line and want in line
    line = train_cli_error(monkeypatch, capsys, ["--device", "gpu"])
    assert "not a device name" in line
    with pytest.raises(ValueError, match="device 'gpu': not a device name"):
        TrainConfig(device="gpu")


def test_apply_on_a_device_this_machine_lacks_is_one_line(tmp_path, saved_run, capsys):
    """``apply --device cuda`` on a CPU build raised "Torch not compiled with CUDA enabled" from ``load_run`` (a
    checkpoint) and from ``pretrained.load_pretrained`` (a shipped model's name); both check the device first."""
    from frankenstein_utils.apps import apply

    root, _ = saved_run
    dev = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    (tmp_path / "in").mkdir()
    rc = apply.main(["--checkpoint", str(root / "checkpoint.pt"), "--input", str(tmp_path / "in"), "--output",
                     str(tmp_path / "out"), "--device", dev])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and f"cannot be loaded on device {dev}:" in err[0], err
    assert str(root / "checkpoint.pt") in err[0]
    for name in ("flagship", "study/U"):  # a shipped model's name
        rc = apply.main(["--model", name, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                         "--device", dev])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1 and len(err) == 1 and f"{name}: cannot be loaded on device {dev}:" in err[0], err


@pytest.mark.parametrize("z", ["0", "-1"])
def test_a_code_of_no_dimensions_is_one_line(monkeypatch, capsys, z):
    """``--mode cvae --z-dim 0`` crashed in the NaN guard (amax of an empty tensor), -1 in ``nn.Linear``."""
    line = train_cli_error(monkeypatch, capsys, ["--mode", "cvae", "--z-dim", z])
    assert "z_dim must be >= 1 for mode 'cvae'" in line and f"got {z}" in line


def test_every_mode_with_a_code_needs_one():
    for mode in ("cvae", "cvae-gan", "flagship", "bicyclegan"):
        with pytest.raises(ValueError, match=f"z_dim must be >= 1 for mode '{mode}'"):
            TrainConfig(mode=mode, z_dim=0)
    with pytest.raises(ValueError, match="z_dim must be >= 1 for generator 'NU'"):  # it silently took 8
        TrainConfig(generator="NU", z_dim=0)
    with pytest.raises(ValueError, match="z_dim must be >= 0"):
        TrainConfig(z_dim=-1)
    TrainConfig(mode="l1", generator="U", z_dim=0)  # no code: 0 is fine


@pytest.mark.parametrize("size", ["4", "8"])
def test_a_size_the_gan_networks_cannot_take_is_one_line(monkeypatch, capsys, size):
    """``--mode gan --size 8`` crashed in the first step (the PatchGAN's output shrank to nothing), 4 in instance
    norm; now TrainConfig knows each mode's smallest size."""
    for mode in ("gan", "l1+gan", "cvae-gan", "gan+recon", "cross-encoder"):
        line = train_cli_error(monkeypatch, capsys, ["--mode", mode, "--size", size])
        assert f"image_size {size} is too small for mode '{mode}'" in line and "needs image_size >= 12" in line


def test_smallest_sizes_per_mode():
    """The floors (verified once against a training step over 841 combinations of mode, generator, norms,
    discriminator and size); here the messages and the boundaries."""
    refused = {("flagship", 32): ">= 64", ("bicyclegan", 32): ">= 64", ("pix2pix", 16): ">= 32",
               ("l1", 4): ">= 8", ("cvae", 4): ">= 8"}
    for (mode, size), want in refused.items():
        with pytest.raises(ValueError, match=f"image_size {size} is too small for mode '{mode}'.*{want}"):
            TrainConfig(mode=mode, image_size=size)
    with pytest.raises(ValueError, match="fs_bottleneck"):
        TrainConfig(mode="flagship", image_size=48)
    with pytest.raises(ValueError, match="power-of-2"):
        TrainConfig(mode="pix2pix", image_size=48)
    for kw in (dict(mode="gan", image_size=12), dict(mode="gan", discriminator="small", image_size=8),
               dict(mode="l1", image_size=8), dict(mode="l1", generator="F", image_size=4),
               dict(mode="pix2pix", image_size=32), dict(mode="flagship", fs_scales=1, image_size=32),
               dict(mode="bicyclegan", image_size=64), dict(mode="flagship", image_size=64)):
        TrainConfig(**kw)


@pytest.mark.parametrize("kw", [dict(mode="gan", image_size=12), dict(mode="l1", image_size=8),
                                dict(mode="pix2pix", image_size=32)])
def test_the_smallest_accepted_sizes_train(tmp_path, kw):
    size = kw["image_size"]
    c = TrainConfig(**kw, width=4, d_width=4, encoder_width=4, batch_size=4, steps=1, out_dir=str(tmp_path),
                    sample_every=0, log_every=1)
    d = ToyPairs(n=8, size=size)
    losses = Trainer(c, {"paired": d, "synthetic": d, "real": d}).fit(progress=False)[-1]
    assert all(math.isfinite(v) for k, v in losses.items() if k != "step")


# ---- checkpoints: the file named in one line ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    Trainer(cfg(root, steps=1, mode="cvae"), {"paired": ToyPairs()}).fit(progress=False)
    return root, torch.load(root / "checkpoint.pt", weights_only=True)


def _first_key(d):
    return next(iter(d))


BROKEN = {
    "no nets entry": (lambda c: c.pop("nets"), "not a training checkpoint"),
    "a network missing": (lambda c: c["nets"].pop("E"), r"its networks \['G'\] are not this configuration's"),
    "an unknown network": (lambda c: c["nets"].__setitem__("X", {}), r"its networks \['E', 'G', 'X'\]"),
    "a wrongly shaped weight": (lambda c: c["nets"]["G"].__setitem__(_first_key(c["nets"]["G"]), torch.zeros(3, 3)),
                                "network G of the checkpoint does not fit.*size mismatch"),
    "a network that is no state dict": (lambda c: c["nets"].__setitem__("G", 3), r"nets\['G'\] is of type int"),
    "no optimizers": (lambda c: c.pop("opts"), "its 'opts' entry is missing"),
    "a wrongly shaped optimizer moment": (
        lambda c: c["opts"]["G"]["state"][_first_key(c["opts"]["G"]["state"])].__setitem__("exp_avg", torch.zeros(2)),
        "optimizer G of the checkpoint does not fit.*exp_avg"),
    "no step": (lambda c: c.pop("step"), "its 'step' entry is missing"),
    "no RNG state": (lambda c: c.pop("rng"), "its 'rng' entry is missing"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_damaged_checkpoint_is_named_in_one_line(tmp_path, saved_run, case):
    """A checkpoint without ``nets`` or with a wrongly shaped tensor gave a KeyError or torch's multi-line
    RuntimeError without the file's name (a missing network was left at its random initialisation silently)."""
    root, ck = saved_run
    damage, want = BROKEN[case]
    ck = copy.deepcopy(ck)
    damage(ck)
    bad = tmp_path / "resume" / "checkpoint.pt"
    bad.parent.mkdir()
    torch.save(ck, bad)
    for what, load in (("load_run", lambda: load_run(bad)),
                       ("resume", lambda: Trainer(cfg(bad.parent, steps=2, mode="cvae"), {"paired": ToyPairs()}))):
        with pytest.raises(ValueError, match=want) as e:
            load()
        msg = str(e.value)
        assert msg.startswith(str(bad)) and "\n" not in msg, (what, msg)


# ---- the notebook runner: every value checked before anything runs ---------------------------------------------------
@pytest.fixture
def runner(tmp_path, monkeypatch, capsys):
    """``notebooks.main`` on a YAML text with the notebooks stubbed out: (exit code, stderr lines, notebooks run)."""
    from frankenstein_utils.apps import notebooks

    ran = []
    monkeypatch.setattr(notebooks, "execute", lambda nb, out, params: ran.append(nb.stem) or {})

    def main(text, *extra):
        path = tmp_path / "params.yaml"
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
        ran.clear()
        rc = notebooks.main(["--params", str(path), "--out", str(tmp_path / "out"), *extra])
        return rc, capsys.readouterr().err.strip().splitlines(), list(ran)
    return main


def _runs(tmp_path):
    """RUN_ROOTS for notebook 04 and the matching OUT_DIRs of 02 and 03, all under ``tmp_path``."""
    sup, exp = tmp_path / "sup", tmp_path / "exp"
    return (f"02_supervised_baseline:\n  OUT_DIR: {sup}\n03_refinement_experiments:\n  OUT_DIR: {exp}\n"
            f"04_evaluation:\n  RUN_ROOTS: {{supervised: {sup}, '': {exp}}}\n")


REFUSED = {  # YAML, extra arguments, what the one line must say
    "N: null": ("01_data_generation:\n  N: null\n", (), "parameter N is null, the notebook's default 5000 is a int"),
    "N_SYNTH: 2.5": ("03_refinement_experiments:\n  N_SYNTH: 2.5\n", (), "parameter N_SYNTH = 2.5 is a float"),
    "VARIANTS: [gan-lsgn]": ("03_refinement_experiments:\n  VARIANTS: [gan-lsgn]\n", (),
                             "VARIANTS = ['gan-lsgn']: unknown variant 'gan-lsgn' (did you mean 'gan-lsgan'?)"),
    "DEPTH_SOURCE: fited": ("02_supervised_baseline:\n  DEPTH_SOURCE: fited\n", (),
                            "DEPTH_SOURCE = 'fited': unknown name 'fited' (did you mean 'fitted'?)"),
    "a misspelt OVERRIDES variant": (
        "03_refinement_experiments:\n  OVERRIDES: {gan-wgan-clp: {wgan_burst: 2}}\n", (),
        "OVERRIDES = {'gan-wgan-clp': {'wgan_burst': 2}}: unknown variant 'gan-wgan-clp' (did you mean 'gan-wgan-clip'?)"),
    "a misspelt OVERRIDES setting": ("03_refinement_experiments:\n  OVERRIDES: {gan-log: {wgan_brust: 2}}\n", (),
                                     "unknown TrainConfig setting 'wgan_brust' (did you mean 'wgan_burst'?)"),
    "an OVERRIDES value TrainConfig refuses": (
        "03_refinement_experiments:\n  OVERRIDES: {gan-log: {n_critic: 0}}\n", (),
        "model 'gan-log': n_critic must be >= 1, got 0 (set by OVERRIDES['gan-log']['n_critic'])"),
    "Z_DIM 0 for cvae": ("02_supervised_baseline:\n  Z_DIM: 0\n", (), "model 'cvae': z_dim must be >= 1"),
    "SIZE too small for the GANs": ("03_refinement_experiments:\n  SIZE: 8\n", (),
                                    "model 'gan-log': image_size 8 is too small for mode 'gan'"),
    "SHIPPED: flagshp": ("04_evaluation:\n  SHIPPED: flagshp\n", (), "SHIPPED = 'flagshp': unknown name 'flagshp'"),
    "a duplicated key": ("01_data_generation:\n  N: 4\n  N: 5\n", (),
                         "key 'N' is given twice in one mapping (lines 2 and 3)"),
    "a bare --only": ("01_data_generation:\n  N: 4\n", ("--only",), "--only needs at least one notebook"),
    "a binary file": (bytes(range(256)) * 4, (), "params.yaml: not a text file"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_runner_refuses_a_bad_value_before_anything_runs(runner, case):
    """Each of these ran today (a misspelt OVERRIDES variant ignored, a duplicated key keeping the last value, a
    bare --only running all four notebooks) or failed inside a notebook, one of them after 01 and 02 had run."""
    text, extra, want = REFUSED[case]
    rc, err, ran = runner(text, *extra)
    assert rc == 2 and ran == [] and len(err) == 1, (rc, err, ran)
    assert want in err[0] and "Traceback" not in err[0], err[0]


def test_runner_refuses_a_compare_entry_that_names_no_run(runner, tmp_path):
    """A misspelt COMPARE entry made notebook 04 compare the first two checkpoints it found, without a word. The
    runner knows the run names beforehand: those on disk under RUN_ROOTS, and those 02 (MODELS) and 03 (VARIANTS)
    will write into a RUN_ROOTS folder."""
    base = _runs(tmp_path)
    rc, err, ran = runner(base + "  COMPARE: [supervised/UU, cvae-gan]\n")
    assert rc == 2 and ran == [] and len(err) == 1
    assert "COMPARE entry 'supervised/UU' names no run (did you mean 'supervised/U'?)" in err[0], err
    rc, err, ran = runner(base + "  COMPARE: [supervisd/U]\n")  # not even of the form of a run name
    assert rc == 2 and "COMPARE entry 'supervisd/U' is no run name under RUN_ROOTS" in err[0], err
    # empty: no run compared (the shipped generators alone); notebook 04 no longer falls back to the first two runs
    assert runner(base + "  COMPARE: []\n")[0] == 0
    cells = json.loads((notebooks.NOTEBOOK_DIR / "04_evaluation.ipynb").read_text())["cells"]
    nb = "".join("".join(c["source"]) for c in cells)
    assert "list(checkpoints)[:2]" not in nb
    # made by 02 and 03 of this plan: fine
    assert runner(base + "  COMPARE: [supervised/V, cvae-gan]\n")[0] == 0
    # 04 alone: only what is on disk counts
    rc, err, _ = runner(base + "  COMPARE: [cvae-gan]\n", "--only", "04_evaluation")
    assert rc == 2 and "runs it will find: none" in err[0], err
    (tmp_path / "exp" / "cvae-gan").mkdir(parents=True)
    (tmp_path / "exp" / "cvae-gan" / "checkpoint.pt").write_bytes(b"")
    assert runner(base + "  COMPARE: [cvae-gan]\n", "--only", "04_evaluation")[:3:2] == (0, ["04_evaluation"])


def test_every_notebook_has_a_schema_in_step_with_its_parameters_cell():
    """One declared schema per notebook, covering exactly the parameters its cell defines; the shipped parameter
    files pass it."""
    from frankenstein_utils.apps import notebooks

    paths = notebooks.notebook_paths()
    assert sorted(notebooks.SCHEMAS) == [p.stem for p in paths]
    for p in paths:
        assert set(notebooks.SCHEMAS[p.stem].rules) == set(notebooks.notebook_parameters(p)), p.stem
    for name in ("default", "tiny", "full"):
        path = notebooks.NOTEBOOK_DIR / "params" / f"{name}.yaml"
        assert len(notebooks.plan_runs(notebooks.load_params(path), None, path)) == len(paths)


# ---- the landmarks command: one line instead of (two nested) tracebacks --------------------------------------------
def _celeba_photo():
    from frankenstein_utils.io.paths import find_dataset

    root = find_dataset("celeba_10k", "landmarks_mediapipe.npz") / "images"
    return next(iter(sorted(root.iterdir())))


def _landmarks_main(capsys, *argv):
    from frankenstein_utils.data import landmarks as L

    rc = L.main([str(a) for a in argv])
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    return rc, err


def test_landmarks_command_names_a_bad_folder_or_photo_in_one_line(tmp_path, capsys, monkeypatch):
    """A missing or empty folder or a non-image raised inside the MediaPipe process: its traceback, then the
    CalledProcessError's. Now they are found before MediaPipe starts (no MediaPipe needed for this test)."""
    monkeypatch.setenv("FRANKENSTEIN_MEDIAPIPE_PYTHON", str(tmp_path / "no-such-python"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "read_me.txt").write_text("x")
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.jpg").symlink_to(_celeba_photo())
    (tmp_path / "mixed" / "b.jpg").write_text("not a photo")
    for folder, want in ((tmp_path / "missing", "photo folder does not exist"), (tmp_path / "empty", "no photos"),
                         (tmp_path / "notes", "no photos"), (tmp_path / "mixed" / "a.jpg", "not a folder"),
                         (tmp_path / "mixed", "b.jpg: not an image Pillow can read")):
        rc, err = _landmarks_main(capsys, folder)
        assert rc == 1 and len(err) == 1 and err[0].startswith("landmarks: error: "), (folder, err)
        assert want in err[0] and str(folder) in err[0], err


def test_landmarks_command_relays_the_detection_process_error_in_one_line(tmp_path, capsys, monkeypatch):
    """An error inside the MediaPipe process (a photo that opens but does not decode) comes back as that
    process's own line, not as its traceback followed by the CalledProcessError's."""
    try:
        import mediapipe  # noqa: F401
        pytest.skip("mediapipe runs in this environment: there is no detection process")
    except ImportError:
        pass
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").symlink_to(_celeba_photo())
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'W0000 some log line' >&2\necho 'Traceback (most recent call last):' >&2\n"
                    "echo 'landmarks: error: photos/a.jpg: cannot read image (OSError: truncated)' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("FRANKENSTEIN_MEDIAPIPE_PYTHON", str(fake))
    rc, err = _landmarks_main(capsys, tmp_path / "photos")
    assert rc == 1 and err == ["landmarks: error: photos/a.jpg: cannot read image (OSError: truncated)"], err
    fake.write_text("#!/bin/sh\necho 'Segmentation fault' >&2\nexit 139\n")
    rc, err = _landmarks_main(capsys, tmp_path / "photos")
    assert rc == 1 and len(err) == 1 and "detection failed (exit 139): Segmentation fault" in err[0], err


def test_landmarks_command_with_no_face_is_one_line(tmp_path, capsys, monkeypatch):
    """No face in any photo raised ValueError out of main (a traceback)."""
    import numpy as np

    from frankenstein_utils.data import landmarks as L

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").symlink_to(_celeba_photo())

    def no_faces(folder, out=None, python=None):  # what the detection writes for a photo without a face
        path = tmp_path / "photos" / L.LANDMARKS_NAME
        np.savez(path, names=np.array(["a.jpg"]), found=np.zeros(1, bool),
                 landmarks=np.full((1, 468, 3), np.nan, np.float32), image_size=np.array([[178, 218]]))
        return path
    monkeypatch.setattr(L, "build_landmarks", no_faces)
    rc, err = _landmarks_main(capsys, tmp_path / "photos")
    assert rc == 1 and len(err) == 1 and "no face was detected in any photo" in err[0], err


def test_landmarks_command_on_a_truncated_photo_with_mediapipe(tmp_path, capsys):
    """The real detection process (where a MediaPipe environment exists): a JPEG cut short opens, so it passes the
    check before the detection, and fails while decoding in the MediaPipe process: one line naming it."""
    from frankenstein_utils.data import landmarks as L

    try:
        import mediapipe  # noqa: F401
    except ImportError:
        if not L.mediapipe_python().exists():
            pytest.skip("no MediaPipe environment (python -m frankenstein_utils.data.landmarks --make-env)")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cut.jpg").write_bytes(_celeba_photo().read_bytes()[:2000])
    rc, err = _landmarks_main(capsys, tmp_path / "photos")
    err = [x for x in err if x.startswith("landmarks: error: ")]
    assert rc == 1 and len(err) == 1 and "cut.jpg: cannot read image" in err[0], err


INIT_FROM_DAMAGE = {
    "no optimizers": (lambda c: c.pop("opts"), "its 'opts' entry is missing"),
    "optimizers of another mode": (lambda c: c["opts"].__setitem__("D", c["opts"]["G"]),
                                   "its optimizers ['D', 'G'] are not this configuration's ['G']"),
    "a network entry that is no state dict": (lambda c: c["nets"].__setitem__("G", 3), "nets['G'] is of type int"),
    "an optimizer moment of another shape": (
        lambda c: c["opts"]["G"]["state"][0].__setitem__("exp_avg", torch.zeros(3)),
        "exp_avg of parameter 0 has shape (3,)"),
    "a negative step": (lambda c: c.__setitem__("step", -4), "step -4"),
}


@pytest.mark.parametrize("case", sorted(INIT_FROM_DAMAGE))
def test_init_from_a_damaged_checkpoint_is_one_line_naming_it(tmp_path, case):
    """``--init-from`` read the source's entries without the layout checks a resume makes: a damaged source raised
    KeyError / TypeError / RuntimeError (an optimizer moment of another shape only at the first step), without
    naming the file. Now each is a ValueError naming it, before anything trains."""
    src = Trainer(cfg(tmp_path / "src", steps=2), {"paired": ToyPairs(16)})
    src.fit(progress=False)
    ck = torch.load(tmp_path / "src" / "checkpoint.pt", weights_only=True)
    damage, want = INIT_FROM_DAMAGE[case]
    damage(ck)
    bad = tmp_path / "damaged.pt"
    torch.save(ck, bad)
    with pytest.raises(ValueError) as e:
        Trainer(cfg(tmp_path / "ft", steps=1, init_from=str(bad)), {"paired": ToyPairs(16)}).fit(progress=False)
    assert str(bad) in str(e.value) and want in str(e.value) and "\n" not in str(e.value), e.value
