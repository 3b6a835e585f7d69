"""Each numbered notebook runs headlessly through papermill at tiny size and records sane numbers."""
import json
from pathlib import Path

import numpy as np
import pytest

from frankenstein_utils.apps import notebooks

TINY = notebooks.load_params(notebooks.NOTEBOOK_DIR / "params" / "tiny.yaml")


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("nb")


@pytest.fixture(scope="module")
def ran(out_dir):
    """Runs a notebook at tiny size once per module and gives its records: notebooks 02 and 03 serve their own tests
    and notebook 04's (which evaluates their checkpoints), whichever of them runs first or alone."""
    records = {}

    def run(stem):
        if stem not in records:
            records[stem] = notebooks.execute(notebooks.NOTEBOOK_DIR / f"{stem}.ipynb", out_dir / f"{stem}.ipynb",
                                              params_for(stem, out_dir))
        return records[stem]
    return run


def params_for(stem, out_dir):
    p = {**TINY.get("common", {}), **TINY[stem]}
    for k in list(p):  # keep test outputs out of the repository
        if k.endswith("_DIR"):
            p[k] = str(out_dir / stem / k.lower())
    return p


def test_every_notebook_has_a_parameters_cell_and_tiny_params():
    import papermill as pm

    paths = notebooks.notebook_paths()
    assert [p.stem[:2] for p in paths] == [f"{i:02d}" for i in range(1, len(paths) + 1)]
    for p in paths:
        assert pm.inspect_notebook(str(p)), f"{p.name} has no parameters cell"
        notebooks.check_parameters(p, TINY[p.stem])  # a misspelt test parameter fails here
    with pytest.raises(ValueError, match="unknown parameters"):
        notebooks.check_parameters(paths[0], {"NN": 3})


def test_01_data_generation(out_dir):
    stem = "01_data_generation"
    p = params_for(stem, out_dir)
    rec = notebooks.execute(notebooks.NOTEBOOK_DIR / f"{stem}.ipynb", out_dir / f"{stem}.ipynb", p)
    assert rec["n_faces"] == p["N"]
    assert rec["preview_holes"] == 0
    assert 0.2 < rec["mask_fraction"] < 0.6
    assert rec["depth_in_mask_min"] >= 0.1 and rec["depth_max"] <= 1.0
    assert rec["c0_mask_area_ratio"] < 0.8  # component 0 changes the face size a lot
    # the explorer shows the appearance render and the shipped generator's face beside the depth map, and a slider
    # move changes all of them
    from frankenstein_utils.pretrained import shipped as pretrained

    assert rec["explorer_images"] == (3 if pretrained.available() else 2)
    assert len(rec["explorer_changed_share"]) == rec["explorer_images"]
    assert all(x > 0.05 for x in rec["explorer_changed_share"]), rec["explorer_changed_share"]
    figs = Path(p["FIG_DIR"])
    for name in ("01_depth_grid.png", "01_components.png", "01_options.png", "01_expressions.png",
                 "01_pairs_fitted.png", "01_fitted_distribution.png", "01_appearance_model.png",
                 "01_appearance_sheet.png"):
        assert (figs / name).stat().st_size > 10_000
    assert len(list((Path(p["OUT_DIR"]) / "depth").glob("*.png"))) == p["N"]
    assert rec["jaw_open_changed_pixels"] > 20
    assert rec["fit_n"] == p["LIMIT"] and rec["fit_failed"] == 0 and rec["fit_residual_cm_median"] < 0.3
    assert rec["fitted_vs_landmark_mask_iou_median"] > 0.7
    assert 2 < rec["fitted_yaw_sd"] < 40 and 0 < rec["fitted_expression_weight_mean"] < 0.5
    # the appearance model: its components explain held-out photos better than the mean appearance does, more of
    # them better; about a third of the region is visible in a photo
    psnr = rec["appearance_val_psnr"]
    ks = sorted(psnr, key=int)
    assert psnr[ks[-1]] > psnr[ks[0]] > rec["appearance_val_psnr_mean"]
    assert rec["appearance_components"] in [int(k) for k in ks]
    assert 0.15 < rec["appearance_visible_share"] < 0.6


