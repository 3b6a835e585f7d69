"""Batched z-buffer rasterizer in torch: orthographic frontal depth maps of triangle meshes.

Conventions (pixel space): x grows to the right (columns), y grows downward (rows), the centre of pixel (row j,
column i) is at (i + 0.5, j + 0.5), and a LARGER z is NEARER the camera. A pixel takes the depth of the nearest
triangle that covers its centre, interpolated barycentrically, which is exact for planar triangles.

Face renders (``render_depth``) map the model's centimetres to pixels with a fixed window (default) or fit each
face to the frame, and map depth to [fg_floor, 1] inside the face (near = 1) with the background at 0.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .draws import normal

# Window of the fixed framing, in cm of the face model: x from -12.25 to 12.25, y from -13.55 to 10.95 (0.19 cm/px at
# 128 px). Every face with c ~ N(0, 1) on 15 components stays inside it (ICT-FaceKit data README).
DEFAULT_WINDOW_CM = (-12.25, 12.25, -13.55, 10.95)
# Depth range of the fixed depth mapping, in cm of model z (after pose): z_far maps to fg_floor, z_near to 1.
# Measured over 2,000 random faces: the face region spans z of about 1.5 .. 14.4 cm.
DEFAULT_DEPTH_RANGE_CM = (1.0, 15.0)


def rasterize_depth(verts: torch.Tensor, faces: torch.Tensor, height: int, width: int, *,
                    cull_backfaces: bool = False, chunk: int = 8, eps: float = 1e-5, backend: str = "auto"):
    """Z-buffer ``verts`` (B, N, 3), pixel coordinates, with ``faces`` (T, 3) into (B, H, W) depth and mask.

    Returns ``(z, mask)``: z is the largest (nearest) interpolated z at each covered pixel centre and 0 elsewhere;
    mask is True where some triangle covers the pixel centre. Triangles partly or wholly outside the frame are
    clipped. ``cull_backfaces`` drops triangles that are clockwise as seen in the image (counter-clockwise seen
    from the viewer in a y-up frame, i.e. facing away); the ICT and MediaPipe meshes face the viewer that way.
    ``eps`` widens the inside test slightly so that pixel centres on a shared edge are never lost to round-off.

    ``backend``: ``"numba"`` (the compiled loop of ``raster_numba``, ``torch.get_num_threads()`` threads over
    faces), ``"torch"`` (batched tensor operations, any device), or ``"auto"``: numba for CPU tensors, torch on a
    GPU. Both give the same float32 results (tests/test_rasterize.py); bench/bench_depth.py measures the two.
    No gradients flow through the numba path (depth maps are data here, not a loss).
    """
    if verts.ndim != 3 or verts.shape[-1] != 3:
        raise ValueError(f"verts must have shape (B, N, 3), got {tuple(verts.shape)}")
    if backend not in ("auto", "numba", "torch"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'torch', got {backend!r}")
    if backend == "numba" or (backend == "auto" and verts.device.type == "cpu"):
        if verts.device.type != "cpu":
            raise ValueError(f"backend='numba' needs CPU tensors, got device {verts.device}")
        from .raster_numba import rasterize_depth_numba  # imported on first use: numba loads in ~0.5 s

        z, mask = rasterize_depth_numba(verts.detach().numpy(), faces.cpu().numpy(), height, width,
                                        cull_backfaces=cull_backfaces, eps=eps, threads=torch.get_num_threads())
        return torch.from_numpy(z), torch.from_numpy(mask)
    faces = faces.to(device=verts.device, dtype=torch.long)
    zs, ms = [], []
    for start in range(0, verts.shape[0], chunk):  # small chunks stay in cache: faster than one big batch on CPU
        z, m = _rasterize_chunk(verts[start:start + chunk].float(), faces, height, width, cull_backfaces, eps)
        zs.append(z)
        ms.append(m)
    return torch.cat(zs), torch.cat(ms)


def _rasterize_chunk(P, F, H, W, cull, eps):
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
    b = keep.index_select(0, rep.index_select(0, hit)) % B
    row = (g(j0k) + qy).index_select(0, hit).long()
    col = (g(i0k) + qx).index_select(0, hit).long()
    pix = (b * H + row) * W + col
    zbuf = torch.full((B * H * W,), -math.inf, device=dev)
    zbuf.scatter_reduce_(0, pix, z.index_select(0, hit), reduce="amax")
    zbuf = zbuf.view(B, H, W)
    mask = torch.isfinite(zbuf)
    return torch.where(mask, zbuf, torch.zeros((), device=dev)), mask


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
    if poses is not None:
        check_finite(torch.as_tensor(poses), "poses")
    px = to_pixels(apply_pose(verts_cm, poses), cfg)
    z, mask = rasterize_depth(px, faces, cfg.resolution, cfg.resolution, cull_backfaces=cfg.cull_backfaces)
    return normalize_depth(z, mask, cfg), mask


def render_depth(model, coeffs: torch.Tensor, cfg: RenderConfig | None = None, poses: torch.Tensor | None = None):
    """Depth maps and masks of face-model faces with coefficients (B, K) and optional poses (B, 6)."""
    cfg = cfg or RenderConfig()
    region = model.region(cfg.region)
    verts = model.vertices(coeffs, cfg.region)
    return render_mesh_depth(verts, region.faces, cfg, poses)
