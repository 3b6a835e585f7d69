import math

import numpy as np
import pytest
import torch

from frankenstein_utils.raster_numba import rasterize_depth_numba
from frankenstein_utils.rasterize import (PoseJitter, RenderConfig, apply_pose, normalize_depth, rasterize_depth,
                                          render_depth, render_mesh_depth, rotation_matrices, to_pixels)

# Every analytic test runs on both CPU backends: the compiled loop (the CPU default) and the batched torch path.
BACKENDS = ["numba", "torch"]


def grid_mesh(n, x0, x1, y0, y1, jitter=0.0, seed=0):
    """A triangulated rectangle (n x n cells), interior vertices jittered in-plane; triangles face the viewer."""
    xs, ys = np.meshgrid(np.linspace(x0, x1, n + 1), np.linspace(y0, y1, n + 1))
    v = np.stack([xs.ravel(), ys.ravel()], 1)
    if jitter:
        inner = (xs > x0) & (xs < x1) & (ys > y0) & (ys < y1)
        cell = (x1 - x0) / n
        v[inner.ravel()] += np.random.default_rng(seed).uniform(-jitter, jitter, (inner.sum(), 2)) * cell
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    # y grows downward in the image: (a, d, c) runs counter-clockwise on screen, i.e. facing the viewer.
    f = np.concatenate([np.stack([a, d, c], 1), np.stack([a, c, b], 1)])
    return torch.tensor(v, dtype=torch.float32), torch.tensor(f)


def plane_z(xy):
    return 0.3 * xy[..., 0] - 0.2 * xy[..., 1] + 40.0


