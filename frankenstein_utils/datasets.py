"""Photo datasets (``torch.utils.data.Dataset``): image folders, Haar-cascade face crops, and the paired
(depth, photo) set built from CelebA photos and their MediaPipe landmark meshes.

Images are float tensors (C, H, W) in [-1, 1]; depth maps and masks are (1, H, W) in [0, 1], near = 1.
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .facemodel import FaceModel
from .fileio import atomic_savez, atomic_write_json, load_npz
from .paths import REPO_ROOT, find_dataset
from .rasterize import PoseJitter, RenderConfig, normalize_depth, rasterize_depth

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# The aligned CelebA photos are 89 x 109; this square box (left, top, right, bottom) centres the face.
CELEBA_CROP = (0.0, 20.0, 89.0, 109.0)
# MediaPipe FaceMesh landmark indices: eye corners (outer, inner) of each eye, nose tip.
MP_RIGHT_EYE = (33, 133)
MP_LEFT_EYE = (263, 362)
MP_NOSE_TIP = 1
# ICT-FaceKit eyeball vertex ranges (subject's left eyeball first; see the data README).
ICT_LEFT_EYEBALL = (21451, 23021)
ICT_RIGHT_EYEBALL = (23021, 24591)


def load_image(path, grayscale: bool = False) -> Image.Image:
    """Open an image as RGB (or L); errors name the file."""
    try:
        with Image.open(path) as img:
            return img.convert("L" if grayscale else "RGB")
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image -> (C, H, W) float in [-1, 1]."""
    a = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy())


def centre_square(w: int, h: int) -> tuple[float, float, float, float]:
    s = min(w, h)
    return ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)


def list_images(root) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


class ImageFolderDataset(Dataset):
    """Every image under ``root``: centre square crop, resize to ``size``, values in [-1, 1].

    ``skip_bad=True`` drops unreadable files with a warning (checked up front) instead of raising."""

    def __init__(self, root, size: int = 64, grayscale: bool = False, skip_bad: bool = False):
        self.files = list_images(root)
        self.size, self.grayscale = size, grayscale
        if skip_bad:
            good = []
            for f in self.files:
                try:
                    load_image(f, grayscale)
                    good.append(f)
                except ValueError as e:
                    warnings.warn(f"skipping {e}")
            self.skipped = len(self.files) - len(good)
            self.files = good

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        img = load_image(self.files[i], self.grayscale)
        img = img.resize((self.size, self.size), Image.BICUBIC, box=centre_square(*img.size))
        return to_tensor(img)


class HaarFaceDataset(Dataset):
    """Face crops of arbitrary photos, found with OpenCV's frontal-face Haar cascade (as the original pipeline did).

    The largest detection is enlarged by ``margin`` on each side and made square. Photos with no face are skipped
    and counted (``n_no_face``), not fatal; so are unreadable files (``skip_bad=True``, the default: counted in
    ``n_unreadable`` with a warning; ``False``: the first one raises). Detection runs once, up front; finding no face
    at all warns."""

    def __init__(self, root, size: int = 64, grayscale: bool = False, margin: float = 0.2, min_face: int = 24,
                 progress: bool = False, skip_bad: bool = True):
        import cv2

        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        if cascade.empty():
            raise RuntimeError("OpenCV's haarcascade_frontalface_default.xml did not load")
        self.size, self.grayscale = size, grayscale
        self.items, self.no_face, self.unreadable = [], [], []
        for f in tqdm(list_images(root), desc="Haar face detection", disable=not progress):
            try:
                grey = np.asarray(load_image(f, grayscale=True))
            except ValueError as e:
                if not skip_bad:
                    raise
                warnings.warn(f"skipping {e}")
                self.unreadable.append(f)
                continue
            found = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=3, minSize=(min_face, min_face))
            if len(found) == 0:
                self.no_face.append(f)
                continue
            x, y, w, h = max(found, key=lambda r: r[2] * r[3])
            s = max(w, h) * (1 + 2 * margin)
            cx, cy = x + w / 2, y + h / 2
            self.items.append((f, (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)))
        self.n_no_face, self.n_unreadable = len(self.no_face), len(self.unreadable)
        if not self.items:
            warnings.warn(f"{root}: no face found in any of {self.n_no_face + self.n_unreadable} images "
                          f"({self.n_unreadable} unreadable)")

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        f, box = self.items[i]
        img = load_image(f, self.grayscale).crop(tuple(int(round(b)) for b in box))  # pads with black outside
        return to_tensor(img.resize((self.size, self.size), Image.BICUBIC))


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


