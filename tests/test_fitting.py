import numpy as np
import pytest
import torch

from frankenstein_utils.facemodel.fitting import (FLIP, FitConfig, derive_correspondence, fit_landmarks,
                                                  fitted_model_points, similarity)
from frankenstein_utils.facemodel.framing import rotation_to_angles
from frankenstein_utils.io.paths import find_dataset
from frankenstein_utils.render.rasterize import rotation_matrices


@pytest.fixture(scope="module")
def celeba_landmarks():
    d = np.load(find_dataset("celeba_10k", "landmarks_mediapipe.npz") / "landmarks_mediapipe.npz")
    return d["landmarks"][d["found"]][:400]


@pytest.fixture(scope="module")
def corr(face_model, celeba_landmarks):
    return derive_correspondence(face_model, celeba_landmarks)


def test_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(2, 30, 3))
    R = rotation_matrices(torch.tensor([[20.0, -10, 5, 1, 0, 0], [-30, 15, 0, 1, 0, 0]], dtype=torch.float64)).numpy()
    dst = 2.5 * src @ R.transpose(0, 2, 1) + np.array([1.0, -2, 3])
    s, R_hat, t = similarity(src, dst)
    np.testing.assert_allclose(s, 2.5, rtol=1e-9)
    np.testing.assert_allclose(R_hat, R, atol=1e-9)
    np.testing.assert_allclose(t, [[1, -2, 3]] * 2, atol=1e-9)


def test_correspondence_is_derived_consistently(face_model, celeba_landmarks, corr):
    # The aligned mean MediaPipe shape lies on the ICT mean face (the prototype: 0.30 cm / 0.16 cm)
    assert np.median(corr.align_error_cm) < 0.3 and np.median(corr.vertex_error_cm) < 0.2
    assert corr.vertex.shape == (468,) and corr.vertex.min() >= 0 and corr.vertex.max() < 6706
    assert len(set(corr.mp68.tolist())) == 68  # one MediaPipe point per markup point
    ict = face_model.mean.numpy()
    lm68 = face_model.landmarks68.numpy()
    # Named points land next to their anatomical vertex (cm on the mean face; measured 0.0-0.62, MediaPipe's
    # "nose tip" 1 sits 0.6 cm below the markup's 30): nose tip, chin, eye and mouth corners, inner lips
    for mp, k in ((1, 30), (152, 8), (33, 36), (263, 45), (133, 39), (362, 42), (61, 48), (291, 54), (13, 62),
                  (14, 66)):
        assert np.linalg.norm(ict[corr.vertex[mp]] - ict[lm68[k]]) < 0.7, (mp, k)
    # upper and lower inner lip stay apart (the ICT mean has its lips closed, so a naive pairing merges them)
    assert corr.mp68[62] != corr.mp68[66]
    again = derive_correspondence(face_model, celeba_landmarks)
    np.testing.assert_array_equal(again.vertex, corr.vertex)
    np.testing.assert_array_equal(again.mp68, corr.mp68)


def synthetic_landmarks(model, corr, n=64, seed=0, noise_px=0.1):
    """Landmarks in photo pixels from known identity, expression and pose, plus noise."""
    g = np.random.default_rng(seed)
    K = 40
    c = g.normal(size=(n, K))
    w = np.zeros((n, model.n_expressions))
    observable = [j for j, name in enumerate(model.expression_names) if not name.startswith("eyeLook")]
    for i in range(n):  # three active expressions per face, the rest neutral
        w[i, g.choice(observable, 3, replace=False)] = g.uniform(0.2, 0.9, 3)
    poses = np.zeros((n, 6))
    poses[:, :3] = g.uniform(-20, 20, (n, 3))
    poses[:, 3] = 1
    R = rotation_matrices(torch.tensor(poses, dtype=torch.float64)).numpy()
    s = g.uniform(3.5, 4.5, n)  # pixels per cm, as CelebA's 89 px photos
    t = np.stack([g.uniform(40, 50, n), g.uniform(-60, -50, n), np.zeros(n)], 1)
    v = corr.vertex
    shape = (model.mean.numpy()[v] + np.einsum("bk,knc->bnc", c, model.basis[:K, v].numpy())
             + np.einsum("be,enc->bnc", w, model.expression_basis[:, v].numpy()))
    X = s[:, None, None] * shape @ R.transpose(0, 2, 1) + t[:, None]
    X = X + g.normal(scale=noise_px, size=X.shape)
    return X * FLIP, c, w, poses, s


