"""Attribute buffers as a generator's input: the training sets that carry them and the generator that renders them.

A buffers generator reads, beside depth and mask, the face model's appearance half rendered into the same pixels
(``facemodel.appearance_render.render_face``): the appearance colour (``colour``; a baked model's colour already holds
the photos' light), camera-frame normals (``normal``), and for an SH-lit model ``albedo`` and ``shading``. Its network
then has to make a render look like a photograph, not invent who the person is (GIF, DiffusionRig).

Training and sampling see one distribution of buffers:

- ``paired_buffer_set``: every training photo with its own fitted face (depth exactly the paired set's) and its own
  *projected* appearance, the first ``k`` of the appearance model's coefficients of that photo (``photo_coeffs``: the
  MAP projection of its visible colours, so what the model can express, not the photo's raw colours);
- ``synthetic_buffer_set``: face-model faces with appearance drawn from the model (``from-shape``: the conditional
  Gaussian given the identity, or ``free``), for the adversarial terms on unpaired inputs. A share ``extended`` of them
  spans the explorer's range: one shape component uniform in +-3.5 sigma (others at half spread) and the head turned
  up to +-30 degrees about the eyes, so no slider position is outside what training saw;
- ``BufferGenerator``: a network that reads buffers, called like every generator of the evaluation
  (``f(depth, mask, z, params=...)``): it renders the faces' buffers from their parameters with appearance codes
  ``z[:, :k]`` and passes ``z[:, k:]`` to the network as its own code.

Buffers are stored as 8-bit (normals as (n + 1) / 2) and read back as ``round(255 x) / 255`` everywhere, so the
network sees the same values in training, evaluation and the explorer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..facemodel.appearance_render import appearance_coefficients, face_batches
from ..io.draws import normal
from .depth_sets import DEPTH_SCALE

pass


def buffer_stack(buf: dict, names) -> torch.Tensor:
    """The named buffers of ``render_face``'s output as one tensor (B, 3 n, H, W) of 8-bit values in [0, 1]
    (normals mapped from [-1, 1])."""
    parts = []
    for n in names:
        if n not in buf:
            raise ValueError(f"buffer {n!r} not rendered (have {sorted(buf)}); an SH model gives albedo and shading, "
                             "a baked one colour")
        x = buf[n]
        parts.append((x + 1) / 2 if n == "normal" else x)
    return quantize(torch.cat(parts, 1))


def quantize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> the nearest of 256 levels (what an 8-bit store holds)."""
    return torch.round(x.clamp(0, 1) * 255) / 255


class FaceBufferDataset(Dataset):
    """Items dict(depth (1, S, S), mask, buffers (3 n, S, S) in [0, 1], index[, image (C, S, S) in [-1, 1]]) from
    8-bit buffers, 16-bit depth and (for pairs) 8-bit photos held in memory. ``meta``: how the set was made."""

    def __init__(self, depth: torch.Tensor, buffers: torch.Tensor, images: torch.Tensor | None = None,
                 indices=None, meta: dict | None = None, params: dict | None = None):
        if depth.dtype != torch.uint16 and depth.dtype != torch.int32:
            raise ValueError(f"depth must be stored as 16-bit integers, got {depth.dtype}")
        if buffers.dtype != torch.uint8 or len(buffers) != len(depth) or (images is not None and
                                                                         len(images) != len(depth)):
            raise ValueError("buffers (uint8) and images must have one row per depth map")
        self.depth, self.buffers, self.images = depth, buffers, images
        self.indices = np.arange(len(depth)) if indices is None else np.asarray(indices)
        self.meta = meta or {}
        self.params = params  # dict(coeffs, poses, expressions, appearance) of the faces, where known

    def __len__(self):
        return len(self.depth)

    def __getitem__(self, i):
        depth = self.depth[i].float()[None] / DEPTH_SCALE
        item = {"depth": depth, "mask": (depth > 0).float(), "buffers": self.buffers[i].float() / 255,
                "index": int(self.indices[i])}
        if self.images is not None:
            item["image"] = self.images[i].float() / 127.5 - 1.0
        return item


