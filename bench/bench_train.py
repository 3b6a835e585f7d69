"""Training throughput of each supervised generator: images/s at 128x128, batch 8, with parameter counts.

Each model runs the real training step (``Trainer``) on in-memory random pairs, after warm-up steps; the ratio column
is its rate relative to the U generator measured in the same run. Usage: python bench/bench_train.py [--steps 10]
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
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from frankenstein_utils.models import count_parameters  # noqa: E402
from frankenstein_utils.training import Trainer, supervised_config  # noqa: E402


class RandomPairs(Dataset):
    def __init__(self, n, size):
        g = torch.Generator().manual_seed(0)
        self.img = torch.rand(n, 3, size, size, generator=g) * 2 - 1
        self.depth = torch.rand(n, 1, size, size, generator=g)

    def __len__(self):
        return len(self.img)

    def __getitem__(self, i):
        return {"image": self.img[i], "depth": self.depth[i], "mask": (self.depth[i] > 0.3).float(), "index": i}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--models", nargs="*", default=["U", "V", "F", "NU", "cvae"])
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)
    data = {"paired": RandomPairs(4 * a.batch, a.size)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models:
            cfg = supervised_config(name, image_size=a.size, batch_size=a.batch, width=a.width, device=a.device,
                                    steps=a.warmup, out_dir=f"{tmp}/{name}", checkpoint_every=0, sample_every=0,
                                    log_every=10 ** 9)
            t = Trainer(cfg, data, resume=False)
            t.fit(progress=False)  # warm-up
            t.cfg.steps = a.warmup + a.steps
            t0 = time.perf_counter()
            t.fit(progress=False)
            if t.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            params = sum(count_parameters(n) for n in t.nets.values())
            rows.append((name, a.steps * a.batch / dt, dt / a.steps, params, t.device))
    ref = rows[0][1]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {a.size}x{a.size}, batch {a.batch}, width {a.width}, "
          f"{a.steps} timed steps after {a.warmup} warm-up")
    print(f"{'model':6} {'device':6} {'images/s':>9} {'s/step':>8} {'params':>10} {'vs ' + rows[0][0]:>7}")
    for name, rate, sps, params, dev in rows:
        print(f"{name:6} {dev.type:6} {rate:9.1f} {sps:8.3f} {params:10,d} {rate / ref:6.2f}x")


if __name__ == "__main__":
    main()
