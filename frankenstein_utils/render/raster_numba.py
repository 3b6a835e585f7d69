"""The rasterizer of ``render/rasterize.py`` compiled with numba: loops over triangles per face, threads over faces.

It returns fragments: per pixel the winning (nearest) triangle, its barycentric weights and its z. It repeats the
torch path's float32 arithmetic step by step (bounding box of pixel centres, edge tests relative to each triangle's
first pixel centre, the same ``eps``, the fused multiply-adds of ``torch.addcmul``, ties to the smallest triangle
index), so both give the same fragments bit for bit; the torch path stays for CUDA. At 128x128 most of the face's
38k triangles cover at most one or two pixel centres, which a plain loop handles with a few dozen instructions each,
where the torch path needs ~60 batched tensor operations and their gathers (bench/bench_depth.py compares the two).

``interpolate_numba`` turns fragments into attribute and normal buffers in one pass over the pixels, with the arithmetic
of ``render.rasterize.interpolate``'s torch path (separately rounded products and sums), so again the same bits.

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


def _mesh_arrays(verts, faces):
    """Contiguous float32 vertices (B, N, 3) and int32 triangles (T, 3), checked (one clear line when wrong)."""
    P = np.ascontiguousarray(verts, dtype=np.float32)
    F = np.ascontiguousarray(faces, dtype=np.int32)
    if P.ndim != 3 or P.shape[-1] != 3:
        raise ValueError(f"verts must have shape (B, N, 3), got {P.shape}")
    if F.size and (F.min() < 0 or F.max() >= P.shape[1]):
        raise ValueError(f"faces index vertices 0..{P.shape[1] - 1}, got {F.min()}..{F.max()}")
    return P, F


def rasterize_numba(verts: np.ndarray, faces: np.ndarray, height: int, width: int, *,
                    cull_backfaces: bool = False, eps: float = 1e-5, threads: int = 1):
    """Numpy in and out: ``verts`` (B, N, 3) pixel coordinates, ``faces`` (T, 3) -> fragments ``(triangle, bary,
    z, mask)``: (B, H, W) int64 (-1 uncovered), (B, H, W, 3) float32, (B, H, W) float32, bool (0 uncovered).

    Same contract as ``render.rasterize.rasterize`` (which calls this for CPU tensors). ``threads`` Python threads split
    the faces; the kernel releases the GIL. (Not numba's ``parallel=True``: its OpenMP layer aborts DataLoader
    workers forked after the first parallel call, "fork() called from a process already using GNU OpenMP".)"""
    P, F = _mesh_arrays(verts, faces)
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
    """Area-weighted unit vertex normals of meshes ``start:stop`` of ``P`` (B, N, 3) into ``out`` (B, N, 3), with the
    arithmetic of ``render.rasterize.vertex_normals``' torch path in its order, so that both give the same bits: cross
    products without fused multiply-adds; sums triangle by triangle, corners in order (``index_add`` over the flattened
    faces); the length's square root in float64 (torch's float32 one is not correctly rounded)."""
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
    the CPU path of ``render.rasterize.vertex_normals``, ~10x its batched torch form (which moves ~1 MB per face through
    memory)."""
    P, F = _mesh_arrays(verts, faces)
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


# ---- interpolation: per-vertex attributes and normals at the covered pixels ---------------------------------------
@numba.njit(cache=True, nogil=True)
def _vertex_triangles(F, N):
    """The triangles around each vertex, as ``start`` (N + 1,) and ``corners`` (3T, 3): vertex v's triangles are
    ``corners[start[v]:start[v + 1]]`` (their three corners, as in ``F``), in the order of the flattened ``F``
    (triangle by triangle, corners in order), the order in which ``index_add`` sums them in
    ``render.rasterize.vertex_normals``. A counting sort, ~0.2 ms for the face mesh."""
    T = F.shape[0]
    start = np.zeros(N + 1, np.int64)
    for t in range(T):
        for k in range(3):
            start[F[t, k] + 1] += 1
    for v in range(N):
        start[v + 1] += start[v]
    fill = start[:N].copy()
    corners = np.empty((3 * T, 3), np.int32)
    for t in range(T):
        for k in range(3):
            q = fill[F[t, k]]
            corners[q, 0], corners[q, 1], corners[q, 2] = F[t, 0], F[t, 1], F[t, 2]
            fill[F[t, k]] = q + 1
    return start, corners