def render_buffers(model, app, coeffs, appearance, render, poses=None, expressions=None, lights=None,
                   names=("colour", "normal"), supersample: int = 1) -> dict:
    """What a buffers generator reads for the faces ``coeffs`` (B, K) with appearance coefficients ``appearance``,
    stored as training stores it: ``depth`` (B, 1, S, S) on the 16-bit grid, ``mask`` (B, 1, S, S) = depth > 0,
    ``buffers`` (B, 3 n, S, S) the named buffers on the 8-bit grid; plus ``colour``, the unquantized colour render
    (for a picture of it). Poses None: frontal; expressions None: neutral. The one place that renders a generator's
    input (training sets, ``BufferGenerator``, the explorer, ``generate``).

    ``supersample`` s > 1: rendered at s S and every buffer and the depth averaged over each s x s block (pixel
    centres at i + 0.5, so the blocks are the S-pixel grid's pixels). A pixel the face covers in part then holds
    coverage x value against the background's 0: the edge is anti-aliased instead of a point-sampled staircase, and
    the mask (depth > 0) holds every pixel the face touches."""
    from dataclasses import replace

    from ..facemodel.appearance_render import render_face

    names = list(names)
    s = int(supersample)
    b = render_face(model, app, coeffs, appearance, replace(render, resolution=render.resolution * s) if s > 1
                    else render, poses, expressions, lights, normals="normal" in names or "shading" in names)
    if s > 1:
        b = {k: torch.nn.functional.avg_pool2d(v, s) for k, v in b.items()}
    depth = torch.round(b["depth"] * DEPTH_SCALE) / DEPTH_SCALE
    return {"depth": depth, "mask": (depth > 0).float(),  # the mask a stored set gives (FaceBufferDataset)
            "buffers": buffer_stack(b, names), "colour": b["colour"]}


def _render_rows(model, app, coeffs, appearance, render, poses, expressions, lights, names, batch_size=128,
                 progress=False, desc="", supersample: int = 1):
    """``render_buffers`` in batches, as stored integers: depth (N, S, S) int32 on the 16-bit grid, buffers uint8."""
    from tqdm.auto import tqdm

    depth, bufs = [], []
    for s in tqdm(range(0, len(coeffs), batch_size), desc=desc, disable=not progress):
        sl = slice(s, s + batch_size)
        b = render_buffers(model, app, coeffs[sl], appearance[sl], render, None if poses is None else poses[sl],
                           None if expressions is None else expressions[sl], None if lights is None else lights[sl],
                           names, supersample)
        depth.append(torch.round(b["depth"][:, 0] * DEPTH_SCALE).to(torch.int32))
        bufs.append(torch.round(b["buffers"] * 255).to(torch.uint8))
    return torch.cat(depth), torch.cat(bufs)


def _check_names(names, app):
    names = buffer_names(names) if isinstance(names, str) else list(names)
    bad = [n for n in names if n not in BUFFERS]
    if bad or not names:
        raise ValueError(f"buffers {names}: choose from {BUFFERS}")
    if app.lights is None and ({"albedo", "shading"} & set(names)):
        raise ValueError("albedo and shading need an SH-lit appearance model; a baked model has colour")
    return names


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def app_fingerprint(app) -> str:
    """A hash of the appearance model's arrays (mean, basis, sd): which model a buffer set or generator used."""
    h = hashlib.sha256()
    for t in (app.mean, app.basis, app.sd):
        h.update(t.detach().float().numpy().tobytes())
    return h.hexdigest()[:16]


def paired_buffer_set(paired, app, model, k: int, names="colour,normal", cache_dir=None,
                      progress: bool = True, supersample: int = 1) -> FaceBufferDataset:
    """The paired set's photos with their fitted depth (the paired set's own; with ``supersample`` > 1 rendered
    from the same fit, anti-aliased like the buffers) and their buffers rendered from the fit with the photo's
    projected appearance (``app.photo_coeffs[:, :k]``; an SH model: the photo's estimated light). Cached in
    ``cache_dir`` under a name holding the paired set, appearance model, k, buffers and supersampling."""
    from ..io.files import atomic_savez, load_npz
    from ..io.paths import REPO_ROOT

    names = _check_names(names, app)
    if app.photo_coeffs is None or app.photo_names is None:
        raise ValueError("this appearance model carries no photo coefficients (a shipped copy); build it with "
                         "python -m frankenstein_utils.data.appearance_build build")
    if not 1 <= k <= app.n_components:
        raise ValueError(f"k = {k}: the appearance model has {app.n_components} components")
    all_names = [str(x) for x in paired.names]
    if [str(x) for x in app.photo_names] != all_names:
        raise ValueError(f"{paired.cache_path}: the appearance model was built from another paired set (photo names "
                         "differ)")
    if paired.fit is None:
        raise ValueError(f"{paired.cache_path}: built without fits; delete it to rebuild")
    render = paired.render_config(model)
    if render.to_dict() != app.render_config().to_dict():
        raise ValueError("the appearance model was built in another framing than the paired set's")
    idx = np.asarray(paired.indices)
    key = _key(paired.cache_path.name, paired.split, app_fingerprint(app), k, names,
               *([supersample] if supersample > 1 else []))  # point-sampled sets keep their cache names
    cache = Path(cache_dir) if cache_dir else REPO_ROOT / "outputs" / "cache"
    path = cache / f"buffers_paired_{key}.npz"
    meta = {"kind": "paired", "paired": paired.cache_path.name, "split": paired.split, "k": k, "buffers": names,
            "appearance": app_fingerprint(app), "light": app.config.light,
            "appearance_source": "photo_coeffs (MAP projection of each photo's visible colours), first k",
            **({"supersample": supersample} if supersample > 1 else {})}  # as recorded before it existed
    depth = paired.depth.to(torch.int32)
    if path.exists():
        d = load_npz(path)
        want = ("buffers", "depth") if supersample > 1 else ("buffers",)
        if any(k not in d for k in want) or any(len(d[k]) != len(idx) for k in want):
            raise ValueError(f"{path}: a paired buffer cache without {' and '.join(want)} for its {len(idx)} photos "
                             f"(damaged or from another version); delete it to rebuild")
        buffers = torch.from_numpy(d["buffers"])
        if supersample > 1:
            depth = torch.from_numpy(d["depth"])
    else:
        fit = paired.fit
        coeffs = torch.as_tensor(fit["coeffs"][idx], dtype=torch.float32)
        poses = torch.as_tensor(fit["poses"][idx], dtype=torch.float32)
        expr = torch.as_tensor(fit["expressions"][idx], dtype=torch.float32)
        a = torch.as_tensor(app.photo_coeffs[idx, :k], dtype=torch.float32)
        lights = None
        if app.lights is not None:  # the SH model keeps the light of each training photo, in the train split's order
            if paired.split != "train" or len(app.lights) != len(idx):
                raise ValueError("an SH model's paired buffers exist for its training photos only (split 'train')")
            lights = app.lights
        rendered, buffers = _render_rows(model, app, coeffs, a, render, poses, expr, lights, names,
                                         progress=progress, desc="paired buffers", supersample=supersample)
        if supersample > 1:
            depth = rendered
        atomic_savez(path, buffers=buffers.numpy(), meta=np.array(json.dumps(meta)),
                     **({"depth": depth.numpy()} if supersample > 1 else {}))
    return FaceBufferDataset(depth, buffers, paired.images, idx, meta,
                             params={"appearance": torch.as_tensor(app.photo_coeffs[idx, :k], dtype=torch.float32)})