def test_fit_recovers_known_faces(face_model, corr):
    """Known answer: 64 faces (40 identity coefficients ~ N(0, 1), three expressions at 0.2-0.9, rotations of
    +-20 degrees, 3.5-4.5 px/cm) with 0.1 px landmark noise. Measured at the defaults: yaw/roll error <= 1 deg,
    pitch 1 deg mean (up to 4.7: pitch trades against identity shape in the slow pose/shape alternation), expression
    weights 0.03 mean error (0.11 on the active ones), narrow face 0.23 cm median, 0.14 px in the image. Face size and
    distance cannot be told apart (identity mode 0 vs scale, up to 11 %), so size is checked in the image."""
    lm, c, w, poses, s = synthetic_landmarks(face_model, corr)
    fit = fit_landmarks(face_model, lm, corr, FitConfig(bias_passes=0))
    angle_err = np.abs(rotation_to_angles(fit.rotation) - poses[:, :3])
    assert angle_err[:, [0, 2]].max() < 1.5 and angle_err[:, 1].mean() < 1.5 and angle_err.max() < 6  # degrees
    assert np.abs(fit.expressions - w).mean() < 0.04
    active = w > 0
    assert np.abs(fit.expressions[active] - w[active]).mean() < 0.15
    assert (fit.expressions[:, [face_model.expression_index(n) for n in FitConfig().unobservable]] < 0.01).all()
    # the whole fitted face (every narrow-face vertex, not only the landmarks) lies near the true one, in cm
    true = face_model.vertices(torch.tensor(c, dtype=torch.float32), "full", torch.tensor(w, dtype=torch.float32))
    got = face_model.vertices(torch.from_numpy(fit.coeffs), "full", torch.from_numpy(fit.expressions))
    err = (true - got)[:, :6706].norm(dim=2)
    assert err.median() < 0.3 and err.mean() < 0.35
    # ... and in the image: every narrow-face vertex projected with the fitted vs the true pose
    R = rotation_matrices(torch.tensor(poses, dtype=torch.float64)).numpy()
    proj_true = s[:, None, None] * true[:, :6706].double().numpy() @ R.transpose(0, 2, 1)
    proj_fit = fit.scale[:, None, None] * got[:, :6706].double().numpy() @ fit.rotation.transpose(0, 2, 1)
    # translations: the true one is recovered from the noiseless landmark centroid difference
    proj_true = proj_true - proj_true.mean(1, keepdims=True)
    proj_fit = proj_fit - proj_fit.mean(1, keepdims=True)
    assert np.median(np.linalg.norm((proj_true - proj_fit)[..., :2], axis=2)) < 0.3  # pixels
    # landmark residual near the noise (0.1 px per axis), far below the failure threshold
    assert np.median(fit.residual_px) < 0.25
    back = fitted_model_points(face_model, corr, fit)
    assert np.median(np.linalg.norm(back[..., :2] - lm[..., :2], axis=2)) < 0.25


def test_fit_rejects_missing_landmarks(face_model, corr):
    lm = np.full((1, 468, 3), np.nan)
    with pytest.raises(ValueError, match="NaN"):
        fit_landmarks(face_model, lm, corr)


def _celeba_folder(tmp_path, idx):
    d = np.load(find_dataset("celeba_10k", "landmarks_mediapipe.npz") / "landmarks_mediapipe.npz")
    root = find_dataset("celeba_10k", "landmarks_mediapipe.npz")
    for i in idx:
        (tmp_path / d["names"][i]).symlink_to(root / "images" / d["names"][i])
    return d


def test_landmarks_command_gives_the_shipped_landmarks(tmp_path):
    """MediaPipe FaceMesh 0.10.21 run by the command on shipped photos reproduces the shipped file."""
    from frankenstein_utils.data import landmarks as L

    try:
        import mediapipe  # noqa: F401
    except ImportError:
        if not L.mediapipe_python().exists():
            pytest.skip("no MediaPipe environment (python -m frankenstein_utils.data.landmarks --make-env)")
    d = _celeba_folder(tmp_path, [0, 1, 9])
    out = L.build_landmarks(tmp_path)
    got = np.load(out)
    assert list(got["names"]) == list(d["names"][[0, 1, 9]]) and got["found"].all()
    np.testing.assert_allclose(got["landmarks"], d["landmarks"][[0, 1, 9]], atol=1e-3)  # pixels
    assert tuple(got["image_size"][0]) == (89, 109)


def test_fit_and_pair_a_photo_folder(tmp_path, face_model):
    """The pairs step on shipped photos, with the shipped landmarks standing in for the detection."""
    from frankenstein_utils.data.landmarks import LANDMARKS_NAME, fit_and_pair
    from frankenstein_utils.facemodel.framing import CELEBA_CROP
    from frankenstein_utils.io.files import load_png

    idx = [0, 1, 2, 3]
    d = _celeba_folder(tmp_path, idx)
    found = np.array([True, True, False, True])
    lm = d["landmarks"][idx].copy()
    lm[~found] = np.nan
    np.savez(tmp_path / LANDMARKS_NAME, names=d["names"][idx], found=found, landmarks=lm)
    summary = fit_and_pair(tmp_path, tmp_path / "pairs", size=64, model=face_model)
    assert summary["n"] == 3 and summary["n_no_landmarks"] == 1 and summary["n_failed"] == 0
    fit = np.load(tmp_path / "pairs" / "fit.npz")
    # CelebA photos are already aligned: the per-photo crops land near the fixed CelebA crop (photo pixels)
    assert np.abs(np.median(fit["boxes"], 0) - np.array(CELEBA_CROP)).max() < 6
    for j, name in enumerate(fit["names"]):
        stem = name.split(".")[0]
        depth = load_png(tmp_path / "pairs" / "depth" / f"{stem}.png")
        photo = load_png(tmp_path / "pairs" / "photo" / f"{stem}.png")
        assert depth.dtype == np.uint16 and depth.shape == (64, 64) and photo.shape == (64, 64, 3)
        # the depth lies over the face: nose tip, eye and mouth corners of the photo fall on the rendered face
        box = fit["boxes"][j]
        pts = (lm[found][j, :, :2] - box[:2]) * 64 / (box[2] - box[0])
        for k in (1, 33, 263, 61, 291, 4):
            assert depth[int(pts[k, 1]), int(pts[k, 0])] > 0, (name, k)
    assert not (tmp_path / "pairs" / "depth" / f"{d['names'][2].split('.')[0]}.png").exists()
    with pytest.raises(ValueError, match="cannot read landmarks"):
        fit_and_pair(tmp_path / "pairs", tmp_path / "x", model=face_model)
