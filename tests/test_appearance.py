"""The appearance model: its pieces against known answers, and a small build from the real photos."""
import numpy as np
import pytest
import torch

from frankenstein_utils.data import appearance_build as AB
from frankenstein_utils.facemodel import appearance as A


def test_missing_pca_recovers_missing_entries_of_low_rank_data():
    rng = np.random.default_rng(0)
    B, D, r = 300, 60, 3
    X = rng.normal(size=(B, r)) @ rng.normal(size=(r, D)) + 5.0
    M = rng.random((B, D)) > 0.3
    start = np.where(M, X, X[M].mean())  # a poor first guess: the global mean
    mu, basis, S, U, filled = AB.missing_pca(start, M, k=r, rounds=30)
    err_start = np.abs(start - X)[~M].mean()
    err = np.abs(filled - X)[~M].mean()
    assert err < 0.02 * err_start  # imputation recovers what was missing
    # the basis spans the true row space: projecting X onto it leaves nothing
    resid = (X - mu) - (X - mu) @ basis.T @ basis
    assert np.abs(resid).max() < 1e-2 * np.abs(X - mu).max()
    # without imputation rounds the hidden entries stay at the poor guess
    assert np.abs(AB.missing_pca(start, M, k=r, rounds=0)[4] - X)[~M].mean() == pytest.approx(err_start)


def test_projection_uses_only_visible_vertices():
    rng = np.random.default_rng(1)
    V, K = 400, 4
    basis = np.linalg.qr(rng.normal(size=(V * 3, K)))[0].T.reshape(K, V, 3)
    sd = np.array([4.0, 3.0, 2.0, 1.0])
    mean = rng.random((V, 3))
    a = rng.normal(size=(5, K))
    Y = mean + np.einsum("bk,kvc->bvc", a * sd, basis)
    M = rng.random((5, V)) > 0.5
    Y_hidden_garbage = np.where(M[..., None], Y, 99.0)  # what a hidden vertex holds must not matter
    got = AB.project_observed(Y_hidden_garbage, M, mean, basis, sd, noise_var=1e-6)
    np.testing.assert_allclose(got, a, atol=1e-3)


def test_harmonic_fill_interpolates_between_observed_vertices():
    # a strip of triangles along x: vertices 0..9 on top, 10..19 below; observed only at both ends
    n = 10
    faces = np.array([[i, i + 1, n + i] for i in range(n - 1)] + [[i + 1, n + i + 1, n + i] for i in range(n - 1)])
    A_ = A.neighbour_matrix(faces, 2 * n)
    X = np.zeros((1, 2 * n, 3), np.float32)
    M = np.zeros((1, 2 * n), bool)
    for v in (0, n):
        X[0, v], M[0, v] = 0.0, True
    for v in (n - 1, 2 * n - 1):
        X[0, v], M[0, v] = 1.0, True
    Y = AB.harmonic_fill(X, M, A_, iterations=2000)
    assert np.all(np.diff(Y[0, :n, 0]) > 0)  # monotone from 0 to 1
    np.testing.assert_allclose(Y[0, M[0]], X[0, M[0]])  # observed entries kept


def test_conditional_gaussian_recovers_a_known_regression():
    rng = np.random.default_rng(2)
    n, S, K = 20000, 3, 4
    L = np.array([[0.5, 0, 0], [0.2, 0.8, 0], [0.0, 0.3, 1.2]])
    s = rng.normal(size=(n, S)) @ L.T + np.array([0.1, -0.2, 0.3])
    W = rng.normal(size=(K, S))
    a = s @ W.T + 0.5 * rng.normal(size=(n, K))
    cond, report = AB.conditional_gaussian(s[:15000], a[:15000], s[15000:], a[15000:])
    np.testing.assert_allclose(cond["regression"], W, atol=0.05)
    np.testing.assert_allclose(cond["shape_chol"] @ cond["shape_chol"].T, L @ L.T, atol=0.03)
    explained = np.trace(W @ (L @ L.T) @ W.T)
    expect = explained / (explained + K * 0.25)
    assert report["r2_val"] == pytest.approx(expect, abs=0.02)
    # the model's from-shape draw: mean follows the regression of the whitened shape, spread the residual's
    app = A.AppearanceModel(np.zeros((2, 3)), np.zeros((K, 2, 3)), np.ones(K), np.arange(2), A.AppearanceConfig(),
                            cond)
    z = torch.tensor([[1.0, -0.5, 2.0]])
    g = torch.Generator().manual_seed(0)
    draws = app.sample(4000, "from-shape", shape=z.expand(4000, -1), generator=g).double().numpy()
    s_fit = cond["shape_mean"] + z.double().numpy() @ cond["shape_chol"].T
    np.testing.assert_allclose(draws.mean(0), (cond["app_mean"] + (s_fit - cond["shape_mean"]) @ W.T)[0], atol=0.06)
    np.testing.assert_allclose(draws.std(0), 0.5, atol=0.03)
    free = app.sample(4000, "free", generator=g).numpy()
    np.testing.assert_allclose(free.std(0), 1.0, atol=0.05)


