"""Known-answer tests of the downstream landmark regressor (issue 22, point 7): the flip keeps left and right
landmarks right, the shift moves landmarks with the content, the recipe learns a landmark layout that the image
determines and not one that it does not, training is deterministic, the NME is the project's, and the CLI refuses
a folder that is not a generate folder."""
import numpy as np
import pytest
import torch

from frankenstein_utils.apps import downstream as LR
from frankenstein_utils.evaluation.judges import INNER_POINTS
from frankenstein_utils.evaluation.measures import nme


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small convs run as fast on one thread; the machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mirror(points):
    """(68, 2) points about x = 0 with left and right swapped."""
    out = points[list(LR.IBUG_FLIP)].copy()
    out[:, 0] = -out[:, 0]
    return out


def test_flip_permutation_is_an_involution_and_mirrors_eye_corners():
    flip = LR.IBUG_FLIP
    assert sorted(flip) == list(range(68)) and all(flip[flip[i]] == i for i in range(68))
    assert (flip[36], flip[45], flip[0], flip[16], flip[48], flip[54]) == (45, 36, 16, 0, 54, 48)
    assert all(flip[i] == i for i in (8, 27, 28, 29, 30, 33, 51, 57, 62, 66))
    g = torch.Generator().manual_seed(0)
    images, lm = torch.rand(3, 3, 16, 16, generator=g), torch.rand(3, 68, 2, generator=g) * 16
    fi, fl = LR.flip_faces(images, lm)
    back_i, back_l = LR.flip_faces(fi, fl)
    assert torch.equal(back_i, images) and torch.allclose(back_l, lm, atol=1e-6)
    assert torch.equal(fi[..., 0], images[..., 15])  # column 0 <- column 15
    assert torch.allclose(fl[:, 45, 0], 16 - lm[:, 36, 0]) and torch.equal(fl[:, 45, 1], lm[:, 36, 1])
    assert torch.allclose(fl[:, 36, 0], 16 - lm[:, 45, 0])
    # a bright pixel's centre (i + 0.5) lands on the bright pixel of the flipped image
    img = torch.zeros(1, 1, 16, 16)
    img[0, 0, 5, 3] = 1
    point = torch.full((1, 68, 2), 0.0)
    point[0, :, 0], point[0, :, 1] = 3.5, 5.5
    fi, fl = LR.flip_faces(img, point)
    y, x = divmod(int(fi.flatten().argmax()), 16)
    assert (x + 0.5, y + 0.5) == (float(fl[0, 0, 0]), float(fl[0, 0, 1])) == (12.5, 5.5)


def test_flip_permutation_maps_the_face_models_mean_face_onto_itself(face_model):
    """The ICT mean face is left-right symmetric about x = 0: its 68 landmarks mirrored with IBUG_FLIP fall on
    themselves; a single wrong pair (40/41 <-> 46/47 crossed) or no permutation does not."""
    p = face_model.mean[face_model.landmarks68][:, :2].double().numpy()
    iod = np.linalg.norm(p[36] - p[45])
    assert np.abs(_mirror(p) - p).max() / iod < 1e-3
    bad = list(LR.IBUG_FLIP)
    bad[40], bad[41] = bad[41], bad[40]
    mirrored = p[bad].copy()
    mirrored[:, 0] *= -1
    assert np.abs(mirrored - p).max() / iod > 0.05
    mirrored = p.copy()
    mirrored[:, 0] *= -1
    assert np.abs(mirrored - p).max() / iod > 0.5


def test_augmentation_moves_landmarks_with_the_content():
    """A bright pixel at each face's landmark position stays under its landmarks after the seeded shift + flip."""
    g = torch.Generator().manual_seed(1)
    n, S = 40, 24
    xy = torch.randint(4, S - 4, (n, 2), generator=g)
    images = torch.full((n, 3, S, S), -1.0)
    images[torch.arange(n), :, xy[:, 1], xy[:, 0]] = 1.0
    lm = (xy.float() + 0.5)[:, None, :].expand(n, 68, 2).clone()
    cfg = LR.RegressorConfig(shift=3, flip=True)
    ai, al = LR.augment(images, lm, cfg, torch.Generator().manual_seed(2))
    y, x = np.divmod(ai[:, 0].flatten(1).argmax(1).numpy(), S)
    assert np.array_equal(x + 0.5, al[:, 0, 0].numpy()) and np.array_equal(y + 0.5, al[:, 0, 1].numpy())
    moved = (al[:, 0] - lm[:, 0]).abs().sum(1) > 0
    assert moved.sum() > n // 2  # the augmentation did something
    assert ((al[:, 0, 1] - lm[:, 0, 1]).abs() <= 3).all()  # shifts stay within +-3 px in y


