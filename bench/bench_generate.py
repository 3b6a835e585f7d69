"""Labelled faces per second of ``python -m frankenstein_utils.apps.generate`` at 64 px (the appearance model's framing),
every label written (image, depth, mask, appearance render PNGs, meta.npz with parameters and 68 landmarks,
manifest), beside depth maps alone (``depthdata.generate_depth_dataset``: depth and mask PNGs, same faces: same seed,
resolution and framing, pose and expression drawn from the same fitted table).

Each timing is one whole call into a fresh temporary folder (models and tables loaded, parameters drawn, PNGs
encoded and written; no fsync), after a warm-up call in the same process; the median of ``--repeats``. The import
of the package and the first call (numba kernels compiled, or loaded from their cache) are timed in a fresh process
and reported separately. Rates per second of wall time and per second of this process's CPU time (all threads;
steadier on a shared machine: it does not count time spent waiting for a core). ``generate`` renders with one
torch thread and writes from a second; the depth set uses the torch thread count it is given (both shown).
Usage: python bench/bench_generate.py [--n 512] [--repeats 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from frankenstein_utils.apps.generate import BLOCK, PNG_LEVEL, generate_faces  # noqa: E402
from frankenstein_utils.data.depth_sets import generate_depth_dataset  # noqa: E402
from frankenstein_utils.facemodel.appearance import load_appearance  # noqa: E402

# Import and first call in a fresh process (numba compiles its kernels, or loads them from NUMBA_CACHE_DIR).
FIRST_CALL = """
import sys, tempfile, time
t0 = time.perf_counter()
from frankenstein_utils.apps.generate import generate_faces
t1 = time.perf_counter()
with tempfile.TemporaryDirectory() as d:
    generate_faces(16, d + "/f", progress=False)
print(t1 - t0, time.perf_counter() - t1)
"""


def first_call_seconds(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", FIRST_CALL], env=env, capture_output=True, text=True, check=True)
    return [float(x) for x in out.stdout.split()]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def timed(fn, n, repeats, work):
    """fn(folder) into a fresh folder under ``work``: (median wall s, median CPU s, bytes written)."""
    wall, cpu, size = [], [], 0
    for r in range(repeats + 1):  # the first call warms up (caches, page cache, allocator) and is not counted
        out = work / f"run{r}"
        t0, c0 = time.perf_counter(), time.process_time()
        fn(out, n if r else 16)
        w, c = time.perf_counter() - t0, time.process_time() - c0
        if r:
            wall.append(w)
            cpu.append(c)
            size = folder_bytes(out)
        shutil.rmtree(out)
    return statistics.median(wall), statistics.median(cpu), size


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=512, help="faces per timed call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                    help="torch threads of the process (the depth set's; generate renders with one)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as cache:
        import_s, first_s = first_call_seconds(cache)  # empty cache dir: compiles
        _, first_cached_s = first_call_seconds(cache)  # same dir: loads the compiled kernels

    app = load_appearance()
    render, table = app.render_config(), app.fitted_face_params()

    def faces(out, n):
        generate_faces(n, out, seed=a.seed, progress=False)

    def depth(threads):
        def run(out, n):
            torch.set_num_threads(threads)
            try:
                generate_depth_dataset(n, out, seed=a.seed, render=render, table=table, pose_source="fitted",
                                       expression_source="fitted", device="cpu", progress=False)
            finally:
                torch.set_num_threads(a.threads)
        return run

    rows = {}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        rows["generate, every label"] = timed(faces, a.n, a.repeats, work)
        for t in sorted({1, a.threads}):
            rows[f"depth maps alone, {t} torch thread{'s' if t > 1 else ''}"] = timed(depth(t), a.n, a.repeats, work)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{a.threads} torch threads; load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end (a loaded "
          f"machine lowers the wall rates most)")
    print(f"faces: {a.n} per call, {render.resolution}x{render.resolution} px, region '{render.region}', pose and "
          f"expression from the fitted table, seed {a.seed}; median of {a.repeats} calls after a warm-up call; "
          f"generate: blocks of {BLOCK}, PNG zlib level {PNG_LEVEL}")
    print(f"first use in a fresh process (not in the rates): import {import_s:.2f} s; first call (16 faces) "
          f"{first_s:.2f} s compiling the kernels (empty cache), {first_cached_s:.2f} s with them cached")
    print(f"{'':38s} {'faces/s (wall)':>15s} {'faces/CPU-s':>12s} {'ms CPU/face':>12s} {'kB/face':>8s}")
    for name, (w, c, size) in rows.items():
        print(f"{name:38s} {a.n / w:15.1f} {a.n / c:12.1f} {1e3 * c / a.n:12.2f} {size / a.n / 1e3:8.1f}")
    g = rows["generate, every label"]
    for name, (w, c, _) in rows.items():
        if name.startswith("depth"):
            print(f"generate / {name}: {w / g[0]:.2f}x wall rate, {c / g[1]:.2f}x CPU rate")
    rate = a.n / g[0]
    print(f"goal >= 100 faces/s (wall) with every label: {'met' if rate >= 100 else 'NOT met'} ({rate:.0f} faces/s)")


if __name__ == "__main__":
    main()
