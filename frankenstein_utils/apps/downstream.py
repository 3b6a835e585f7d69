"""The downstream test: a small 68-landmark regressor trained on generated faces, scored on real photos.

Useful data, measured downstream (issue 22, point 7): train one small 68-landmark regressor per source of labelled
faces with ONE fixed recipe, and score each on the real test photos against their fitted landmarks.

``python -m frankenstein_utils.apps.downstream --generated LABEL=DIR [--generated ...] [--real N] [--n N]
[--out outputs/downstream]`` writes ``RESULTS.md`` and ``results.json``.

The recipe (``RegressorConfig``; the same for every source, recorded in the outputs):

* network: four stages of two 3x3 convs (the first with stride 2; BatchNorm, ReLU; widths w, 2w, 4w, 8w: a 64 px
  image becomes an (8w, 4, 4) map), an adaptive average pool to 4 x 4 (a no-op at 64 px), flattened, and one linear
  layer to 136 outputs: the 68 (x, y) as offsets from the mean training landmarks in units of their spread (the
  RMS deviation from the mean over all points and faces; on the aligned photos about 1 px), so the outputs are of
  order 1 (without it the head must learn offsets of ~0.03 image widths and 500 steps only reached 0.054 NME, chance
  0.060). Direct regression, no heatmaps. Why a 4 x 4 map and not a global pool: a global
  average pool throws away where things are, which is what landmarks are about. Width 16: 0.57 M parameters, about
  0.1 s per step of 64 faces on one CPU thread at 64 px (a full-resolution stem conv cost 45 % more time);
* loss: L1 on those standardised offsets over all 68 points (robust to the few badly fitted photos);
* optimiser: Adam (lr ``lr``, betas (0.9, 0.999)), cosine decay to 0 over ``steps`` fixed steps of ``batch_size``
  faces drawn in shuffled epochs (seeded);
* augmentation (seeded, per face): a random integer shift of up to ``shift`` = 1 pixel in x and y (edges
  replicated, landmarks moved with the content; the photos are aligned crops whose landmark centre varies by ~0.7 px
  s.d., so a larger shift would train on faces the test never shows) and, if ``flip``, a horizontal flip with
  probability 1/2 that mirrors x (x -> S - x for pixel i covering [i, i + 1)) AND swaps left and right landmarks
  (``IBUG_FLIP``).

Steps (2000 of 64 faces: ~13 epochs of 10,000 faces, about 3 minutes on one CPU thread): measured on the first
2,000 real training photos, scored on the 497 test photos (one thread, the machine shared with a training job):
500 steps 40 s, NME 0.0300; 2000 steps 168 s, NME 0.0271 (training photos 0.0172); chance (their mean landmarks)
0.0604. The test photos' outer eye corners are ~19 px apart at 64 px, so 0.01 NME is ~0.2 px.

The score is the project's measure: ``evaluation.measures.nme(pred, target, judges.INNER_POINTS)``: per face the mean distance
over the inner 51 points (iBUG 17-67) divided by the TARGET's outer-eye-corner distance (points 36 and 45), then the
mean over faces with a 95 % interval. The chance row predicts the mean training landmarks for every photo
(``MeanLandmarks``), scored through the same code.

A second reference (``--second-reference dlib``, the default): the same regressors scored against dlib's 68 points of
the test photos where dlib finds a face, an annotation made without the fits. The real photos' labels share the
fits' convention with the target; dlib's do not (the two differ by NME ~0.047 on the test photos), so against dlib
every ratio is pulled towards 1 and the difference from the real row is what to compare.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..evaluation.judges import INNER_POINTS, judges
from ..evaluation.measures import nme

# iBUG-68 left/right partners (0-based): jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67. Points on the
# midline (8, 27-30, 33, 51, 57, 62, 66) map to themselves.
_PAIRS = ([(i, 16 - i) for i in range(8)]
          + [(17, 26), (18, 25), (19, 24), (20, 23), (21, 22)]
          + [(31, 35), (32, 34)]
          + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
          + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)])
IBUG_FLIP = list(range(68))
for _a, _b in _PAIRS:
    IBUG_FLIP[_a], IBUG_FLIP[_b] = _b, _a
IBUG_FLIP = tuple(IBUG_FLIP)  # flipped landmark j = mirrored original landmark IBUG_FLIP[j]


@dataclass
class RegressorConfig:
    """The one recipe (see the module docstring). Saved as ``asdict(cfg)`` with every result and on the model."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-3
    width: int = 16
    seed: int = 0
    shift: int = 1  # pixels, the largest random shift in x and in y (0: none)
    flip: bool = True  # random horizontal flip with the iBUG left/right permutation

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            want = type(f.default)
            if not isinstance(v, want) or (want is int and isinstance(v, bool)):
                if want is float and isinstance(v, int) and not isinstance(v, bool):
                    setattr(self, f.name, float(v))
                    continue
                raise ValueError(f"RegressorConfig.{f.name}={v!r}: expected {want.__name__}")
        if self.steps < 1 or self.batch_size < 1 or self.width < 1 or self.shift < 0 or not self.lr > 0:
            raise ValueError(f"RegressorConfig: steps, batch_size, width >= 1, shift >= 0, lr > 0; got {self}")

    @classmethod
    def from_dict(cls, d: dict) -> "RegressorConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"RegressorConfig: unknown keys {sorted(unknown)}")
        return cls(**d)


