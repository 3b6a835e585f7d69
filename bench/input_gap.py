"""The input gap: can a small classifier tell the paired set's depth from synthetic face-model depth?

C2ST accuracy (``metrics.classifier_two_sample_test``, 95 % Wilson interval; 0.5 = indistinguishable) of
- landmark-mesh pairs vs synthetic depth as the study made it before the fit (pose jitter, neutral expression);
- landmark-mesh pairs vs synthetic depth with the fitted pose and expression distribution;
- fitted-model pairs vs synthetic depth with the fitted distribution (the default now), and vs neutral synthetic;
- controls, computed every run: synthetic vs synthetic of another seed (must come out near 0.5), and synthetic
  faces with vs without their expressions (same fitted poses; must come out above 0.5: the classifier can see a
  difference as small as the expressions).
Also writes the figure photo | landmark depth | fitted-model depth | synthetic sample, and the fit summary.
Usage: python bench/input_gap.py [--size 64] [--n 3000] [--steps 300] [--limit N] [--out outputs/fit]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from frankenstein_utils.data.pairs import PairedConfig, PairedFaceDataset  # noqa: E402
from frankenstein_utils.evaluation.metric_nets import classifier_two_sample_test  # noqa: E402
from frankenstein_utils.facemodel.model import load_face_model  # noqa: E402
from frankenstein_utils.io.files import atomic_write_json, save_png  # noqa: E402


def gap_figure(fitted: PairedFaceDataset, landmarks: PairedFaceDataset, synthetic, n: int = 8) -> np.ndarray:
    """Rows of photo | landmark depth | fitted-model depth | synthetic sample, uint8 (n*S, 4*S, 3)."""
    rows = []
    step = max(1, len(fitted) // n)
    syn_d, _ = synthetic.render_batch(list(range(n)))
    for r, i in enumerate(range(0, step * n, step)):
        grey = lambda d: np.repeat((d.numpy()[..., None] * 255).round().astype(np.uint8), 3, 2)
        photo = fitted.images[i].numpy().transpose(1, 2, 0)
        photo = np.repeat(photo, 3, 2) if photo.shape[2] == 1 else photo
        rows.append(np.concatenate([photo, grey(landmarks.depth[i].float() / 65535), grey(fitted.depth[i].float() / 65535),
                                    grey(syn_d[r, 0])], 1))
    return np.concatenate(rows, 0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n", type=int, default=3000, help="depth maps per side (half train, half test)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "outputs" / "fit"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(a.out)
    model = load_face_model()
    t0 = time.perf_counter()
    sets = {src: PairedFaceDataset("train", PairedConfig(size=a.size, limit=a.limit, depth_source=src), model=model)
            for src in ("fitted", "landmarks")}
    print(f"paired sets ready in {time.perf_counter() - t0:.0f} s; fit: {json.dumps(sets['fitted'].stats['fit'])}")
    fitted = sets["fitted"]
    syn = {name: fitted.synthetic(a.n, seed=s, model=model, expressions=e, pose=p).materialize().tensors["depth"]
           for name, s, e, p in (("fitted", 1, "fitted", "fitted"), ("fitted_b", 2, "fitted", "fitted"),
                                 ("neutral_jitter", 1, "neutral", "jitter"), ("neutral_fitted", 2, "neutral", "fitted"))}
    depth = {src: ds.depth[torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:a.n]].float()[:, None]
             / 65535 for src, ds in sets.items()}
    rows = {}
    for name, real, fake in (("landmark pairs vs synthetic (jitter, neutral)", depth["landmarks"], syn["neutral_jitter"]),
                             ("landmark pairs vs synthetic (fitted)", depth["landmarks"], syn["fitted"]),
                             ("fitted pairs vs synthetic (jitter, neutral)", depth["fitted"], syn["neutral_jitter"]),
                             ("fitted pairs vs synthetic (fitted)", depth["fitted"], syn["fitted"]),
                             ("control: synthetic vs synthetic (fitted, other seed)", syn["fitted_b"], syn["fitted"]),
                             ("control: synthetic with vs without expressions", syn["fitted"], syn["neutral_fitted"])):
        t = time.perf_counter()
        r = classifier_two_sample_test(real, fake, steps=a.steps)
        rows[name] = r
        print(f"{name:55s} C2ST {r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] "
              f"(n_test {r['n_test']}, {time.perf_counter() - t:.0f} s)")
    atomic_write_json(out / "input_gap.json", {"c2st": rows, "fit": fitted.stats["fit"], "args": vars(a)})
    save_png(out / "input_gap.png", gap_figure(fitted, sets["landmarks"], fitted.synthetic(8, 3, model=model)))
    print(f"wrote {out / 'input_gap.json'} and {out / 'input_gap.png'}")


if __name__ == "__main__":
    main()
