"""Training throughput per mode and generator: images/s at 128x128, batch 8, parameter counts and peak memory.

The flagship and the peers (pix2pix, BicycleGAN; ``frankenstein_utils/objectives/flagship.py``) run with their presets; the
flagship row "as shipped" uses the shipped model's widths (24). images/s counts the batch drawn per stream per step
(the flagship also generates as many faces from synthetic depth in the same step: "G images/step" says so).
Compare the flagship at its own size with ``--size 64 --only "supervised U" "flagship (as shipped)"``, the buffers
generator with the same recipe on depth alone with ``--size 64 --batch 16 --only "flagship (width 16)" "buffers (as
shipped)"`` (the ratio column is then relative to the depth-only row).

Each configuration runs the real training step (``Trainer``) on in-memory random data after warm-up steps; the
ratio column is its rate relative to the first row (supervised U), measured in the same run. Peak memory: the
process's maximum resident set (CPU) or ``torch.cuda.max_memory_allocated`` (GPU) after that configuration.
Usage: python bench/bench_train.py [--steps 10] [--device cuda]
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from frankenstein_utils.nets.layers import count_parameters  # noqa: E402
from frankenstein_utils.study.ablation import preset  # noqa: E402
from frankenstein_utils.train.config import TrainConfig
from frankenstein_utils.train.trainer import Trainer  # noqa: E402

CONFIGS = [  # (label, TrainConfig overrides)
    ("supervised U", dict(mode="l1", generator="U")),
    ("supervised V", dict(mode="l1", generator="V")),
    ("supervised F", dict(mode="l1", generator="F")),
    ("supervised NU", dict(mode="l1", generator="NU")),
    ("cvae", dict(mode="cvae")),
    ("gan (lsgan)", dict(mode="gan")),
    ("gan+recon", dict(mode="gan+recon")),
    ("l1+gan", dict(mode="l1+gan")),
    ("pix2pix", preset("pix2pix")),
    ("bicyclegan", preset("bicyclegan")),
    ("flagship", preset("flagship")),
    ("flagship (as shipped)", preset("flagship", width=24, d_width=24, encoder_width=24)),
    # the buffers generator as shipped (depth + colour + normals, 7 input channels) beside the same recipe on depth
    ("flagship (width 16)", preset("flagship", width=16, d_width=16, encoder_width=16)),
    ("buffers (as shipped)", preset("flagship", width=16, d_width=16, encoder_width=16, buffers="colour,normal",
                                    appearance_k=40)),
]
G_IMAGES_PER_STEP = {"flagship": 2, "flagship (as shipped)": 2, "flagship (width 16)": 2,
                     "buffers (as shipped)": 2}  # x batch: paired + synthetic branch


class RandomData(Dataset):
    def __init__(self, n, size):
        g = torch.Generator().manual_seed(0)
        self.img = torch.rand(n, 3, size, size, generator=g) * 2 - 1
        self.depth = torch.rand(n, 1, size, size, generator=g)
        self.buffers = torch.rand(n, 6, size, size, generator=g)  # read only by a buffers run

    def __len__(self):
        return len(self.img)

    def __getitem__(self, i):
        return {"image": self.img[i], "depth": self.depth[i], "mask": (self.depth[i] > 0.3).float(), "index": i,
                "buffers": self.buffers[i]}


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def explorer_latency(n: int = 30) -> None:
    """One slider update of ``FaceExplorer.with_pretrained`` with the default shipped generator (render the depth
    at the model's resolution, for a buffers generator the appearance render and its buffers, + generate the face),
    median and 90th percentile over ``n`` updates with random shapes."""
    import numpy as np

    from frankenstein_utils.apps.widgets import FaceExplorer
    from frankenstein_utils.facemodel.model import load_face_model
    from frankenstein_utils.pretrained.shipped import load_pretrained

    gen = load_pretrained()
    ex = FaceExplorer.with_pretrained(load_face_model())  # a buffers generator: with its appearance panel
    g = torch.Generator().manual_seed(0)
    ex.update(torch.zeros(15))  # warm-up
    ms = []
    for _ in range(n):
        ex.update(torch.randn(15, generator=g))
        ms.append(ex.last_update_ms)
    print(f"FaceExplorer update with the shipped model ({gen.cfg.image_size} px, {torch.get_num_threads()} threads): "
          f"median {np.median(ms):.1f} ms, 90th percentile {np.percentile(ms, 90):.1f} ms over {n} updates "
          f"(target < 100 ms): {'met' if np.median(ms) < 100 else 'NOT met'}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--explorer", action="store_true", help="also time a slider update with the shipped model")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--only", nargs="*", help="labels to run (default: all)")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)
    data = RandomData(4 * a.batch, a.size)
    streams = {"paired": data, "synthetic": data, "real": data}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, over in CONFIGS:
            if a.only and label not in a.only:
                continue
            cfg = TrainConfig(**{**dict(width=a.width, d_width=a.width), **over, **dict(
                image_size=a.size, batch_size=a.batch, device=a.device, steps=a.warmup, out_dir=f"{tmp}/{len(rows)}",
                checkpoint_every=0, sample_every=0, log_every=10 ** 9)})
            t = Trainer(cfg, streams, resume=False)
            t.fit(progress=False)  # warm-up
            t.cfg.steps = a.warmup + a.steps
            t0 = time.perf_counter()
            t.fit(progress=False)
            if t.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            params = sum(count_parameters(n) for n in t.nets.values())
            rows.append((label, a.steps * a.batch / dt, dt / a.steps, params, peak_memory_mb(t.device), t.device,
                         G_IMAGES_PER_STEP.get(label, 1) * a.batch))
    ref = rows[0][1]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {a.size}x{a.size}, batch {a.batch}, width {a.width}, "
          f"{a.steps} timed steps after {a.warmup} warm-up")
    print(f"{'configuration':22} {'device':6} {'images/s':>9} {'s/step':>8} {'G images/step':>13} {'params':>10} "
          f"{'peak MB':>8} {'vs ' + rows[0][0]:>16}")
    for label, rate, sps, params, mem, dev, gimg in rows:
        print(f"{label:22} {dev.type:6} {rate:9.1f} {sps:8.3f} {gimg:13d} {params:10,d} {mem:8.0f} "
              f"{rate / ref:15.2f}x")
    if a.explorer:
        explorer_latency()


if __name__ == "__main__":
    main()