# ---- augmentation ----------------------------------------------------------------------------------------------------
def flip_faces(images: torch.Tensor, landmarks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror (N, C, S, S) images left-right with their (N, 68, 2) pixel landmarks: x -> S - x (pixel i covers
    [i, i + 1), so pixel i's centre goes to pixel S - 1 - i's centre) and left/right points swap (``IBUG_FLIP``)."""
    out = landmarks[:, list(IBUG_FLIP)].clone()
    out[..., 0] = images.shape[-1] - out[..., 0]
    return images.flip(-1), out


def shift_faces(images: torch.Tensor, landmarks: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor):
    """Move each face's content by integer (dx, dy) pixels (right / down positive), edges replicated; the landmarks
    move with it. dx, dy: (N,) ints with |d| <= the pad used (their largest magnitude)."""
    s = int(max(dx.abs().max(), dy.abs().max())) if len(dx) else 0
    if s == 0:
        return images, landmarks
    H, W = images.shape[-2:]
    padded = F.pad(images, (s, s, s, s), mode="replicate")  # padded[y + s, x + s] = image[y, x]
    out = torch.stack([padded[i, :, s - int(dy[i]):s - int(dy[i]) + H, s - int(dx[i]):s - int(dx[i]) + W]
                       for i in range(len(images))])  # out[y, x] = image[y - dy, x - dx]
    return out, landmarks + torch.stack([dx, dy], 1).to(landmarks.dtype)[:, None, :]


def augment(images: torch.Tensor, landmarks: torch.Tensor, cfg: RegressorConfig, generator: torch.Generator):
    """The recipe's augmentation of one batch (seeded by ``generator``): shift by up to ``cfg.shift`` px, then a
    horizontal flip of a random half (if ``cfg.flip``)."""
    n = len(images)
    if cfg.shift > 0:
        d = torch.randint(-cfg.shift, cfg.shift + 1, (2, n), generator=generator)
        images, landmarks = shift_faces(images, landmarks, d[0], d[1])
    if cfg.flip:
        f = torch.rand(n, generator=generator) < 0.5
        if f.any():
            images, landmarks = images.clone(), landmarks.clone()
            images[f], landmarks[f] = flip_faces(images[f], landmarks[f])
    return images, landmarks


# ---- the network -----------------------------------------------------------------------------------------------------
def _conv(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class LandmarkRegressor(nn.Module):
    """Images (N, C, S, S) in [-1, 1] -> landmarks in units of the image (N, 68, 2), -1 / +1 = the image's edges.
    ``predict`` returns pixels. Built for one image size ``size`` (the training images')."""

    def __init__(self, mean_landmarks: torch.Tensor, size: int, width: int = 16, in_ch: int = 3,
                 scale: float = 1.0):
        super().__init__()
        w = width
        self.size = int(size)
        self.features = nn.Sequential(_conv(in_ch, w, 2), _conv(w, w, 1),  # (N, w, S/2, S/2)
                                      _conv(w, 2 * w, 2), _conv(2 * w, 2 * w, 1),  # (N, 2w, S/4, S/4)
                                      _conv(2 * w, 4 * w, 2), _conv(4 * w, 4 * w, 1),  # (N, 4w, S/8, S/8)
                                      _conv(4 * w, 8 * w, 2), _conv(8 * w, 8 * w, 1))  # (N, 8w, S/16, S/16)
        self.head = nn.Linear(8 * w * 16, 136)
        nn.init.zeros_(self.head.bias)
        with torch.no_grad():
            self.head.weight.mul_(0.1)  # start near the mean face
        self.register_buffer("mean", to_unit(mean_landmarks.float().reshape(1, 68, 2), size))
        self.register_buffer("scale", torch.tensor(float(scale)))  # image units per output unit

    def forward(self, x):  # (N, C, S, S) -> (N, 68, 2)
        h = F.adaptive_avg_pool2d(self.features(x), 4).flatten(1)  # (N, 8w * 16)
        return self.mean + self.scale * self.head(h).view(-1, 68, 2)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """(N, C, S, S) in [-1, 1] -> (N, 68, 2) pixel landmarks (eval mode; the module's mode is restored)."""
        return predict(self, images, batch_size)


class MeanLandmarks(nn.Module):
    """The chance predictor: the mean training landmarks for every image (same interface as LandmarkRegressor)."""

    def __init__(self, landmarks: torch.Tensor, size: int):
        super().__init__()
        self.size = int(size)
        self.register_buffer("mean", to_unit(torch.as_tensor(landmarks).double().mean(0, keepdim=True), size))

    def forward(self, x):
        return self.mean.expand(len(x), -1, -1)


def to_unit(landmarks: torch.Tensor, size: int) -> torch.Tensor:
    """Pixels (pixel i covers [i, i + 1)) -> image units: 0 -> -1, size -> +1."""
    return landmarks / size * 2 - 1


def to_pixels(u: torch.Tensor, size: int) -> torch.Tensor:
    return (u + 1) / 2 * size


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """(N, C, S, S) -> (N, 68, 2) pixel landmarks of any model with ``size`` that outputs image units."""
    if images.shape[-1] != model.size or images.shape[-2] != model.size:
        raise ValueError(f"predict: the model was trained on {model.size} px images, got {tuple(images.shape[-2:])}")
    was = model.training
    model.eval()
    try:
        u = torch.cat([model(images[s:s + batch_size].float()).double() for s in range(0, len(images), batch_size)])
    finally:
        model.train(was)
    return to_pixels(u, model.size).numpy()


# ---- training and scoring --------------------------------------------------------------------------------------------
def _check(images, landmarks, what):
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"{what}: images must be (N, C, S, S), got {tuple(images.shape)}")
    if tuple(landmarks.shape) != (len(images), 68, 2):
        raise ValueError(f"{what}: landmarks must be ({len(images)}, 68, 2), got {tuple(landmarks.shape)}")


def train_regressor(images: torch.Tensor, landmarks, cfg: RegressorConfig | None = None,
                    progress: bool = False) -> LandmarkRegressor:
    """Train the recipe on images (N, C, S, S) in [-1, 1] with their (N, 68, 2) pixel landmarks. Deterministic for a
    given ``cfg.seed`` (initial weights, batches and augmentation from it; the global RNG is left as it was). Uses the
    caller's torch thread count. Returns the model in eval mode, ``model.config = asdict(cfg)``."""
    cfg = cfg or RegressorConfig()
    landmarks = torch.as_tensor(np.asarray(landmarks), dtype=torch.float32)
    _check(images, landmarks, "train_regressor")
    S, n = images.shape[-1], len(images)
    u = to_unit(landmarks, S)
    scale = float(((u - u.mean(0)) ** 2).mean().sqrt().clamp_min(1e-3))  # the landmarks' spread, image units
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LandmarkRegressor(landmarks.mean(0), S, cfg.width, images.shape[1], scale)
    model.config = asdict(cfg)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / cfg.steps)))
    g = torch.Generator().manual_seed(cfg.seed)
    bs = min(cfg.batch_size, n)
    step = 0
    with tqdm(total=cfg.steps, desc="landmark regressor", disable=not progress, leave=False) as bar:
        while step < cfg.steps:
            perm = torch.randperm(n, generator=g)
            for s in range(0, n - bs + 1, bs):
                idx = perm[s:s + bs]
                x, y = augment(images[idx].float(), landmarks[idx], cfg, g)
                loss = ((model(x) - to_unit(y, S)) / scale).abs().mean()  # L1 in units of the landmarks' spread
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                bar.update(1)
                if step % 50 == 0:
                    bar.set_postfix(l1_px=f"{loss.item() * scale * S / 2:.2f}")
                if step >= cfg.steps:
                    break
    return model.eval()


