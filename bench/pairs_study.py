"""The study on both pair types at the same budget: generators trained on landmark-mesh pairs vs fitted-model pairs,
scored on synthetic face-model inputs (what the generators are for).

For each pair type and each model, one run of ``--steps`` steps with identical settings and seed. A model is a
supervised one (U, V, F, NU, cvae), a study variant of notebook 03 (``experiments.VARIANTS``) or a peer preset
(``flagship.PRESETS``: pix2pix, bicyclegan, flagship). Adversarial models also take synthetic depth (``--n-synthetic``
inputs from the fitted distribution, the same for both pair types) and the training photos as unpaired reals; a
model whose objective reads no paired stream cannot differ between the pair types and is listed, not trained. Scores on the same ``--n-eval`` synthetic inputs (identity ~ N(0, I) over 15
components, pose and expression drawn from the fitted photos, the paired sets' framing):
- landmark error (NME, inner 51 points, per face / outer-eye-corner distance, 95 % interval): dlib's 68 landmarks
  on the generated face vs the face model's own ``landmarks68`` projected through the render's pose and framing
  (``judges.py`` and ``evaluation.model_landmarks`` of the evaluation issue);
- detection rate (dlib HOG) and face-FD (Frechet distance of dlib ResNet descriptors) against held-out test photos.
Control rows computed every run: a depth-blind generator (the mean training photo for every input) and the test
photos themselves (detection and face-FD of real faces; NME needs a target and is left out there).
Rows are written to ``OUT/pairs_study.json`` after every run; a rerun skips the rows already there (``--steps`` and
the other settings must match, checked).
Usage: python bench/pairs_study.py [--steps 400] [--models U cvae l1+gan pix2pix] [--n-eval 300] [--out outputs/fit/study]
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
from frankenstein_utils.evaluation import judges as J  # noqa: E402
from frankenstein_utils.evaluation import measures as M  # noqa: E402
from frankenstein_utils.evaluation.context import generator_fn, model_landmarks  # noqa: E402
from frankenstein_utils.facemodel.model import load_face_model  # noqa: E402
from frankenstein_utils.io.files import atomic_write_json  # noqa: E402
from frankenstein_utils.pretrained.scoring import face_scores  # noqa: E402
from frankenstein_utils.study.variants import model_config, streams_read  # noqa: E402
from frankenstein_utils.train.trainer import Trainer, input_convention  # noqa: E402

SOURCES = ("landmarks", "fitted")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--models", nargs="+", default=["U", "cvae"])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--n-eval", type=int, default=300)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-synthetic", type=int, default=2000, help="synthetic training inputs (adversarial models)")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "fit" / "study"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(a.out)
    model = load_face_model()
    sets = {s: PairedFaceDataset("train", PairedConfig(size=a.size, limit=a.limit, depth_source=s), model=model,
                                 progress=False) for s in SOURCES}
    test = PairedFaceDataset("test", PairedConfig(size=a.size, limit=a.limit), model=model, progress=False)
    assert all(np.array_equal(sets[s].indices, sets["fitted"].indices) for s in SOURCES)  # same photos, same split
    render = sets["fitted"].render_config(model)
    syn = sets["fitted"].synthetic(a.n_eval, seed=a.seed + 777, model=model)
    depth, mask = syn.render_batch(list(range(a.n_eval)))
    target = model_landmarks(model, syn.coeffs, render, syn.poses, syn.expressions)
    jd = J.judges()
    test_images = test.tensors()[0][:a.n_eval]
    test_faces = jd.analyse(test_images)
    rows = {}
    real = M.detection_rate(test_faces.found)
    rows["control: test photos (real)"] = {"detection": real["rate"], "detection_ci": real["ci"],
                                           "face_fd": M.frechet_distance_features(test_faces.embeddings[: len(test_faces.embeddings) // 2],
                                                                                  test_faces.embeddings[len(test_faces.embeddings) // 2:])}
    mean_photo = sets["fitted"].tensors()[0].mean(0, keepdim=True).expand(a.n_eval, -1, -1, -1)
    rows["control: mean photo (depth-blind)"] = face_scores(mean_photo, target, test_images, test_faces)
    syn_train = sets["fitted"].synthetic(a.n_synthetic, seed=a.seed, model=model).materialize()
    saved = json.loads((out / "pairs_study.json").read_text()) if (out / "pairs_study.json").exists() else {}
    same = ("steps", "size", "batch", "width", "n_eval", "n_synthetic", "limit", "seed")
    if saved and any(saved["args"].get(k) != vars(a)[k] for k in same):
        raise SystemExit(f"pairs_study: {out / 'pairs_study.json'} holds runs with other settings "
                         f"({ {k: saved['args'].get(k) for k in same} }); choose another --out")
    rows.update({k: v for k, v in saved.get("rows", {}).items() if not k.startswith("control")})
    pairs_free = dict(saved.get("pairs_free", {}))

    def save():
        atomic_write_json(out / "pairs_study.json", {"rows": rows, "pairs_free": pairs_free, "args": vars(a)})

    for name in a.models:
        read = streams_read(name, {"paired": sets["fitted"], "real": sets["fitted"], "synthetic": syn_train},
                            image_size=a.size)
        if "paired" not in read:  # trained on synthetic depth and unpaired photos only: the pair type cannot matter
            pairs_free[name] = sorted(read)
            print(f"{name}: reads {sorted(read)}, no paired stream: identical on both pair types, not trained")
            save()
            continue
        for src in SOURCES:
            key = f"{name} on {src} pairs"
            if key in rows:
                continue
            train = sets[src]
            cfg = model_config(name, steps=a.steps, batch_size=a.batch, width=a.width, d_width=a.width,
                               encoder_width=a.width, image_size=a.size, seed=a.seed, out_dir=str(out / src / name),
                               sample_every=0, checkpoint_every=a.steps, log_every=max(a.steps // 20, 1),
                               data={"paired": vars(train.config)},
                               input_convention=input_convention(render, f"CelebA {src} depth"))
            t0 = time.perf_counter()
            run = Trainer(cfg, {"paired": train, "real": train, "synthetic": syn_train})
            run.fit(progress=False)
            seconds = time.perf_counter() - t0
            for net in run.nets.values():
                net.eval()
            images = generator_fn(run, seed=a.seed)(depth, mask)
            row = face_scores(images, target, test_images, test_faces)
            row["train_seconds"] = seconds
            row["steps"] = run.step
            rows[key] = row
            save()
            print(f"{name:5s} on {src:9s} pairs: NME {row['nme']:.3f} [{row['nme_ci'][0]:.3f}, {row['nme_ci'][1]:.3f}]"
                  f"  detection {row['detection']:.2f}  face-FD {row['face_fd']:.3f}  ({seconds:.0f} s)", flush=True)
    lines = ["| run | NME (inner 51) on synthetic inputs | detection | face-FD vs test photos |",
             "|---|---|---|---|"]
    for k, r in rows.items():
        nme = f"{r['nme']:.3f} [{r['nme_ci'][0]:.3f}, {r['nme_ci'][1]:.3f}]" if "nme" in r else "-"
        lines.append(f"| {k} | {nme} | {r['detection']:.2f} [{r['detection_ci'][0]:.2f}, {r['detection_ci'][1]:.2f}]"
                     f" | {r['face_fd']:.3f} |")
    for name, read in pairs_free.items():
        lines.append(f"| {name} | reads no pairs ({', '.join(read)}): the same on both pair types | | |")
    table = "\n".join(lines)
    print(table)
    atomic_write_json(out / "pairs_study.json", {"rows": rows, "pairs_free": pairs_free, "args": vars(a), "table": table})


if __name__ == "__main__":
    main()
