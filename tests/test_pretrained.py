"""The shipped generator: loads on CPU from the package alone, is small and half precision, and recomputes the
model card's numbers (dlib detection rate, landmark error against the face model's own landmarks, face-FD against
test photos) on the card's small fixed set of synthetic inputs."""
import pytest
import torch

from frankenstein_utils.pretrained.scoring import card_numbers
from frankenstein_utils.pretrained.shipped import WEIGHTS_DIR, available, load_pretrained


@pytest.fixture(scope="module")
def gen():
    return load_pretrained("flagship")


def test_shipped_files_are_small_half_precision_and_carded():
    from frankenstein_utils.pretrained.shipped import read_shipped

    files = [WEIGHTS_DIR / f"{n}.safetensors" for n in available()]  # the flagship and the study models together
    assert "flagship" in available()
    assert sum(f.stat().st_size for f in files) <= 20 * 2 ** 20
    assert sum(f.stat().st_size for f in WEIGHTS_DIR.rglob("*") if f.is_file()) <= 20_000_000  # with the rest
    blob = read_shipped(WEIGHTS_DIR / "flagship.safetensors")
    assert all(v.dtype == torch.float16 for v in blob["G"].values() if v.is_floating_point())
    card = (WEIGHTS_DIR / "flagship_MODEL_CARD.md").read_text()
    for must in ("non-commercial", "python -m frankenstein_utils.train", f"{blob['card']['step']:,}",
                 f"{blob['card']['evaluation']['model']['face_fd']:.3f}"):
        assert must in card


