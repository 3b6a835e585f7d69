"""Batched z-buffer rasterizer: orthographic frontal renders of triangle meshes, depth and any per-vertex attribute.

Conventions (pixel space): x grows to the right (columns), y grows downward (rows), the centre of pixel (row j,
column i) is at (i + 0.5, j + 0.5), and a LARGER z is NEARER the camera. A pixel belongs to the nearest triangle
that covers its centre (``rasterize`` -> ``Fragments``: triangle, barycentric weights, z, mask, as PyTorch3D's
rasterizer); ``interpolate`` renders any per-vertex attribute from them, exactly for attributes linear over each
triangle (z is one such attribute: ``rasterize_depth`` is the fragments' z-buffer).

Face renders (``render_depth``) map the model's centimetres to pixels with a fixed window (default) or fit each
face to the frame, and map depth to [fg_floor, 1] inside the face (near = 1) with the background at 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from ..io.draws import normal

# Window of the fixed framing, in cm of the face model: x from -12.25 to 12.25, y from -13.55 to 10.95 (0.19 cm/px at
# 128 px). Every face with c ~ N(0, 1) on 15 components stays inside it (ICT-FaceKit data README).
DEFAULT_WINDOW_CM = (-12.25, 12.25, -13.55, 10.95)
# Depth range of the fixed depth mapping, in cm of model z (after pose): z_far maps to fg_floor, z_near to 1.
# Measured over 2,000 random faces: the face region spans z of about 1.5 .. 14.4 cm.
DEFAULT_DEPTH_RANGE_CM = (1.0, 15.0)


class Fragments(NamedTuple):
    """What the rasterizer found at each pixel centre of a (B, H, W) frame.

    ``triangle`` (B, H, W) int64: index into ``faces`` of the nearest triangle covering the pixel centre (ties in z
    go to the smallest index), -1 where none does. ``bary`` (B, H, W, 3) float32: that triangle's barycentric weights
    (w0, w1, w2 = 1 - w0 - w1) of its corners ``faces[triangle]`` at the pixel centre, 0 where uncovered; they may
    fall slightly outside [0, 1] (by up to ``eps``) at pixel centres on an edge. ``zbuf`` (B, H, W) float32: its
    interpolated z (larger = nearer), 0 where uncovered. ``mask`` (B, H, W) bool: covered."""

    triangle: torch.Tensor
    bary: torch.Tensor
    zbuf: torch.Tensor
    mask: torch.Tensor


def rasterize(verts: torch.Tensor, faces: torch.Tensor, height: int, width: int, *, cull_backfaces: bool = False,
              eps: float = 1e-5, backend: str = "auto", chunk: int = 8) -> Fragments:
    """Rasterize ``verts`` (B, N, 3), pixel coordinates, with ``faces`` (T, 3) into ``Fragments`` of (B, H, W).

    A pixel takes the nearest (largest z) of the triangles that cover its centre; triangles partly or wholly outside
    the frame are clipped. ``cull_backfaces`` drops triangles that are clockwise as seen in the image
    (counter-clockwise seen from the viewer in a y-up frame, i.e. facing away); the ICT and MediaPipe meshes face the
    viewer that way. ``eps`` widens the inside test slightly so that pixel centres on a shared edge are never lost to
    round-off. Per-vertex attributes then render with ``interpolate``.

    ``backend``: ``"numba"`` (the compiled loop of ``raster_numba``, ``torch.get_num_threads()`` threads over
    faces), ``"torch"`` (batched tensor operations, any device, ``chunk`` faces at a time), or ``"auto"``: numba for
    CPU tensors, torch on a GPU. Both give the same fragments bit for bit where ``torch.addcmul`` fuses its
    multiply-add, as on CPUs with FMA (tests/test_rasterize.py). Gradients: none through the numba path; the torch
    path carries those of ``zbuf`` and ``bary`` w.r.t. ``verts`` (not of which triangle wins). ``interpolate`` is
    differentiable in the attributes.
    """
    if verts.ndim != 3 or verts.shape[-1] != 3:
        raise ValueError(f"verts must have shape (B, N, 3), got {tuple(verts.shape)}")
    if backend not in ("auto", "numba", "torch"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'torch', got {backend!r}")
    if backend == "numba" or (backend == "auto" and verts.device.type == "cpu"):
        if verts.device.type != "cpu":
            raise ValueError(f"backend='numba' needs CPU tensors, got device {verts.device}")
        from .raster_numba import rasterize_numba  # imported on first use: numba loads in ~0.5 s

        out = rasterize_numba(verts.detach().numpy(), faces.cpu().numpy(), height, width,
                              cull_backfaces=cull_backfaces, eps=eps, threads=torch.get_num_threads())
        return Fragments(*(torch.from_numpy(a) for a in out))
    faces = faces.to(device=verts.device, dtype=torch.long)
    parts = [_rasterize_chunk(verts[start:start + chunk].float(), faces, height, width, cull_backfaces, eps)
             for start in range(0, verts.shape[0], chunk)]  # small chunks stay in cache: faster on CPU
    return Fragments(*(torch.cat(p) for p in zip(*parts)))


def rasterize_depth(verts: torch.Tensor, faces: torch.Tensor, height: int, width: int, *,
                    cull_backfaces: bool = False, chunk: int = 8, eps: float = 1e-5, backend: str = "auto"):
    """Z-buffer ``verts`` (B, N, 3), pixel coordinates, with ``faces`` (T, 3) into (B, H, W) depth and mask: the
    ``zbuf`` and ``mask`` of ``rasterize`` (same arguments), i.e. z is the largest (nearest) interpolated z at each
    covered pixel centre and 0 elsewhere; mask is True where some triangle covers the pixel centre."""
    f = rasterize(verts, faces, height, width, cull_backfaces=cull_backfaces, eps=eps, backend=backend, chunk=chunk)
    return f.zbuf, f.mask


def interpolate(fragments: Fragments, faces: torch.Tensor, attributes: torch.Tensor, *,
                backend: str = "auto") -> torch.Tensor:
    """Per-vertex ``attributes`` (B, N, C) or (N, C), float, at every pixel: (B, H, W, C) =
    w0 * a0 + w1 * a1 + w2 * a2 (left to right) with the weights ``bary`` and the attribute at the corners
    ``faces[triangle]``, 0 where uncovered.

    Exact for attributes linear over each triangle (z reproduces ``zbuf`` up to float32 round-off). ``backend``:
    ``"numba"`` (compiled, CPU, no gradient, ``torch.get_num_threads()`` threads over faces), ``"torch"`` (any
    device, differentiable in ``attributes``) or ``"auto"``: numba for CPU float32/float64 attributes that need no
    gradient. Both compute the same products and sums in the same order (no fused multiply-adds), so they give the
    same bits, whichever rasterizer backend made the fragments."""
    if backend not in ("auto", "numba", "torch"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'torch', got {backend!r}")
    if backend == "numba" or (backend == "auto" and _numba_interpolates(fragments, [attributes])):
        from .raster_numba import interpolate_numba

        (out,), _ = interpolate_numba(*_numpy_fragments(fragments), faces.cpu().numpy(),
                                      [_numpy_attribute(attributes)], threads=torch.get_num_threads())
        return torch.from_numpy(out)
    sel, (values,) = _interpolate_covered(fragments, faces, [attributes])
    return _scatter_covered(sel, values, fragments.triangle.shape)


def _numba_interpolates(fragments: Fragments, attributes: list) -> bool:
    """Whether ``backend="auto"`` interpolates ``attributes`` with the compiled loop: all on the CPU, float32 or
    float64, none (nor the weights, from the torch rasterizer) needing a gradient."""
    grad = torch.is_grad_enabled()
    return fragments.triangle.device.type == "cpu" and not (grad and fragments.bary.requires_grad) and all(
        a.device.type == "cpu" and a.dtype in (torch.float32, torch.float64) and not (grad and a.requires_grad)
        for a in attributes)


def _numpy_fragments(fragments: Fragments):
    if fragments.triangle.device.type != "cpu":
        raise ValueError(f"backend='numba' needs CPU tensors, got device {fragments.triangle.device}")
    return fragments.triangle.numpy(), fragments.bary.detach().numpy()


def _numpy_attribute(a: torch.Tensor):
    if a.device.type != "cpu":
        raise ValueError(f"backend='numba' needs CPU tensors, got device {a.device}")
    return a.detach().numpy()


def _interpolate_covered(fragments: Fragments, faces: torch.Tensor, attributes: list):
    """``interpolate`` of several attributes at the covered pixels only: their flat indices ``sel`` (P,) into
    (B * H * W) and a (P, C) tensor per attribute. The gathers of pixels, corners and weights are shared."""
    tri = fragments.triangle
    B, H, W = tri.shape
    dev = tri.device
    faces = faces.to(device=dev, dtype=torch.long)
    # Only covered pixels are gathered (a face covers 40 % of the frame at the default window), corner by corner,
    # into contiguous (P, C) tensors. (Measured no faster: gathering all pixels; channel-major 1-D gathers.)
    sel = torch.nonzero(fragments.mask.reshape(-1)).squeeze(1)
    t = tri.reshape(-1).index_select(0, sel)
    corners = [faces[:, k].index_select(0, t) for k in range(3)]  # 3 x (P,) vertex indices
    bary = fragments.bary.reshape(-1, 3)
    weights = [bary[:, k].index_select(0, sel)[:, None] for k in range(3)]  # 3 x (P, 1)
    batch_base = None
    out = []
    for attr in attributes:
        if attr.ndim == 2:
            attr = attr[None]
        if attr.ndim != 3 or attr.shape[0] not in (1, B) or not attr.is_floating_point():
            raise ValueError(f"attributes must be float with shape (N, C) or (B={B}, N, C), got "
                             f"{tuple(attr.shape)} {attr.dtype}")
        N, C = attr.shape[1:]
        idx = corners
        if attr.shape[0] > 1:  # per-face attributes: rows b * N + vertex of (B * N, C)
            if batch_base is None:  # covered pixels come face by face
                per_face = fragments.mask.reshape(B, -1).sum(1)
                batch_base = torch.repeat_interleave(torch.arange(B, device=dev) * N, per_face)
            idx = [i + batch_base for i in corners]
        rows = attr.to(dev).reshape(-1, C)
        v = [rows.index_select(0, i) for i in idx]  # 3 x (P, C)
        w = [x.to(rows.dtype) for x in weights]
        # w0 * a0 + w1 * a1, then + w2 * a2: each product and sum rounded on its own, as in the compiled loop (not
        # addcmul, whose multiply-add is fused on some devices and not on others). In place on fresh tensors: fewer
        # new buffers (their page faults cost as much as the arithmetic here).
        out.append(v[0].mul_(w[0]).add_(v[1].mul_(w[1])).add_(v[2].mul_(w[2])))
    return sel, out


def _scatter_covered(sel: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    """(P, C) values at the covered pixels ``sel`` -> (B, H, W, C), 0 elsewhere."""
    B, H, W = shape
    full = torch.zeros(B * H * W, values.shape[1], dtype=values.dtype, device=values.device)
    return full.index_copy_(0, sel, values).view(B, H, W, -1)


def _rasterize_chunk(P, F, H, W, cull, eps):
    """Fragments (triangle, bary, zbuf, mask) of the meshes ``P`` (B, N, 3) float32 in pixel coordinates."""
    B, N, _ = P.shape
    T = F.shape[0]
    dev = P.device
    # Gather triangle corners as rows (fast on CPU): (N, 3c*B) -> (3v, T, 3c, B).
    G = P.permute(1, 2, 0).reshape(N, 3 * B).index_select(0, F.t().reshape(-1)).view(3, T, 3, B)
    ax, ay = G[0, :, 0], G[0, :, 1]  # each (T, B)
    bx, by = G[1, :, 0], G[1, :, 1]
    cx, cy = G[2, :, 0], G[2, :, 1]
    # Range of pixel centres (i + 0.5) inside each triangle's bounding box, clipped to the frame.
    i0 = torch.ceil(torch.minimum(torch.minimum(ax, bx), cx) - 0.5).clamp_(min=0)
    i1 = torch.floor(torch.maximum(torch.maximum(ax, bx), cx) - 0.5).clamp_(max=W - 1)
    j0 = torch.ceil(torch.minimum(torch.minimum(ay, by), cy) - 0.5).clamp_(min=0)
    j1 = torch.floor(torch.maximum(torch.maximum(ay, by), cy) - 0.5).clamp_(max=H - 1)
    nx, ny = i1 - i0 + 1, j1 - j0 + 1
    area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)  # twice the signed area; < 0 = facing the viewer
    ok = (nx > 0) & (ny > 0) & ((area < -1e-12) if cull else (area.abs() > 1e-12))
    keep = torch.nonzero(ok.reshape(-1)).squeeze(1)  # (K,) flat index t * B + b
    # Corners of the kept triangles, one gather: (9, K) rows in order (a,b,c) x (x,y,z).
    base = (keep // B) * (3 * B) + keep % B
    off = (torch.arange(3, device=dev)[:, None] * (T * 3 * B) + torch.arange(3, device=dev)[None, :] * B).view(9, 1)
    ax, ay, az, bx, by, bz, cx, cy, cz = G.reshape(-1).index_select(0, (base[None] + off).view(-1)).view(9, -1)
    take = lambda a: a.reshape(-1).index_select(0, keep)
    nxk, i0k, j0k = take(nx), take(i0), take(j0)
    # Work relative to each triangle's first pixel centre: small numbers keep float32 edge tests exact enough
    # that a pixel centre on a shared edge is never lost (absolute coordinates lose ~1e-4 to cancellation).
    ox, oy = i0k + 0.5, j0k + 0.5
    ax, bx, cx, ay, by, cy = ax - ox, bx - ox, cx - ox, ay - oy, by - oy, cy - oy
    inv = 1.0 / take(area)
    # Barycentric weights and z as planes over the image: w = A * qx + B * qy + C.
    A0, B0, C0 = (by - cy) * inv, (cx - bx) * inv, (bx * cy - by * cx) * inv
    A1, B1, C1 = (cy - ay) * inv, (ax - cx) * inv, (cx * ay - cy * ax) * inv
    dza, dzb = az - cz, bz - cz
    Az, Bz, Cz = A0 * dza + A1 * dzb, B0 * dza + B1 * dzb, C0 * dza + C1 * dzb + cz
    # One candidate per pixel centre in each kept triangle's box (most tiny triangles have one).
    counts = (nxk * take(ny)).long()
    rep = torch.repeat_interleave(counts)  # (M,) candidate -> kept triangle
    first = torch.cumsum(counts, 0) - counts
    local = (torch.arange(rep.numel(), device=dev) - first.index_select(0, rep)).float()
    g = lambda a: a.index_select(0, rep)
    nxr = g(nxk)
    dj = torch.floor(local / nxr)
    qx = local - dj * nxr  # offsets from the first pixel centre
    qy = dj
    w0 = torch.addcmul(torch.addcmul(g(C0), g(A0), qx), g(B0), qy)
    w1 = torch.addcmul(torch.addcmul(g(C1), g(A1), qx), g(B1), qy)
    z = torch.addcmul(torch.addcmul(g(Cz), g(Az), qx), g(Bz), qy)
    hit = torch.nonzero((w0 >= -eps) & (w1 >= -eps) & (w0 + w1 <= 1 + eps)).squeeze(1)
    kt = keep.index_select(0, rep.index_select(0, hit))  # flat t * B + b of each hit
    b, t = kt % B, kt // B
    row = (g(j0k) + qy).index_select(0, hit).long()
    col = (g(i0k) + qx).index_select(0, hit).long()
    pix = (b * H + row) * W + col
    z = z.index_select(0, hit)
    zbuf = torch.full((B * H * W,), -math.inf, device=dev)
    zbuf.scatter_reduce_(0, pix, z, reduce="amax")
    # The winner, as the compiled loop picks it (triangles in index order, replaced only by a strictly larger z):
    # among the hits at the nearest z, the smallest triangle index. A triangle has one hit per pixel at most.
    near = torch.nonzero(z == zbuf.index_select(0, pix)).squeeze(1)
    pix, t = pix.index_select(0, near), t.index_select(0, near)
    tri = torch.full((B * H * W,), T, device=dev)
    tri.scatter_reduce_(0, pix, t, reduce="amin")
    first = torch.nonzero(t == tri.index_select(0, pix)).squeeze(1)  # one per covered pixel
    win = hit.index_select(0, near.index_select(0, first))  # the winning candidates
    pix = pix.index_select(0, first)
    u, v = w0.index_select(0, win), w1.index_select(0, win)
    mask = torch.zeros(B * H * W, dtype=torch.bool, device=dev).index_fill_(0, pix, True)
    bary = torch.zeros(B * H * W, 3, device=dev)
    bary.index_copy_(0, pix, torch.stack([u, v, 1 - u - v], 1))
    tri = torch.where(mask, tri, -1)
    zbuf = torch.where(mask, zbuf, torch.zeros((), device=dev))
    return tri.view(B, H, W), bary.view(B, H, W, 3), zbuf.view(B, H, W), mask.view(B, H, W)


# ---- pose ---------------------------------------------------------------------------------------------------------
@dataclass
class PoseJitter:
    """Per-face random pose. Pose vectors are (yaw, pitch, roll, scale, tx, ty): rotations in degrees, scale a
    factor around 1, shift in cm. ``distribution="uniform"``: each value uniform in [-r, r] for its range r;
    ``"normal"``: r is a standard deviation (draws clamped at 3 r). All zero (the default) = frontal faces."""

    yaw_deg: float = 0.0
    pitch_deg: float = 0.0
    roll_deg: float = 0.0
    scale: float = 0.0
    shift_cm: float = 0.0
    distribution: str = "uniform"

    def __post_init__(self):
        if self.distribution not in ("uniform", "normal"):
            raise ValueError(f"PoseJitter.distribution must be 'uniform' or 'normal', got {self.distribution!r}")

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        r = torch.tensor([self.yaw_deg, self.pitch_deg, self.roll_deg, self.scale, self.shift_cm, self.shift_cm])
        if self.distribution == "uniform":
            u = 2 * torch.rand(n, 6, generator=generator) - 1
        else:
            u = normal(n, 6, generator=generator).clamp(-3, 3)
        p = u * r
        p[:, 3] += 1.0
        return p


def rotation_matrices(poses: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) rotations R = Rz(roll) @ Ry(yaw) @ Rx(pitch) from pose vectors (degrees)."""
    yaw, pitch, roll = (torch.deg2rad(poses[:, i]) for i in range(3))
    c, s = torch.cos, torch.sin
    o, z = torch.ones_like(yaw), torch.zeros_like(yaw)
    rx = torch.stack([o, z, z, z, c(pitch), -s(pitch), z, s(pitch), c(pitch)], 1).view(-1, 3, 3)
    ry = torch.stack([c(yaw), z, s(yaw), z, o, z, -s(yaw), z, c(yaw)], 1).view(-1, 3, 3)
    rz = torch.stack([c(roll), -s(roll), z, s(roll), c(roll), z, z, z, o], 1).view(-1, 3, 3)
    return rz @ ry @ rx