def extended_params(model, render, n: int, generator: torch.Generator, n_components: int = 15, sigma: float = 3.5,
                    max_yaw: float = 30.0):
    """Identity and pose of faces spanning the explorer's range: one component per face uniform in [-sigma, sigma],
    the others N(0, I / 4); frontal pose turned by a yaw uniform in [-max_yaw, max_yaw] about the eyes (as
    ``evaluation.sweep.sweep_inputs`` turns them)."""
    from ..facemodel.framing import NEUTRAL_POSE, eye_pivot_shift

    coeffs = normal(n, n_components, generator=generator) * 0.5
    which = torch.randint(n_components, (n,), generator=generator)
    coeffs[torch.arange(n), which] = (torch.rand(n, generator=generator) * 2 - 1) * sigma
    yaws = (torch.rand(n, generator=generator) * 2 - 1) * max_yaw
    poses = torch.tensor(NEUTRAL_POSE, dtype=torch.float32).repeat(n, 1)
    poses[:, 0] = yaws
    poses[:, 4] = eye_pivot_shift(model, render, yaws)
    return coeffs, poses


def synthetic_buffer_set(n: int, app, model, k: int, names="colour,normal", render=None, table=None, seed: int = 0,
                         mode: str = "from-shape", extended: float = 0.25, progress: bool = True,
                         supersample: int = 1) -> FaceBufferDataset:
    """``n`` face-model faces with drawn appearance: identity N(0, I) over 15 components, pose and expression rows of
    the fitted photos (``table``, default the appearance model's), appearance coefficients from ``mode``
    (``AppearanceModel.coefficients``, the first ``k``); the first ``round(extended n)`` faces span the explorer's
    range instead (``extended_params``; expression still from the table). Seeded; face i does not depend on n."""
    from .depth_sets import DepthSetConfig, sample_face_params

    names = _check_names(names, app)
    render = render or app.render_config()
    table = table or app.fitted_face_params()
    coeffs, poses, expr = sample_face_params(model, DepthSetConfig(n=n, seed=seed, pose_source="fitted",
                                                                   expression_source="fitted", render=render), table)
    g = torch.Generator().manual_seed(seed + 1)
    n_ext = int(round(extended * n))
    if n_ext:
        coeffs[:n_ext], poses[:n_ext] = extended_params(model, render, n_ext, g)
    z = normal(n, app.n_components, generator=g)
    a = app.coefficients(z, mode, coeffs)[:, :k]
    lights = app.sample_light(n, generator=g)
    depth, bufs = _render_rows(model, app, coeffs, a, render, poses, expr, lights, names, progress=progress,
                               desc="synthetic buffers", supersample=supersample)
    meta = {"kind": "synthetic", "n": n, "seed": seed, "k": k, "buffers": names, "mode": mode, "extended": extended,
            **({"supersample": supersample} if supersample > 1 else {}),
            "appearance": app_fingerprint(app), "light": app.config.light, "table": table.describe(),
            "identity": "N(0, I) over 15 (extended rows: one component U(-3.5, 3.5), others N(0, I/4), yaw "
                        "U(-30, 30) about the eyes)"}
    return FaceBufferDataset(depth, bufs, None, None, meta,
                             params={"coeffs": coeffs, "poses": poses, "expressions": expr, "appearance": a})


