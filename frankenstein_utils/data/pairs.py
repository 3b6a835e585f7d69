"""The paired set: CelebA photos with the depth of their fitted face model, in the render frame.

Photo datasets (``torch.utils.data.Dataset``): image folders, Haar-cascade face crops, and the paired
(depth, photo) set built from CelebA photos and their MediaPipe landmark meshes.

Images are float tensors (C, H, W) in [-1, 1]; depth maps and masks are (1, H, W) in [0, 1], near = 1.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..facemodel.fitting import FittedFaceParams
from ..facemodel.framing import (CELEBA_CROP, estimate_poses, eye_centres, ict_eye_geometry, landmark_frame,
                                 matched_render_config, pose_jitter_from_poses)
from ..facemodel.model import FaceModel
from ..io.files import atomic_savez, atomic_write_json, load_npz
from ..io.images import load_image
from ..io.paths import REPO_ROOT, find_dataset
from ..render.rasterize import PoseJitter, RenderConfig, rasterize_depth

# ---- the paired (depth, photo) set ----------------------------------------------------------------------------------
DEPTH_SOURCES = ("fitted", "landmarks")


@dataclass
class PairedConfig:
    """How the paired CelebA set is built (saved beside its cache and its split)."""

    size: int = 64
    grayscale: bool = False
    crop: tuple = CELEBA_CROP
    relative_span_cm: float = 12.0
    fg_floor: float = 0.1
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    split_seed: int = 0
    limit: int | None = None  # use only the first N detected photos (tests, quick runs)
    # "fitted": depth = the face model fitted to the photo's landmarks, rendered by render_depth's path (the same
    # function as synthetic inputs); "landmarks": depth rasterized from the MediaPipe landmark mesh itself.
    depth_source: str = "fitted"
    fit_components: int = 40  # identity coefficients of the fit

    def __post_init__(self):
        self.crop = tuple(float(c) for c in self.crop)
        if self.depth_source not in DEPTH_SOURCES:
            raise ValueError(f"PairedConfig.depth_source={self.depth_source!r}; choose one of {DEPTH_SOURCES}")

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


class PairedFaceDataset(Dataset):
    """CelebA photos paired with depth maps of their faces, pixel-aligned.

    ``config.depth_source="fitted"`` (default): the face model (identity, expression, pose) is fitted to each photo's
    MediaPipe landmarks (``facemodel/fitting.py``) and rendered with ``render_faces`` (render_depth's path) through
    ``matched_render_config``, i.e. exactly as synthetic inputs are made, in the photo's own framing.
    ``"landmarks"``: the MediaPipe landmark mesh itself is rasterized with the project's z-buffer, its depth relative
    to the nearest point with the span ``relative_span_cm`` converted to pixels through the eye distance.

    Items: dict(image (C, S, S) in [-1, 1], depth (1, S, S), mask (1, S, S), index). The whole set is built once
    (photos cropped and resized, depth rendered in the same crop) and cached under ``outputs/cache`` (the file name
    holds a hash of the config, so each depth source has its own); the train / val / test split is saved there too,
    so every notebook uses the same one. The split is per image: the CelebA subset has no identity labels, so one
    person may appear in two splits.
    """

    def __init__(self, split: str = "train", config: PairedConfig | None = None, root=None, cache_dir=None,
                 model: FaceModel | None = None, progress: bool = True):
        self.config = cfg = config or PairedConfig()
        if split not in ("train", "val", "test", "all"):
            raise ValueError(f"split must be train, val, test or all, got {split!r}")
        self.root = Path(root) if root else find_dataset("celeba_10k", "landmarks_mediapipe.npz")
        cache_dir = Path(cache_dir) if cache_dir else REPO_ROOT / "outputs" / "cache"
        path = cache_dir / f"paired_celeba_{cfg.key()}.npz"
        if not path.exists():
            atomic_savez(path, **self._build(cfg, model, progress))
            atomic_write_json(path.with_suffix(".json"), asdict(cfg))
        data = load_npz(path)  # a damaged cache names itself
        self.names = data["names"]
        self.stats = json.loads(str(data["stats"]))
        self.poses_all = data["poses"]
        # The fit of every photo of the set (all splits; None for a landmark set built before fits were stored)
        self.fit = {k[4:]: data[k] for k in data.files if k.startswith("fit_")} or None
        idx = data[f"split_{split}"] if split != "all" else np.arange(len(self.names))
        self.indices = idx
        self.images = torch.from_numpy(data["images"][idx])  # uint8 (N, C, S, S)
        self.depth = torch.from_numpy(data["depth"][idx])  # uint16 (N, S, S)
        self.split = split
        self.cache_path = path

    def _build(self, cfg: PairedConfig, model, progress):
        lm_path = self.root / "landmarks_mediapipe.npz"
        try:
            lm = np.load(lm_path)
            found, landmarks, tris, names = lm["found"], lm["landmarks"], lm["triangles"], lm["names"]
        except Exception as e:
            raise ValueError(f"{lm_path}: cannot read landmarks ({e})") from e
        keep = np.nonzero(found)[0]
        if cfg.limit:
            keep = keep[: cfg.limit]
        S = cfg.size
        images = np.zeros((len(keep), 1 if cfg.grayscale else 3, S, S), np.uint8)
        for j, i in enumerate(tqdm(keep, desc="paired set: photos", disable=not progress)):
            img = load_image(self.root / "images" / names[i], cfg.grayscale)
            img = img.resize((S, S), Image.BICUBIC, box=cfg.crop)
            a = np.asarray(img)
            images[j] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        pts = landmark_frame(landmarks[keep], cfg.crop, S)
        r, l_ = eye_centres(pts)
        eye_px = np.linalg.norm(l_ - r, axis=1)  # per face, output pixels
        from ..facemodel.model import load_face_model

        model = model or load_face_model()
        eye_cm, _ = ict_eye_geometry(model)
        stats = {"eye_distance_px": float(np.median(eye_px)),
                 "eye_mid_px": [float(v) for v in np.median((r + l_) / 2, axis=0)],
                 "n": int(len(keep)), "n_no_landmarks": int((~found).sum())}
        # The fit is made for either depth source: synthetic inputs draw pose and expression from it.
        fitted_depth, fit_arrays, stats["fit"] = _fitted_depth(model, landmarks[keep], stats, cfg, progress,
                                                               render=cfg.depth_source == "fitted")
        stats["fit"]["n_no_landmarks"] = stats["n_no_landmarks"]
        if cfg.depth_source == "fitted":
            depth = fitted_depth
        else:
            depth = np.zeros((len(keep), S, S), np.uint16)
            faces = torch.from_numpy(tris.astype(np.int64))
            for s in range(0, len(keep), 256):
                v = torch.from_numpy(pts[s:s + 256])
                z, mask = rasterize_depth(v, faces, S, S, cull_backfaces=False)
                # span in pixels: the same physical span as the synthetic config, through each face's eye distance
                span = torch.from_numpy(cfg.relative_span_cm * eye_px[s:s + 256] / eye_cm)
                d = _relative_depth(z, mask, span, cfg.fg_floor)
                depth[s:s + 256] = torch.round(d * 65535).numpy().astype(np.uint16)
        rng = np.random.default_rng(cfg.split_seed)
        perm = rng.permutation(len(keep))
        n_val, n_test = int(round(cfg.val_fraction * len(keep))), int(round(cfg.test_fraction * len(keep)))
        return {"names": names[keep], "images": images, "depth": depth, "poses": estimate_poses(landmarks[keep]),
                "stats": np.array(json.dumps(stats)), **fit_arrays,
                "split_val": np.sort(perm[:n_val]), "split_test": np.sort(perm[n_val:n_val + n_test]),
                "split_train": np.sort(perm[n_val + n_test:])}

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        depth = self.depth[i].float()[None] / 65535.0
        return {"image": self.images[i].float() / 127.5 - 1.0, "depth": depth, "mask": (depth > 0).float(),
                "index": int(self.indices[i])}

    def tensors(self):
        """The whole split as float tensors: images (N, C, S, S) in [-1, 1], depth and mask (N, 1, S, S)."""
        depth = self.depth.float()[:, None] / 65535.0
        return self.images.float() / 127.5 - 1.0, depth, (depth > 0).float()

    def render_config(self, model: FaceModel) -> RenderConfig:
        """The synthetic render configuration that matches this set's framing and depth convention."""
        return matched_render_config(self.stats, model, self.config.size, self.config.relative_span_cm,
                                     self.config.fg_floor)

    def face_params(self) -> "FittedFaceParams":
        """Render poses and expressions of this split's fitted photos (their empirical distribution), in this set's
        framing: synthetic faces drawn from it sit, turn and move like the photos."""
        from ..facemodel.fitting import FittedFaceParams

        if self.fit is None:
            raise ValueError(f"{self.cache_path}: built without fits; delete it to rebuild")
        return FittedFaceParams(self.fit["poses"][self.indices], self.fit["expressions"][self.indices],
                                source=f"{self.cache_path.name}:{self.split}")

    def synthetic(self, n: int, seed: int = 0, model: FaceModel | None = None, n_components: int = 15,
                  expressions: str = "fitted", pose: str = "fitted"):
        """Synthetic inputs made like this set's depth: identity ~ N(0, I) over ``n_components``, pose and expression
        drawn from the fitted photos (``"fitted"``) or frontal (pose ``"jitter"`` = this set's ``pose_jitter``) and
        neutral, framing and depth convention identical (``render_config``). A ``RenderedDepthDataset``."""
        from ..facemodel.model import load_face_model
        from .depth_sets import RenderedDepthDataset

        model = model or load_face_model()
        return RenderedDepthDataset(n, seed, n_components=n_components, render=self.render_config(model),
                                    pose=self.pose_jitter(model), model=model, table=self.face_params(),
                                    pose_source=pose, expression_source=expressions)

    def pose_jitter(self, model: FaceModel) -> PoseJitter:
        """Pose jitter with the spread of the head poses estimated from these photos' landmarks."""
        eye_cm, _ = ict_eye_geometry(model)
        return pose_jitter_from_poses(self.poses_all, eye_cm)


def fit_and_render(model: FaceModel, landmarks: np.ndarray, render: RenderConfig, crop, n_components: int = 40,
                   block: int = 256, progress: bool = False, render_depth: bool = True):
    """Fit the face model to landmark sets (B, 468, 3) in photo pixels and render each fitted face with
    ``render_faces`` in the photo's framing (``crop`` of the photo resized to ``render.resolution``, through the fixed
    window of ``render``). Returns depth (B, S, S) float in [0, 1], mask (B, S, S) bool (both None with
    ``render_depth=False``), the fit arrays (coeffs, expressions, render poses, residuals) and its summary."""
    from ..facemodel.fitting import FitConfig, fit_landmarks, fit_summary, reference_correspondence, render_poses
    from ..facemodel.model import render_faces

    corr, offsets = reference_correspondence(model)
    fcfg = FitConfig(n_components=n_components)
    fit = fit_landmarks(model, landmarks, corr, fcfg, offsets=offsets)
    poses = render_poses(fit, crop, render.resolution, render.window_cm)
    arrays = {"coeffs": fit.coeffs, "expressions": fit.expressions, "poses": poses,
              "residual_cm": fit.residual_cm.astype(np.float32), "residual_px": fit.residual_px.astype(np.float32)}
    if not render_depth:
        return None, None, arrays, fit_summary(fit, fcfg)
    S = render.resolution
    depth, mask = np.zeros((len(poses), S, S), np.float32), np.zeros((len(poses), S, S), bool)
    for s in tqdm(range(0, len(poses), block), desc="paired set: fitted depth", disable=not progress):
        d, m = render_faces(model, torch.from_numpy(fit.coeffs[s:s + block]), render,
                            torch.from_numpy(poses[s:s + block]), torch.from_numpy(fit.expressions[s:s + block]))
        depth[s:s + block], mask[s:s + block] = d.numpy(), m.numpy()
    return depth, mask, arrays, fit_summary(fit, fcfg)


def _fitted_depth(model, landmarks, stats, cfg: PairedConfig, progress, render: bool = True):
    rcfg = matched_render_config(stats, model, cfg.size, cfg.relative_span_cm, cfg.fg_floor)
    depth, _, arrays, summary = fit_and_render(model, landmarks, rcfg, cfg.crop, cfg.fit_components,
                                               progress=progress, render_depth=render)
    depth = None if depth is None else np.round(depth * 65535).astype(np.uint16)
    return depth, {f"fit_{k}": v for k, v in arrays.items()}, summary


def _relative_depth(z: torch.Tensor, mask: torch.Tensor, span: torch.Tensor, floor: float) -> torch.Tensor:
    """Nearest point of each map -> 1, ``span`` (per map) behind it -> floor, background 0."""
    near = torch.where(mask, z, torch.tensor(-math.inf)).amax(dim=(1, 2), keepdim=True)
    near = torch.where(torch.isfinite(near), near, torch.zeros_like(near))
    t = (1 - (near - z) / span.view(-1, 1, 1).float()).clamp(0, 1)
    return torch.where(mask, floor + (1 - floor) * t, torch.zeros_like(z))
