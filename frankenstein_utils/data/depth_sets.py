"""Synthetic depth-map datasets from the face model: generate to disk (resumable, byte-reproducible) and read back.

Layout of a generated set ``out_dir``::

    meta.npz            coeffs (n, K) float32, poses (n, 6) float32, expressions (n, E) float32, config (JSON string)
    config.json         the same configuration, readable
    depth/000000.png    16-bit greyscale depth in [0, 1] (value * 65535), near = bright, background 0
    mask/000000.png     8-bit face mask (0 / 255)
    ply/000000.ply      the face mesh in model cm (optional)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..facemodel.fitting import FittedFaceParams
from ..facemodel.model import FaceModel, load_face_model, ply_bytes, render_faces
from ..io.files import (atomic_savez, atomic_write_bytes, atomic_write_json, holds_folder_lock, load_npz, load_png,
                        png_bytes, png_matches)
from ..render.rasterize import PoseJitter, RenderConfig, apply_pose

DEPTH_SCALE = 65535.0
# Faces are rendered in fixed blocks of consecutive indices, so float round-off (which can depend on how many faces
# share a matrix product) is the same on every run and on resume: the same seed gives the same bytes.
RENDER_BLOCK = 16


@dataclass
class DepthSetConfig:
    """Everything that determines a generated set (saved with it; resuming checks it matches)."""

    n: int
    seed: int = 0
    n_components: int = 15
    truncation: float | None = None
    render: RenderConfig = field(default_factory=RenderConfig)
    pose: PoseJitter = field(default_factory=PoseJitter)
    write_ply: bool = False
    # Where pose and expression come from: "jitter" / "neutral" (the PoseJitter above, expressionless faces) or
    # "fitted" (whole rows of a FittedFaceParams table, so one photo's pose and expression stay together).
    pose_source: str = "jitter"
    expression_source: str = "neutral"
    table: str | None = None  # the table's source and content hash when one is used

    def __post_init__(self):
        if self.n < 1 or (self.truncation is not None and not (np.isfinite(self.truncation) and self.truncation > 0)):
            raise ValueError(f"DepthSetConfig: n must be >= 1 and truncation > 0 or None, got n={self.n}, "
                             f"truncation={self.truncation}")
        if self.pose_source not in ("jitter", "fitted") or self.expression_source not in ("neutral", "fitted"):
            raise ValueError(f"DepthSetConfig: pose_source must be 'jitter' or 'fitted' (got {self.pose_source!r}), "
                             f"expression_source 'neutral' or 'fitted' (got {self.expression_source!r})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DepthSetConfig":
        d = dict(d)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown DepthSetConfig keys: {sorted(unknown)}")
        d["render"] = RenderConfig.from_dict(d.get("render", {}))
        d["pose"] = PoseJitter(**d.get("pose", {}))
        return cls(**d)


def sample_face_params(model: FaceModel, cfg: DepthSetConfig, table: FittedFaceParams | None = None):
    """Coefficients (n, K), poses (n, 6) and expression weights (n, E) of a set, all drawn up front from one seeded
    generator. Identity ~ N(0, I) (or truncated); pose from the jitter or the table; expressions neutral or from the
    table (the same table row as the pose when both are fitted)."""
    g = torch.Generator().manual_seed(cfg.seed)
    coeffs = model.sample_coefficients(cfg.n, cfg.n_components, generator=g, truncation=cfg.truncation)
    poses = cfg.pose.sample(cfg.n, generator=g)
    expressions = torch.zeros(cfg.n, model.n_expressions)
    if "fitted" in (cfg.pose_source, cfg.expression_source):
        if table is None:
            raise ValueError("DepthSetConfig asks for fitted poses/expressions but no FittedFaceParams table was given")
        if table.expressions.shape[1] != model.n_expressions:
            raise ValueError(f"{table.source}: {table.expressions.shape[1]} expression weights, the face model has "
                             f"{model.n_expressions}")
        rows = torch.randint(len(table.poses), (cfg.n,), generator=g)
        if cfg.pose_source == "fitted":
            poses = torch.from_numpy(table.poses)[rows]
        if cfg.expression_source == "fitted":
            expressions = torch.from_numpy(table.expressions)[rows]
    return coeffs, poses, expressions


def _names(i: int) -> tuple[str, str, str]:
    return f"depth/{i:06d}.png", f"mask/{i:06d}.png", f"ply/{i:06d}.ply"


SET_FILES = ("depth/*.png", "mask/*.png", "ply/*.ply")


def _check_folder_is_this_set(out: Path, config_json: str) -> None:
    """Refuse (``ValueError`` naming the file) a folder whose files a resume cannot tie to the configuration
    ``config_json``: a ``meta.npz`` or ``config.json`` of another configuration, or depth/mask/ply files with
    neither (their seed and settings are unknown: kept, they would mix another set into this one)."""
    meta_path, cfg_path = out / "meta.npz", out / "config.json"
    if meta_path.exists():
        old = str(load_npz(meta_path)["config"])
        if old != config_json:
            raise ValueError(f"{meta_path}: folder holds a set made with another configuration; use a new out_dir.\n"
                             f"  existing: {old}\n  requested: {config_json}")
    if cfg_path.exists():
        try:
            old_cfg = json.loads(cfg_path.read_text())
        except ValueError as e:
            raise ValueError(f"{cfg_path}: not a readable set configuration ({e}); use a new out_dir") from e
        if json.dumps(old_cfg, sort_keys=True) != config_json:
            new_cfg = json.loads(config_json)
            diff = sorted(k for k in set(old_cfg) | set(new_cfg) if old_cfg.get(k) != new_cfg.get(k)) \
                if isinstance(old_cfg, dict) else ["everything"]
            raise ValueError(f"{cfg_path}: folder holds a set made with another configuration (differs in "
                             f"{', '.join(diff)}); use a new out_dir")
    elif not meta_path.exists():
        found = next((p for pattern in SET_FILES for p in sorted(out.glob(pattern))), None)
        if found is not None:
            raise ValueError(f"{out}: holds depth-set files ({found.relative_to(out)}, ...) but no meta.npz or "
                             f"config.json tying them to a configuration (they may be of another seed or settings); "
                             f"delete them or use a new out_dir")


@holds_folder_lock("out_dir", "generating depth maps")  # a second writer fails instead of mixing two sets
def generate_depth_dataset(n: int, out_dir, seed: int = 0, *, n_components: int = 15, truncation: float | None = None,
                           render: RenderConfig | None = None, pose: PoseJitter | None = None, write_ply: bool = False,
                           model: FaceModel | None = None, device: str | None = None, progress: bool = True,
                           table: FittedFaceParams | None = None, pose_source: str = "jitter",
                           expression_source: str = "neutral") -> Path:
    """Render ``n`` random faces into ``out_dir`` (see the module docstring for the layout).

    The same seed, settings and device give the same bytes; byte-reproducibility holds per device (a CPU and a CUDA
    render may differ in the last bit of a depth value: compare sets made on one device; ``device`` None means CUDA
    when available, else CPU). Files are written atomically; a run that was interrupted resumes
    where it stopped when called again with the same arguments (finished files are not redone; a PNG that is
    truncated, or not of the set's mode and size, is rendered again). Asking for a different configuration in a
    folder that holds another set raises ``ValueError``, and so does a folder holding depth, mask or ply files but
    neither ``meta.npz`` nor ``config.json`` (files that cannot be tied to this configuration are not kept). With
    ``table`` and ``pose_source`` / ``expression_source`` = "fitted", poses and expressions are drawn from fitted
    photos.
    """
    cfg = DepthSetConfig(n=n, seed=seed, n_components=n_components, truncation=truncation,
                         render=render or RenderConfig(), pose=pose or PoseJitter(), write_ply=write_ply,
                         pose_source=pose_source, expression_source=expression_source,
                         table=table.describe() if table is not None else None)
    out = Path(out_dir)
    model = model or load_face_model()
    meta_path = out / "meta.npz"
    config_json = json.dumps(cfg.to_dict(), sort_keys=True)
    _check_folder_is_this_set(out, config_json)
    coeffs, poses, expressions = sample_face_params(model, cfg, table)
    if not meta_path.exists():
        atomic_write_json(out / "config.json", cfg.to_dict())
        atomic_savez(meta_path, coeffs=coeffs.numpy(), poses=poses.numpy(), expressions=expressions.numpy(),
                     config=np.array(config_json))
    elif not (out / "config.json").exists():
        atomic_write_json(out / "config.json", cfg.to_dict())  # the readable copy, derived from meta.npz
    res = (cfg.render.resolution, cfg.render.resolution)

    def done(i):
        # A PNG must decode to the end (a crash can leave a truncated file under its final name on some filesystems)
        # and be what this set writes: 16-bit greyscale depth, 8-bit greyscale mask, at the set's resolution. A valid
        # PNG of another mode or size (copied in, or of another set) is rendered again, not kept.
        d_name, m_name, p_name = _names(i)
        return (png_matches(out / d_name, res, 16) and png_matches(out / m_name, res, 8)
                and (not write_ply or (out / p_name).exists()))

    blocks = [range(b, min(b + RENDER_BLOCK, n)) for b in range(0, n, RENDER_BLOCK)]
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    region = model.region(cfg.render.region)
    with tqdm(total=n, desc="depth maps", unit="face", disable=not progress) as bar:
        for block in blocks:
            todo = [i for i in block if not done(i)]
            if not todo:
                bar.update(len(block))
                continue
            c, p = coeffs[block.start:block.stop].to(dev), poses[block.start:block.stop].to(dev)
            e = expressions[block.start:block.stop].to(dev)
            depth, mask = render_faces(model, c, cfg.render, p, e)
            depth16 = torch.round(depth * DEPTH_SCALE).to(torch.int32).cpu().numpy().astype(np.uint16)
            mask8 = mask.cpu().numpy().astype(np.uint8) * 255
            if write_ply:
                verts = apply_pose(model.vertices(c, cfg.render.region, e), p).cpu().numpy()
            for i in todo:
                j = i - block.start
                d_name, m_name, p_name = _names(i)
                if write_ply:
                    atomic_write_bytes(out / p_name, ply_bytes(verts[j], region.faces.numpy(), str(out / p_name)))
                atomic_write_bytes(out / m_name, png_bytes(mask8[j]))
                atomic_write_bytes(out / d_name, png_bytes(depth16[j]))
            bar.update(len(block))
    return out


class DepthMapDataset(Dataset):
    """Read a generated set: items are dicts with ``depth`` and ``mask`` (1, H, W) float in [0, 1], ``coeffs`` (K,),
    ``pose`` (6,), ``expressions`` (E,) and ``index``. ``transform`` (optional) is applied to the dict."""

    def __init__(self, root, transform=None):
        self.root = Path(root)
        meta_path = self.root / "meta.npz"
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path}: not a generated depth set (run generate_depth_dataset first)")
        meta = load_npz(meta_path)
        self.coeffs = torch.from_numpy(meta["coeffs"])
        self.poses = torch.from_numpy(meta["poses"])
        # sets made before expressions existed are neutral
        self.expressions = torch.from_numpy(meta["expressions"]) if "expressions" in meta.files else \
            torch.zeros(len(self.coeffs), 0)
        self.config = DepthSetConfig.from_dict(json.loads(str(meta["config"])))
        n = self.config.n
        # every face of the set has its row: fewer rows would silently drop faces, more would invent them
        for what, rows in (("coefficient", self.coeffs), ("pose", self.poses), ("expression", self.expressions)):
            if len(rows) != n:
                raise ValueError(f"{meta_path}: {len(rows)} {what} rows for {n} depth maps (the set's n); the file "
                                 f"is damaged or of another set: regenerate the set")
        self.transform = transform
        res = self.config.render.resolution
        self.size = (res, res)
        missing = [i for i in range(n) if not (self.root / _names(i)[0]).exists()]
        if missing:
            raise FileNotFoundError(f"{self.root}: {len(missing)} of {n} depth maps missing (first: "
                                    f"{_names(missing[0])[0]}); resume generate_depth_dataset to finish the set")
        n_maps = sum(1 for _ in (self.root / "depth").glob("*.png"))
        if n_maps != n:
            raise ValueError(f"{meta_path}: describes {n} faces but {self.root / 'depth'} holds {n_maps} depth maps; "
                             f"the meta.npz is of another set: regenerate the set")

    def __len__(self):
        return len(self.coeffs)

    def __getitem__(self, i):
        d_name, m_name, _ = _names(i)
        depth = load_png(self.root / d_name, self.size)
        if depth.dtype != np.uint16 or depth.ndim != 2:
            raise ValueError(f"{self.root / d_name}: expected a 16-bit greyscale PNG, got {depth.dtype} "
                             f"{'x'.join(map(str, depth.shape))}")
        mask = load_png(self.root / m_name, self.size)
        if mask.dtype != np.uint8 or mask.ndim != 2:
            raise ValueError(f"{self.root / m_name}: expected an 8-bit greyscale PNG, got {mask.dtype} "
                             f"{'x'.join(map(str, mask.shape))}")
        item = {"depth": torch.from_numpy(depth.astype(np.float32) / DEPTH_SCALE)[None],
                "mask": torch.from_numpy((mask > 127).astype(np.float32))[None],
                "coeffs": self.coeffs[i], "pose": self.poses[i], "expressions": self.expressions[i], "index": i}
        return self.transform(item) if self.transform else item


class RenderedDepthDataset(Dataset):
    """The same items as ``DepthMapDataset`` for the same configuration, rendered on the fly instead of read."""

    def __init__(self, n: int, seed: int = 0, *, n_components: int = 15, truncation: float | None = None,
                 render: RenderConfig | None = None, pose: PoseJitter | None = None, model: FaceModel | None = None,
                 transform=None, table: FittedFaceParams | None = None, pose_source: str = "jitter",
                 expression_source: str = "neutral"):
        self.config = DepthSetConfig(n=n, seed=seed, n_components=n_components, truncation=truncation,
                                     render=render or RenderConfig(), pose=pose or PoseJitter(),
                                     pose_source=pose_source, expression_source=expression_source,
                                     table=table.describe() if table is not None else None)
        self.model = model or load_face_model()
        self.coeffs, self.poses, self.expressions = sample_face_params(self.model, self.config, table)
        self.transform = transform

    def __len__(self):
        return self.config.n

    def render_batch(self, idx):
        """Render several items at once (faster than one by one): depth and mask (B, 1, H, W), float32 in [0, 1]."""
        depth, mask = render_faces(self.model, self.coeffs[idx], self.config.render, self.poses[idx],
                                   self.expressions[idx])
        return depth[:, None], mask[:, None].float()

    def materialize(self, batch_size: int = 256):
        """Render every item now (batched) into an in-memory dataset of depth and mask: faster to train on."""
        from .photos import TensorDictDataset

        parts = [self.render_batch(list(range(s, min(s + batch_size, len(self))))) for s in range(0, len(self), batch_size)]
        return TensorDictDataset(depth=torch.cat([p[0] for p in parts]), mask=torch.cat([p[1] for p in parts]))

    def __getitem__(self, i):
        depth, mask = self.render_batch([i])
        # Quantise like the 16-bit PNG so both datasets give identical tensors.
        depth = torch.round(depth[0] * DEPTH_SCALE) / DEPTH_SCALE
        item = {"depth": depth, "mask": mask[0], "coeffs": self.coeffs[i], "pose": self.poses[i],
                "expressions": self.expressions[i], "index": i}
        return self.transform(item) if self.transform else item