def _blob_faces(n, seed, S=32, lo=10.0, span=12.0):
    """Images of one Gaussian blob at (cx, cy) ~ U[lo, lo + span]^2; landmarks = a left-right symmetric 68-point
    template (outer eye corners 8 px apart) + (cx, cy): the image alone determines them."""
    g = torch.Generator().manual_seed(seed)
    t = (torch.rand(68, 2, generator=torch.Generator().manual_seed(99)).double().numpy() - 0.5) * 10
    t = (t + _mirror(t)) / 2
    t[36], t[45] = (-4.0, -2.0), (4.0, -2.0)
    c = lo + span * torch.rand(n, 2, generator=g)
    yy, xx = torch.meshgrid(torch.arange(S) + 0.5, torch.arange(S) + 0.5, indexing="ij")
    d2 = (xx[None] - c[:, 0, None, None]) ** 2 + (yy[None] - c[:, 1, None, None]) ** 2
    images = (2 * torch.exp(-d2 / (2 * 2.0 ** 2)) - 1)[:, None].expand(n, 3, S, S).contiguous()
    return images, torch.from_numpy(t).float()[None] + c[:, None, :]


def test_regressor_learns_what_the_image_determines_and_not_shuffled_labels():
    torch.manual_seed(123)  # the global RNG must not matter
    train_i, train_l = _blob_faces(512, 0)
    test_i, test_l = _blob_faces(200, 1)
    cfg = LR.RegressorConfig(steps=100, batch_size=32, width=8, shift=2, flip=True, lr=3e-3)
    chance = LR.evaluate_regressor(LR.MeanLandmarks(train_l, 32), test_i, test_l)
    assert 0.3 < chance["nme"] < 0.7 and chance["n"] == 200
    learned = LR.evaluate_regressor(LR.train_regressor(train_i, train_l, cfg), test_i, test_l)
    assert learned["nme"] < 0.3 * chance["nme"], (learned, chance)
    assert learned["nme_ci"][0] <= learned["nme"] <= learned["nme_ci"][1]
    shuffled = train_l[torch.randperm(512, generator=torch.Generator().manual_seed(5))]
    nothing = LR.evaluate_regressor(LR.train_regressor(train_i, shuffled, cfg), test_i, test_l)
    assert nothing["nme"] > 0.8 * chance["nme"], (nothing, chance)


def test_regressor_resolves_sub_pixel_offsets():
    """The photos are aligned crops: their landmarks vary by about 1 px around the mean face, so the regressor must
    resolve offsets far below a pixel. Blob and landmarks within a 2 px square: 100 steps reach < 0.1 x chance
    (0.064 x); with unscaled outputs (offsets in image widths, ~0.03) the same steps only reached 0.19 x."""
    train_i, train_l = _blob_faces(512, 0, lo=15.0, span=2.0)
    test_i, test_l = _blob_faces(200, 1, lo=15.0, span=2.0)
    cfg = LR.RegressorConfig(steps=100, batch_size=32, width=8, shift=0, flip=True, lr=3e-3)
    chance = LR.evaluate_regressor(LR.MeanLandmarks(train_l, 32), test_i, test_l)["nme"]
    learned = LR.evaluate_regressor(LR.train_regressor(train_i, train_l, cfg), test_i, test_l)["nme"]
    assert 0.05 < chance < 0.15 and learned < 0.1 * chance, (learned, chance)