def pixel_centres(h, w):
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return torch.stack([xs, ys], -1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,jitter", [(1, 0.0), (40, 0.3), (150, 0.3)])
def test_tilted_plane_is_exact_and_watertight(n, jitter, backend):
    """Big or tiny triangles: the depth equals the plane at every pixel centre and no pixel is missed."""
    H, W = 48, 64
    xy, f = grid_mesh(n, -3.0, W + 3.0, -3.0, H + 3.0, jitter)  # covers (and overhangs) the frame
    v = torch.cat([xy, plane_z(xy)[:, None]], 1)[None]
    for cull in (False, True):
        z, mask = rasterize_depth(v, f, H, W, cull_backfaces=cull, backend=backend)
        assert mask.all()
        torch.testing.assert_close(z[0], plane_z(pixel_centres(H, W)), atol=2e-4, rtol=0)


def uv_sphere(r, cx, cy, n_lat=48, n_lon=96):
    th = np.linspace(0, np.pi, n_lat + 1)
    ph = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    T, P = np.meshgrid(th, ph, indexing="ij")
    v = np.stack([cx + r * np.sin(T) * np.cos(P), cy + r * np.cos(T), r * np.sin(T) * np.sin(P)], -1).reshape(-1, 3)
    idx = np.arange((n_lat + 1) * n_lon).reshape(n_lat + 1, n_lon)
    a, b = idx[:-1], np.roll(idx[:-1], -1, axis=1)
    c, d = np.roll(idx[1:], -1, axis=1), idx[1:]
    # outward-facing: counter-clockwise on screen (y down) where the surface faces the viewer
    f = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    return torch.tensor(v, dtype=torch.float32), torch.tensor(f), np.pi / n_lat, 2 * np.pi / n_lon


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cull", [False, True])
def test_sphere_matches_closed_form(cull, backend):
    H = W = 96
    r, cx, cy = 40.0, 48.0, 47.0
    v, f, dth, dph = uv_sphere(r, cx, cy)
    z, mask = rasterize_depth(v[None], f, H, W, cull_backfaces=cull, backend=backend)
    q = pixel_centres(H, W)
    d2 = (q[..., 0] - cx) ** 2 + (q[..., 1] - cy) ** 2
    inner = d2 < (0.95 * r) ** 2
    assert mask[0][inner].all()
    assert not mask[0][d2 > (r + 1) ** 2].any()
    truth = torch.sqrt((r ** 2 - d2).clamp_min(0))
    # Each triangle is inscribed (corners on the sphere), so it lies inside it by at most the sagitta of its
    # circumcircle, rho <= half the cell diagonal; seen along z that gap grows by 1 / n_z (n_z = truth / r).
    rho = r / 2 * math.hypot(dth, dph)
    sag = r - math.sqrt(r ** 2 - rho ** 2)
    err = (truth - z[0])[inner]
    bound = (sag * r / truth)[inner]
    assert err.min() > -1e-3, "the rendered sphere bulges outside the true one"
    assert (err <= bound + 1e-3).all()
    assert err.max() > 0.2 * sag  # the bound is tight enough to mean something


@pytest.mark.parametrize("backend", BACKENDS)
def test_hidden_surface_stays_hidden(backend):
    H = W = 32
    back_xy, back_f = grid_mesh(4, 0, 32, 0, 32)
    front_xy, front_f = grid_mesh(3, 8, 24, 8, 24)
    back = torch.cat([back_xy, torch.full((len(back_xy), 1), 2.0)], 1)
    front = torch.cat([front_xy, torch.full((len(front_xy), 1), 10.0)], 1)
    for first, second in ((back, front), (front, back)):  # triangle order must not matter
        n1 = len(first)
        fa = back_f if first is back else front_f
        fb = front_f if first is back else back_f
        v = torch.cat([first, second])[None]
        f = torch.cat([fa, fb + n1])
        z, mask = rasterize_depth(v, f, H, W, backend=backend)
        assert mask.all()
        assert (z[0, 8:24, 8:24] == 10).all()
        assert (z[0, :8] == 2).all() and (z[0, 24:] == 2).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_triangles_outside_the_frame_are_clipped(backend):
    H = W = 16
    v = torch.tensor([[[-50.0, -50, 1], [-40, -50, 1], [-50, -40, 1],  # wholly outside
                       [-10, -10, 5], [30, -10, 5], [-10, 30, 5]]])  # partly outside, covers the top-left half
    f = torch.tensor([[0, 2, 1], [3, 5, 4]])
    z, mask = rasterize_depth(v, f, H, W, backend=backend)
    q = pixel_centres(H, W)
    inside = (q[..., 0] + q[..., 1]) <= 20
    assert torch.equal(mask[0], inside)
    assert (z[0][inside] == 5).all() and (z[0][~inside] == 0).all()
    z, mask = rasterize_depth(v[:, :3], f[:1], H, W, backend=backend)
    assert not mask.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_backface_culling_drops_triangles_facing_away(backend):
    v = torch.tensor([[[1.0, 1, 1], [15, 1, 1], [1, 15, 1]]])
    facing = torch.tensor([[0, 2, 1]])  # counter-clockwise on screen (y down)
    away = torch.tensor([[0, 1, 2]])
    assert rasterize_depth(v, facing, 16, 16, cull_backfaces=True, backend=backend)[1].any()
    assert not rasterize_depth(v, away, 16, 16, cull_backfaces=True, backend=backend)[1].any()
    assert rasterize_depth(v, away, 16, 16, cull_backfaces=False, backend=backend)[1].any()


# ---- the compiled loop against the torch path -------------------------------------------------------------------
def _addcmul_is_fused() -> bool:
    """Whether torch.addcmul rounds a * b + c once (an FMA), as the compiled kernel does; it does on CPUs with FMA."""
    a, b, c = torch.randn(3, 4096, generator=torch.Generator().manual_seed(0))
    return torch.equal(torch.addcmul(c, a, b), (c.double() + a.double() * b.double()).float())


ADDCMUL_FUSED = _addcmul_is_fused()


def assert_same_raster(verts, faces, H, W, cull):
    """numba and torch backends: the same mask and the same z within 1e-6, relative (the same float32 arithmetic;
    bit-identical on CPUs where torch.addcmul fuses the multiply-add, as the kernel does)."""
    zn, mn = rasterize_depth(verts, faces, H, W, cull_backfaces=cull, backend="numba")
    zt, mt = rasterize_depth(verts, faces, H, W, cull_backfaces=cull, backend="torch")
    assert zn.dtype == zt.dtype == torch.float32 and mn.dtype == mt.dtype == torch.bool
    assert torch.equal(mn, mt), f"masks differ at {int((mn != mt).sum())} pixels"
    torch.testing.assert_close(zn, zt, atol=1e-6, rtol=1e-6)
    if ADDCMUL_FUSED:
        assert torch.equal(zn, zt), f"z differs at {int((zn != zt).sum())} pixels (by up to {float((zn - zt).abs().max())})"
    return mn


def triangle_soup(n, H, W, seed, snap=False):
    """Random overlapping triangles from sub-pixel to frame-sized, partly outside the frame; ``snap`` puts every
    corner on a pixel centre or a pixel corner so that many edges run exactly through pixel centres."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 1, 2, generator=g) * torch.tensor([W + 8.0, H + 8.0]) - 4
    size = torch.exp(torch.rand(n, 1, 1, generator=g) * 4 - 1.5)  # 0.2 .. 12 px
    xy = centre + (torch.rand(n, 3, 2, generator=g) - 0.5) * size
    if snap:
        xy = torch.round(xy * 2) / 2
    z = torch.rand(n, 3, 1, generator=g) * 10
    return torch.cat([xy, z], -1).reshape(1, -1, 3), torch.arange(3 * n).view(n, 3)


@pytest.mark.parametrize("cull", [False, True])
def test_numba_matches_torch_on_analytic_meshes(cull):
    H, W = 48, 64
    for n, jitter in ((1, 0.0), (40, 0.3), (150, 0.3)):
        xy, f = grid_mesh(n, -3.0, W + 3.0, -3.0, H + 3.0, jitter)
        assert_same_raster(torch.cat([xy, plane_z(xy)[:, None]], 1)[None], f, H, W, cull)
    v, f, _, _ = uv_sphere(40.0, 48.0, 47.0)
    assert_same_raster(v[None], f, 96, 96, cull)
    v = torch.tensor([[[-50.0, -50, 1], [-40, -50, 1], [-50, -40, 1], [-10, -10, 5], [30, -10, 5], [-10, 30, 5]]])
    assert_same_raster(v, torch.tensor([[0, 2, 1], [3, 5, 4]]), 16, 16, cull)
    for seed, snap in ((0, False), (1, True)):
        v, f = triangle_soup(3000, H, W, seed, snap)
        m = assert_same_raster(v, f, H, W, cull)
        assert 0.3 < m.float().mean() < 1  # the soup covers a fair part of the frame, not all of it


def test_numba_matches_torch_on_200_random_faces(face_model):
    g = torch.Generator().manual_seed(7)
    c = face_model.sample_coefficients(200, generator=g)
    poses = PoseJitter(yaw_deg=35, pitch_deg=20, roll_deg=15, scale=0.1, shift_cm=1.5).sample(200, g)
    cfg = RenderConfig()
    px = to_pixels(apply_pose(face_model.vertices(c, cfg.region), poses), cfg)
    faces = face_model.region(cfg.region).faces
    m = assert_same_raster(px, faces, 128, 128, cull=True)
    assert (m.flatten(1).float().mean(1) > 0.2).all()  # real faces, not empty frames
    # without culling the far side of turned heads is drawn too and must lose the depth test the same way
    px64 = to_pixels(apply_pose(face_model.vertices(c[:40], cfg.region), poses[:40]), RenderConfig(resolution=64))
    assert_same_raster(px64, faces, 64, 64, cull=False)


def test_numba_threads_split_faces_without_changing_results(face_model):
    c = face_model.sample_coefficients(5, generator=torch.Generator().manual_seed(8))
    px = to_pixels(face_model.vertices(c, "face"), RenderConfig(resolution=64)).numpy()
    f = face_model.region("face").faces.numpy()
    z1, m1 = rasterize_depth_numba(px, f, 64, 64, cull_backfaces=True, threads=1)
    for threads in (2, 3, 8):  # more threads than faces too
        z, m = rasterize_depth_numba(px, f, 64, 64, cull_backfaces=True, threads=threads)
        assert np.array_equal(z, z1) and np.array_equal(m, m1)
    with pytest.raises(ValueError, match="faces index vertices"):
        rasterize_depth_numba(px, f + 1, 64, 64)


class _RenderOne(torch.utils.data.Dataset):
    def __init__(self, px, faces):
        self.px, self.faces = px, faces

    def __len__(self):
        return len(self.px)

    def __getitem__(self, i):
        return rasterize_depth(self.px[i:i + 1], self.faces, 32, 32, cull_backfaces=True)[0][0]


def test_numba_path_works_in_forked_dataloader_workers(face_model):
    """The kernel runs in DataLoader workers forked after the parent used it (numba's OpenMP ``parallel=True``
    layer aborts there: "fork() called from a process already using GNU OpenMP")."""
    c = face_model.sample_coefficients(4, generator=torch.Generator().manual_seed(9))
    px = to_pixels(face_model.vertices(c, "face"), RenderConfig(resolution=32))
    faces = face_model.region("face").faces
    z, _ = rasterize_depth(px, faces, 32, 32, cull_backfaces=True)  # the parent first, with its threads
    loader = torch.utils.data.DataLoader(_RenderOne(px, faces), batch_size=None, num_workers=2,
                                         multiprocessing_context="fork")
    assert torch.equal(torch.stack(list(loader)), z)


def test_batch_equals_one_by_one(face_model):
    c = face_model.sample_coefficients(11, generator=torch.Generator().manual_seed(2))
    cfg = RenderConfig(resolution=64)
    d, m = render_depth(face_model, c, cfg)
    for i in (0, 5, 10):
        di, mi = render_depth(face_model, c[i:i + 1], cfg)
        assert torch.equal(mi[0], m[i])
        torch.testing.assert_close(di[0], d[i], atol=1e-5, rtol=0)


def test_face_depth_conventions(face_model):
    c = face_model.sample_coefficients(6, generator=torch.Generator().manual_seed(3))
    d, m = render_depth(face_model, c)
    assert d.shape == (6, 128, 128) and m.dtype == torch.bool
    assert (d[~m] == 0).all() and (d[m] >= 0.1).all() and (d[m] <= 1).all()
    # near = bright: the brightest pixel is the nose tip region, in the middle of the face
    for i in range(6):
        r, col = divmod(int(torch.argmax(d[i])), 128)
        assert 50 < r < 90 and 54 < col < 74
    # holes: no background pixel enclosed by face on all four sides
    k = torch.tensor([[[[0.0, 1, 0], [1, 0, 1], [0, 1, 0]]]])
    nb = torch.nn.functional.conv2d(m[:, None].float(), k, padding=1)[:, 0]
    assert int(((~m) & (nb == 4)).sum()) == 0


def test_depth_modes():
    z = torch.tensor([[[0.0, 3.0], [5.0, 9.0]]])
    mask = torch.tensor([[[False, True], [True, True]]])
    fixed = normalize_depth(z, mask, RenderConfig(depth_range_cm=(1.0, 9.0), fg_floor=0.2))
    torch.testing.assert_close(fixed, torch.tensor([[[0.0, 0.2 + 0.8 * 2 / 8], [0.2 + 0.8 * 4 / 8, 1.0]]]))
    mm = normalize_depth(z, mask, RenderConfig(depth_mode="minmax", fg_floor=0.1))
    torch.testing.assert_close(mm, torch.tensor([[[0.0, 0.1], [0.1 + 0.9 * 2 / 6, 1.0]]]))
    rel = normalize_depth(z, mask, RenderConfig(depth_mode="relative", relative_span_cm=4.0, fg_floor=0.0))
    torch.testing.assert_close(rel, torch.tensor([[[0.0, 0.0], [0.0, 1.0]]]))


def test_flatter_face_looks_flatter_in_fixed_mode(face_model):
    verts = face_model.vertices(torch.zeros(1, 15), "face")
    flat = verts * torch.tensor([1.0, 1.0, 0.5])
    faces = face_model.region("face").faces
    d1, m1 = render_mesh_depth(verts, faces, RenderConfig())
    d2, m2 = render_mesh_depth(flat, faces, RenderConfig())
    assert d2.max() < d1.max() - 0.2
    d1, _ = render_mesh_depth(verts, faces, RenderConfig(depth_mode="minmax"))
    d2, _ = render_mesh_depth(flat, faces, RenderConfig(depth_mode="minmax"))
    assert abs(float(d1.max() - d2.max())) < 1e-6  # min-max hides it


def test_fit_framing_centres_and_fills(face_model):
    c = torch.zeros(2, 15)
    c[0, 0], c[1, 0] = -2.5, 2.5  # component 0: face size
    _, fixed = render_depth(face_model, c, RenderConfig())
    assert fixed[1].sum() < 0.75 * fixed[0].sum()  # real size differences stay visible in the fixed window
    cfg = RenderConfig(framing="fit", fit_margin=0.05)
    _, m = render_depth(face_model, c, cfg)
    for i in range(2):
        rows = torch.nonzero(m[i].any(1)).squeeze(1)
        cols = torch.nonzero(m[i].any(0)).squeeze(1)
        h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        assert max(h, w) >= 0.9 * 128 - 2 and max(h, w) <= 0.9 * 128 + 1
        assert abs((rows[0] + rows[-1]) / 2 - 63.5) <= 1.5 and abs((cols[0] + cols[-1]) / 2 - 63.5) <= 1.5


def test_pose():
    p = torch.tensor([[90.0, 0, 0, 1, 0, 0], [0, 0, 0, 2, 1.5, -2]])
    R = rotation_matrices(p)
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-6, rtol=0)
    v = torch.tensor([[[0.0, 0, 1]], [[1.0, 1, 1]]])
    out = apply_pose(v, p)
    torch.testing.assert_close(out[0, 0], torch.tensor([1.0, 0, 0]), atol=1e-6, rtol=0)  # yaw turns the nose to +x
    torch.testing.assert_close(out[1, 0], torch.tensor([3.5, 0, 2]))
    assert apply_pose(v, None) is v
    s = PoseJitter(yaw_deg=10, scale=0.1, shift_cm=2).sample(2000, torch.Generator().manual_seed(0))
    assert s[:, 0].abs().max() <= 10 and s[:, 0].abs().max() > 9.9 and (s[:, 1:3] == 0).all()
    assert ((s[:, 3] - 1).abs() <= 0.1).all() and (s[:, 4:].abs() <= 2).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="framing"):
        RenderConfig(framing="zoom")
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        rasterize_depth(torch.zeros(5, 3), torch.zeros(1, 3, dtype=torch.long), 8, 8)
    with pytest.raises(ValueError, match="unknown RenderConfig keys"):
        RenderConfig.from_dict({"resolutoin": 64})
    with pytest.raises(ValueError, match="backend must be"):
        rasterize_depth(torch.zeros(1, 3, 3), torch.zeros(1, 3, dtype=torch.long), 8, 8, backend="opengl")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(face_model):
    c = face_model.sample_coefficients(8, generator=torch.Generator().manual_seed(4))
    d_cpu, m_cpu = render_depth(face_model, c)
    d_gpu, m_gpu = render_depth(face_model, c.cuda())
    assert (m_gpu.cpu() != m_cpu).sum() <= 8  # pixel centres exactly on an edge may differ by round-off
    both = m_gpu.cpu() & m_cpu
    torch.testing.assert_close(d_gpu.cpu()[both], d_cpu[both], atol=1e-4, rtol=0)