def apply_pose(verts: torch.Tensor, poses: torch.Tensor | None) -> torch.Tensor:
    """Rotate about the model origin (about the head centre), scale, then shift in x/y: (B, N, 3) cm."""
    if poses is None:
        return verts
    poses = poses.to(verts)
    R = rotation_matrices(poses) * poses[:, 3, None, None]
    out = verts @ R.transpose(1, 2)
    shift = torch.zeros(poses.shape[0], 1, 3, dtype=verts.dtype, device=verts.device)
    shift[:, 0, :2] = poses[:, 4:6]
    return out + shift


# ---- face renders -------------------------------------------------------------------------------------------------
@dataclass
class RenderConfig:
    """How a face becomes a depth map.

    framing: ``"fixed"`` maps the window ``window_cm`` = (x0, x1, y0, y1) to the frame, so real size differences
    between faces stay visible; ``"fit"`` scales and centres each face's bounding box to fill the frame less a
    margin ``fit_margin`` on each side.
    depth_mode: ``"fixed"`` maps z in ``depth_range_cm`` = (far, near) to [fg_floor, 1] (a flatter face looks
    flatter); ``"minmax"`` maps each face's own z range there; ``"relative"`` puts each face's nearest point at 1 and
    ``relative_span_cm`` behind it at fg_floor (for meshes with no absolute depth, such as photo landmarks).
    Values outside are clamped. Background is 0; ``fg_floor`` > 0 keeps the face apart from it.
    region: ``"face"`` (the shipped face region) or ``"chin"`` (the same, stopping at the chin line; use it where
    synthetic depth is compared with real-photo depth from landmark meshes, which lack the underside of the jaw).
    """

    resolution: int = 128
    framing: str = "fixed"
    window_cm: tuple = DEFAULT_WINDOW_CM
    fit_margin: float = 0.05
    depth_mode: str = "fixed"
    depth_range_cm: tuple = DEFAULT_DEPTH_RANGE_CM
    relative_span_cm: float = 12.0
    fg_floor: float = 0.1
    region: str = "face"
    cull_backfaces: bool = True

    def __post_init__(self):
        self.window_cm, self.depth_range_cm = tuple(self.window_cm), tuple(self.depth_range_cm)
        checks = {"framing": ("fixed", "fit"), "depth_mode": ("fixed", "minmax", "relative"),
                  "region": ("face", "chin", "full")}
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"RenderConfig.{name}={getattr(self, name)!r}; choose one of {allowed}")
        if self.resolution < 4:
            raise ValueError(f"RenderConfig.resolution must be >= 4, got {self.resolution}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RenderConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown RenderConfig keys: {sorted(unknown)}")
        return cls(**d)