def test_ita_known_answers():
    assert A.individual_typology_angle(np.array([1.0, 1.0, 1.0])) == pytest.approx(90.0, abs=0.1)  # white: L=100, b=0
    from skimage.color import lab2rgb

    for L, b, ita in ((50.0, 20.0, 0.0), (70.0, 20.0, 45.0), (30.0, 20.0, -45.0)):
        rgb = lab2rgb(np.array([L, 0.0, b]))
        assert A.individual_typology_angle(rgb) == pytest.approx(ita, abs=0.5)
    shares = A.ita_shares(np.array([60.0, 45.0, 30.0, 20.0, 0.0, -40.0]))
    assert all(v == pytest.approx(1 / 6) for v in shares.values())


def test_sampling_reads_the_photo_at_each_visible_vertex_and_hides_the_far_side(face_model):
    from frankenstein_utils.render.rasterize import RenderConfig, apply_pose, to_pixels

    region = face_model.region("chin")
    verts = face_model.vertices(torch.zeros(2, 15), "chin")
    S = 64
    window = RenderConfig().window_cm
    yy, xx = torch.meshgrid(torch.arange(S) + 0.5, torch.arange(S) + 0.5, indexing="ij")
    photo = torch.stack([xx / S, yy / S, torch.full_like(xx, 0.5)])[None].expand(2, -1, -1, -1).contiguous()
    poses = torch.tensor([[0.0, 0, 0, 1, 0, 0], [60.0, 0, 0, 1, 0, 0]])
    colours, visible, normals = AB.sample_vertex_colours(verts, region.faces, poses, photo, window)
    px = to_pixels(apply_pose(verts, poses), RenderConfig(resolution=S, window_cm=window))
    v = visible[0]
    # a linear image is read exactly by bilinear sampling: colour = pixel position / S
    np.testing.assert_allclose(colours[0, v, 0], (px[0, v, 0] / S).clamp(0.5 / S, 1 - 0.5 / S), atol=1e-4)
    np.testing.assert_allclose(colours[0, v, 1], (px[0, v, 1] / S).clamp(0.5 / S, 1 - 0.5 / S), atol=1e-4)
    # frontal: left and right halves equally visible; turned 60 degrees, one side far less than the other
    x0 = verts[0, :, 0]
    assert abs(v[x0 > 1].float().mean() - v[x0 < -1].float().mean()) < 0.1
    v1 = visible[1]
    assert min(v1[x0 > 1].float().mean(), v1[x0 < -1].float().mean()) < 0.5 * max(
        v1[x0 > 1].float().mean(), v1[x0 < -1].float().mean())
    assert 0.2 < v.float().mean() < 0.8


@pytest.fixture(scope="module")
def small_build(tmp_path_factory, face_model):
    from frankenstein_utils.data.pairs import PairedConfig, PairedFaceDataset

    paired = PairedFaceDataset("all", PairedConfig(limit=300, val_fraction=0.1),
                               cache_dir=tmp_path_factory.mktemp("pairs"), model=face_model, progress=False)
    cfg = A.AppearanceConfig(max_components=20, candidates=(2, 5, 10, 20), rounds=1, fill_iterations=10)
    return AB.build_appearance(cfg, paired=paired, model=face_model, progress=False)


def test_small_build_from_the_photos_saves_loads_and_reports(tmp_path, small_build):
    app = small_build
    r = app.report
    psnr = [r["val_psnr_visible_db"][str(k)] for k in (2, 5, 10, 20)]
    assert psnr[-1] > psnr[0] > r["val_psnr_mean_appearance_db"]  # components explain held-out photos
    assert app.n_components in (2, 5, 10, 20)
    assert 0.15 < r["visible_share_per_photo"] < 0.6
    ev = [r["variance_explained_observed"][str(k)] for k in (2, 5, 10, 20)]
    assert all(b > a for a, b in zip(ev, ev[1:])) and 0 < ev[-1] < 1
    path = tmp_path / "app.safetensors"
    app.save(path, dtype=torch.float16)
    back = A.AppearanceModel.load(path)
    assert back.n_components == app.n_components and back.render_config().region == "chin"
    c = torch.randn(3, app.n_components)
    np.testing.assert_allclose(back.colours(c), app.colours(c), atol=2e-2)  # float16
    assert back.background.shape == (3, 64, 64)
    assert back.photo_coeffs.shape == (300, app.n_components)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="bad.safetensors"):
        A.AppearanceModel.load(tmp_path / "bad.safetensors")


