"""Time the face-model fit over every CelebA photo with landmarks (the fitting issue's target: well under a minute
on 2 cores) and print the fit's residuals.

Prints the correspondence time, the fit time (including the offset-learning pass), photos/s, the ratio of the
60 s target to the measured fit time, and the machine. Usage: python bench/bench_fit.py [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="BLAS threads (set before numpy loads)")
    a = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(a.threads)
    import numpy as np

    from frankenstein_utils.facemodel.fitting import FitConfig, correspond_and_fit, fit_summary
    from frankenstein_utils.facemodel.model import load_face_model
    from frankenstein_utils.io.paths import find_dataset

    d = np.load(find_dataset("celeba_10k", "landmarks_mediapipe.npz") / "landmarks_mediapipe.npz")
    lm = d["landmarks"][d["found"]]
    model = load_face_model()
    cfg = FitConfig()
    corr, fit, corr_s, fit_s = correspond_and_fit(model, lm, cfg)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}, {a.threads} BLAS threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"photos: {len(lm)}; correspondence {corr_s:.1f} s; fit {fit_s:.1f} s ({len(lm) / fit_s:.0f} photos/s)")
    print(f"target 60 s / fit time: {60 / fit_s:.1f}x")
    print(json.dumps(fit_summary(fit, cfg, int((~d["found"]).sum()))))


if __name__ == "__main__":
    main()