def to_pixels(verts_cm: torch.Tensor, cfg: RenderConfig) -> torch.Tensor:
    """Map posed model vertices (B, N, 3) in cm to pixel coordinates (x right, y down, z unchanged)."""
    H = W = cfg.resolution
    if cfg.framing == "fixed":
        x0, x1, y0, y1 = cfg.window_cm
        sx, sy = W / (x1 - x0), H / (y1 - y0)
        px = (verts_cm[..., 0] - x0) * sx
        py = (y1 - verts_cm[..., 1]) * sy
    else:  # fit: same scale on both axes, box centred
        lo, hi = verts_cm[..., :2].amin(1), verts_cm[..., :2].amax(1)  # (B, 2)
        size = (hi - lo).clamp_min(1e-6)
        s = (1 - 2 * cfg.fit_margin) * torch.minimum(W / size[:, 0], H / size[:, 1])  # (B,)
        centre = (lo + hi) / 2
        px = (verts_cm[..., 0] - centre[:, None, 0]) * s[:, None] + W / 2
        py = (centre[:, None, 1] - verts_cm[..., 1]) * s[:, None] + H / 2
    return torch.stack([px, py, verts_cm[..., 2]], -1)


def normalize_depth(z: torch.Tensor, mask: torch.Tensor, cfg: RenderConfig) -> torch.Tensor:
    """Map z-buffer values (B, H, W) to [fg_floor, 1] inside the mask (near = 1), 0 outside."""
    if cfg.depth_mode == "fixed":
        far, near = cfg.depth_range_cm
        far = torch.full((z.shape[0], 1, 1), float(far), device=z.device)
        near = torch.full_like(far, float(near))
    else:
        big = torch.tensor(math.inf, device=z.device)
        near = torch.where(mask, z, -big).amax(dim=(1, 2), keepdim=True)
        if cfg.depth_mode == "minmax":
            far = torch.where(mask, z, big).amin(dim=(1, 2), keepdim=True)
        else:
            far = near - cfg.relative_span_cm
        empty = ~mask.any(dim=(1, 2), keepdim=True)  # a face outside the frame: keep numbers finite
        near, far = torch.where(empty, 1.0, near), torch.where(empty, 0.0, far)
    t = ((z - far) / (near - far).clamp_min(1e-6)).clamp(0, 1)
    d = cfg.fg_floor + (1 - cfg.fg_floor) * t
    return torch.where(mask, d, torch.zeros((), device=z.device))