def test_an_eight_bit_copy_keeps_every_value_within_half_a_step_in_half_the_room(tmp_path, small_build):
    app = small_build
    half, eight = tmp_path / "half.safetensors", tmp_path / "eight.safetensors"
    app.save(half, dtype=torch.float16, with_photos=False)
    app.save(eight, dtype=torch.float16, with_photos=False, eight_bit=True)
    back = A.AppearanceModel.load(eight)
    # one offset and step per component: each basis entry within half its component's step
    step = (app.basis.amax(dim=(1, 2)) - app.basis.amin(dim=(1, 2))) / 255
    err = (back.basis - app.basis).abs().amax(dim=(1, 2))
    assert (err <= step / 2 * 1.001).all() and (err > step / 10).all()  # rounded, not stored exactly
    assert step.max() / step.min() > 1.5  # the components' ranges differ: one step for all would be coarser
    e0, e1 = (torch.as_tensor(np.asarray(t, np.float32)) for t in (app.face_table[1], back.face_table[1]))
    col_step = (e0.amax(0) - e0.amin(0)) / 255
    assert ((e1 - e0).abs() <= col_step / 2 * 1.001 + 1e-7).all()
    assert torch.equal(back.region_vertices, app.region_vertices) and back.region_vertices.dtype == torch.int64
    np.testing.assert_allclose(back.face_table[0], app.face_table[0], rtol=1e-3, atol=1e-2)  # poses: float16
    # the basis is most of the file: 1 byte per entry instead of 2
    assert eight.stat().st_size < 0.6 * half.stat().st_size
    a = torch.randn(200, app.n_components, generator=torch.Generator().manual_seed(0))
    bound = (a.abs() * app.sd * step / 2).sum(1, keepdim=True)[:, :, None] + 1e-3  # + the float16 mean
    assert ((back.colours(a) - app.colours(a)).abs() <= bound).all()
    # a damaged 8-bit entry: one line naming the file
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    t = load_file(eight)
    with safe_open(str(eight), framework="pt") as f:
        meta = f.metadata()
    del t["basis_u8_step"]
    save_file(t, tmp_path / "broken.safetensors", metadata=meta)
    with pytest.raises(ValueError, match="broken.safetensors.*basis"):
        A.AppearanceModel.load(tmp_path / "broken.safetensors")
    save_file(load_file(eight), tmp_path / "garbled.safetensors", metadata={**meta, "eight_bit": "[basis"})
    with pytest.raises(ValueError, match="garbled.safetensors.*8-bit"):
        A.AppearanceModel.load(tmp_path / "garbled.safetensors")


def test_ship_writes_the_eight_bit_copy_with_a_table_subset_within_the_budget_or_refuses(tmp_path, small_build,
                                                                                       monkeypatch):
    src = tmp_path / "build.safetensors"
    small_build.save(src)
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "other.bin").write_bytes(b"x" * 50_000)
    for name, file in (("SHIPPED", "appearance.safetensors"), ("SHIPPED_CARD", "appearance_MODEL_CARD.md"),
                       ("SHIPPED_SUM", "appearance.sha256")):
        monkeypatch.setattr(AB, name, weights / file)
    monkeypatch.setattr(AB, "SHIP_BUDGET_BYTES", 10_000_000)
    out = AB.ship(src, eight_bit=True, table_rows=100)
    back = A.AppearanceModel.load(weights / "appearance.safetensors")
    assert out["components"] == back.n_components == small_build.n_components  # all fit in 10 MB
    assert len(back.face_table[0]) == 100 and len(small_build.face_table[0]) > 100
    # the subset is made of the build's rows (poses in float16)
    full = np.asarray(small_build.face_table[0], np.float32)
    shipped = np.asarray(back.face_table[0])
    close = np.abs(shipped[:, None] - full[None]) <= 1e-3 * np.abs(full[None]) + 1e-3  # float16 rounding
    assert close.all(-1).any(1).all()
    card = (weights / "appearance_MODEL_CARD.md").read_text()
    assert "8 bits" in card and "--eight-bit --table-rows 100" in card and "a seeded random subset" in card
    assert (weights / "appearance.sha256").read_text().split()[0] == A.sha256_of(weights / "appearance.safetensors")
    # a budget the copy cannot fit: one line, and the shipped file is left as it was
    before = (weights / "appearance.safetensors").read_bytes()
    monkeypatch.setattr(AB, "SHIP_BUDGET_BYTES", 60_000 + 10_000 + 1_000)
    with pytest.raises(ValueError, match="budget"):
        AB.ship(src, max_components=small_build.n_components, eight_bit=True)
    assert (weights / "appearance.safetensors").read_bytes() == before