def landmark_frame(landmarks: np.ndarray, crop, size: int) -> np.ndarray:
    """Landmarks (B, 468, 3) in photo pixels (y down, z smaller = nearer) -> output pixels with z larger = nearer."""
    left, top, right, bottom = crop
    s = size / (right - left)
    out = np.empty_like(landmarks, dtype=np.float32)
    out[..., 0] = (landmarks[..., 0] - left) * s
    out[..., 1] = (landmarks[..., 1] - top) * (size / (bottom - top))
    out[..., 2] = -landmarks[..., 2] * s
    return out


def eye_centres(lm: np.ndarray):
    """Centres of the subject's right and left eye (mean of the two corners), (B, 2) each, same frame as ``lm``."""
    r = lm[:, list(MP_RIGHT_EYE), :2].mean(1)
    l_ = lm[:, list(MP_LEFT_EYE), :2].mean(1)
    return r, l_


def ict_eye_geometry(model: FaceModel):
    """Inter-eye distance (cm) and eye midpoint (x, y) of the model's mean face, from the eyeball centres."""
    left = model.mean[ICT_LEFT_EYEBALL[0]:ICT_LEFT_EYEBALL[1]].mean(0)
    right = model.mean[ICT_RIGHT_EYEBALL[0]:ICT_RIGHT_EYEBALL[1]].mean(0)
    return float((left[:2] - right[:2]).norm()), ((left + right) / 2)[:2]


def matched_render_config(stats: dict, model: FaceModel, size: int, relative_span_cm: float = 12.0,
                          fg_floor: float = 0.1) -> RenderConfig:
    """A synthetic ``RenderConfig`` framed like the photos: same eye distance in pixels, eyes at the same place,
    region ending at the chin line, depth relative to the nearest point (as photo landmark depth must be)."""
    d_cm, mid = ict_eye_geometry(model)
    s = stats["eye_distance_px"] / d_cm  # pixels per cm
    ex, ey = stats["eye_mid_px"]
    x0 = float(mid[0]) - ex / s
    y1 = float(mid[1]) + ey / s
    window = (x0, x0 + size / s, y1 - size / s, y1)
    return RenderConfig(resolution=size, framing="fixed", window_cm=window, depth_mode="relative",
                        relative_span_cm=relative_span_cm, fg_floor=fg_floor, region="chin")


def rotation_to_angles(R: np.ndarray) -> np.ndarray:
    """(B, 3, 3) rotations R = Rz(roll) Ry(yaw) Rx(pitch) -> (B, 3) degrees (yaw, pitch, roll)."""
    yaw = np.arcsin(np.clip(-R[:, 2, 0], -1, 1))
    pitch = np.arctan2(R[:, 2, 1], R[:, 2, 2])
    roll = np.arctan2(R[:, 1, 0], R[:, 0, 0])
    return np.degrees(np.stack([yaw, pitch, roll], 1))


def estimate_poses(landmarks: np.ndarray) -> np.ndarray:
    """Head pose of each landmark set (B, 468, 3) in photo pixels, as pose vectors (yaw, pitch, roll, scale, tx, ty).

    Each face is aligned to the mean landmark shape made left-right symmetric (similarity Procrustes/Kabsch in a
    y-up, z-toward-viewer frame). Yaw and roll are therefore absolute (0 = symmetric frontal); pitch is relative to
    the average pitch of the photos. Scale is relative to the median face; tx, ty are eye-midpoint offsets from the
    median in units of the median inter-eye distance (multiply by the inter-eye distance in cm to get cm).
    """
    X = landmarks.astype(np.float64) * np.array([1.0, -1.0, -1.0])  # x right, y up, z toward the viewer
    c = X.mean(1, keepdims=True)
    Xc = X - c
    size = np.sqrt((Xc ** 2).sum((1, 2)))
    Xn = Xc / size[:, None, None]
    ref = Xn.mean(0)
    # Symmetrise: pair each point with the nearest point of the mirrored shape, average the two.
    mirror = ref * np.array([-1.0, 1.0, 1.0])
    pair = np.argmin(((ref[:, None, :] - mirror[None]) ** 2).sum(-1), axis=1)
    ref = (ref + mirror[pair]) / 2
    ref -= ref.mean(0)
    ref /= np.sqrt((ref ** 2).sum())
    H = np.einsum("ni,bnj->bij", ref, Xn)  # cross-covariance ref^T X (B, 3, 3)
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(np.einsum("bij,bjk->bik", U, Vt)))
    D = np.zeros_like(H)
    D[:, 0, 0] = D[:, 1, 1] = 1
    D[:, 2, 2] = d
    R = np.einsum("bij,bjk,bkl->bil", Vt.transpose(0, 2, 1), D, U.transpose(0, 2, 1))  # X ~ R ref
    angles = rotation_to_angles(R)
    r, l_ = eye_centres(landmarks)
    eye_d = np.linalg.norm(l_ - r, axis=1)
    mid = (r + l_) / 2
    scale = size / np.median(size)
    shift = (mid - np.median(mid, 0)) / np.median(eye_d)
    shift[:, 1] *= -1  # y up, as model cm
    return np.concatenate([angles, scale[:, None], shift], 1).astype(np.float32)