def truncated_coefficients(app, z: torch.Tensor, shape, mode: str, k: int) -> torch.Tensor:
    """The first k appearance coefficients from k standard-normal codes (``appearance_coefficients`` with ``k``)."""
    return appearance_coefficients(app, z, shape, mode, k=k)


class BufferGenerator:
    """A buffers network as a generator of the evaluation: ``f(depth, mask, z=None, params=None)`` renders each
    face's buffers from ``params`` (coeffs, poses, expressions) with appearance coefficients from ``z[:, :k]``
    (``mode``: from-shape or free) and calls ``net(depth, mask, z=z[:, k:], buffers=...)``. ``z_dim`` = k + the
    network's code size. ``net``: a trained run (``Trainer``) or a ``PretrainedGenerator``."""

    uses_face_params = True

    def __init__(self, net, model, app, render, mode: str = "from-shape", seed: int = 0, batch_size: int = 64):
        cfg = net.cfg
        if not cfg.buffers:
            raise ValueError("this network reads no buffers (a depth-only generator)")
        self.net, self.model, self.app, self.render, self.mode, self.seed = net, model, app, render, mode, seed
        self.names, self.k = buffer_names(cfg.buffers), cfg.appearance_k
        self.supersample = cfg.buffers_supersample
        if self.k > app.n_components:
            raise ValueError(f"the network reads {self.k} appearance components; the model has {app.n_components}")
        self.code_dim = cfg.z_dim if cfg.mode in ("flagship", "cvae") else 0
        self.z_dim = self.k + self.code_dim
        self.batch_size = batch_size

    def buffers(self, params: dict, z: torch.Tensor, lights=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(depth (B, 1, S, S) quantized like training, buffers (B, 3 n, S, S)) of the faces ``params`` with
        appearance codes ``z[:, :k]``."""
        coeffs = torch.as_tensor(params["coeffs"], dtype=torch.float32)
        a = truncated_coefficients(self.app, z[:, :self.k], coeffs, self.mode, self.k)
        depth, bufs = _render_rows(self.model, self.app, coeffs, a, self.render, params.get("poses"),
                                   params.get("expressions"), lights, self.names, self.batch_size,
                                   supersample=self.supersample)
        return depth.float()[:, None] / DEPTH_SCALE, bufs.float() / 255

    @torch.no_grad()
    def __call__(self, depth, mask, z=None, params=None):
        out = []
        for p, zz, lights in face_batches(self, params, z, "a buffers generator"):
            d, b = self.buffers(p, zz, lights)
            code = zz[:, self.k:] if self.code_dim else None
            out.append(self.net.generate(d, (d > 0).float(), z=code, buffers=b))
        return torch.cat(out)


def run_appearance(cfg, cache_dir=None):
    """The appearance model a buffers run was trained with: the cached build (``appearance_*.safetensors`` in
    ``cache_dir``, default outputs/cache) whose fingerprint the run's input convention records."""
    from ..facemodel.appearance import AppearanceModel
    from ..io.paths import REPO_ROOT

    conv = (cfg.input_convention.get("buffers") or {}).get("paired") or {}
    want = conv.get("appearance")
    if not want:
        raise ValueError("this run records no appearance model (not a buffers run, or made before they were recorded)")
    folder = Path(cache_dir) if cache_dir else REPO_ROOT / "outputs" / "cache"
    for path in sorted(folder.glob("appearance_*.safetensors")):
        app = AppearanceModel.load(path)
        if app_fingerprint(app) == want:
            return app
    raise ValueError(f"no appearance model with fingerprint {want} in {folder}; rebuild it with "
                     "python -m frankenstein_utils.data.appearance_build build (the same settings give the same model "
                     "on the same machine; a rebuild on another CPU may differ in its last bits, and so in its "
                     "fingerprint)")



# Attribute buffers a generator may read beside depth (``facemodel.appearance_render.render_face``'s keys, 3 channels each, [0, 1];
# normals are stored as (n + 1) / 2): the appearance colour (a baked model's lit colour), camera-frame normals, and an
# SH model's albedo and shading.
BUFFERS = ("colour", "normal", "albedo", "shading")


def buffer_names(spec: str) -> list[str]:
    """``"colour,normal"`` -> ["colour", "normal"] ("" -> [])."""
    return [n.strip() for n in spec.split(",") if n.strip()]