def test_02_supervised_baseline(out_dir, ran):
    stem = "02_supervised_baseline"
    p = params_for(stem, out_dir)
    rec = ran(stem)
    assert rec["n_train"] > rec["n_val"] > 0
    for model in ("mean training photo", "linear map of depth", "U", "V", "F", "cvae, z = E(photo)",
                  "cvae, z ~ N(0, I)"):
        r = rec[f"val/{model}"]
        assert 0 < r["l1_mask"] < 2 and 0 < r["psnr_mask"] < 60 and -1 <= r["ssim_mask"] <= 1
        assert r["dB vs mean (mask)"] == pytest.approx(r["psnr_mask"] - rec["val/mean training photo"]["psnr_mask"],
                                                       abs=2e-4)
    # the recorded numbers are those of the saved runs and of the data: recomputed here, independently

    from frankenstein_utils.data.pairs import PairedConfig, PairedFaceDataset
    from frankenstein_utils.evaluation.metric_nets import paired_metrics
    from frankenstein_utils.train.trainer import load_run

    pcfg = PairedConfig(size=p["SIZE"], limit=p["LIMIT"], depth_source=p.get("DEPTH_SOURCE", "fitted"))
    ti = PairedFaceDataset("train", pcfg, cache_dir=p["CACHE_DIR"], progress=False).tensors()[0]
    vi, vd, vm = PairedFaceDataset("val", pcfg, cache_dir=p["CACHE_DIR"], progress=False).tensors()
    m = vm.expand_as(vi)
    per_image = ((ti.mean(0, keepdim=True) - vi).abs() * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)
    assert rec["val/mean training photo"]["l1_mask"] == pytest.approx(float(per_image.mean()), abs=2e-4)
    u = load_run(Path(p["OUT_DIR"]) / "U" / "checkpoint.pt")
    assert u.step == p["STEPS"] and u.cfg.input_convention["render"]["region"] == "chin"
    # fitted pairs and synthetic inputs drawn from the photos' fits by default, recorded in the checkpoint
    conv = u.cfg.input_convention
    assert conv["paired_depth"] == "fitted" and (conv["synthetic"]["pose"], conv["synthetic"]["expressions"]) == (
        "fitted", "fitted")
    assert rec["synthetic_expression_weight_mean"] > 0
    # the explorer's depth map and every generated panel change when a shape slider moves
    assert len(rec["explorer_changed_share"]) == 3 and min(rec["explorer_changed_share"]) > 0.05
    assert rec["val/U"]["l1_mask"] == pytest.approx(paired_metrics(u.generate(vd, vm, vi), vi, vm)["l1_mask"], abs=2e-4)
    assert "mean training photo" in rec["conclusion"] and "dB" in rec["conclusion"]
    # synthetic and real faces are framed alike (centre and size within a few pixels at 32 px)
    real, syn = rec["real_box"], rec["synthetic_box"]
    assert all(abs(a - b) < 4 for a, b in zip(real, syn))
    out = Path(p["OUT_DIR"])
    for name in ("U", "V", "F", "cvae"):
        assert (out / name / "checkpoint.pt").exists()
    assert (out / "results.md").read_text().startswith("| model |")
    for fig in ("02_real_vs_synthetic_depth.png", "02_pose_distributions.png", "02_loss_curves.png",
                "02_validation_samples.png", "02_synthetic_outputs.png", "02_cvae_z.png"):
        assert (Path(p["FIG_DIR"]) / fig).stat().st_size > 5_000


def test_03_refinement_experiments(out_dir, ran):
    stem = "03_refinement_experiments"
    p = params_for(stem, out_dir)
    rec = ran(stem)
    from frankenstein_utils.study.variants import VARIANTS

    assert rec["n_variants"] == len(VARIANTS) and rec["n_ok"] == len(VARIANTS)
    results = json.loads((Path(p["OUT_DIR"]) / "results.json").read_text())
    for name, r in results.items():
        assert r["status"] == "ok" and Path(r["checkpoint"]).exists() and r["config"]["seed"] == 0
        conv = r["config"]["input_convention"]
        assert conv["paired_depth"] == "fitted" and conv["synthetic"]["n"] == p["N_SYNTH"]
        assert (conv["synthetic"]["pose"], conv["synthetic"]["expressions"]) == ("fitted", "fitted")
    assert (Path(p["FIG_DIR"]) / "03_variants_samples.png").stat().st_size > 10_000