def pose_jitter_from_poses(poses: np.ndarray, eye_distance_cm: float) -> PoseJitter:
    """A normal ``PoseJitter`` with the spread (std) of estimated real poses; shifts converted to cm."""
    std = poses.std(0)
    return PoseJitter(yaw_deg=float(std[0]), pitch_deg=float(std[1]), roll_deg=float(std[2]),
                      scale=float(std[3]), shift_cm=float(np.mean(std[4:6]) * eye_distance_cm),
                      distribution="normal")


class PairedFaceDataset(Dataset):
    """CelebA photos paired with depth maps of their faces, pixel-aligned.

    ``config.depth_source="fitted"`` (default): the face model (identity, expression, pose) is fitted to each photo's
    MediaPipe landmarks (``fitting.py``) and rendered with ``render_faces`` (render_depth's path) through
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
        from .facemodel import load_face_model

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
        from .depthdata import FittedFaceParams

        if self.fit is None:
            raise ValueError(f"{self.cache_path}: built without fits; delete it to rebuild")
        return FittedFaceParams(self.fit["poses"][self.indices], self.fit["expressions"][self.indices],
                                source=f"{self.cache_path.name}:{self.split}")

    def synthetic(self, n: int, seed: int = 0, model: FaceModel | None = None, n_components: int = 15,
                  expressions: str = "fitted", pose: str = "fitted"):
        """Synthetic inputs made like this set's depth: identity ~ N(0, I) over ``n_components``, pose and expression
        drawn from the fitted photos (``"fitted"``) or frontal (pose ``"jitter"`` = this set's ``pose_jitter``) and
        neutral, framing and depth convention identical (``render_config``). A ``RenderedDepthDataset``."""
        from .depthdata import RenderedDepthDataset
        from .facemodel import load_face_model

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
    from .facemodel import render_faces
    from .fitting import FitConfig, fit_landmarks, fit_summary, reference_correspondence, render_poses

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


def mask_boxes(mask: torch.Tensor) -> np.ndarray:
    """Bounding boxes of (N, H, W) or (N, 1, H, W) masks as (N, 4): centre x, centre y, width, height in pixels
    (NaN for an empty mask)."""
    m = mask.reshape(len(mask), *mask.shape[-2:]) > 0
    out = np.full((len(m), 4), np.nan)
    for i, mi in enumerate(m):
        rows = torch.nonzero(mi.any(1)).squeeze(1)
        cols = torch.nonzero(mi.any(0)).squeeze(1)
        if len(rows):
            out[i] = [(cols[0] + cols[-1] + 1).item() / 2, (rows[0] + rows[-1] + 1).item() / 2,
                      (cols[-1] - cols[0] + 1).item(), (rows[-1] - rows[0] + 1).item()]
    return out


class TensorDictDataset(Dataset):
    """Items ``{key: tensors[key][i]}`` (plus ``index``) from equal-length tensors held in memory."""

    def __init__(self, **tensors):
        lengths = {len(v) for v in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"tensors of different lengths: { {k: len(v) for k, v in tensors.items()} }")
        self.tensors = tensors

    def __len__(self):
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i):
        return {**{k: v[i] for k, v in self.tensors.items()}, "index": i}