def test_same_seed_same_weights():
    images, lm = _blob_faces(48, 3, S=16)
    cfg = LR.RegressorConfig(steps=4, batch_size=16, width=4)
    a = LR.train_regressor(images, lm, cfg).state_dict()
    torch.rand(7)  # the global RNG moved: no effect
    b = LR.train_regressor(images, lm, cfg).state_dict()
    c = LR.train_regressor(images, lm, LR.RegressorConfig(steps=4, batch_size=16, width=4, seed=1)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    model = LR.train_regressor(images, lm, cfg)
    assert model.config == {**cfg.__dict__} and not model.training


class _Oracle(torch.nn.Module):
    """Reads each image's landmarks back from its first 136 values (stored in image units)."""
    size = 16

    def forward(self, x):
        return x.flatten(1)[:, :136].reshape(-1, 68, 2)


def test_nme_of_perfect_and_mean_landmark_predictions():
    # perfect: 0, through the same path as the regressor (image units -> pixels -> metrics.nme)
    g = torch.Generator().manual_seed(0)
    lm = 2 + 12 * torch.rand(5, 68, 2, generator=g, dtype=torch.float64)
    images = torch.zeros(5, 1, 16, 16, dtype=torch.float64)
    images.view(5, -1)[:, :136] = LR.to_unit(lm, 16).reshape(5, 136)
    assert LR.evaluate_regressor(_Oracle(), images, lm)["nme"] == pytest.approx(0, abs=1e-5)
    # the mean-landmark predictor, by hand: face B is face A moved 4 px right; outer eye corners 10 px apart in both.
    # The mean is A + 2 px, so every point of either face is 2 px off: NME = 2 / 10 = 0.2 for both faces.
    a = np.zeros((68, 2))
    a[:, 0], a[:, 1] = np.arange(68) % 7 + 3, np.arange(68) % 5 + 4
    a[36], a[45] = (3, 6), (13, 6)
    train = torch.from_numpy(np.stack([a, a + [4, 0]]))
    res = LR.evaluate_regressor(LR.MeanLandmarks(train, 16), torch.zeros(2, 3, 16, 16), train.numpy())
    assert res["nme"] == pytest.approx(0.2, abs=1e-12) and res["n"] == 2
    # normalised by the TARGET's eye corners: the same 2 px off a face twice as wide is 0.1
    wide = a * 2
    r = nme(wide[None] + [2, 0], wide[None], INNER_POINTS)
    assert r["nme"] == pytest.approx(0.1)
    # only the inner 51 points count: moving the jaw (0-16) changes nothing
    pred = a[None].copy()
    pred[0, :17] += 5
    assert nme(pred, a[None], INNER_POINTS)["nme"] == 0


def test_downstream_table_cuts_every_source_to_the_same_n_and_reports_ratio_to_real():
    real, synth = _blob_faces(64, 0, S=16), _blob_faces(40, 1, S=16)
    test = _blob_faces(20, 2, S=16)
    cfg = LR.RegressorConfig(steps=2, batch_size=8, width=4)
    res = LR.downstream_table({"synth": synth, "real": real}, test, cfg, n=1000)
    assert res["n"] == 40 and [r["n"] for r in res["rows"]] == [40, 40] and res["test_n"] == 20
    rows = {r["label"]: r for r in res["rows"]}
    assert rows["real"]["ratio_to_real"] == 1.0
    assert rows["synth"]["ratio_to_real"] == pytest.approx(rows["synth"]["nme"] / rows["real"]["nme"])
    assert res["chance"]["nme"] == rows["real"]["chance_nme"] and "real" in res["chance"]["label"]
    assert res["recipe"]["steps"] == 2
    res = LR.downstream_table({"synth": synth}, test, cfg, n=10)
    assert res["n"] == 10 and res["rows"][0]["ratio_to_real"] is None and res["chance"] is not None


def test_downstream_table_scores_every_row_against_a_second_reference_on_the_photos_it_covers():
    """A second annotation of the test photos: each row's NME against it on the photos its mask uses, its ratio to
    the real row's, and how far the test landmarks themselves sit from it (the conventions' disagreement)."""
    real, synth = _blob_faces(64, 0, S=16), _blob_faces(40, 1, S=16)
    test = _blob_faces(20, 2, S=16)
    cfg = LR.RegressorConfig(steps=2, batch_size=8, width=4)
    lm = np.asarray(test[1], np.float64)
    used = np.arange(20) < 12
    res = LR.downstream_table({"synth": synth, "real": real}, test, cfg, n=1000,
                              second={"same": (lm, None), "moved": (lm + [1.0, 0.0], used)})
    for r in res["rows"]:
        assert r["second"]["same"]["nme"] == pytest.approx(r["nme"], abs=1e-12) and r["second"]["same"]["n"] == 20
        assert r["second"]["moved"]["n"] == 12
        assert r["second"]["moved"]["nme"] != pytest.approx(r["nme"])
    rows = {r["label"]: r for r in res["rows"]}
    assert rows["synth"]["second"]["moved"]["ratio_to_real"] == pytest.approx(
        rows["synth"]["second"]["moved"]["nme"] / rows["real"]["second"]["moved"]["nme"])
    eye = np.linalg.norm(lm[:12, 45] - lm[:12, 36], axis=-1)  # 1 px over each face's outer-eye-corner distance
    assert res["second_disagreement"]["moved"] == pytest.approx(float(np.mean(1.0 / eye)))
    assert res["second_disagreement"]["same"] == 0
    assert "Against a second reference, moved, on the 12 test photos" in LR._markdown(
        {**res, "wall_seconds": 1.0, "threads": 1, "command": "c"})
    with pytest.raises(ValueError, match="second reference 'bad'"):
        LR.downstream_table({"real": real}, test, cfg, second={"bad": (lm[:5], None)})


def test_config_rejects_unknown_keys_and_wrong_types():
    with pytest.raises(ValueError, match="unknown"):
        LR.RegressorConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="flip"):
        LR.RegressorConfig(flip=1)
    with pytest.raises(ValueError, match="steps"):
        LR.RegressorConfig(steps="10")
    assert LR.RegressorConfig(lr=1).lr == 1.0


def test_cli_refuses_a_folder_that_is_not_a_generate_folder(tmp_path, capsys):
    (tmp_path / "image").mkdir()
    assert LR.main(["--generated", f"mine={tmp_path}", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path) in err and "not" in err
    assert LR.main(["--generated", "no-equals-sign"]) == 1
    assert "LABEL=DIR" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as e:
        LR.main(["--help"])
    assert e.value.code == 0 and "--generated" in capsys.readouterr().out