def test_load_pretrained_generates(gen, face_model):
    from frankenstein_utils.render.rasterize import render_depth

    S = gen.cfg.image_size
    assert gen.render.resolution == S
    d, m = render_depth(face_model, torch.zeros(2, 15), gen.render)
    out = gen.generate(d[:, None], m[:, None].float())
    assert out.shape == (2, 3, S, S) and torch.isfinite(out).all() and out.abs().max() <= 1
    z = torch.randn(2, gen.nets["G"].z_dim, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(out, gen.generate(d[:, None], m[:, None].float(), z=z), atol=1e-3)  # z matters
    assert all(not p.requires_grad for p in gen.nets["G"].parameters())
    with pytest.raises(ValueError, match=f"{S}x{S}"):
        gen.generate(torch.zeros(1, 1, S + 4, S + 4), torch.zeros(1, 1, S + 4, S + 4))
    with pytest.raises(FileNotFoundError, match="no shipped model"):
        load_pretrained("nonexistent")


def card_mismatches(got: dict, want: dict, rel: float = 1e-4) -> list[str]:
    """Where recomputed small-set numbers differ from a card's. The images judged are the same 8-bit images on any
    CPU (float64 generation, CPU-independent draws: ``test_card_images_are_the_same_under_other_cpu_kernels``), so
    what is left is dlib and the float64 statistics: a tolerance of 1e-4 relative, far below what any change of
    weights, inputs or scoring moves (``test_card_check_fails_when_weights_inputs_or_scoring_change``)."""
    bad = [f"detection {got['detection']} vs {want['detection']}" for _ in [0] if got["detection"] != want["detection"]]
    for k in ("nme", "face_fd", "diversity"):
        if got[k] != pytest.approx(want[k], rel=rel):
            bad.append(f"{k} {got[k]:.6g} vs card {want[k]:.6g}")
    return bad


def test_card_numbers_recomputed(gen, face_model):
    assert card_mismatches(card_numbers(gen, face_model), gen.card["small_set"]) == []


def test_card_check_fails_when_weights_inputs_or_scoring_change(face_model, monkeypatch):
    """The check above is not blind: a 1 % change of one layer's weights, another input seed, or landmarks scored on
    all 68 points instead of the inner 51 each break it."""
    from frankenstein_utils.evaluation import judges as J

    g = load_pretrained("study/U")
    want = g.card["small_set"]
    assert card_mismatches(card_numbers(g, face_model), want) == []
    assert card_mismatches(card_numbers(g, face_model, seed=2025), want)
    w = next(p for n, p in g.nets["G"].named_parameters() if n.endswith("weight") and p.ndim == 4)
    with torch.no_grad():
        w.mul_(1.01)
    assert card_mismatches(card_numbers(g, face_model), want)
    with torch.no_grad():
        w.div_(1.01)
    monkeypatch.setattr(J, "INNER_POINTS", tuple(range(68)))
    assert card_mismatches(card_numbers(g, face_model), want)


_KERNEL_ENV = {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1",
               "NUMBA_CPU_NAME": "generic"}
_HASH_SCRIPT = """
import hashlib, json, sys, torch
from frankenstein_utils.facemodel.model import load_face_model
from frankenstein_utils.pretrained.scoring import card_images
from frankenstein_utils.pretrained.shipped import load_pretrained
m = load_face_model()
q = lambda x: ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy().tobytes()
out = {"randn32": hashlib.sha1(torch.randn(1000, generator=torch.Generator().manual_seed(0)).numpy().tobytes()).hexdigest()}
for name in sys.argv[1:]:
    out[name] = hashlib.sha1(q(card_images(load_pretrained(name), m)[0])).hexdigest()
print(json.dumps(out))
"""


def test_card_images_are_the_same_under_other_cpu_kernels():
    """What makes the card checks hold on any CPU: the 8-bit images the judges see are identical when torch's
    vector kernels, oneDNN's instruction set, the thread count and numba's target CPU are all changed (a
    subprocess with scalar ATen kernels, SSE4.1 oneDNN, 1 thread, generic numba). The same settings do change
    float32 draws (shown), which is what moved a card's face-FD by 1e-3 on another machine."""
    import json
    import os
    import subprocess
    import sys

    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        pytest.skip("this CPU has no vector kernels to switch off")
    names = ["study/replay", "flagship"]
    run = lambda env: json.loads(subprocess.run([sys.executable, "-c", _HASH_SCRIPT, *names], env={**os.environ, **env},
                                                check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    here, other = run({}), run(_KERNEL_ENV)
    assert here["randn32"] != other["randn32"]  # the settings took effect
    assert {n: here[n] for n in names} == {n: other[n] for n in names}


def test_explorer_shows_the_shipped_model(face_model):
    from frankenstein_utils.apps.widgets import FaceExplorer

    ex = FaceExplorer.with_pretrained(face_model, "flagship")
    depth, face = ex.update(torch.zeros(15))
    S = ex.cfg.resolution
    assert depth.shape == (S, S) and face.shape == (S, S, 3) and face.dtype.name == "uint8"
    assert face.std() > 5  # a picture, not a constant
    panel = ex.panels[0]
    assert panel.n_latent == 4  # appearance sliders from the shipped encoder directions
    panel.values[0] = 2.0
    assert (ex.render()[1].astype(int) - face.astype(int)).__abs__().mean() > 1  # the slider changes the face


def test_budget_study_scores_each_segment_resumes_and_ships(tmp_path, face_model):
    """The study at one equal budget (study.variants.budget_study): a curve point per segment, a resume adds only the
    missing points, export writes half-precision weights and a card whose numbers the shipped file reproduces;
    a wrong parameter file fails with one line naming it."""
    import json

    import yaml

    from frankenstein_utils.pretrained.study_export import export_study
    from frankenstein_utils.study import variants as X

    params = dict(steps=2, eval_every=1, n_eval=8, n_synthetic=16, models=["U", "gan-log"], out_dir=str(tmp_path / "out"),
                  settings=dict(image_size=64, width=4, d_width=4, encoder_width=4, batch_size=2, seed=0))
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(params))
    p = X.load_budget_params(path)
    res = X.budget_study(p, n_kid_reference=16)
    assert res["U"]["streams"] == ["paired"] and res["gan-log"]["streams"] == ["real", "synthetic"]
    curve = json.loads((tmp_path / "out" / "U" / "curve.json").read_text())
    assert [q["step"] for q in curve["points"]] == [1, 2]
    # realism on the evaluation's measure: KID of the n_eval faces against the given test photos, not n_eval of them
    assert all(q["kid_n"] == 8 and q["kid_n_reference"] == 16 and q["kid_se"] > 0 for q in curve["points"])
    # each point's checkpoint is kept and is that point's run (a re-scoring reads the generator of that step)
    from frankenstein_utils.train.trainer import load_run
    kept = sorted((tmp_path / "out" / "U" / "points").glob("step_*.pt"))
    assert [k.name for k in kept] == ["step_000001.pt", "step_000002.pt"] and load_run(kept[0]).step == 1
    assert curve["config"]["input_convention"]["synthetic"]["pose"] == "fitted"
    first = curve["points"][0]
    # a longer budget resumes: the old points stay as they were
    X.budget_study({**p, "steps": 3}, ["U"], n_kid_reference=16)
    curve = json.loads((tmp_path / "out" / "U" / "curve.json").read_text())
    assert [q["step"] for q in curve["points"]] == [1, 2, 3] and curve["points"][0] == first
    cards = export_study(path, p, ["gan-log"], weights_dir=tmp_path / "w")
    from frankenstein_utils.pretrained.shipped import CHECKSUMS, read_checksums, read_shipped

    shipped = tmp_path / "w" / "study" / "gan-log.safetensors"
    blob = read_shipped(shipped)
    assert all(v.dtype == torch.float16 for v in blob["G"].values() if v.is_floating_point())
    digest = read_checksums(tmp_path / "w")["study/gan-log.safetensors"]  # recorded, and in the card
    assert (tmp_path / "w" / CHECKSUMS).exists() and f"SHA-256 `{digest}`" in (
        tmp_path / "w" / "study" / "gan-log_MODEL_CARD.md").read_text()
    g = load_pretrained(str(shipped))
    assert card_numbers(g, face_model)["nme"] == pytest.approx(cards["gan-log"]["small_set"]["nme"], rel=1e-6)
    text = (tmp_path / "w" / "study" / "gan-log_MODEL_CARD.md").read_text()
    assert "non-commercial" in text and f"study.variants {path} --models 'gan-log'" in text
    assert "| step | train min | KID x 10^3 | face-FD |" in text and "against all 16 test photos" in text
    path.write_text(yaml.safe_dump({**params, "step": 5}))
    with pytest.raises(ValueError, match=r"p.yaml: keys must be .*unknown \['step'\]"):
        X.load_budget_params(path)


def test_every_study_model_of_the_parameter_file_is_shipped_and_recomputes_its_card(face_model):
    """The study at its equal budget ships beside the flagship: every model of notebooks/params/study_budget.yaml,
    trained for its steps, half precision, with a card holding its curve and the command that retrains it; each
    reproduces its card's numbers on the fixed synthetic inputs."""
    from frankenstein_utils.data.pairs import PairedConfig, PairedFaceDataset
    from frankenstein_utils.study.variants import load_budget_params

    params = load_budget_params(WEIGHTS_DIR.parent.parent / "notebooks" / "params" / "study_budget.yaml")
    pcfg = PairedConfig(size=params["settings"]["image_size"])
    train = PairedFaceDataset("train", pcfg, progress=False)
    n_test = len(PairedFaceDataset("test", pcfg, progress=False))
    for name in params["models"]:
        g = load_pretrained(f"study/{name}")
        card = g.card
        assert card["step"] == params["steps"] and card["curve"][-1]["step"] == params["steps"], name
        assert [p["step"] for p in card["curve"]] == list(range(params["eval_every"], params["steps"] + 1,
                                                                params["eval_every"])), name
        # the curve on the evaluation's realism measure: KID of its faces against every test photo
        assert all(p["kid_n"] == params["n_eval"] and p["kid_n_reference"] == n_test for p in card["curve"]), name
        text = (WEIGHTS_DIR / "study" / f"{name}_MODEL_CARD.md").read_text()
        assert "non-commercial" in text and f"--models '{name}'" in text, name
        assert card_mismatches(card_numbers(g, face_model, train=train), card["small_set"]) == [], name


def test_flagship_card_marks_its_small_sample_sections_superseded():
    """The flagship card's export-time sections (face-FD at 128 / 64 samples, the same-pose identity AUC) are
    history: every one says so and names the section with the one-N measures, and the shipped card is in step."""
    from frankenstein_utils.pretrained.cards import EVALUATION_SECTION, card_sections
    from frankenstein_utils.pretrained.shipped import load_pretrained

    gen = load_pretrained("flagship")
    curve = [{"step": 1, "wall_s": 1.0, "face_fd": 0.3, "nme": 0.05, "detection": 1.0}]
    study = {"flagship": {"steps": 250, "face_fd": 0.3, "nme": 0.05, "detection": 1.0, "diversity": 0.4,
                          "checkerboard": 1e-4, "wall_s": 50.0}}
    sec = card_sections(gen.card, gen.path.stat().st_size, gen, curve, study)
    old = [k for k in sec if k.startswith(("Evaluation", "Training curve", "Ablations"))]
    assert len(old) == 3 and all("superseded" in k for k in old), list(sec)
    assert all(EVALUATION_SECTION in sec[k] for k in old)
    text = (WEIGHTS_DIR / "flagship_MODEL_CARD.md").read_text()
    assert all(f"## {k}\n" in text for k in old) and f"## {EVALUATION_SECTION}" in text


def test_flagship_card_takes_the_ablation_at_one_n(tmp_path):
    """``pretrained.ship_ablation`` writes ``flagship.run_study``'s one-N results into a shipped card (its stored
    numbers and its MODEL_CARD.md section, rows by KID) and keeps every other section; a second write replaces the
    section; results of mixed N are refused."""
    import json
    import shutil

    from frankenstein_utils.pretrained.cards import ABLATION_SECTION, ship_ablation
    from frankenstein_utils.pretrained.shipped import read_shipped

    for f in ("flagship.safetensors", "flagship_MODEL_CARD.md"):
        shutil.copy(WEIGHTS_DIR / f, tmp_path / f)
    before = (tmp_path / "flagship_MODEL_CARD.md").read_text()
    row = lambda kid, se: {"kid": kid, "kid_se": se, "nme": 0.06, "detection": 0.9, "diversity_share": 0.5,
                           "checkerboard": 2e-4, "reference_checkerboard": 4e-4, "wall_s": 60.0, "n": 500,
                           "n_reference": 497, "steps": 250, "inputs": "the inputs"}
    res = {"flagship": row(900.0, 30.0), "-R1": row(700.0, 25.0), "pix2pix": row(1500.0, 40.0),
           "-EMA": {"status": "diverged", "message": "d_real is nan at step 3\nmore", "wall_s": 5.0,
                    "history": [{"step": 1}], "config": {"steps": 250}}}
    res["-R1"].update(status="ok", train_s=40.0, history=[{"step": 1, "l1": 0.5}], config={"steps": 250})
    (tmp_path / "results.json").write_text(json.dumps(res))
    ship_ablation(tmp_path / "results.json", "the command", weights_dir=tmp_path)
    text = (tmp_path / "flagship_MODEL_CARD.md").read_text()
    sec = text[text.index(f"## {ABLATION_SECTION}"):]
    assert "N = 500" in sec and "497 test photos" in sec and "250 steps" in sec and "the command" in sec
    assert sec.index("| -R1 | 700.0 ± 25.0") < sec.index("| flagship | 900.0 ± 30.0") < sec.index("| pix2pix |")
    assert "| 40 |" in sec.split("| -R1 |")[1].split("\n")[0]  # training time, not training and scoring
    assert "Not finished: -EMA (diverged: d_real is nan at step 3)" in sec and "| -EMA |" not in sec
    head = f"## {ABLATION_SECTION}\n"
    if head in before:  # the shipped card has the real section: it is replaced, the rest kept
        start = before.index(head)
        nxt = before.find("\n## ", start + len(head))
        before = before[:start] + (before[nxt:] if nxt >= 0 else "")
    for line in before.splitlines():  # nothing else of the card is lost (the file's checksum line is rewritten)
        assert line in text or "SHA-256" in line
    stored = read_shipped(tmp_path / "flagship.safetensors")["card"]["ablation_n"]["results"]
    assert stored["-R1"]["kid"] == 700.0 and not {"history", "config", "message"} & set(stored["-R1"])
    res["-R1"]["kid"] = 650.0
    (tmp_path / "results.json").write_text(json.dumps(res))
    ship_ablation(tmp_path / "results.json", "the command", weights_dir=tmp_path)
    text = (tmp_path / "flagship_MODEL_CARD.md").read_text()
    assert text.count(f"## {ABLATION_SECTION}") == 1 and "| -R1 | 650.0" in text and "| -R1 | 700.0" not in text
    res["pix2pix"]["n"] = 128
    (tmp_path / "results.json").write_text(json.dumps(res))
    with pytest.raises(ValueError, match="different N"):
        ship_ablation(tmp_path / "results.json", "the command", weights_dir=tmp_path)


def test_evaluation_table_replaces_the_evaluated_rows_and_keeps_the_other_models():
    """``pretrained evaluate NAME`` replaces NAME's row of the evaluation table, recomputes the reference rows and
    keeps the other shipped models' rows in the shipped order; rows of models no longer shipped go, and nothing is
    kept from a table with other columns."""
    from frankenstein_utils.pretrained.scoring import table_with_kept_rows
    from frankenstein_utils.pretrained.shipped import available

    a, b, c = available()[:3]
    head, rule = "| row | KID | NME |", "|---|---|---|"

    def table(rows, header=head):
        return "\n".join([header, rule] + [f"| {n} | {k} | {m} |" for n, k, m in rows])

    first = table([("reference: photos", "5", "0.03"), (a, "10", "0.1"), (b, "20", "0.2"), (c, "30", "0.3"),
                   ("study/gone", "40", "0.4")])
    old = "# Evaluation\n\n## Table\n\n" + first + "\n\n## Sweeps\n"
    out, kept = table_with_kept_rows(table([("reference: photos", "6", "0.03"), (b, "21", "0.25")]),
                                     ["reference: photos"], old)
    assert kept == [a, c]
    assert out.splitlines() == [head, rule, "| reference: photos | 6 | 0.03 |", f"| {a} | 10 | 0.1 |",
                                f"| {b} | 21 | 0.25 |", f"| {c} | 30 | 0.3 |"]
    out, kept = table_with_kept_rows(table([("reference: photos", "6", "0.03"), (b, "21", "0.25")],
                                           "| row | KID | NME | new column |"), ["reference: photos"], old)
    assert kept == [] and len(out.splitlines()) == 4


def test_memorisation_section_replaces_the_evaluated_rows_and_keeps_the_other_models():
    """``pretrained evaluate NAME`` writes a Memorisation section (both measures beside the chance of the held-out
    one): the reference rows recomputed, NAME's row replaced, the other shipped models' rows kept in the shipped
    order, rows of models no longer shipped dropped; rows without a measure are left out; nothing is kept from a
    section with other columns."""
    from frankenstein_utils.pretrained.scoring import memorisation_section
    from frankenstein_utils.pretrained.shipped import available

    a, b, c = available()[:3]

    def row(share, thr=0.9):
        return {"near_copy": thr, "near_copy_ci": (thr - 0.02, thr + 0.02), "near_copy_n_train": 8948,
                "train_neighbour": share, "train_neighbour_ci": (share - 0.02, min(1.0, share + 0.02)),
                "train_neighbour_null": 0.947, "train_neighbour_z": (share - 0.947) / 0.01}

    refs = {"reference: real test photos": row(0.948, 0.82), "reference: one constant mean face": row(1.0, 1.0),
            "reference: NME shuffled": {"nme": 0.1}}
    first, _ = memorisation_section(refs, {a: row(0.95), b: row(0.97), c: row(0.93), "study/gone": row(0.5)})
    assert first.startswith("## Memorisation") and "chance 0.947" in first
    old = "# Evaluation\n\n## Table\n\n| row | KID |\n|---|---|\n| x | 1 |\n\n" + first + "\n## Sweeps\n"
    section, kept = memorisation_section({"reference: real test photos": row(0.946, 0.83)}, {b: row(0.99)}, old)
    assert kept == [a, c] and "kept from an earlier run" in section
    body = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| row |")]
    assert [line.split(" |")[0][2:] for line in body] == ["reference: real test photos", a, b, c]
    assert body[0].startswith("| reference: real test photos | 0.830 [0.810, 0.850] | 0.946 [0.926, 0.966] | -0.1 |")
    assert body[2] == f"| {b} | 0.900 [0.880, 0.920] | 0.990 [0.970, 1.000] | +4.3 |"  # replaced, not kept
    assert body[1] == next(line for line in first.splitlines() if line.startswith(f"| {a} |"))
    other = old.replace("| row | threshold share |", "| row | another share |")
    section, kept = memorisation_section({}, {b: row(0.99)}, other)
    assert kept == [] and len([line for line in section.splitlines() if line.startswith("| ")]) == 2  # head, b
    assert memorisation_section({"reference: NME shuffled": {"nme": 0.1}}, {}, old) == ("", [])


def test_sweep_table_replaces_the_swept_rows_and_keeps_the_others():
    """``pretrained sweep NAME`` replaces NAME's row of the sweep section and keeps the other shipped models' rows
    (in the shipped order); rows of models no longer shipped go, and nothing is kept from a table with other
    columns (another sweep)."""
    from frankenstein_utils.pretrained.scoring import sweep_table
    from frankenstein_utils.pretrained.shipped import available

    def result(score, sweeps=("c0", "yaw")):
        return {"sweeps": {k: {"score": score} for k in sweeps},
                "summary": {"score": score, "worst_sweep": sweeps[0], "broken": [], "ignored": []}}

    reference = {"sweeps": {"c0": {"descriptor_response": 0.5}, "yaw": {"descriptor_response": 0.7}}}
    a, b, c = available()[:3]
    old, kept = sweep_table(reference, {c: result(0.3), a: result(0.1), "study/gone": result(0.4)})
    assert kept == [] and [r[2:].split(" |")[0] for r in old[3:]] == [a, c, "study/gone"]
    section = "## Sweeps\n\nWhat it measures.\n\n" + "\n".join(old) + "\n\n## Next\n"
    lines, kept = sweep_table(reference, {b: result(0.9)}, section)
    assert kept == [a, c]
    assert [r[2:].split(" |")[0] for r in lines[3:]] == [a, b, c]
    assert lines[3] == old[3] and lines[5] == old[4] and "0.90" in lines[4]
    other = {"sweeps": {"c0": {"descriptor_response": 0.5}}}  # other columns: the old rows measured something else
    lines, kept = sweep_table(other, {b: result(0.9, ("c0",))}, section)
    assert kept == [] and len(lines) == 4