def test_04_evaluation(out_dir, ran):
    """After tiny runs of 02 and 03 (shared with their tests), notebook 04 finds their checkpoints and writes the
    table."""
    stem = "04_evaluation"
    p = params_for(stem, out_dir)
    p["RUN_ROOTS"] = {"supervised": params_for("02_supervised_baseline", out_dir)["OUT_DIR"],
                      "": params_for("03_refinement_experiments", out_dir)["OUT_DIR"]}
    ran("02_supervised_baseline"), ran("03_refinement_experiments")
    rec = notebooks.execute(notebooks.NOTEBOOK_DIR / f"{stem}.ipynb", out_dir / f"{stem}.ipynb", p)
    metrics = json.loads((Path(p["OUT_DIR"]) / "metrics.json").read_text())
    from frankenstein_utils.evaluation import context as EV
    from frankenstein_utils.evaluation.context import REFS
    from frankenstein_utils.study.variants import VARIANTS

    assert set(metrics["runs"]) == {f"supervised/{m}" for m in ("U", "V", "F", "cvae")} | set(VARIANTS)
    refs = metrics["references"]
    assert set(REFS.values()) <= set(refs)  # every control row is computed in every run
    test_div = refs[REFS["test"]]["face_diversity"]
    for name, r in metrics["runs"].items():
        # one stated N: every run judged on N_EMBED faces against every test photo
        assert r["n_judged"] == p["N_EMBED"] and r["n_reference"] == refs[REFS["test"]]["n_judged"], name
        assert r["diversity_share"] == pytest.approx(r["face_diversity"] / test_div), name
        # mode collapse over codes is measured exactly where there is a code
        assert np.isfinite(r["code_spread"]) == (r["z_dim"] > 0), name
        lo, hi = EV.IDENTITY_BANDS["mean_shape"]
        assert r["identity_mean_shape_ok"] == (lo <= r["identity_mean_shape"] <= hi), name
        assert r["nme_ci"][0] <= r["nme"] <= r["nme_ci"][1] and r["identity_auc_ci"][0] <= r["identity_auc"] + 1e-9
    # memorisation against the held-out split, for every run and row that has descriptors: the real training photos
    # are copies (1), the test photos sit near chance M / (M + H), which is the same for every row
    mem = rec["memorisation"]
    chance = {v["chance"] for v in mem.values()}
    assert len(chance) == 1 and 0.5 < chance.pop() < 1 and set(metrics["runs"]) <= set(mem)
    assert mem[REFS["train"]]["held_out"] == 1.0 and REFS["test"] in mem
    # the oracle is scored against the photos' fitted landmarks; the MediaPipe-mapped line is a second, other number
    assert refs[REFS["test"]]["nme"] != refs[REFS["test"]]["nme_mediapipe"]
    # the winners follow from the numbers: the lowest KID among runs, where its ladder passed
    kid = {n: r["kid"] for n, r in metrics["runs"].items()}
    want = min(kid, key=kid.get) if metrics["ladder_checks"]["kid"]["ok"] else None
    assert rec["winners"].get("KID x 10^3 (dlib)") == want
    # the explorer's range: one number per sweep for each compared run, in [0, 1]
    assert set(rec["sweep_scores"]) == {"supervised/U", "cvae-gan"} and all(  # the notebook's COMPARE
        set(v) == {"c0", "yaw"} and all(0 <= x <= 1 for x in v.values()) for v in rec["sweep_scores"].values())
    assert {"kid", "face_fd", "detection", "nme", "face_diversity", "identity_auc", "identity_auc_old"} <= set(
        rec["ladder_checks"])
    table = (Path(p["OUT_DIR"]) / "metrics.md").read_text()
    assert table.startswith("Evaluation parameters") and all(f"| {n} |" in table for n in metrics["runs"])
    for fig in ("04_realism_vs_correspondence.png", "04_all_runs_landmarks.png"):
        assert (Path(p["FIG_DIR"]) / fig).stat().st_size > 10_000


def test_runner_checks_every_section_and_key_before_running_anything(tmp_path, monkeypatch, capsys):
    """A misspelled section, a misspelled or mistyped key (even in the last notebook's section) or an unknown
    ``--only`` fails in one line with a nonzero exit before any notebook runs; summaries are merged, not replaced."""
    ran = []
    monkeypatch.setattr(notebooks, "execute", lambda nb, out, params: ran.append(nb.stem) or {"n": len(params)})

    def main(yaml_text, *extra):
        path = tmp_path / "params.yaml"
        path.write_text(yaml_text)
        return notebooks.main(["--params", str(path), "--out", str(tmp_path / "out"), *extra])

    for text, extra, msg in (
            ("02_supervised_baselin:\n  SIZE: 32\n", (), "unknown section '02_supervised_baselin' (did you mean "
                                                         "'02_supervised_baseline'?)"),
            ("01_data_generation:\n  N: 4\n04_evaluation:\n  N_SYNTHH: 3\n", (), "'N_SYNTHH': did you mean 'N_SYNTH'?"),
            ("02_supervised_baseline:\n  STEPS: '100'\n", (), "parameter STEPS = '100' is a str"),
            ("common:\n  SIZEE: 3\n", (), "unknown parameters ['SIZEE']"),
            ("{}\n", ("--only", "02_supervised"), "--only '02_supervised': no such notebook")):
        assert main(text, *extra) == 2, text
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
    assert ran == [] and not (tmp_path / "out" / "summary.json").exists()
    assert main("01_data_generation:\n  N: 4\n") == 0 and len(ran) == 4
    assert main("{}\n", "--only", "02_supervised_baseline") == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert sorted(summary) == [p.stem for p in notebooks.notebook_paths()]  # the rerun kept the others
    assert summary["01_data_generation"]["params"] == {"N": 4}
