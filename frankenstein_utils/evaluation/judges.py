"""Face networks trained elsewhere (dlib) that judge generated images: detection, 68 landmarks, descriptors.

Face networks trained elsewhere, on real faces, used as judges of generated images (dlib, via ``dlib-bin`` and the
model files of ``face-recognition-models``):

- HOG frontal face detector (``dlib.get_frontal_face_detector``);
- 68-point shape predictor trained on iBUG 300-W (``shape_predictor_68_face_landmarks.dat``), iBUG markup, the same
  markup as the face model's ``landmarks68``;
- ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``, 128-D, 99.38 % on LFW; two faces are the
  same person when their descriptors are closer than 0.6).

Input convention: images (N, C, H, W) float in [-1, 1] (the project's convention) with C = 1 or 3, square, face-sized
(16 <= H = W <= 1024). Greyscale is repeated to RGB. Upsampling (fixed): every image is resized with PIL's bicubic
filter to ``UPSAMPLE_TO`` = 256 px before anything runs, because dlib's HOG detector does not find faces smaller than
about 80 px; detection runs on that image with no further pyramid upsampling. Landmarks are returned in the input
image's pixel frame, continuous coordinates (pixel i covers [i, i + 1), its centre is i + 0.5), the same frame as
``render.rasterize.to_pixels``. When no face is detected, the landmarks and the descriptor are computed in a fixed fallback box
(by default the median detection box of real photos, set by the caller), so every image gets landmarks and a
descriptor and a generator cannot improve its landmark error by not being detected.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

UPSAMPLE_TO = 256
SAME_PERSON_THRESHOLD = 0.6  # dlib's documented decision threshold for the ResNet descriptor
# iBUG 68 markup (0-based): jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67; outer eye corners 36 and 45.
INNER_POINTS = tuple(range(17, 68))
MODEL_FILES = {"shape68": "shape_predictor_68_face_landmarks.dat",
               "resnet": "dlib_face_recognition_resnet_model_v1.dat"}


def model_dir() -> Path:
    """Folder of the dlib model files shipped by ``face-recognition-models`` (found without importing the package:
    its ``__init__`` needs ``pkg_resources``)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("face-recognition-models is not installed: pip install face-recognition-models==0.3.0")
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    for f in MODEL_FILES.values():
        if not (folder / f).is_file():
            raise FileNotFoundError(f"{folder / f}: dlib model file missing (reinstall face-recognition-models)")
    return folder


