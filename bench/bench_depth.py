"""Depth maps per second at 128x128 on the same faces: the compiled z-buffer (numba), the batched torch z-buffer and
the original point-splat method, at 1 and 2 threads.

Prints each rate, the ratios as `<number>x`, how closely the compiled and torch z-buffers agree (they do the same
float32 arithmetic), the compile and cache-load time of the compiled kernel (each in a fresh process, outside the
throughput timing), how the point splat agrees with the z-buffer, and the machine. Torch and the compiled kernel
get the same thread count (``torch.set_num_threads``; the numba path threads over faces with as many threads).
Usage: python bench/bench_depth.py [--n 256] [--batch 64] [--threads 1 2] [--device cuda]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from frankenstein_utils.facemodel.model import load_face_model  # noqa: E402
from frankenstein_utils.render.rasterize import RenderConfig, rasterize_depth, to_pixels  # noqa: E402
from frankenstein_utils.render.splat import splat_depth  # noqa: E402

# First use of the kernel in a fresh process: import numba, then compile it or load it from the cache dir.
FIRST_CALL = """
import time, numpy as np
t0 = time.perf_counter()
from frankenstein_utils.render.raster_numba import rasterize_depth_numba
t1 = time.perf_counter()
rasterize_depth_numba(np.zeros((1, 3, 3), np.float32), np.array([[0, 1, 2]]), 4, 4)
print(t1 - t0, time.perf_counter() - t1)
"""


def first_call_seconds(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", FIRST_CALL], env=env, capture_output=True, text=True, check=True)
    return [float(x) for x in out.stdout.split()]


def rate(fn, n, repeats):
    """Depth maps per second of wall time and per second of this process's CPU time (all threads), medians, and
    the best wall-time rate of the repeats. On a shared machine the CPU-time rate is the steadier: it does not count
    time spent waiting for a core."""
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return n / statistics.median(wall), n / statistics.median(cpu), n / min(wall)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=256, help="faces for the z-buffer timings")
    ap.add_argument("--n-splat", type=int, default=32, help="faces for the (slow) splat timing")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    model = load_face_model()
    cfg = RenderConfig(resolution=a.resolution)
    reg = model.region(cfg.region)
    R = a.resolution
    c = model.sample_coefficients(a.n, generator=torch.Generator().manual_seed(0))
    # Every method gets the same projected vertices; vertex computation is outside all timings.
    px = to_pixels(model.vertices(c, cfg.region), cfg)
    faces = reg.faces

    def zbuffer(backend, verts):
        def run():
            out = [rasterize_depth(verts[s:s + a.batch], faces, R, R, cull_backfaces=cfg.cull_backfaces,
                                   backend=backend) for s in range(0, a.n, a.batch)]
            if verts.device.type == "cuda":
                torch.cuda.synchronize()
            return out
        return run

    with tempfile.TemporaryDirectory() as cache:
        import_s, compile_s = first_call_seconds(cache)  # empty cache dir: compiles
        _, load_s = first_call_seconds(cache)  # same dir: loads the compiled kernel

    rows = []
    for t in a.threads:
        torch.set_num_threads(t)
        (n_rate, n_cpu, n_best), (t_rate, t_cpu, t_best) = (rate(zbuffer(b, px), a.n, a.repeats)
                                                            for b in ("numba", "torch"))
        rows.append((t, n_rate, t_rate, n_cpu, t_cpu, n_best, t_best))
    gpu_rate = rate(zbuffer("torch", px.to(dev)), a.n, a.repeats)[0] if dev.type == "cuda" else None

    # Agreement of the two z-buffers on all faces
    torch.set_num_threads(max(a.threads))
    zn, mn = (torch.cat(x) for x in zip(*zbuffer("numba", px)()))
    zt, mt = (torch.cat(x) for x in zip(*zbuffer("torch", px)()))
    both = mn & mt
    z_diff = float((zn - zt)[both].abs().max()) if both.any() else 0.0

    # The original method (numpy, one thread) on the first faces
    px_np, f_np = px[: a.n_splat].numpy(), faces.numpy()
    torch.set_num_threads(1)
    t0, c0 = time.perf_counter(), time.process_time()
    splats = [splat_depth(px_np[i], f_np, R, R, rng=np.random.default_rng(i)) for i in range(a.n_splat)]
    s_rate, s_cpu = a.n_splat / (time.perf_counter() - t0), a.n_splat / (time.process_time() - c0)
    z, m = zn.numpy(), mn.numpy()
    diffs = [np.abs(d[sm & m[i]] - z[i][sm & m[i]]).mean() for i, (d, sm) in enumerate(splats)]
    agree = [(sm == m[i]).mean() for i, (_, sm) in enumerate(splats)]

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.2f} at start of printout")
    print(f"faces: {a.n} (z-buffers, batch {a.batch}, median of {a.repeats}) / {a.n_splat} (splat); "
          f"{R}x{R}, region '{cfg.region}' ({len(f_np)} triangles)")
    print(f"compiled kernel: import numba {import_s:.2f} s, first call {compile_s:.2f} s compiling (empty cache), "
          f"{load_s:.2f} s loading it from the cache; not in the rates below")
    print(f"point splat (original, numpy): {s_rate:8.1f} depth maps/s, {s_cpu:.1f} per CPU-second")
    print("threads  compiled maps/s  torch maps/s  compiled/torch  compiled/original  torch/original  "
          "| per CPU-second: compiled  torch  compiled/torch")
    for t, n_rate, t_rate, n_cpu, t_cpu, _, _ in rows:
        print(f"{t:7d}  {n_rate:15.1f}  {t_rate:12.1f}  {n_rate / t_rate:13.1f}x  {n_rate / s_rate:16.1f}x  "
              f"{t_rate / s_rate:13.1f}x  | {n_cpu:24.1f}  {t_cpu:5.1f}  {n_cpu / t_cpu:12.1f}x")
    for t, _, _, _, _, n_best, t_best in rows:
        print(f"best of {a.repeats} repeats, {t} thread(s): compiled {n_best:.1f} maps/s, torch {t_best:.1f} maps/s, "
              f"ratio {n_best / t_best:.1f}x")
    if len(rows) > 1:
        print(f"scaling {rows[0][0]} -> {rows[-1][0]} threads: compiled {rows[-1][1] / rows[0][1]:.2f}x, "
              f"torch {rows[-1][2] / rows[0][2]:.2f}x")
    if gpu_rate is not None:
        print(f"torch z-buffer on {torch.cuda.get_device_name(dev)}: {gpu_rate:.1f} depth maps/s, "
              f"{gpu_rate / max(r[1] for r in rows):.1f}x the fastest compiled CPU rate")
    print(f"compiled vs torch on all {a.n} faces: masks differ at {int((mn != mt).sum())} of {mn.numel()} pixels, "
          f"max |z difference| {z_diff:.3g} (identical: {bool(torch.equal(mn, mt) and torch.equal(zn, zt))})")
    best_n, best_t = max(r[1] for r in rows), max(r[2] for r in rows)
    print(f"default for CPU tensors (rasterize_depth backend='auto'): numba; fastest compiled / fastest torch here "
          f"{best_n / best_t:.1f}x" + ("" if best_n > best_t else "  <- torch was faster in this run"))
    print(f"splat agreement: mean |depth difference| inside both masks {np.mean(diffs):.3f} cm "
          f"(pixel = {24.5 / R:.3f} cm); masks agree on {100 * np.mean(agree):.2f} % of pixels")


if __name__ == "__main__":
    main()
