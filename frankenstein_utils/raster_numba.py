"""The rasterizer of ``rasterize.py`` compiled with numba: loops over triangles per face, threads over faces.

It returns fragments: per pixel the winning (nearest) triangle, its barycentric weights and its z. It repeats the
torch path's float32 arithmetic step by step (bounding box of pixel centres, edge tests relative to each triangle's
first pixel centre, the same ``eps``, the fused multiply-adds of ``torch.addcmul``, ties to the smallest triangle
index), so both give the same fragments bit for bit; the torch path stays for CUDA. At 128x128 most of the face's
38k triangles cover at most one or two pixel centres, which a plain loop handles with a few dozen instructions each,
where the torch path needs ~60 batched tensor operations and their gathers (bench/bench_depth.py compares the two).

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


@intrinsic
def _select(typingctx, c, a, b):
    """``a if c else b`` as an LLVM select, which becomes a masked move for floats: numba's ``if``/``else`` turned
    the four stores of a pixel update into a jump."""
    def codegen(context, builder, sig, args):
        return builder.select(*args)
    return a(types.boolean, a, a), codegen


@intrinsic
def _int32_as_float32(typingctx, a):
    """The bits of an int32 as a float32 (never computed with, only moved): a triangle index in the float32 pixel
    record, selected with a masked move (an integer select became a jump)."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))
    return types.float32(types.int32), codegen


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
def _rasterize_one(P, F, H, W, cull, eps, S, keep):
    """Z-buffer one mesh ``P`` (N, 3) float32 pixel coordinates, triangles ``F`` (T, 3), into ``S`` (H * W, 4)
    float32, one record per pixel (row-major): z (= -inf on entry), the winning triangle's index as int32 bits
    (= -1 on entry), and its weights w0, w1. Triangles go in increasing index order and a pixel changes hands only
    on a strictly larger z, so a tie goes to the smallest index, as in the torch path. ``keep`` (T,) int32 is
    scratch space."""
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
        t = keep[k]
        tbits = _int32_as_float32(t)
        a, b, c, ax, ay, bx, by, cx, cy, i0, i1, j0, j1, area, _ = _box(P, F, t, wmax, hmax, cull)
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
            row = np.uint64((r0 + dj) * W + c0)  # unsigned: no negative-index wraparound code per access
            for di in range(int(i1 - i0) + 1):
                qx = _F(di)
                p = row + np.uint64(di)
                w0 = _fma(B0, qy, _fma(A0, qx, C0))  # = torch.addcmul(torch.addcmul(C0, A0, qx), B0, qy)
                w1 = _fma(B1, qy, _fma(A1, qx, C1))
                z = _fma(Bz, qy, _fma(Az, qx, Cz))
                old, old_t, old_w0, old_w1 = S[p, 0], S[p, 1], S[p, 2], S[p, 3]
                win = (w0 >= lo) & (w1 >= lo) & (w0 + w1 <= hi) & (z > old)
                # Masked moves, not jumps, for the same reason as pass 1 (measured: a branch here costs 30 %).
                S[p, 0] = _select(win, z, old)
                S[p, 1] = _select(win, tbits, old_t)
                S[p, 2] = _select(win, w0, old_w0)
                S[p, 3] = _select(win, w1, old_w1)


@numba.njit(cache=True, nogil=True)
def _rasterize_faces(P, F, H, W, cull, eps, tri, bary, z, mask, start, stop):
    """Faces ``start:stop`` of ``P`` (B, N, 3) into the fragments ``tri`` (B, H, W) int64 (-1 where uncovered),
    ``bary`` (B, H, W, 3) float32, ``z`` (B, H, W) float32 and ``mask`` (B, H, W) bool; 0 where uncovered."""
    keep = np.empty(F.shape[0], np.int32)
    S = np.empty((H * W, 4), np.float32)  # per-pixel record, one cache line for four pixels: z, t, w0, w1
    S_int = S.view(np.int32)
    one, zero = _F(1.0), _F(0.0)
    for b in range(start, stop):
        S[:, 0] = -np.inf
        S_int[:, 1] = -1
        _rasterize_one(P[b], F, H, W, cull, eps, S, keep)
        for r in range(H):
            for q in range(W):
                p = r * W + q
                t = S_int[p, 1]
                covered = t >= 0
                u, v = S[p, 2], S[p, 3]
                tri[b, r, q] = t
                mask[b, r, q] = covered
                z[b, r, q] = S[p, 0] if covered else zero
                bary[b, r, q, 0] = u if covered else zero
                bary[b, r, q, 1] = v if covered else zero
                bary[b, r, q, 2] = (one - u - v) if covered else zero  # as torch's 1 - w0 - w1


