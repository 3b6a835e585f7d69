"""Depth maps per second at 128x128: the batched torch z-buffer vs the original point-splat method, same faces.

Prints both rates, their ratio as `<number>x`, the mean absolute depth difference inside both masks (cm), the
slider-update latency of one face, and the machine. Usage: python bench/bench_depth.py [--n 256] [--batch 64]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from frankenstein_utils.facemodel import load_face_model  # noqa: E402
from frankenstein_utils.rasterize import RenderConfig, rasterize_depth, to_pixels  # noqa: E402
from frankenstein_utils.splat import splat_depth  # noqa: E402
from frankenstein_utils.widgets import FaceExplorer  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=256, help="faces for the z-buffer timing")
    ap.add_argument("--n-splat", type=int, default=32, help="faces for the (slow) splat timing")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    model = load_face_model()
    cfg = RenderConfig(resolution=a.resolution)
    reg = model.region(cfg.region)
    c = model.sample_coefficients(a.n, generator=torch.Generator().manual_seed(0))
    # Both methods get the same projected vertices; vertex computation is outside both timings.
    px = to_pixels(model.vertices(c, cfg.region), cfg).to(dev)
    faces = reg.faces.to(dev)
    R = a.resolution

    def run_zbuffer():
        out = []
        for s in range(0, a.n, a.batch):
            out.append(rasterize_depth(px[s:s + a.batch], faces, R, R, cull_backfaces=cfg.cull_backfaces))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out

    run_zbuffer()  # warm-up
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        out = run_zbuffer()
        times.append(time.perf_counter() - t0)
    z_rate = a.n / statistics.median(times)
    z = torch.cat([o[0] for o in out]).cpu().numpy()
    m = torch.cat([o[1] for o in out]).cpu().numpy()

    px_np, f_np = px[: a.n_splat].cpu().numpy(), reg.faces.numpy()
    t0 = time.perf_counter()
    splats = [splat_depth(px_np[i], f_np, R, R, rng=np.random.default_rng(i)) for i in range(a.n_splat)]
    s_rate = a.n_splat / (time.perf_counter() - t0)
    diffs = [np.abs(d[sm & m[i]] - z[i][sm & m[i]]).mean() for i, (d, sm) in enumerate(splats)]
    agree = [(sm == m[i]).mean() for i, (_, sm) in enumerate(splats)]

    # trimesh ray casting on the same meshes, when installed (orthographic rays down -z through pixel centres)
    tm_rate = None
    try:
        import trimesh

        ys, xs = np.meshgrid(np.arange(R) + 0.5, np.arange(R) + 0.5, indexing="ij")
        origins = np.stack([xs.ravel(), ys.ravel(), np.full(R * R, 1e3)], 1)
        dirs = np.tile([0.0, 0.0, -1.0], (R * R, 1))
        n_tm = min(4, a.n_splat)
        t0 = time.perf_counter()
        tm_diff = []
        for i in range(n_tm):
            mesh = trimesh.Trimesh(px_np[i], f_np, process=False)
            loc, ray_idx, _ = mesh.ray.intersects_location(origins, dirs, multiple_hits=False)
            zmap = np.zeros(R * R)
            zmap[ray_idx] = loc[:, 2]
            both = (zmap.reshape(R, R) != 0) & m[i]
            tm_diff.append(np.abs(zmap.reshape(R, R)[both] - z[i][both]).mean())
        tm_rate = n_tm / (time.perf_counter() - t0)
    except ImportError:
        pass

    ex = FaceExplorer(model, 15, cfg)
    lat = []
    for k in range(30):
        ex.update(torch.eye(15)[k % 15] * (1 if k % 2 else -1))
        lat.append(ex.last_update_ms)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, device {dev}")
    print(f"faces: {a.n} (z-buffer, batch {a.batch}, median of {a.repeats}) / {a.n_splat} (splat); "
          f"{R}x{R}, region '{cfg.region}' ({len(f_np)} triangles)")
    print(f"z-buffer (ours):      {z_rate:8.1f} depth maps/s")
    print(f"point splat (orig.):  {s_rate:8.1f} depth maps/s  (100,000 samples, max-z splat, row interpolation)")
    print(f"ratio: {z_rate / s_rate:.1f}x")
    if tm_rate is None:
        print("trimesh ray casting: trimesh not installed, skipped (pip install trimesh to compare)")
    else:
        print(f"trimesh ray casting:  {tm_rate:8.1f} depth maps/s, ratio ours/trimesh {z_rate / tm_rate:.1f}x, "
              f"mean |depth difference| {np.mean(tm_diff):.4f}")
    print(f"agreement: mean |depth difference| inside both masks {np.mean(diffs):.3f} cm "
          f"(pixel = {24.5 / R:.3f} cm); masks agree on {100 * np.mean(agree):.2f} % of pixels")
    print(f"slider update (render + PNG, one face): median {statistics.median(lat):.1f} ms, max {max(lat):.1f} ms")


if __name__ == "__main__":
    main()
