"""The shipped generator: loads on CPU from the package alone, is small and half precision, and recomputes the
model card's numbers (dlib detection rate, landmark error against the face model's own landmarks, face-FD against
test photos) on the card's small fixed set of synthetic inputs."""
import pytest
import torch

from frankenstein_utils.pretrained import WEIGHTS_DIR, available, card_numbers, load_pretrained


@pytest.fixture(scope="module")
def gen():
    return load_pretrained()


def test_shipped_files_are_small_half_precision_and_carded():
    files = list(WEIGHTS_DIR.rglob("*.pt"))  # the flagship and the study models together
    assert "flagship" in available()
    assert sum(f.stat().st_size for f in files) <= 20 * 2 ** 20
    blob = torch.load(WEIGHTS_DIR / "flagship.pt", map_location="cpu", weights_only=False)
    assert all(v.dtype == torch.float16 for v in blob["G"].values() if v.is_floating_point())
    card = (WEIGHTS_DIR / "flagship_MODEL_CARD.md").read_text()
    for must in ("non-commercial", "python -m frankenstein_utils.train", f"{blob['card']['step']:,}",
                 f"{blob['card']['evaluation']['model']['face_fd']:.3f}"):
        assert must in card


def test_load_pretrained_generates(gen, face_model):
    from frankenstein_utils.rasterize import render_depth

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


def test_card_numbers_recomputed(gen, face_model):
    got = card_numbers(gen, face_model)
    want = gen.card["small_set"]
    assert got["detection"] == pytest.approx(want["detection"], abs=3 / 64)  # 3 faces of 64
    assert got["nme"] == pytest.approx(want["nme"], rel=0.05)
    assert got["face_fd"] == pytest.approx(want["face_fd"], rel=0.05)
    assert got["diversity"] == pytest.approx(want["diversity"], rel=0.05)


def test_explorer_shows_the_shipped_model(face_model):
    from frankenstein_utils.widgets import FaceExplorer

    ex = FaceExplorer.with_pretrained(face_model)
    depth, face = ex.update(torch.zeros(15))
    S = ex.cfg.resolution
    assert depth.shape == (S, S) and face.shape == (S, S, 3) and face.dtype.name == "uint8"
    assert face.std() > 5  # a picture, not a constant
    panel = ex.panels[0]
    assert panel.n_latent == 4  # appearance sliders from the shipped encoder directions
    panel.values[0] = 2.0
    assert (ex.render()[1].astype(int) - face.astype(int)).__abs__().mean() > 1  # the slider changes the face


def test_budget_study_scores_each_segment_resumes_and_ships(tmp_path, face_model):
    """The study at one equal budget (experiments.budget_study): a curve point per segment, a resume adds only the
    missing points, export writes half-precision weights and a card whose numbers the shipped file reproduces;
    a wrong parameter file fails with one line naming it."""
    import json

    import yaml

    from frankenstein_utils import experiments as X
    from frankenstein_utils.pretrained import export_study

    params = dict(steps=2, eval_every=1, n_eval=8, n_synthetic=16, models=["U", "gan-log"], out_dir=str(tmp_path / "out"),
                  settings=dict(image_size=64, width=4, d_width=4, encoder_width=4, batch_size=2, seed=0))
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(params))
    p = X.load_budget_params(path)
    res = X.budget_study(p)
    assert res["U"]["streams"] == ["paired"] and res["gan-log"]["streams"] == ["real", "synthetic"]
    curve = json.loads((tmp_path / "out" / "U" / "curve.json").read_text())
    assert [q["step"] for q in curve["points"]] == [1, 2]
    assert curve["config"]["input_convention"]["synthetic"]["pose"] == "fitted"
    first = curve["points"][0]
    X.budget_study({**p, "steps": 3}, ["U"])  # a longer budget resumes: the old points stay as they were
    curve = json.loads((tmp_path / "out" / "U" / "curve.json").read_text())
    assert [q["step"] for q in curve["points"]] == [1, 2, 3] and curve["points"][0] == first
    cards = export_study(path, p, ["gan-log"], weights_dir=tmp_path / "w")
    blob = torch.load(tmp_path / "w" / "study" / "gan-log.pt", map_location="cpu", weights_only=False)
    assert all(v.dtype == torch.float16 for v in blob["G"].values() if v.is_floating_point())
    g = load_pretrained(str(tmp_path / "w" / "study" / "gan-log.pt"))
    assert card_numbers(g, face_model)["nme"] == pytest.approx(cards["gan-log"]["small_set"]["nme"], rel=1e-6)
    text = (tmp_path / "w" / "study" / "gan-log_MODEL_CARD.md").read_text()
    assert "non-commercial" in text and f"experiments {path} --models 'gan-log'" in text
    path.write_text(yaml.safe_dump({**params, "step": 5}))
    with pytest.raises(ValueError, match=r"p.yaml: keys must be .*unknown \['step'\]"):
        X.load_budget_params(path)


def test_every_study_model_of_the_parameter_file_is_shipped_and_recomputes_its_card(face_model):
    """The study at its equal budget ships beside the flagship: every model of notebooks/params/study_budget.yaml,
    trained for its steps, half precision, with a card holding its curve and the command that retrains it; each
    reproduces its card's numbers on the fixed synthetic inputs."""
    from frankenstein_utils.datasets import PairedConfig, PairedFaceDataset
    from frankenstein_utils.experiments import load_budget_params

    params = load_budget_params(WEIGHTS_DIR.parent.parent / "notebooks" / "params" / "study_budget.yaml")
    train = PairedFaceDataset("train", PairedConfig(size=params["settings"]["image_size"]), progress=False)
    for name in params["models"]:
        g = load_pretrained(f"study/{name}")
        card = g.card
        assert card["step"] == params["steps"] and card["curve"][-1]["step"] == params["steps"], name
        assert [p["step"] for p in card["curve"]] == list(range(params["eval_every"], params["steps"] + 1,
                                                                params["eval_every"])), name
        text = (WEIGHTS_DIR / "study" / f"{name}_MODEL_CARD.md").read_text()
        assert "non-commercial" in text and f"--models '{name}'" in text, name
        got, want = card_numbers(g, face_model, train=train), card["small_set"]
        assert got["nme"] == pytest.approx(want["nme"], rel=1e-3), name
        assert got["face_fd"] == pytest.approx(want["face_fd"], rel=1e-3), name
        assert got["detection"] == pytest.approx(want["detection"], abs=1 / 64), name
