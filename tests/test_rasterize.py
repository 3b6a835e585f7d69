import math

import numpy as np
import pytest
import torch

from frankenstein_utils.render.raster_numba import (interpolate_numba, rasterize_depth_numba, rasterize_numba,
                                                    vertex_normals_numba)
from frankenstein_utils.render.rasterize import (DEFAULT_WINDOW_CM, Fragments, PoseJitter, RenderConfig, apply_pose,
                                                 interpolate, normalize_depth, rasterize, rasterize_depth, render_depth,
                                                 render_mesh_buffers, render_mesh_depth, rotation_matrices, to_pixels,
                                                 vertex_normals)

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
    """numba and torch backends: the same fragments (winning triangle, mask, and z and weights within 1e-6,
    relative; all bit-identical on CPUs where torch.addcmul fuses the multiply-add, as the kernel does), and
    ``rasterize_depth`` is their z-buffer and mask."""
    fn = rasterize(verts, faces, H, W, cull_backfaces=cull, backend="numba")
    ft = rasterize(verts, faces, H, W, cull_backfaces=cull, backend="torch")
    for f in (fn, ft):
        assert f.triangle.dtype == torch.int64 and f.bary.dtype == f.zbuf.dtype == torch.float32
        assert f.mask.dtype == torch.bool and f.bary.shape == (*f.mask.shape, 3)
        assert torch.equal(f.mask, f.triangle >= 0)
        assert (f.bary[~f.mask] == 0).all() and (f.zbuf[~f.mask] == 0).all()
    assert torch.equal(fn.mask, ft.mask), f"masks differ at {int((fn.mask != ft.mask).sum())} pixels"
    torch.testing.assert_close(fn.zbuf, ft.zbuf, atol=1e-6, rtol=1e-6)
    if ADDCMUL_FUSED:
        for name in Fragments._fields:
            a, b = getattr(fn, name), getattr(ft, name)
            assert torch.equal(a, b), f"{name} differs in {int((a != b).sum())} values"
    else:
        assert torch.equal(fn.triangle, ft.triangle)
        torch.testing.assert_close(fn.bary, ft.bary, atol=1e-5, rtol=0)
    z, m = rasterize_depth(verts, faces, H, W, cull_backfaces=cull)  # the same wrapper for either backend
    assert torch.equal(z, fn.zbuf) and torch.equal(m, fn.mask)
    return fn.mask


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
    v = face_model.vertices(c, "face")
    px = to_pixels(v, RenderConfig(resolution=64)).numpy()
    f = face_model.region("face").faces.numpy()
    frags1 = rasterize_numba(px, f, 64, 64, cull_backfaces=True, threads=1)
    normals1 = vertex_normals_numba(v.numpy(), f, threads=1)
    assert (frags1[0] >= 0).any()
    for threads in (2, 3, 8):  # more threads than faces too
        frags = rasterize_numba(px, f, 64, 64, cull_backfaces=True, threads=threads)
        assert all(np.array_equal(a, b) for a, b in zip(frags, frags1))
        assert np.array_equal(vertex_normals_numba(v.numpy(), f, threads=threads), normals1)
        z, m = rasterize_depth_numba(px, f, 64, 64, cull_backfaces=True, threads=threads)
        assert np.array_equal(z, frags1[2]) and np.array_equal(m, frags1[3])
    with pytest.raises(ValueError, match="faces index vertices"):
        rasterize_numba(px, f + 1, 64, 64)
    with pytest.raises(ValueError, match="faces index vertices"):
        vertex_normals_numba(v.numpy(), f + 1)


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