def rasterize_numba(verts: np.ndarray, faces: np.ndarray, height: int, width: int, *,
                    cull_backfaces: bool = False, eps: float = 1e-5, threads: int = 1):
    """Numpy in and out: ``verts`` (B, N, 3) pixel coordinates, ``faces`` (T, 3) -> fragments ``(triangle, bary,
    z, mask)``: (B, H, W) int64 (-1 uncovered), (B, H, W, 3) float32, (B, H, W) float32, bool (0 uncovered).

    Same contract as ``rasterize.rasterize`` (which calls this for CPU tensors). ``threads`` Python threads split
    the faces; the kernel releases the GIL. (Not numba's ``parallel=True``: its OpenMP layer aborts DataLoader
    workers forked after the first parallel call, "fork() called from a process already using GNU OpenMP".)"""
    P = np.ascontiguousarray(verts, dtype=np.float32)
    F = np.ascontiguousarray(faces, dtype=np.int32)
    if P.ndim != 3 or P.shape[-1] != 3:
        raise ValueError(f"verts must have shape (B, N, 3), got {P.shape}")
    if F.size and (F.min() < 0 or F.max() >= P.shape[1]):
        raise ValueError(f"faces index vertices 0..{P.shape[1] - 1}, got {F.min()}..{F.max()}")
    B, H, W = P.shape[0], int(height), int(width)
    tri = np.empty((B, H, W), np.int64)
    bary = np.empty((B, H, W, 3), np.float32)
    z = np.empty((B, H, W), np.float32)
    mask = np.empty((B, H, W), np.bool_)
    args = (P, F, H, W, bool(cull_backfaces), float(eps), tri, bary, z, mask)
    n = max(1, min(int(threads), B))
    if n == 1:
        _rasterize_faces(*args, 0, B)
    else:
        bounds = [B * k // n for k in range(n + 1)]
        with ThreadPoolExecutor(n) as pool:  # a new pool per call: a forked child never inherits a dead one
            list(pool.map(lambda k: _rasterize_faces(*args, bounds[k], bounds[k + 1]), range(n)))
    return tri, bary, z, mask


def rasterize_depth_numba(verts: np.ndarray, faces: np.ndarray, height: int, width: int, *,
                          cull_backfaces: bool = False, eps: float = 1e-5, threads: int = 1):
    """z (B, H, W) float32 and mask (B, H, W) bool of ``rasterize_numba``: depth is one buffer of the fragments
    (its own kernel was only ~1.1x faster, bench/bench_buffers.py)."""
    _, _, z, mask = rasterize_numba(verts, faces, height, width, cull_backfaces=cull_backfaces, eps=eps,
                                    threads=threads)
    return z, mask


@numba.njit(cache=True, nogil=True)
def _vertex_normals_faces(P, F, out, start, stop):
    """Area-weighted unit vertex normals of meshes ``start:stop`` of ``P`` (B, N, 3) into ``out`` (B, N, 3), with
    the arithmetic of ``rasterize.vertex_normals``' torch path in its order, so that both give the same bits: cross
    products without fused multiply-adds; sums triangle by triangle, corners in order (``index_add`` over the
    flattened faces); the length's square root in float64 (torch's float32 one is not correctly rounded)."""
    T, N = F.shape[0], P.shape[1]
    tiny = _F(1e-12)
    for b in range(start, stop):
        p, vn = P[b], out[b]
        vn[:] = 0
        for t in range(T):
            i, j, k = np.uint64(F[t, 0]), np.uint64(F[t, 1]), np.uint64(F[t, 2])  # unsigned: no wraparound code
            e1x, e1y, e1z = p[j, 0] - p[i, 0], p[j, 1] - p[i, 1], p[j, 2] - p[i, 2]
            e2x, e2y, e2z = p[k, 0] - p[i, 0], p[k, 1] - p[i, 1], p[k, 2] - p[i, 2]
            nx = e1y * e2z - e1z * e2y
            ny = e1z * e2x - e1x * e2z
            nz = e1x * e2y - e1y * e2x
            for v in (i, j, k):
                vn[v, 0] += nx
                vn[v, 1] += ny
                vn[v, 2] += nz
        for v in range(N):
            x, y, z = vn[v, 0], vn[v, 1], vn[v, 2]
            n = max(_F(np.sqrt(np.float64(x * x + y * y + z * z))), tiny)
            vn[v, 0], vn[v, 1], vn[v, 2] = x / n, y / n, z / n


def vertex_normals_numba(verts: np.ndarray, faces: np.ndarray, *, threads: int = 1) -> np.ndarray:
    """Area-weighted unit vertex normals (B, N, 3) float32 of meshes ``verts`` (B, N, 3) sharing ``faces`` (T, 3):
    the CPU path of ``rasterize.vertex_normals``, ~10x its batched torch form (which moves ~1 MB per face through
    memory)."""
    P = np.ascontiguousarray(verts, dtype=np.float32)
    F = np.ascontiguousarray(faces, dtype=np.int32)
    if P.ndim != 3 or P.shape[-1] != 3:
        raise ValueError(f"verts must have shape (B, N, 3), got {P.shape}")
    if F.size and (F.min() < 0 or F.max() >= P.shape[1]):
        raise ValueError(f"faces index vertices 0..{P.shape[1] - 1}, got {F.min()}..{F.max()}")
    B = P.shape[0]
    out = np.empty_like(P)
    n = max(1, min(int(threads), B))
    if n == 1:
        _vertex_normals_faces(P, F, out, 0, B)
    else:
        bounds = [B * k // n for k in range(n + 1)]
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda k: _vertex_normals_faces(P, F, out, bounds[k], bounds[k + 1]), range(n)))
    return out
