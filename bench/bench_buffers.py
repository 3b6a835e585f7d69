"""Render buffers per second beside depth maps per second, on the same faces, at 64 and 128 px, 1 and 2 threads.

Buffers = what ``render_mesh_buffers`` makes from one rasterization: depth and mask, a per-vertex 3-channel colour
interpolated, and unit normals (area-weighted vertex normals of the posed mesh, interpolated and renormalized); on
the CPU the colour and normals come from one compiled pass over the pixels (``raster_numba.interpolate_numba``),
which computes only the vertex normals of the corners it meets.
Depth = ``render_mesh_depth``, today's depth path, which is now the same rasterizer's z-buffer (``rasterize_depth``
is a thin wrapper over ``rasterize``). Both include projection and depth normalization; vertex computation is
outside all timings. Prints each rate, the time ratio buffers / depth as ``<number>x`` (target: within 1.5x), the
stage times of a buffer render, and whether the compiled and torch paths give the same fragments and buffers.
Torch and the compiled kernels get the same thread count (``torch.set_num_threads``). OpenMP's idle threads sleep
(``OMP_WAIT_POLICY=PASSIVE`` unless set otherwise): spinning, torch's second OpenMP thread burns a core while the
compiled kernels' own threads run, which the CPU-time rates would count (measured: depth at 64 px, 2 threads, 0.93
instead of 0.46 CPU-ms per face on the loaded 2-core machine).
Usage: python bench/bench_buffers.py [--n 256] [--batch 64] [--resolutions 64 128] [--threads 1 2]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see above)
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_depth import rate  # noqa: E402  (one definition of how a rate is measured)

from frankenstein_utils.facemodel.model import load_face_model  # noqa: E402
from frankenstein_utils.render.raster_numba import interpolate_numba  # noqa: E402
from frankenstein_utils.render.rasterize import (RenderConfig, interpolate, rasterize, render_mesh_buffers,
                                                 render_mesh_depth, to_pixels, vertex_normals)


def stage_ms(fn, n, repeats):
    """Median CPU milliseconds per face of ``fn`` over ``n`` faces."""
    fn()
    out = []
    for _ in range(repeats):
        c0 = time.process_time()
        fn()
        out.append(time.process_time() - c0)
    return 1000 * statistics.median(out) / n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=256, help="faces per timing")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    model = load_face_model()
    g = torch.Generator().manual_seed(0)
    cfg0 = RenderConfig()
    faces = model.region(cfg0.region).faces
    verts = model.vertices(model.sample_coefficients(a.n, generator=g), cfg0.region)
    colours = torch.rand(a.n, verts.shape[1], 3, generator=g)  # per face, as an appearance model gives them
    batches = [slice(s, s + a.batch) for s in range(0, a.n, a.batch)]

    rows, stages, same, same_buf = [], {}, {}, {}
    for R in a.resolutions:
        cfg = RenderConfig(resolution=R)
        depth = lambda: [render_mesh_depth(verts[s], faces, cfg) for s in batches]
        buffers = lambda: [render_mesh_buffers(verts[s], faces, cfg, attributes={"colour": colours[s]})
                           for s in batches]
        for t in a.threads:
            torch.set_num_threads(t)
            d_wall, d_cpu, d_best = rate(depth, a.n, a.repeats)
            b_wall, b_cpu, b_best = rate(buffers, a.n, a.repeats)
            rows.append((R, t, d_wall, b_wall, d_cpu, b_cpu, d_best, b_best))
        # Stages of one batch at 1 thread: where a buffer render's extra time goes
        torch.set_num_threads(1)
        v, c = verts[:a.batch], colours[:a.batch]
        px = to_pixels(v, cfg)
        frags = rasterize(px, faces, R, R, cull_backfaces=cfg.cull_backfaces)
        tri, bary, F = frags.triangle.numpy(), frags.bary.numpy(), faces.numpy()
        nb = v.shape[0]
        stages[R] = {
            "fragments (rasterize)": stage_ms(lambda: rasterize(px, faces, R, R, cull_backfaces=True), nb, a.repeats),
            "colour + normals (one compiled pass)":
                stage_ms(lambda: interpolate_numba(tri, bary, F, [c.numpy()], v.numpy()), nb, a.repeats),
            "colour alone": stage_ms(lambda: interpolate(frags, faces, c), nb, a.repeats),
            "normals alone": stage_ms(lambda: interpolate_numba(tri, bary, F, [], v.numpy()), nb, a.repeats),
            "for comparison: all vertex normals": stage_ms(lambda: vertex_normals(v, faces), nb, a.repeats),
            "torch interpolate colour": stage_ms(lambda: interpolate(frags, faces, c, backend="torch"), nb,
                                                 a.repeats),
        }
        ft = rasterize(px, faces, R, R, cull_backfaces=True, backend="torch")
        same[R] = all(torch.equal(x, y) for x, y in zip(frags, ft))
        bn = render_mesh_buffers(v, faces, cfg, attributes={"colour": c}, backend="numba")
        bt = render_mesh_buffers(v, faces, cfg, attributes={"colour": c}, backend="torch")
        same_buf[R] = all(torch.equal(bn[k], bt[k]) for k in ("depth", "colour", "normal"))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.2f} at start of printout, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    print(f"faces: {a.n} (batch {a.batch}, median of {a.repeats} repeats), region '{cfg0.region}' ({len(faces)} "
          f"triangles, {verts.shape[1]} vertices), backface culling, per-face 3-channel colours")
    print("size  threads  depth maps/s  buffer sets/s  buffers/depth time  | per CPU-second: depth  buffers  ratio")
    for R, t, d_wall, b_wall, d_cpu, b_cpu, _, _ in rows:
        print(f"{R:4d}  {t:7d}  {d_wall:12.1f}  {b_wall:13.1f}  {d_wall / b_wall:17.2f}x  | "
              f"{d_cpu:22.1f}  {b_cpu:7.1f}  {d_cpu / b_cpu:5.2f}x")
    for R, t, _, _, _, _, d_best, b_best in rows:
        print(f"best of {a.repeats} repeats, {R} px, {t} thread(s): depth {d_best:.1f}/s, buffers {b_best:.1f}/s, "
              f"ratio {d_best / b_best:.2f}x")
    for R, st in stages.items():
        print(f"stages at {R} px, 1 thread, ms per face (CPU): " + ", ".join(f"{k} {v:.3f}" for k, v in st.items()))
    worst = max(r[4] / r[5] for r in rows)
    print(f"buffers / depth, worst row per CPU-second: {worst:.2f}x (target <= 1.5x: "
          f"{'met' if worst <= 1.5 else 'not met'})")
    one = [r[4] / r[5] for r in rows if r[1] == 1]
    if one and len(one) < len(rows):  # on a shared machine the 1-thread rows are the ones not waiting for a core
        print(f"buffers / depth, worst 1-thread row per CPU-second: {max(one):.2f}x")
    print("compiled vs torch fragments (triangle, bary, zbuf, mask) on the first batch: " +
          ", ".join(f"{R} px identical: {v}" for R, v in same.items()))
    print("compiled vs torch buffers (depth, colour, normal) on the first batch: " +
          ", ".join(f"{R} px identical: {v}" for R, v in same_buf.items()))


if __name__ == "__main__":
    main()