@numba.njit(cache=True, nogil=True, inline="always")
def _touch(a, scratch):
    """Read one value per 64-byte line of the contiguous array ``a``, in order: the hardware prefetcher streams
    it into the cache far faster than the scattered reads that follow would fetch it line by line."""
    x = a.reshape(-1)
    acc = x.dtype.type(0)
    for q in range(0, x.size, 64 // x.itemsize):
        acc += x[q]
    scratch[0] = acc  # kept, so not optimized away


@numba.njit(cache=True, nogil=True)
def _interpolate_faces(tri, bary, F, attr, A, out, normals, P, start_v, corners_v, nout, start, stop):
    """Faces ``start:stop`` of the fragments ``tri`` (B, HW) and ``bary`` (B, HW, 3). With ``attr``: the per-vertex
    attribute ``A`` (1 or B, N, C) into ``out`` (B, HW, C), as ``w0 * a0 + w1 * a1 + w2 * a2`` left to right (the
    arithmetic of ``rasterize``'s torch path), 0 where uncovered. With ``normals``: the unit normals of the meshes
    ``P`` (B, N, 3) into ``nout`` (B, HW, 3): the area-weighted vertex normals of the corners seen, each summed over
    the triangles around it (``start_v``, ``corners_v`` of ``_vertex_triangles``) with the arithmetic of
    ``_vertex_normals_faces`` in its order, interpolated likewise and unit again (the square root in float64, as
    everywhere). Normals of vertices that no covered pixel needs are not computed (a face shows about a quarter of
    its vertices at 128 px, a sixth at 64 px). One pass over the pixels writes both, in order."""
    HW, T = tri.shape[1], F.shape[0]
    C = out.shape[2]
    N = P.shape[1]
    vn = np.empty((N, 3), np.float32)
    need = np.empty(N, np.bool_)
    scratch = np.empty(1, np.float64)
    zero, tiny = _F(0.0), _F(1e-12)
    for b in range(start, stop):
        if normals:
            pb = P[b]
            _touch(pb, scratch)
            need[:] = False
            for p in range(HW):
                t = tri[b, p]
                if t >= T:
                    raise ValueError("fragments name triangles beyond faces")
                if t >= 0:
                    need[F[t, 0]] = True
                    need[F[t, 1]] = True
                    need[F[t, 2]] = True
            for v in range(N):
                if not need[v]:
                    continue
                sx, sy, sz = _F(0.0), _F(0.0), _F(0.0)
                for q in range(start_v[v], start_v[v + 1]):
                    i, j, k = np.uint64(corners_v[q, 0]), np.uint64(corners_v[q, 1]), np.uint64(corners_v[q, 2])
                    e1x, e1y, e1z = pb[j, 0] - pb[i, 0], pb[j, 1] - pb[i, 1], pb[j, 2] - pb[i, 2]
                    e2x, e2y, e2z = pb[k, 0] - pb[i, 0], pb[k, 1] - pb[i, 1], pb[k, 2] - pb[i, 2]
                    sx += e1y * e2z - e1z * e2y
                    sy += e1z * e2x - e1x * e2z
                    sz += e1x * e2y - e1y * e2x
                ln = max(_F(np.sqrt(np.float64(sx * sx + sy * sy + sz * sz))), tiny)
                vn[v, 0], vn[v, 1], vn[v, 2] = sx / ln, sy / ln, sz / ln
        ab = A[b] if A.shape[0] > 1 else A[0]
        ob = out[b if attr else 0]
        if attr:
            _touch(ab, scratch)
        for p in range(HW):
            t = tri[b, p]
            if t < 0:
                if attr:
                    for c in range(C):
                        ob[p, c] = 0
                if normals:
                    nout[b, p, 0], nout[b, p, 1], nout[b, p, 2] = zero, zero, zero
                continue
            if t >= T:
                raise ValueError("fragments name triangles beyond faces")
            i, j, k = np.uint64(F[t, 0]), np.uint64(F[t, 1]), np.uint64(F[t, 2])  # unsigned: no wraparound code
            w0, w1, w2 = bary[b, p, 0], bary[b, p, 1], bary[b, p, 2]
            if attr:
                for c in range(C):
                    ob[p, c] = w0 * ab[i, c] + w1 * ab[j, c] + w2 * ab[k, c]
            if normals:
                x = w0 * vn[i, 0] + w1 * vn[j, 0] + w2 * vn[k, 0]
                y = w0 * vn[i, 1] + w1 * vn[j, 1] + w2 * vn[k, 1]
                z = w0 * vn[i, 2] + w1 * vn[j, 2] + w2 * vn[k, 2]
                ln = max(_F(np.sqrt(np.float64(x * x + y * y + z * z))), tiny)
                nout[b, p, 0], nout[b, p, 1], nout[b, p, 2] = x / ln, y / ln, z / ln


def _empty(shape, dtype) -> np.ndarray:
    """``np.empty`` from torch's allocator. numpy's own advises the kernel to back arrays of 4 MB and more with huge
    pages, and then every fresh output buffer costs page faults: measured 0.2-0.4 ms of system time per face at
    128 px for the two buffers (numpy 2.4, Linux with transparent huge pages on "madvise"); torch's reuses freed
    memory without faults."""
    import torch  # loaded already wherever this runs from rasterize.py

    return torch.empty(shape, dtype=torch.float64 if dtype == np.float64 else torch.float32).numpy()


def interpolate_numba(triangle: np.ndarray, bary: np.ndarray, faces: np.ndarray, attributes=(), normals_of=None, *,
                      threads: int = 1):
    """Numpy in and out: fragments ``triangle`` (B, H, W) int64 and ``bary`` (B, H, W, 3) float32 of meshes with
    ``faces`` (T, 3) -> a list of (B, H, W, C) per attribute of ``attributes`` (each (N, C) or (1 or B, N, C), float32
    or float64, out in its dtype) and, with ``normals_of`` (the meshes (B, N, 3) float32), their unit normal buffer (B,
    H, W, 3) float32 (else None). The CPU path of ``render.rasterize.interpolate`` and
    ``render.rasterize.render_mesh_buffers``, with the same arithmetic, so the same bits; 0 where uncovered. One pass
    over the pixels per attribute, the normals with the first; ``threads`` Python threads split the faces."""
    tri = np.ascontiguousarray(triangle, dtype=np.int64)
    wts = np.ascontiguousarray(bary, dtype=np.float32)
    F = np.ascontiguousarray(faces, dtype=np.int32)
    if tri.ndim != 3 or wts.shape != (*tri.shape, 3):
        raise ValueError(f"fragments must be (B, H, W) and (B, H, W, 3), got {tri.shape} and {wts.shape}")
    B, H, W = tri.shape
    tri, wts = tri.reshape(B, H * W), wts.reshape(B, H * W, 3)
    attrs = []
    for a in attributes:
        a = np.ascontiguousarray(a)
        a = a[None] if a.ndim == 2 else a
        if a.ndim != 3 or a.shape[0] not in (1, B) or a.dtype not in (np.float32, np.float64):
            raise ValueError(f"attributes must be float32 or float64 with shape (N, C) or (B={B}, N, C), got "
                             f"{a.shape} {a.dtype}")
        attrs.append(a)
    if normals_of is not None:
        P = np.ascontiguousarray(normals_of, dtype=np.float32)
        if P.ndim != 3 or P.shape[0] != B or P.shape[2] != 3:
            raise ValueError(f"normals_of must have shape (B={B}, N, 3), got {P.shape}")
    if F.size:
        lo, hi = F.min(), F.max()
        for a in attrs + ([P] if normals_of is not None else []):
            if lo < 0 or hi >= a.shape[1]:
                raise ValueError(f"faces index vertices 0..{a.shape[1] - 1}, got {lo}..{hi}")
    outs = [_empty((B, H * W, a.shape[2]), a.dtype) for a in attrs]
    nout = None
    none, no_mesh = np.zeros((1, 1, 1), np.float32), np.zeros((1, 1, 3), np.float32)  # what a call skips
    calls = [[True, a, o, False, no_mesh, no_mesh] for a, o in zip(attrs, outs)]
    if normals_of is not None:
        start_v, corners_v = _vertex_triangles(F, P.shape[1])
        nout = _empty((B, H * W, 3), np.float32)
        if not calls:
            calls.append([False, none, none, False, None, None])
        calls[0][3:] = [True, P, nout]  # with the first attribute, in the same pass over the pixels
    else:
        start_v, corners_v = np.zeros(2, np.int64), np.zeros((0, 3), np.int32)

    def work(lo, hi):
        for attr, a, o, normals, p, no in calls:
            _interpolate_faces(tri, wts, F, attr, a, o, normals, p, start_v, corners_v, no, lo, hi)

    n = max(1, min(int(threads), B))
    if n == 1:
        work(0, B)
    else:
        bounds = [B * k // n for k in range(n + 1)]
        with ThreadPoolExecutor(n) as pool:  # a new pool per call: a forked child never inherits a dead one
            list(pool.map(lambda k: work(bounds[k], bounds[k + 1]), range(n)))
    return [o.reshape(B, H, W, -1) for o in outs], (None if nout is None else nout.reshape(B, H, W, 3))