def to_uint8_upsampled(images, size: int = UPSAMPLE_TO) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] -> uint8 RGB (N, size, size, 3), bicubic. Raises ValueError when the array is
    not a batch of face-sized images."""
    x = images.detach().cpu().float() if isinstance(images, torch.Tensor) else torch.as_tensor(
        np.asarray(images, dtype=np.float32))
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[2] != x.shape[3] or not 16 <= x.shape[2] <= 1024:
        raise ValueError(f"face judges: expected images (N, C, H, W) with C in (1, 3) and 16 <= H = W <= 1024 "
                         f"(values in [-1, 1]), got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("face judges: images contain NaN or inf")
    a = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in a])


@dataclass
class FaceAnalysis:
    """What the judges say about N images (input pixel frame)."""

    found: np.ndarray  # (N,) bool: the HOG detector found a face
    boxes: np.ndarray  # (N, 4) x0, y0, x1, y1 of the largest detection (NaN where none)
    landmarks: np.ndarray  # (N, 68, 2) iBUG points, detected box or the fallback box
    embeddings: np.ndarray | None  # (N, 128) ResNet descriptors (None if not asked for)


class FaceJudges:
    """The three dlib networks, loaded once. ``fallback_box`` (x0, y0, x1, y1) in fractions of the image side is the
    box used where detection fails (default: the centre 70 % of the image; ``evaluation`` sets it to the median
    detection box of real test photos)."""

    def __init__(self, fallback_box=(0.15, 0.15, 0.85, 0.85)):
        import dlib

        folder = model_dir()
        self.dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.shape68 = dlib.shape_predictor(str(folder / MODEL_FILES["shape68"]))
        self.resnet = dlib.face_recognition_model_v1(str(folder / MODEL_FILES["resnet"]))
        self.fallback_box = tuple(float(v) for v in fallback_box)

    def _rect(self, box, scale):
        x0, y0, x1, y1 = (int(round(v * scale)) for v in box)
        return self.dlib.rectangle(x0, y0, x1, y1)

    def _judge(self, up: np.ndarray, fallback, embed: bool):
        """Upsampled uint8 images -> (found, boxes, landmarks, descriptors) in upsampled pixels."""
        n = len(up)
        found, boxes = np.zeros(n, bool), np.full((n, 4), np.nan)
        lms, embs = np.zeros((n, 68, 2)), np.zeros((n, 128))
        for i, im in enumerate(up):
            dets = self.detector(im, 0)
            if len(dets):
                d = max(dets, key=lambda r: r.area())
                found[i] = True
                boxes[i] = [d.left(), d.top(), d.right(), d.bottom()]
            else:
                d = self._rect(fallback, up.shape[1])
            shape = self.shape68(im, d)
            # dlib's integer pixel coordinates: pixel centre = integer; +0.5 makes them continuous
            lms[i] = np.array([[p.x, p.y] for p in shape.parts()], float) + 0.5
            if embed:
                embs[i] = np.asarray(self.resnet.compute_face_descriptor(im, shape))
        return found, boxes, lms, embs

    def analyse(self, images, embed: bool = True, fallback_box=None, workers: int | None = None) -> FaceAnalysis:
        """Detect, place 68 landmarks and (if ``embed``) compute descriptors. Identical images are judged once
        (a constant or depth-blind output costs one descriptor, not N). ``fallback_box`` overrides the default.
        ``workers`` > 1 splits the images over forked processes (dlib runs on one core; same results); None:
        ``default_workers()``."""
        workers = default_workers() if workers is None else workers
        fallback = tuple(fallback_box) if fallback_box is not None else self.fallback_box
        up = to_uint8_upsampled(images)
        s = up.shape[1] / images.shape[-1]  # upsampled pixels per input pixel
        first, inverse = {}, []
        for im in up:
            inverse.append(first.setdefault(hashlib.sha1(im.tobytes()).hexdigest(), len(first)))
        uniq = up[[i for i in _first_indices(inverse)]]
        if workers > 1 and len(uniq) >= 4 * workers:
            import multiprocessing as mp

            global _JUDGES
            _JUDGES = self  # inherited by the forked workers
            chunks = np.array_split(np.arange(len(uniq)), workers)
            with mp.get_context("fork").Pool(workers) as pool:
                parts = pool.starmap(_judge_chunk, [(uniq[c], fallback, embed) for c in chunks])
            found, boxes, lms, embs = (np.concatenate(p) for p in zip(*parts))
        else:
            found, boxes, lms, embs = self._judge(uniq, fallback, embed)
        inv = np.asarray(inverse)
        return FaceAnalysis(found[inv], boxes[inv] / s, lms[inv] / s, embs[inv] if embed else None)


_JUDGES: FaceJudges | None = None
WORKERS_VARIABLE = "FRANKENSTEIN_JUDGE_WORKERS"


def default_workers() -> int:
    """Processes the judges use when a caller does not say: the environment variable ``FRANKENSTEIN_JUDGE_WORKERS``
    (e.g. one per core), else 1. Opt-in, because a pool cannot be forked from a daemonic process (a DataLoader
    worker); the results are the same for any number."""
    v = os.environ.get(WORKERS_VARIABLE, "1")
    if not v.isdigit() or int(v) < 1:
        raise ValueError(f"{WORKERS_VARIABLE}={v!r}: expected a whole number of processes >= 1")
    return int(v)


def _first_indices(inverse):
    """Index of the first occurrence of each unique id 0..k-1 in ``inverse``."""
    out = {}
    for i, u in enumerate(inverse):
        out.setdefault(u, i)
    return [out[u] for u in range(len(out))]


def _judge_chunk(up, fallback, embed):
    return judges()._judge(up, fallback, embed)


def judges() -> FaceJudges:
    """The shared judges (dlib networks load once per process)."""
    global _JUDGES
    if _JUDGES is None:
        _JUDGES = FaceJudges()
    return _JUDGES


# ---- MediaPipe 468 -> iBUG 68, derived from data --------------------------------------------------------------------
def fit_mediapipe_to_ibug(mp: np.ndarray, ibug: np.ndarray, n_candidates: int = 6) -> np.ndarray:
    """A sparse map from MediaPipe FaceMesh's 468 landmarks to the iBUG 68 markup, fitted on photos where both are
    known: ``mp`` (N, 468, 2) and ``ibug`` (N, 68, 2) (dlib's detections), same pixel frame.

    Why a fit: the two markups were drawn by different people on different definitions (MediaPipe's points lie on a
    surface mesh, iBUG's on contours), so no MediaPipe index is exactly an iBUG point. For each iBUG point the
    ``n_candidates`` MediaPipe points nearest to it on the mean face are combined with non-negative weights that sum
    to 1 (a barycentric combination: moves with the face, translation-equivariant), least squares over all photos
    and both coordinates (scipy's NNLS, the sum constraint as a heavily weighted extra row). Returns W (68, 468),
    each row sparse and summing to 1; mapped points = W @ mp."""
    from scipy.optimize import nnls

    mp, ibug = np.asarray(mp, np.float64), np.asarray(ibug, np.float64)
    if mp.ndim != 3 or mp.shape[1:] != (468, 2) or ibug.shape != (len(mp), 68, 2):
        raise ValueError(f"fit_mediapipe_to_ibug: need mp (N, 468, 2) and ibug (N, 68, 2), got {mp.shape}, "
                         f"{ibug.shape}")
    W = np.zeros((68, 468))
    mean_mp, mean_ib = mp.mean(0), ibug.mean(0)
    big = 1e3 * np.sqrt(len(mp))
    for j in range(68):
        cand = np.argsort(np.linalg.norm(mean_mp - mean_ib[j], axis=1))[:n_candidates]
        A = np.concatenate([mp[:, cand, 0], mp[:, cand, 1], np.full((1, len(cand)), big)])
        b = np.concatenate([ibug[:, j, 0], ibug[:, j, 1], [big]])
        w, _ = nnls(A, b)
        W[j, cand] = w / w.sum()
    return W


def map_mediapipe(mp: np.ndarray, W: np.ndarray) -> np.ndarray:
    """MediaPipe landmarks (N, 468, 2) -> iBUG 68 points (N, 68, 2) through the fitted map W (68, 468)."""
    return np.einsum("pk,nkc->npc", W, np.asarray(mp, np.float64))
