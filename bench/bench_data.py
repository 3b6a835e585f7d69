"""Data loading: synthetic depth maps rendered on the fly vs read back from 16-bit PNGs, through a DataLoader.

Both datasets hold the same faces (same seed and configuration); each is read in full through a DataLoader with the
given workers, batch 64; the ratio is on-the-fly / PNG in the same run. Usage: python bench/bench_data.py [--n 512]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from frankenstein_utils.data.depth_sets import DepthMapDataset, RenderedDepthDataset, generate_depth_dataset  # noqa: E402
from frankenstein_utils.facemodel.model import load_face_model  # noqa: E402
from frankenstein_utils.render.rasterize import RenderConfig  # noqa: E402


def rate(ds, workers, batch):
    loader = DataLoader(ds, batch_size=batch, num_workers=workers)
    t0 = time.perf_counter()
    n = sum(len(b["depth"]) for b in loader)
    return n / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--workers", type=int, nargs="*", default=[0, 2])
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args(argv)
    model = load_face_model()
    cfg = RenderConfig(resolution=a.resolution)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; {a.n} faces "
          f"{a.resolution}x{a.resolution}, DataLoader batch {a.batch}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        generate_depth_dataset(a.n, tmp, seed=0, render=cfg, model=model, progress=False)
        print(f"writing the PNG set once: {a.n / (time.perf_counter() - t0):.0f} faces/s")
        png = DepthMapDataset(tmp)
        live = RenderedDepthDataset(a.n, seed=0, render=cfg, model=model)
        for w in a.workers:
            r_png, r_live = rate(png, w, a.batch), rate(live, w, a.batch)
            print(f"workers {w}: PNG {r_png:7.0f} maps/s, on the fly {r_live:7.0f} maps/s, ratio {r_live / r_png:.2f}x")
        t0 = time.perf_counter()
        for s in range(0, a.n, a.batch):
            live.render_batch(list(range(s, min(s + a.batch, a.n))))
        print(f"on the fly, batched (render_batch, no DataLoader): {a.n / (time.perf_counter() - t0):.0f} maps/s")


if __name__ == "__main__":
    main()