def check_finite(x: torch.Tensor, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` and its first bad rows if ``x`` (B, ...) holds NaN or Inf."""
    bad = ~torch.isfinite(x.flatten(1) if x.ndim > 1 else x.reshape(1, -1))
    if bad.any():
        rows = bad.any(1).nonzero().flatten().tolist()
        raise ValueError(f"{what} hold NaN or Inf (rows {rows[:5]}{' ...' if len(rows) > 5 else ''}); "
                         "a face needs finite values")


def render_mesh_depth(verts_cm: torch.Tensor, faces: torch.Tensor, cfg: RenderConfig,
                      poses: torch.Tensor | None = None):
    """Depth maps (B, H, W) in [0, 1] and masks (B, H, W) bool of meshes in model cm, optionally posed. The
    coefficients are checked where vertices are made (``FaceModel.vertices``); the poses here (NaN/Inf ->
    ``ValueError``, not an empty map)."""
    out = render_mesh_buffers(verts_cm, faces, cfg, poses, normals=False)
    return out["depth"], out["mask"]


def render_mesh_buffers(verts_cm: torch.Tensor, faces: torch.Tensor, cfg: RenderConfig,
                        poses: torch.Tensor | None = None, attributes: dict | None = None,
                        normals: bool | None = None, backend: str = "auto") -> dict:
    """Rasterize meshes in model cm (B, N, 3), optionally posed, once and render every buffer from the fragments.

    Returns a dict: ``"depth"`` (B, H, W) as ``render_mesh_depth`` (``normalize_depth`` of the z-buffer), ``"mask"``
    (B, H, W) bool, ``"fragments"`` (``Fragments``; z in model cm after pose), one (B, H, W, C) entry per item of
    ``attributes`` (name -> per-vertex (N, C) or (B, N, C) tensor, ``interpolate``d, 0 outside the mask), and with
    ``normals`` (default: when ``attributes`` are given) ``"normal"`` (B, H, W, 3): unit normals of the posed
    surface in the model frame (x right, y up, z toward the viewer), area-weighted vertex normals
    (``vertex_normals``) interpolated and renormalized, 0 outside the mask.

    ``backend`` as for ``rasterize`` and ``interpolate``: with ``"auto"``, CPU meshes rasterize with the compiled
    loop and, where no attribute (nor the geometry, with normals) needs a gradient, the attributes and normals come
    from one compiled pass over the pixels, which computes only the vertex normals of the corners it meets. The
    buffers are the same bits either way. Differentiable in the attributes (not in the geometry) on the torch
    path."""
    if poses is not None:
        check_finite(torch.as_tensor(poses), "poses")
    if backend not in ("auto", "numba", "torch"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'torch', got {backend!r}")
    attributes = dict(attributes or {})
    clash = {"depth", "mask", "fragments", "normal"} & set(attributes)
    if clash:
        raise ValueError(f"attribute names {sorted(clash)} are taken by the buffers themselves")
    if normals is None:
        normals = bool(attributes)
    posed = apply_pose(verts_cm, poses)
    px = to_pixels(posed, cfg)
    frags = rasterize(px, faces, cfg.resolution, cfg.resolution, cull_backfaces=cfg.cull_backfaces, backend=backend)
    out = {"depth": normalize_depth(frags.zbuf, frags.mask, cfg), "mask": frags.mask, "fragments": frags}
    names, values = list(attributes), list(attributes.values())
    if not values and not normals:
        return out
    if backend == "numba" or (backend == "auto" and posed.dtype == torch.float32 and
                              _numba_interpolates(frags, values + ([posed] if normals else []))):
        # one compiled pass over the pixels: every attribute, and the vertex normals of the corners it meets
        from .raster_numba import interpolate_numba

        if normals and posed.device.type != "cpu":
            raise ValueError(f"backend='numba' needs CPU tensors, got device {posed.device}")
        bufs, normal = interpolate_numba(*_numpy_fragments(frags), faces.cpu().numpy(),
                                         [_numpy_attribute(a) for a in values],
                                         posed.detach().numpy() if normals else None, threads=torch.get_num_threads())
        out.update(zip(names, map(torch.from_numpy, bufs)))
        if normals:
            out["normal"] = torch.from_numpy(normal)
        return out
    if normals:
        names.append("normal")
        values.append(vertex_normals(posed, faces, backend="auto" if backend == "auto" else "torch"))
    sel, values = _interpolate_covered(frags, faces, values)
    if normals:  # interpolated unit vectors are shorter: unit again (as vertex_normals, so as the compiled pass)
        values[-1] = _unit(values[-1])
    for name, v in zip(names, values):
        out[name] = _scatter_covered(sel, v, frags.triangle.shape)
    return out


def _unit(v: torch.Tensor) -> torch.Tensor:
    """Rows of ``v`` (..., 3) divided by their length, written out in the compiled paths' order: (x x + y y) + z z,
    its square root in float64 rounded once to v's dtype (torch's float32 one is not correctly rounded), at least
    1e-12."""
    x, y, z = v.unbind(-1)
    length = torch.sqrt((x * x + y * y + z * z).double()).to(v.dtype).clamp_min(1e-12)
    return v / length[..., None]


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Area-weighted unit vertex normals (B, N, 3) of meshes (B, N, 3) sharing triangles (T, 3): the sum of the
    normals of the triangles around each vertex, each as long as twice its area, normalized. Triangles facing the
    viewer in the model frame (counter-clockwise seen from +z, y up: the ICT and MediaPipe meshes) give +z.

    ``backend``: ``"numba"`` (compiled, CPU, no gradient), ``"torch"`` (batched, any device, differentiable) or
    ``"auto"``: numba for CPU tensors that need no gradient. The two give the same bits on a CPU."""
    if verts.ndim != 3 or verts.shape[-1] != 3:
        raise ValueError(f"verts must have shape (B, N, 3), got {tuple(verts.shape)}")
    if backend not in ("auto", "numba", "torch"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'torch', got {backend!r}")
    if backend == "numba" or (backend == "auto" and verts.device.type == "cpu" and not verts.requires_grad):
        if verts.device.type != "cpu":
            raise ValueError(f"backend='numba' needs CPU tensors, got device {verts.device}")
        from .raster_numba import vertex_normals_numba

        return torch.from_numpy(vertex_normals_numba(verts.detach().numpy(), faces.cpu().numpy(),
                                                     threads=torch.get_num_threads()))
    faces = faces.to(device=verts.device, dtype=torch.long)
    a, b, c = (verts[:, faces[:, k]] for k in range(3))
    e1, e2 = b - a, c - a
    e1x, e1y, e1z = e1.unbind(-1)
    e2x, e2y, e2z = e2.unbind(-1)
    # written out (not torch.cross), in the order of the compiled path, so that both round alike
    fn = torch.stack([e1y * e2z - e1z * e2y, e1z * e2x - e1x * e2z, e1x * e2y - e1y * e2x], -1)
    vn = torch.zeros_like(verts).index_add(1, faces.reshape(-1), fn.repeat_interleave(3, dim=1))
    return _unit(vn)


def render_depth(model, coeffs: torch.Tensor, cfg: RenderConfig | None = None, poses: torch.Tensor | None = None):
    """Depth maps and masks of face-model faces with coefficients (B, K) and optional poses (B, 6)."""
    cfg = cfg or RenderConfig()
    region = model.region(cfg.region)
    verts = model.vertices(coeffs, cfg.region)
    return render_mesh_depth(verts, region.faces, cfg, poses)