def evaluate_regressor(model: nn.Module, images: torch.Tensor, landmarks) -> dict:
    """NME of ``model`` on images against their (N, 68, 2) pixel landmarks: ``evaluation.measures.nme`` over the inner
    51 points (``evaluation.judges.INNER_POINTS``), normalised by the target's outer-eye-corner distance. dict(nme,
    nme_ci, n)."""
    landmarks = np.asarray(landmarks, np.float64)
    _check(images, torch.as_tensor(landmarks), "evaluate_regressor")
    r = nme(predict(model, images), landmarks, INNER_POINTS)
    return {"nme": float(r["nme"]), "nme_ci": [float(v) for v in r["ci"]], "n": int(len(landmarks))}


def downstream_table(sources: dict, test: tuple, cfg: RegressorConfig | None = None, n: int = 10_000,
                     real_label: str = "real", progress: bool = False, second: dict | None = None) -> dict:
    """Train one regressor per source and score each on ``test`` = (images, landmarks) (the real test photos).

    sources: {label: (images (N, C, S, S) in [-1, 1], landmarks (N, 68, 2) pixels)}. Every source is cut to the SAME
    number of faces, its first min(n, the smallest source). Rows: label, n, nme, nme_ci, chance_nme (that source's
    mean training landmarks for every photo), train_seconds and ratio_to_real = nme / the ``real_label`` row's nme
    (1 = as useful as real photos, higher is worse; None without a real source). ``chance``: the mean landmarks of
    the real source (of the first source when there is none) for every test photo.

    ``second``: {name: (landmarks (T, 68, 2) pixels, used (T,) bool or None = all)}: other annotations of the same
    test photos (e.g. dlib's 68 points where dlib finds a face). Each row gets ``second[name]`` = its nme, nme_ci, n
    and ratio_to_real against that reference on the used photos; ``second_disagreement[name]`` is the NME of the
    test landmarks themselves against it (how far the two annotations' conventions differ: a regressor trained on
    labels of the test landmarks' convention starts that far behind on the other reference, which compresses its
    ratios)."""
    cfg = cfg or RegressorConfig()
    test_images, test_lm = test
    T = len(test_images)
    second = {k: (np.asarray(lm, np.float64), np.ones(T, bool) if used is None else np.asarray(used, bool))
              for k, (lm, used) in (second or {}).items()}
    for k, (lm, used) in second.items():
        if lm.shape != (T, 68, 2) or used.shape != (T,) or not used.any():
            raise ValueError(f"downstream_table: second reference {k!r} must be ({T}, 68, 2) landmarks "
                             f"with a ({T},) mask using at least one photo")
    _check(test_images, torch.as_tensor(np.asarray(test_lm)), "downstream_table test")
    if not sources:
        raise ValueError("downstream_table: no sources")
    for label, (images, lm) in sources.items():
        _check(images, torch.as_tensor(np.asarray(lm)), f"downstream_table source {label!r}")
    n_used = min([int(n)] + [len(images) for images, _ in sources.values()])
    chance_from = real_label if real_label in sources else next(iter(sources))
    rows, chance = [], None
    for label, (images, lm) in sources.items():
        images, lm = images[:n_used], torch.as_tensor(np.asarray(lm), dtype=torch.float32)[:n_used]
        t0 = time.perf_counter()
        model = train_regressor(images, lm, cfg, progress=progress)
        secs = time.perf_counter() - t0
        mean = evaluate_regressor(MeanLandmarks(lm, images.shape[-1]), test_images, test_lm)
        score = evaluate_regressor(model, test_images, test_lm)
        rows.append({"label": label, "n": n_used, "nme": score["nme"], "nme_ci": score["nme_ci"],
                     "test_n": score["n"], "chance_nme": mean["nme"], "train_seconds": round(secs, 1),
                     "second": {k: evaluate_regressor(model, test_images[torch.from_numpy(used)], lm[used])
                                for k, (lm, used) in second.items()}})
        if label == chance_from:
            chance = {"label": f"chance (mean landmarks of {label!r})", **mean}
    real = next((r for r in rows if r["label"] == real_label), None)
    for r in rows:
        r["ratio_to_real"] = r["nme"] / real["nme"] if real else None
        for k, sc in r["second"].items():
            sc["ratio_to_real"] = sc["nme"] / real["second"][k]["nme"] if real else None
            sc["minus_real"] = sc["nme"] - real["second"][k]["nme"] if real else None
    disagreement = {k: float(nme(np.asarray(test_lm, np.float64)[used], lm[used], INNER_POINTS)["nme"])
                    for k, (lm, used) in second.items()}
    return {"recipe": asdict(cfg), "n": n_used, "test_n": int(len(test_images)), "rows": rows, "chance": chance,
            "second_disagreement": disagreement}


