"""The z-buffer of ``rasterize.py`` compiled with numba: loops over triangles per face, threads over faces.

It repeats the torch path's float32 arithmetic step by step (bounding box of pixel centres, edge tests relative to
each triangle's first pixel centre, the same ``eps``, the fused multiply-adds of ``torch.addcmul``), so both give
the same depth maps; the torch path stays for CUDA. At 128x128 most of the face's 38k triangles cover at most one or
two pixel centres, which a plain loop handles with a few dozen instructions each, where the torch path needs ~60
batched tensor operations and their gathers (bench/bench_depth.py compares the two).

The first call compiles the kernel (seconds) and caches it next to this file (``__pycache__``); later processes load
it from there.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba.core import types
from numba.extending import intrinsic

_F = np.float32


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once (float32), as torch.addcmul computes it on CPUs with FMA and on CUDA."""
    def codegen(context, builder, sig, args):
        return builder.fma(*args)
    return types.float32(types.float32, types.float32, types.float32), codegen


@numba.njit(cache=True, nogil=True, inline="always")
def _box(P, F, t, wmax, hmax, cull):
    """Triangle ``t``: its corners, the range of pixel centres (i + 0.5, j + 0.5) in its bounding box clipped to
    the frame, twice its signed area (< 0 = facing the viewer) and whether it can cover a pixel centre at all."""
    half, one, zero, tiny = _F(0.5), _F(1.0), _F(0.0), _F(1e-12)
    a, b, c = F[t, 0], F[t, 1], F[t, 2]
    ax, ay, bx, by, cx, cy = P[a, 0], P[a, 1], P[b, 0], P[b, 1], P[c, 0], P[c, 1]
    i0 = max(np.ceil(min(min(ax, bx), cx) - half), zero)
    i1 = min(np.floor(max(max(ax, bx), cx) - half), wmax)
    j0 = max(np.ceil(min(min(ay, by), cy) - half), zero)
    j1 = min(np.floor(max(max(ay, by), cy) - half), hmax)
    area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    facing = (area < -tiny) if cull else (abs(area) > tiny)
    ok = (i1 - i0 + one > zero) & (j1 - j0 + one > zero) & facing  # &, not `and`: no jumps
    return a, b, c, ax, ay, bx, by, cx, cy, i0, i1, j0, j1, area, ok


@numba.njit(cache=True, nogil=True)
def _rasterize_one(P, F, H, W, cull, eps, zbuf, keep):
    """Z-buffer one mesh ``P`` (N, 3) float32 pixel coordinates, triangles ``F`` (T, 3), into ``zbuf`` (H, W) = -inf.
    ``keep`` (T,) int32 is scratch space."""
    half, one = _F(0.5), _F(1.0)
    lo, hi = -_F(eps), _F(1.0 + eps)  # as torch: 1 + eps in double, then compared in float32
    wmax, hmax = _F(W - 1), _F(H - 1)
    # Pass 1, without a jump per triangle (whether a sub-pixel triangle covers a pixel centre is a coin toss, and a
    # mispredicted branch costs more than the test): list the triangles that can cover one.
    n = 0
    for t in range(F.shape[0]):
        ok = _box(P, F, t, wmax, hmax, cull)[-1]
        keep[n] = t
        n += ok
    # Pass 2: the kept triangles, with the torch path's arithmetic.
    for k in range(n):
        a, b, c, ax, ay, bx, by, cx, cy, i0, i1, j0, j1, area, _ = _box(P, F, keep[k], wmax, hmax, cull)
        # relative to the first pixel centre, as in the torch path (float32 edge tests stay exact enough)
        ox, oy = i0 + half, j0 + half
        ax, bx, cx = ax - ox, bx - ox, cx - ox
        ay, by, cy = ay - oy, by - oy, cy - oy
        inv = one / area
        A0, B0, C0 = (by - cy) * inv, (cx - bx) * inv, (bx * cy - by * cx) * inv
        A1, B1, C1 = (cy - ay) * inv, (ax - cx) * inv, (cx * ay - cy * ax) * inv
        cz = P[c, 2]
        dza, dzb = P[a, 2] - cz, P[b, 2] - cz
        Az, Bz, Cz = A0 * dza + A1 * dzb, B0 * dza + B1 * dzb, C0 * dza + C1 * dzb + cz
        r0, c0 = int(j0), int(i0)
        for dj in range(int(j1 - j0) + 1):
            qy = _F(dj)
            for di in range(int(i1 - i0) + 1):
                qx = _F(di)
                w0 = _fma(B0, qy, _fma(A0, qx, C0))  # = torch.addcmul(torch.addcmul(C0, A0, qx), B0, qy)
                w1 = _fma(B1, qy, _fma(A1, qx, C1))
                z = _fma(Bz, qy, _fma(Az, qx, Cz))
                hit = (w0 >= lo) & (w1 >= lo) & (w0 + w1 <= hi)
                old = zbuf[r0 + dj, c0 + di]
                zbuf[r0 + dj, c0 + di] = max(old, z) if hit else old  # a select, not a jump, for the same reason


@numba.njit(cache=True, nogil=True)
def _rasterize_faces(P, F, H, W, cull, eps, z, mask, start, stop):
    """Faces ``start:stop`` of ``P`` (B, N, 3) into ``z`` (B, H, W) float32 (0 where uncovered) and ``mask``."""
    keep = np.empty(F.shape[0], np.int32)
    for b in range(start, stop):
        zb = z[b]
        zb[:] = -np.inf
        _rasterize_one(P[b], F, H, W, cull, eps, zb, keep)
        for r in range(H):
            for q in range(W):
                covered = zb[r, q] > -np.inf
                mask[b, r, q] = covered
                if not covered:
                    zb[r, q] = 0.0


def rasterize_depth_numba(verts: np.ndarray, faces: np.ndarray, height: int, width: int, *,
                          cull_backfaces: bool = False, eps: float = 1e-5, threads: int = 1):
    """Numpy in and out: ``verts`` (B, N, 3) pixel coordinates, ``faces`` (T, 3) -> z (B, H, W) float32, mask bool.

    Same contract as ``rasterize.rasterize_depth`` (which calls this for CPU tensors). ``threads`` Python threads
    split the faces; the kernel releases the GIL. (Not numba's ``parallel=True``: its OpenMP layer aborts DataLoader
    workers forked after the first parallel call, "fork() called from a process already using GNU OpenMP".)"""
    P = np.ascontiguousarray(verts, dtype=np.float32)
    F = np.ascontiguousarray(faces, dtype=np.int32)
    if P.ndim != 3 or P.shape[-1] != 3:
        raise ValueError(f"verts must have shape (B, N, 3), got {P.shape}")
    if F.size and (F.min() < 0 or F.max() >= P.shape[1]):
        raise ValueError(f"faces index vertices 0..{P.shape[1] - 1}, got {F.min()}..{F.max()}")
    B, H, W = P.shape[0], int(height), int(width)
    z = np.empty((B, H, W), np.float32)
    mask = np.empty((B, H, W), np.bool_)
    args = (P, F, H, W, bool(cull_backfaces), float(eps), z, mask)
    n = max(1, min(int(threads), B))
    if n == 1:
        _rasterize_faces(*args, 0, B)
    else:
        bounds = [B * k // n for k in range(n + 1)]
        with ThreadPoolExecutor(n) as pool:  # a new pool per call: a forked child never inherits a dead one
            list(pool.map(lambda k: _rasterize_faces(*args, bounds[k], bounds[k + 1]), range(n)))
    return z, mask