# ---- fragments, interpolation and buffers --------------------------------------------------------------------------
def _frame_corner_barycentrics(corners_xy, H, W):
    """Barycentric weights (H, W, 3) of the pixel centres in the triangle ``corners_xy`` (3, 2), in double."""
    q = pixel_centres(H, W).double()
    a, b, c = corners_xy.double()
    area = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
    w0 = ((b[0] - q[..., 0]) * (c[1] - q[..., 1]) - (b[1] - q[..., 1]) * (c[0] - q[..., 0])) / area
    w1 = ((c[0] - q[..., 0]) * (a[1] - q[..., 1]) - (c[1] - q[..., 1]) * (a[0] - q[..., 0])) / area
    return torch.stack([w0, w1, 1 - w0 - w1], -1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_in_z_go_to_the_smallest_triangle_index(backend):
    """Coincident triangles at the same z: the smaller index wins everywhere, and its weights are returned (the
    copies list their corners in other orders, so a loser's weights would come out permuted)."""
    H = W = 16
    tri = torch.tensor([[1.0, 1, 5], [14.2, 2, 5], [2, 14.6, 5]])
    v = torch.cat([tri, tri[[1, 2, 0]], tri])[None]  # three copies of the same corners
    big = [0, 2, 1]  # counter-clockwise on screen: facing
    copies = [[3 + 2, 3 + 1, 3 + 0], [6 + 1, 6 + 0, 6 + 2]]  # the same triangle, corners rotated
    for order in ([big] + copies, copies + [big], [copies[1], big, copies[0]]):
        f = torch.tensor(order)
        frag = rasterize(v, f, H, W, cull_backfaces=True, backend=backend)
        assert frag.mask.sum() > 40
        assert (frag.triangle[frag.mask] == 0).all(), "a tie must go to the smallest index"
        truth = _frame_corner_barycentrics(v[0, f[0], :2], H, W)
        torch.testing.assert_close(frag.bary[0][frag.mask[0]], truth[frag.mask[0]].float(), atol=2e-5, rtol=0)
    # a smaller triangle inside a big one, both at z = 5: where both cover, the smaller index wins
    small = torch.tensor([[5.0, 5, 5], [10, 5, 5], [5, 10, 5]])
    v = torch.cat([tri, small])[None]
    in_small = (_frame_corner_barycentrics(small[[0, 2, 1], :2], H, W) > 1e-3).all(-1)
    assert in_small.sum() >= 6
    frag = rasterize(v, torch.tensor([[0, 2, 1], [3, 5, 4]]), H, W, cull_backfaces=True, backend=backend)
    assert (frag.triangle[frag.mask] == 0).all()  # the big one, listed first, everywhere
    frag = rasterize(v, torch.tensor([[3, 5, 4], [0, 2, 1]]), H, W, cull_backfaces=True, backend=backend)
    assert (frag.triangle[0][in_small] == 0).all()  # the small one, listed first, where it covers
    assert (frag.triangle[0][frag.mask[0] & ~in_small] == 1).sum() > 40


def test_ties_between_backends_on_a_layered_soup():
    """Many exact ties (flat triangles on 3 depth levels, corners on pixel centres and corners): both backends pick
    the same winner and weights (compared inside ``assert_same_raster``)."""
    H, W = 48, 64
    v, f = triangle_soup(3000, H, W, seed=5, snap=True)
    v[..., 2] = v[..., 2].reshape(-1, 3)[:, :1].repeat(1, 3).reshape(1, -1).floor() % 3  # one level per triangle
    for cull in (False, True):
        m = assert_same_raster(v, f, H, W, cull)
        assert 0.3 < m.float().mean() < 1
    frag = rasterize(v, f, H, W, backend="numba")
    # the winner's level is the top level among the triangles whose (eps-widened) inside test passes
    assert (frag.zbuf[frag.mask] == v[0, f[frag.triangle[frag.mask], 0], 2]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_interpolated_z_reproduces_the_zbuffer(face_model, backend):
    c = face_model.sample_coefficients(6, generator=torch.Generator().manual_seed(11))
    poses = PoseJitter(yaw_deg=30, pitch_deg=15, roll_deg=10).sample(6, torch.Generator().manual_seed(12))
    px = to_pixels(apply_pose(face_model.vertices(c, "face"), poses), RenderConfig())
    faces = face_model.region("face").faces
    for cull in (True, False):
        frag = rasterize(px, faces, 128, 128, cull_backfaces=cull, backend=backend)
        z = interpolate(frag, faces, px[..., 2:])
        assert z.shape == (6, 128, 128, 1) and frag.mask.float().mean() > 0.2
        torch.testing.assert_close(z[..., 0], frag.zbuf, atol=1e-4, rtol=0)
        assert (z[~frag.mask] == 0).all()
        # the weights are barycentric: they sum to 1, and lie in [0, 1] up to the edge tolerance
        s = frag.bary.sum(-1)
        torch.testing.assert_close(s[frag.mask], torch.ones_like(s[frag.mask]), atol=1e-5, rtol=0)
        assert frag.bary[frag.mask].min() >= -1e-4 and frag.bary[frag.mask].max() <= 1 + 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_colour_fills_the_mask(face_model, backend):
    px = to_pixels(face_model.vertices(torch.zeros(2, 15), "face"), RenderConfig(resolution=64))
    faces = face_model.region("face").faces
    colour = torch.tensor([0.2, 0.5, 0.9])
    frag = rasterize(px, faces, 64, 64, cull_backfaces=True, backend=backend)
    for attr in (colour.expand(px.shape[1], 3), colour.expand(2, px.shape[1], 3)):  # shared and per face
        out = interpolate(frag, faces, attr)
        assert out.shape == (2, 64, 64, 3)
        torch.testing.assert_close(out[frag.mask], colour.expand(int(frag.mask.sum()), 3), atol=1e-6, rtol=0)
        assert (out[~frag.mask] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_attribute_is_exact_at_pixel_centres(backend):
    """An attribute linear in the image plane interpolates to its value at each pixel centre (i + 0.5, j + 0.5),
    whatever the triangles: barycentric exactness, corner order and pixel-centre convention."""
    H, W = 40, 56
    for n, jitter in ((1, 0.0), (30, 0.35), (90, 0.35)):  # big triangles to sub-pixel ones
        xy, f = grid_mesh(n, -2.0, W + 2.0, -2.0, H + 2.0, jitter, seed=n)
        v = torch.cat([xy, plane_z(xy)[:, None]], 1)[None]
        frag = rasterize(v, f, H, W, backend=backend)
        assert frag.mask.all()
        a, b = 0.7, -1.3
        attr = torch.stack([a * xy[:, 0] + b * xy[:, 1], xy[:, 0], xy[:, 1]], 1)
        out = interpolate(frag, f, attr)[0]
        q = pixel_centres(H, W)
        torch.testing.assert_close(out[..., 0], a * q[..., 0] + b * q[..., 1], atol=2e-4, rtol=0)
        torch.testing.assert_close(out[..., 1:], q, atol=2e-4, rtol=0)


def test_interpolate_is_differentiable_in_the_attributes():
    H = W = 8
    xy, f = grid_mesh(3, 0.0, W, 0.0, H, 0.2)
    v = torch.cat([xy, torch.ones(len(xy), 1)], 1)[None]
    frag = rasterize(v, f, H, W)
    attr = torch.randn(len(xy), 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: interpolate(frag, f, a), (attr,))
    # d(sum of the image)/d(vertex value) = the sum of that vertex's weights over the pixels
    interpolate(frag, f, attr).sum().backward()
    per_vertex = torch.zeros(len(xy), dtype=torch.float64).index_add_(
        0, f[frag.triangle[frag.mask]].reshape(-1), frag.bary[frag.mask].reshape(-1).double())
    torch.testing.assert_close(attr.grad, per_vertex[:, None].expand(-1, 2))


def _posed_faces(face_model, n, res, seed):
    """``n`` random faces in random poses: posed vertices (cm), faces, fragments at ``res`` px, a generator."""
    g = torch.Generator().manual_seed(seed)
    c = face_model.sample_coefficients(n, generator=g)
    poses = PoseJitter(yaw_deg=35, pitch_deg=20, roll_deg=15, scale=0.1, shift_cm=1.5).sample(n, g)
    cfg = RenderConfig(resolution=res)
    posed = apply_pose(face_model.vertices(c, cfg.region), poses)
    faces = face_model.region(cfg.region).faces
    return posed, faces, rasterize(to_pixels(posed, cfg), faces, res, res, cull_backfaces=True), g


def _unit_rows(n):
    """The normal buffer's renormalization as documented: (x x + y y) + z z, its square root in float64 rounded
    once to float32, at least 1e-12."""
    x, y, z = n.unbind(-1)
    return n / torch.sqrt((x * x + y * y + z * z).double()).float().clamp_min(1e-12)[..., None]


def test_compiled_interpolation_is_the_torch_one_bit_for_bit(face_model):
    """From the same fragments of real posed faces, the compiled pass and the torch path give the same bits for
    per-face colours (B, N, 3), shared attributes (float32 and float64) and the normal buffer; and both are
    w0 a0 + w1 a1 + w2 a2 rounded product by product and sum by sum (numpy's float32 arithmetic as the oracle: no
    fused multiply-add on either side)."""
    posed, faces, frag, g = _posed_faces(face_model, 5, 128, seed=21)
    B, N = posed.shape[:2]
    assert frag.mask.float().mean() > 0.2
    colours = torch.rand(B, N, 3, generator=g)
    shared = torch.randn(N, 2, generator=g) * 10
    for attr in (colours, shared, shared.double(), posed[..., 2:] * 7.3):
        a = interpolate(frag, faces, attr, backend="numba")
        b = interpolate(frag, faces, attr, backend="torch")
        assert a.dtype == b.dtype == attr.dtype and a.shape == (B, 128, 128, attr.shape[-1])
        assert torch.equal(a, b), f"{int((a != b).sum())} values differ"
        assert (a[~frag.mask] == 0).all()
        assert torch.equal(interpolate(frag, faces, attr), a)  # auto: compiled for CPU tensors without gradient
    m = frag.mask
    corners = faces[frag.triangle[m]].numpy()  # (P, 3)
    rows = colours.numpy()[torch.nonzero(m)[:, 0].numpy()[:, None], corners]  # (P, 3 corners, 3)
    w = frag.bary[m].numpy()
    oracle = w[:, :1] * rows[:, 0] + w[:, 1:2] * rows[:, 1] + w[:, 2:] * rows[:, 2]
    assert oracle.dtype == np.float32 and np.array_equal(interpolate(frag, faces, colours)[m].numpy(), oracle)
    # the normal buffer: only the vertex normals of the corners seen, from the triangles around each, in one pass
    (c_numba,), n_numba = interpolate_numba(frag.triangle.numpy(), frag.bary.numpy(), faces.numpy(),
                                            [colours.numpy()], posed.numpy())
    assert np.array_equal(c_numba, interpolate(frag, faces, colours, backend="torch").numpy())
    n_torch = _unit_rows(interpolate(frag, faces, vertex_normals(posed, faces, backend="torch"), backend="torch"))
    assert torch.equal(torch.from_numpy(n_numba), n_torch), f"{int((torch.from_numpy(n_numba) != n_torch).sum())}"
    _, n_only = interpolate_numba(frag.triangle.numpy(), frag.bary.numpy(), faces.numpy(), [], posed.numpy())
    assert np.array_equal(n_only, n_numba)
    # threads split the faces without changing a bit; several attributes of mixed dtypes in one call
    outs, n3 = interpolate_numba(frag.triangle.numpy(), frag.bary.numpy(), faces.numpy(),
                                 [shared.double().numpy(), colours.numpy()], posed.numpy(), threads=3)
    assert np.array_equal(n3, n_numba) and np.array_equal(outs[1], c_numba)
    assert outs[0].dtype == np.float64 and np.array_equal(outs[0], interpolate(frag, faces, shared.double()).numpy())
    with pytest.raises(ValueError, match="faces index vertices"):
        interpolate_numba(frag.triangle.numpy(), frag.bary.numpy(), faces.numpy() + 1, [colours.numpy()])
    with pytest.raises(ValueError, match="attributes must be"):
        interpolate_numba(frag.triangle.numpy(), frag.bary.numpy(), faces.numpy(), [colours[:2].numpy()])
    with pytest.raises(ValueError, match="beyond faces"):  # fragments of other faces: an error, not a wild read
        interpolate_numba(frag.triangle.numpy(), frag.bary.numpy(), faces[:100].numpy(), [colours.numpy()])


@pytest.mark.skipif(not ADDCMUL_FUSED, reason="the two rasterizers round alike only where addcmul fuses")
def test_render_mesh_buffers_same_bits_on_both_backends(face_model):
    g = torch.Generator().manual_seed(22)
    c = face_model.sample_coefficients(4, generator=g)
    verts = face_model.vertices(c, "face")
    faces = face_model.region("face").faces
    poses = PoseJitter(yaw_deg=35, pitch_deg=20, roll_deg=15).sample(4, g)
    attrs = {"colour": torch.rand(4, verts.shape[1], 3, generator=g), "shade": torch.rand(verts.shape[1], 1)}
    for res in (64, 128):
        cfg = RenderConfig(resolution=res)
        a = render_mesh_buffers(verts, faces, cfg, poses, attributes=attrs, backend="numba")
        b = render_mesh_buffers(verts, faces, cfg, poses, attributes=attrs, backend="torch")
        auto = render_mesh_buffers(verts, faces, cfg, poses, attributes=attrs)
        for key in ("depth", "mask", "colour", "shade", "normal"):
            assert torch.equal(a[key], b[key]) and torch.equal(a[key], auto[key]), key
        only = render_mesh_buffers(verts, faces, cfg, poses, normals=True)
        assert torch.equal(only["normal"], a["normal"])
    # a gradient wanted: the torch path, the same bits, and the gradient flows
    colour = attrs["colour"].clone().requires_grad_()
    out = render_mesh_buffers(verts, faces, cfg, poses, attributes={"colour": colour, "shade": attrs["shade"]})
    assert out["colour"].requires_grad and torch.equal(out["colour"].detach(), a["colour"])
    assert torch.equal(out["normal"], a["normal"])
    out["colour"].sum().backward()
    assert colour.grad is not None and colour.grad.abs().sum() > 0


def test_vertex_normals_are_the_same_on_both_paths(face_model):
    from frankenstein_utils.facemodel.model import vertex_normals as one_mesh

    c = face_model.sample_coefficients(4, generator=torch.Generator().manual_seed(13))
    poses = PoseJitter(yaw_deg=30, pitch_deg=20).sample(4, torch.Generator().manual_seed(14))
    v = apply_pose(face_model.vertices(c, "face"), poses)
    faces = face_model.region("face").faces
    n_numba, n_torch = vertex_normals(v, faces, backend="numba"), vertex_normals(v, faces, backend="torch")
    assert torch.equal(n_numba, n_torch)  # same arithmetic in the same order
    torch.testing.assert_close(n_numba[2], one_mesh(v[2], faces), atol=1e-6, rtol=0)
    assert vertex_normals(v.requires_grad_(), faces).requires_grad  # auto: torch where a gradient is wanted


def _sphere_cm(r, cy):
    """A uv sphere in model cm (y up) centred at (0, cy, 0), its triangles facing the viewer where it does."""
    v, f, _, _ = uv_sphere(r, 0.0, 0.0)
    return v * torch.tensor([1.0, -1.0, 1.0]) + torch.tensor([0.0, cy, 0.0]), f  # y up: mirrored, still outward


def test_normal_buffer_of_a_sphere_is_radial():
    """Known answer: on a sphere of radius R about c, the unit normal at the pixel centre's (x, y) is
    (x - cx, y - cy, sqrt(R^2 - d^2)) / R; posed (scaled and shifted) too."""
    r, cy, res = 8.0, -1.3, 64
    v, f = _sphere_cm(r, cy)
    x0, x1, y0, y1 = DEFAULT_WINDOW_CM
    s = res / (x1 - x0)
    q = pixel_centres(res, res)
    for pose in (None, torch.tensor([[0.0, 0, 0, 1.2, 1.5, -0.5]])):
        scale, sx, sy = (1.0, 0.0, 0.0) if pose is None else (1.2, 1.5, -0.5)
        R = r * scale
        out = render_mesh_buffers(v[None], f, RenderConfig(resolution=res), poses=pose, normals=True)
        n, m = out["normal"][0], out["mask"][0]
        dx, dy = x0 + q[..., 0] / s - sx, y1 - q[..., 1] / s - (cy * scale + sy)
        d2 = dx ** 2 + dy ** 2
        truth = torch.stack([dx, dy, torch.sqrt((R * R - d2).clamp_min(0))], -1) / R
        inner = d2 < (0.9 * R) ** 2
        assert m[inner].all() and inner.sum() > 500
        err = (n - truth).norm(dim=-1)[inner]
        assert err.max() < 5e-3, float(err.max())
        torch.testing.assert_close(n[m].norm(dim=-1), torch.ones(int(m.sum())), atol=1e-5, rtol=0)
        assert (n[~m] == 0).all()


def test_render_mesh_buffers(face_model):
    g = torch.Generator().manual_seed(15)
    c = face_model.sample_coefficients(3, generator=g)
    verts = face_model.vertices(c, "face")
    faces = face_model.region("face").faces
    cfg = RenderConfig(resolution=64)
    poses = torch.tensor([[0.0, 0, 0, 1, 0, 0], [35.0, 0, 0, 1, 0, 0], [-35.0, 0, 0, 1, 0, 0]])
    colours = torch.rand(3, verts.shape[1], 3, generator=g)
    out = render_mesh_buffers(verts, faces, cfg, poses, attributes={"colour": colours})
    assert set(out) == {"depth", "mask", "fragments", "colour", "normal"}
    d, m = render_mesh_depth(verts, faces, cfg, poses)
    assert torch.equal(out["depth"], d) and torch.equal(out["mask"], m)
    # depth as before the buffers: normalize_depth of the z-buffer
    px = to_pixels(apply_pose(verts, poses), cfg)
    z, mask = rasterize_depth(px, faces, 64, 64, cull_backfaces=True)
    assert torch.equal(d, normalize_depth(z, mask, cfg)) and torch.equal(m, mask)
    assert torch.equal(out["colour"], interpolate(out["fragments"], faces, colours))
    assert out["colour"].shape == out["normal"].shape == (3, 64, 64, 3)
    n = out["normal"]
    torch.testing.assert_close(n[m].norm(dim=-1), torch.ones(int(m.sum())), atol=1e-5, rtol=0)
    assert (n[~m] == 0).all()
    # model frame, z toward the viewer: what is seen faces +z
    nz = n[m][:, 2]
    assert nz.mean() > 0.5 and (nz > 0).float().mean() > 0.99
    # normals of the posed mesh: the unposed vertex normals turned by the pose's rotation, interpolated, unit again
    turned = vertex_normals(verts, faces) @ rotation_matrices(poses).transpose(1, 2)
    expect = interpolate(out["fragments"], faces, turned)
    expect = expect / expect.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    torch.testing.assert_close(n, expect, atol=1e-4, rtol=0)
    # no normals unless asked for (or attributes given); reserved names
    assert set(render_mesh_buffers(verts, faces, cfg)) == {"depth", "mask", "fragments"}
    assert "normal" not in render_mesh_buffers(verts, faces, cfg, attributes={"c": colours}, normals=False)
    with pytest.raises(ValueError, match="taken"):
        render_mesh_buffers(verts, faces, cfg, attributes={"depth": colours})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_buffers_match_cpu(face_model):
    c = face_model.sample_coefficients(4, generator=torch.Generator().manual_seed(16))
    verts = face_model.vertices(c, "face")
    faces = face_model.region("face").faces
    colours = torch.rand(verts.shape[1], 3, generator=torch.Generator().manual_seed(17))
    cpu = render_mesh_buffers(verts, faces, RenderConfig(), attributes={"colour": colours})
    gpu = render_mesh_buffers(verts.cuda(), faces.cuda(), RenderConfig(), attributes={"colour": colours.cuda()})
    m_cpu, m_gpu = cpu["mask"], gpu["mask"].cpu()
    assert (m_gpu != m_cpu).sum() <= 8  # pixel centres exactly on an edge may differ by round-off
    same = (gpu["fragments"].triangle.cpu() == cpu["fragments"].triangle) & m_cpu
    assert same.sum() >= 0.99 * m_cpu.sum()
    for key in ("colour", "normal"):
        torch.testing.assert_close(gpu[key].cpu()[same], cpu[key][same], atol=1e-4, rtol=0)