# ---- the command line ------------------------------------------------------------------------------------------------
class BadInput(ValueError):
    pass


def _generated_source(spec: str, size: int):
    """'LABEL=DIR' -> (label, the folder's GeneratedFaceDataset), checked now (before anything heavy runs)."""
    from .generate import GeneratedFaceDataset

    label, sep, folder = spec.partition("=")
    if not sep or not label or not folder:
        raise BadInput(f"--generated {spec!r}: expected LABEL=DIR")
    try:
        ds = GeneratedFaceDataset(folder)
    except (OSError, ValueError, KeyError) as e:
        msg = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInput(f"{folder}: not a readable generate folder ({msg})") from e
    if ds.size != (size, size):
        raise BadInput(f"{folder}: images are {ds.size[0]} px, the test photos {size} px")
    return label, ds


def _load_generated(ds, n: int):
    """The first n faces of a generate folder: images (n, 3, S, S) in [-1, 1], landmarks (n, 68, 2) pixels."""
    n = min(n, len(ds))
    images = torch.stack([ds[i]["image"] for i in tqdm(range(n), desc=f"loading {ds.root.name}", leave=False)])
    return images, ds.meta["landmarks"][:n].float()


def _markdown(res: dict) -> str:
    def ci(r):
        return f"{r['nme']:.4f} [{r['nme_ci'][0]:.4f}, {r['nme_ci'][1]:.4f}]"

    lines = ["# Downstream landmark regressor (issue 22, point 7)", "",
             f"One recipe per source, trained on N = {res['n']} faces each, scored on the {res['test_n']} real test "
             "photos against their fitted landmarks. NME: mean distance over the inner 51 iBUG points (17-67) / the "
             "target's outer-eye-corner distance (36-45), mean over photos with a 95 % interval (lower is better). "
             "ratio to real = NME / the real-trained NME.", "",
             "| source | from | N | NME [95 % CI] | mean-landmark NME | ratio to real | train s |",
             "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        ratio = f"{r['ratio_to_real']:.3f}" if r["ratio_to_real"] is not None else "-"
        lines.append(f"| {r['label']} | {r.get('from', '')} | {r['n']} | {ci(r)} | {r['chance_nme']:.4f} | {ratio} | "
                     f"{r['train_seconds']:.0f} |")
    c = res["chance"]
    lines += [f"| {c['label']} | | | {ci(c)} | | | |", ""]
    for k, d in res.get("second_disagreement", {}).items():
        n_used = res["rows"][0]["second"][k]["n"]
        lines += [f"Against a second reference, {k}, on the {n_used} test photos it covers: the fits' landmarks (the "
                  f"real photos' training labels and the target above) differ from it by NME {d:.4f}, so every "
                  "regressor trained on labels of the fits' convention starts about that far behind on it and its "
                  "ratio is pulled towards 1; the difference from the real row is the number to compare.", "",
                  "| source | NME [95 % CI] | minus real | ratio to real |", "|---|---|---|---|"]
        for r in res["rows"]:
            sc = r["second"][k]
            diff = f"{sc['minus_real']:+.4f}" if sc.get("minus_real") is not None else "-"
            ratio = f"{sc['ratio_to_real']:.3f}" if sc.get("ratio_to_real") is not None else "-"
            lines.append(f"| {r['label']} | {ci(sc)} | {diff} | {ratio} |")
        lines.append("")
    lines += [
              f"Recipe (`RegressorConfig`): `{res['recipe']}`; torch threads {res['threads']}; wall time "
              f"{res['wall_seconds']:.0f} s.", "", "Command: `" + res["command"] + "`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m frankenstein_utils.apps.downstream",
                                 description="Train the one landmark-regressor recipe per source of labelled faces and "
                                             "score each on the real test photos (NME, inner 51 points).")
    ap.add_argument("--generated", action="append", default=[], metavar="LABEL=DIR",
                    help="a folder written by python -m frankenstein_utils.apps.generate (repeatable)")
    ap.add_argument("--real", type=int, default=-1, metavar="N",
                    help="add the real training photos as source 'real' (at most N; 0 = leave out; default all)")
    ap.add_argument("--n", type=int, default=10_000, help="faces per source: every source is cut to the same "
                    "min(N, smallest source) (default 10000)")
    ap.add_argument("--out", default="outputs/downstream", help="folder for RESULTS.md and results.json")
    ap.add_argument("--steps", type=int, default=RegressorConfig.steps, help="training steps (the recipe's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--second-reference", choices=("dlib", "none"), default="dlib",
                    help="also score every regressor against dlib's 68 points of the test photos where dlib finds a "
                         "face (an annotation independent of the fits; default dlib)")
    a = ap.parse_args(argv)
    try:
        if a.n < 1:
            raise BadInput(f"--n must be >= 1, got {a.n}")
        if not a.generated and a.real == 0:
            raise BadInput("nothing to train on: give --generated LABEL=DIR and/or --real")
        size = 64
        gens = [_generated_source(s, size) for s in a.generated]
        labels = [lbl for lbl, _ in gens] + (["real"] if a.real != 0 else [])
        if len(set(labels)) != len(labels):
            raise BadInput(f"labels must be unique (and 'real' is taken by --real): {labels}")
        cfg = RegressorConfig(steps=a.steps, seed=a.seed)
    except (BadInput, ValueError) as e:
        print(f"landmark_regressor: {e}", file=sys.stderr)
        return 1
    torch.set_num_threads(max(1, a.threads))
    t0 = time.time()
    from ..data.pairs import PairedConfig, PairedFaceDataset
    from ..evaluation.context import photo_fitted_landmarks
    from ..facemodel.model import load_face_model

    model = load_face_model()
    test_ds = PairedFaceDataset("test", PairedConfig(size=size), model=model)
    test = (test_ds.tensors()[0], photo_fitted_landmarks(model, test_ds, test_ds.render_config(model)))
    second = None
    if a.second_reference == "dlib":
        found = judges().analyse(test[0], embed=False)
        second = {"dlib's 68 points": (found.landmarks, found.found)}
    n = a.n if a.real < 0 else min(a.n, a.real)
    sources, origin = {}, {}
    for label, ds in gens:
        sources[label], origin[label] = _load_generated(ds, n), str(ds.root)
    if a.real != 0:
        tr = PairedFaceDataset("train", PairedConfig(size=size), model=model)
        lm = photo_fitted_landmarks(model, tr, tr.render_config(model))[:n]
        sources["real"], origin["real"] = (tr.tensors()[0][:n], lm), "real training photos (PairedFaceDataset train)"
    res = downstream_table(sources, test, cfg, n=n, progress=True, second=second)
    for r in res["rows"]:
        r["from"] = origin[r["label"]]
        ds = dict(gens).get(r["label"])
        if ds is not None:  # what made the faces
            r["generate"] = {k: ds.manifest.get(k) for k in ("model", "appearance", "pose", "seed", "n")}
    res.update(threads=torch.get_num_threads(), wall_seconds=round(time.time() - t0, 1),
               command="python -m frankenstein_utils.apps.downstream " + " ".join(sys.argv[1:] if argv is None
                                                                                      else argv),
               test_from="real test photos (PairedFaceDataset test) vs photo_fitted_landmarks")
    from ..io.files import atomic_write_bytes, atomic_write_json

    out = Path(a.out)
    atomic_write_json(out / "results.json", res)
    atomic_write_bytes(out / "RESULTS.md", _markdown(res).encode())
    print(_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
