"""The generators shipped with the package: ``load_pretrained()`` gives a ready generator on CPU, no training needed.

Files (``frankenstein_utils/weights/``): ``<name>.safetensors`` holds the generator's weights in half precision (for
the flagship the exponential moving average of G, what its training samples with) and its appearance encoder as
tensors, and as JSON strings in its metadata the settings that rebuild them, the input convention (render
configuration and pose spread of its synthetic inputs) and the numbers of its model card; reading it runs no code.
Its SHA-256 is recorded in ``weights/generators.sha256`` (``sha256sum -c`` format; also in its card) and checked
by ``load_pretrained``; ``<name>_MODEL_CARD.md`` says how it was made and what it scores.

    from frankenstein_utils.pretrained import load_pretrained
    g = load_pretrained()                      # the flagship, float32 on CPU, eval mode
    faces = g.generate(depth, mask)            # depth, mask (B, 1, 64, 64) in [0, 1] -> faces (B, 3, 64, 64) in [-1, 1]
    faces = g.generate(depth, mask, z=z)       # z (B, 8): appearance code, N(0, I) is the prior; None -> 0
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .draws import normal
from .fileio import atomic_write_bytes
from .flagship import OBJECTIVES
from .objectives import generator_input
from .rasterize import PoseJitter, RenderConfig

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CHECKSUMS = "generators.sha256"  # in a weights folder: "<sha256>  <path relative to it>" per shipped generator
FORMAT = "frankenstein_utils.shipped/2"  # safetensors; format 1: a ``.pt`` file, read weights-only (``read_shipped``)
CONVERT = "python -m frankenstein_utils.training convert"
# the settings that rebuild a generator and its encoder (the rest of a TrainConfig is about training)
BUILD_KEYS = ("mode", "width", "d_width", "encoder_width", "z_dim", "image_size", "out_channels", "mask_input",
              "gan_loss", "spectral_norm", "fs_bottleneck", "fs_upsample", "fs_modulation", "fs_skips", "fs_scales",
              "fs_ema", "fs_input_blur", "generator", "norm", "flat_layers", "discriminator", "d_norm", "buffers",
              "appearance_k", "buffers_supersample")


def build_networks(cfg) -> dict:
    """The networks of ``cfg``'s mode, randomly initialised: the flagship and the peers build theirs from the
    config alone; the study's objectives are built as a trainer would, without data."""
    from types import SimpleNamespace

    from .objectives import OBJECTIVES as STUDY_OBJECTIVES

    if cfg.mode in OBJECTIVES:
        return OBJECTIVES[cfg.mode].networks(cfg)
    cpu = torch.device("cpu")
    return STUDY_OBJECTIVES[cfg.mode](SimpleNamespace(cfg=cfg, device=cpu, place=lambda nets: nets)).nets


class PretrainedGenerator:
    """A shipped generator: ``nets`` ({"G", "E"}: generator and appearance encoder, float32, eval mode), ``cfg``
    (the TrainConfig that rebuilds them), ``render`` / ``pose`` (the input convention: how its synthetic inputs
    are rendered), ``card`` (the model card's numbers) and ``generate`` like a trained run's."""

    def __init__(self, nets: dict, cfg, render: RenderConfig, pose: PoseJitter, card: dict, path: Path,
                 latent: dict | None = None):
        self.nets, self.cfg, self.render, self.pose, self.card, self.path = nets, cfg, render, pose, card, path
        self.latent = latent  # {"mean", "directions", "scales"} of the encoder's codes of training photos, or None

    def panel(self, appearance=None):
        """A ``widgets.GeneratorPanel`` showing this model's face, with the latent sliders of ``latent``; a buffers
        generator gives a ``widgets.BufferGeneratorPanel`` driven by ``appearance`` (an ``AppearancePanel``)."""
        from .widgets import BufferGeneratorPanel, GeneratorPanel

        lat = () if self.latent is None else (self.latent["directions"], self.latent["mean"], self.latent["scales"])
        if self.cfg.buffers:
            if appearance is None:
                raise ValueError("a buffers generator's panel needs the explorer's AppearancePanel")
            return BufferGeneratorPanel(self, appearance, *lat)
        return GeneratorPanel(self, *lat)

    @torch.no_grad()
    def generate(self, depth, mask, image=None, z=None, buffers=None):
        """Faces (B, C, S, S) in [-1, 1] for depth maps and masks (B, 1, S, S) in [0, 1] at the model's size (and,
        for a buffers generator, its attribute ``buffers`` (B, 3 n, S, S) in [0, 1]; ``faces`` renders them);
        z = E(image) mean if a photo is given, else ``z`` (None -> 0, the prior's mean)."""
        from .objectives import batch_buffers

        S = self.cfg.image_size
        if depth.shape[-2:] != (S, S) or mask.shape[-2:] != depth.shape[-2:]:
            raise ValueError(f"{self.path.name}: expects depth and mask of {S}x{S} px (render with "
                             f"PretrainedGenerator.render), got {tuple(depth.shape[-2:])}, {tuple(mask.shape[-2:])}")
        buffers = batch_buffers(self.cfg, {} if buffers is None else {"buffers": buffers})
        G = self.nets["G"]
        dt = next(G.parameters()).dtype  # float32, or float64 for scoring (``in_float64``)
        x = generator_input(depth.to(dt), mask.to(dt), self.cfg.mask_input,
                            None if buffers is None else buffers.to(dt))
        z_dim = getattr(G, "z_dim", 0)
        if not z_dim:  # a depth-only generator
            return G(x).float()
        if z is None:
            z = self.nets["E"](image.to(dt))[0] if image is not None and "E" in self.nets else torch.zeros(len(depth),
                                                                                                       z_dim)
        return G(x, z.to(dt)).float()

    def appearance(self):
        """The appearance model a buffers generator renders its buffers with: the shipped one, checked against the
        SHA-256 its card records (None for a depth-only generator)."""
        if not self.cfg.buffers:
            return None
        from .appearance import SHIPPED, load_appearance, sha256_of

        want = self.card.get("appearance_sha256")
        if want and sha256_of(SHIPPED) != want:
            raise ValueError(f"{self.path.name} was shipped with the appearance model of SHA-256 {want[:12]}..., "
                             f"{SHIPPED.name} is another; ship them together")
        return load_appearance()

    def in_float64(self) -> "PretrainedGenerator":
        """A copy whose networks compute in float64. Scoring uses it: float32 convolutions pick their kernels by
        CPU (oneDNN's instruction set, vector width, thread count), and a near-degenerate generator turns those
        last-bit differences into different 8-bit pixels and so different judge outputs; in float64 the
        differences stay far below half a grey level, so the 8-bit images the judges see are the same on any
        CPU (``tests/test_pretrained.py`` checks this across kernels)."""
        import copy

        nets = {k: copy.deepcopy(v).double() for k, v in self.nets.items()}
        return PretrainedGenerator(nets, self.cfg, self.render, self.pose, self.card, self.path, self.latent)


def shipped_blob(run, render: RenderConfig, pose: PoseJitter, card: dict, latent: dict | None = None) -> dict:
    """What ``export`` writes: the run's sampling generator (G's EMA where there is one) and encoder in float16,
    the settings that rebuild them, the input convention, ``card`` and ``latent``."""
    nets = run.nets
    G = nets.get("G_ema", nets["G"])
    half = lambda m: {k: (v.half() if v.is_floating_point() else v) for k, v in m.state_dict().items()}
    return {"format": 1, "config": {k: getattr(run.cfg, k) for k in BUILD_KEYS},
            "G": half(G), "E": half(nets["E"]) if "E" in nets else None,
            "render": render.to_dict(), "pose": asdict(pose), "card": card, "latent": latent}


def export(run, path, render: RenderConfig, pose: PoseJitter, card: dict, latent: dict | None = None) -> int:
    """Write ``shipped_blob`` of a trained run (float16 G and encoder with its settings, input convention, card
    numbers and ``latent``: the encoder's main directions for appearance sliders, ``widgets.latent_directions`` of
    training photos) to ``path`` (a ``.safetensors`` file, atomically; its SHA-256 recorded). Returns the file size
    in bytes."""
    return write_shipped(path, shipped_blob(run, render, pose, card, latent))


# ---- the shipped file: safetensors, settings and card as JSON metadata, SHA-256 recorded ---------------------------
_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}


def _json(obj) -> str:
    """``obj`` as JSON (keys sorted, so a file's bytes are a function of its content); numpy numbers and arrays,
    tensors and paths become plain values."""
    def plain(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, (np.ndarray, torch.Tensor)):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"{type(o).__name__} is not JSON")
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=plain)


def safetensors_bytes(tensors: dict, metadata: dict) -> bytes:
    """A safetensors file of ``tensors`` with string ``metadata``, written canonically (tensors by item size, then
    name; metadata keys sorted: the same content gives the same bytes, so the same SHA-256; the safetensors library
    orders metadata at random) and read back by the safetensors library before it is returned."""
    import sys

    from safetensors.torch import load as st_load

    if sys.byteorder != "little":
        raise RuntimeError("safetensors files are little-endian; writing them on a big-endian machine is not supported")
    header, chunks, offset = {"__metadata__": {k: metadata[k] for k in sorted(metadata)}}, [], 0
    for k in sorted(tensors, key=lambda k: (-tensors[k].element_size(), k)):
        t = tensors[k].detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[k] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the tensors start 8-byte aligned
    data = len(text).to_bytes(8, "little") + text + b"".join(chunks)
    back = st_load(data)
    if set(back) != set(tensors) or not all(torch.equal(back[k], tensors[k].detach().cpu()) for k in tensors):
        raise RuntimeError("safetensors writer: the file does not read back as written")
    return data


def _safetensors_header(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 2 <= n <= len(data) - 8:
        raise ValueError("not a safetensors file (no header)")
    return json.loads(data[8:8 + n].decode())


def shipped_bytes(blob: dict) -> bytes:
    """``blob`` (a ``shipped_blob``) as a safetensors file: tensors ``G.*``, ``E.*`` (the state dicts) and
    ``latent.*``; metadata ``format``, ``nets`` and the JSON of ``config``, ``render``, ``pose``, ``card`` and
    ``latent``'s other entries."""
    tensors = {f"G.{k}": v for k, v in blob["G"].items()}
    nets = ["G"]
    if blob.get("E") is not None:
        tensors.update({f"E.{k}": v for k, v in blob["E"].items()})
        nets.append("E")
    latent = blob.get("latent")
    if latent is not None:
        tensors.update({f"latent.{k}": torch.as_tensor(v) for k, v in latent.items()
                        if torch.is_tensor(v) or isinstance(v, np.ndarray)})
        latent = {"tensors": sorted(k for k, v in latent.items() if torch.is_tensor(v) or isinstance(v, np.ndarray)),
                  "other": {k: v for k, v in latent.items() if not (torch.is_tensor(v) or isinstance(v, np.ndarray))}}
    meta = {"format": FORMAT, "nets": _json(nets), "config": _json(blob["config"]), "render": _json(blob["render"]),
            "pose": _json(blob["pose"]), "card": _json(blob["card"]), "latent": _json(latent)}
    return safetensors_bytes(tensors, meta)


def _weights_root(path) -> Path:
    """The weights folder a shipped file belongs to (where its ``CHECKSUMS`` index is): ``study/`` files are one
    level down."""
    path = Path(path).absolute()
    return path.parent.parent if path.parent.name == "study" else path.parent


def read_checksums(root) -> dict:
    """{path relative to ``root``: SHA-256} of the index ``root/CHECKSUMS`` ({} if there is none)."""
    index = Path(root) / CHECKSUMS
    if not index.exists():
        return {}
    out = {}
    for line in index.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            out[name.strip().lstrip("*")] = digest
    return out


def record_checksum(path, data: bytes | None = None) -> str:
    """Record the SHA-256 of the shipped file ``path`` in its weights folder's index and in the ``File:`` line of
    its MODEL_CARD.md (when there is one); returns it."""
    path = Path(path).absolute()
    digest = hashlib.sha256(path.read_bytes() if data is None else data).hexdigest()
    root = _weights_root(path)
    rel = path.relative_to(root).as_posix()
    sums = {**read_checksums(root), rel: digest}
    atomic_write_bytes(root / CHECKSUMS, "".join(f"{sums[k]}  {k}\n" for k in sorted(sums)).encode())
    md = path.with_name(f"{path.stem}_MODEL_CARD.md")
    if md.exists():
        index = CHECKSUMS if root == path.parent else f"../{CHECKSUMS}"
        line = (f"File: `{path.name}` (safetensors: the weights as tensors, the settings, input convention and card "
                f"numbers as JSON in its metadata; reading it runs no code), SHA-256 `{digest}` (recorded in "
                f"[`{CHECKSUMS}`]({index}); `load_pretrained` refuses a file that differs).")
        atomic_write_bytes(md, _set_file_line(md.read_text(), line).encode())
    return digest


def _set_file_line(text: str, line: str) -> str:
    """``text`` (a MODEL_CARD.md) with its ``File:`` line replaced by ``line``, or ``line`` added after the first
    paragraph of its "What it is" section (at the end without one)."""
    lines = text.split("\n")
    hits = [i for i, x in enumerate(lines) if x.startswith("File: `")]
    if hits:
        lines[hits[0]] = line
        return "\n".join(lines)
    if "## What it is" in lines:
        i = lines.index("## What it is") + 2
        while i < len(lines) and lines[i].strip():
            i += 1
        lines[i:i] = ["", line]
        return "\n".join(lines)
    return text.rstrip("\n") + f"\n\n{line}\n"


def _verify(path, data: bytes) -> None:
    """Refuse ``path`` if its SHA-256 differs from the one recorded in its weights folder's index; a file of the
    package's own weights folder must be recorded there. (Another file with no index entry is not checked.)"""
    root = _weights_root(path)
    rel = Path(path).absolute().relative_to(root).as_posix()
    want = read_checksums(root).get(rel)
    shipped = Path(path).resolve().is_relative_to(WEIGHTS_DIR.resolve())
    if want is None:
        if shipped:
            raise ValueError(f"{path}: no SHA-256 recorded for it in {root / CHECKSUMS}; refused (a shipped file is "
                             f"recorded when it is written)")
        return
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise ValueError(f"{path}: SHA-256 {got[:16]}... differs from the {want[:16]}... recorded in "
                         f"{root / CHECKSUMS}: a damaged or altered file; refused")


def read_shipped(path, verify: bool = True) -> dict:
    """The ``shipped_blob`` stored in the safetensors file ``path`` (its SHA-256 checked, ``_verify``). Never
    unpickles: an exported ``.pt`` file of the older format is read with ``torch.load(weights_only=True)`` (tensors
    and plain values; such a file records no checksum), and one that needs unpickling is refused with the command
    that converts it."""
    from safetensors.torch import load as st_load

    path = Path(path)
    if path.suffix == ".pt":
        from .training import load_tensors_only

        blob = load_tensors_only(path, "shipped model", f"if you trust the file, convert it: {CONVERT} {path} "
                                 f"{path.with_suffix('.safetensors')}")
        if not (isinstance(blob, dict) and {"config", "G", "E", "render", "pose", "card"} <= set(blob)):
            raise ValueError(f"{path}: not a shipped model (a training checkpoint? load it with "
                             f"training.load_run)")
        return blob
    data = path.read_bytes()
    if verify:
        _verify(path, data)
    try:
        meta = _safetensors_header(data).get("__metadata__") or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, not {FORMAT!r}")
        tensors = st_load(data)
        nets = json.loads(meta["nets"])
        part = lambda p: {k[len(p) + 1:]: v for k, v in tensors.items() if k.startswith(p + ".")}  # noqa: E731
        latent = json.loads(meta["latent"])
        if latent is not None:
            latent = {**latent["other"], **{k: tensors[f"latent.{k}"] for k in latent["tensors"]}}
        return {"format": 2, "config": json.loads(meta["config"]), "G": part("G"),
                "E": part("E") if "E" in nets else None, "render": json.loads(meta["render"]),
                "pose": json.loads(meta["pose"]), "card": json.loads(meta["card"]), "latent": latent}
    except Exception as e:
        raise ValueError(f"{path}: not a readable shipped model ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from e


def read_shipped_card(path) -> dict:
    """The card of the shipped file ``path``, from its header alone (no tensors read, no checksum)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(json.loads(f.read(n).decode())["__metadata__"]["card"])


def write_shipped(path, blob: dict) -> int:
    """``blob`` saved to ``path`` (``.safetensors``) atomically, its SHA-256 recorded (``record_checksum``); returns
    the file size in bytes."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a shipped model is written as a .safetensors file")
    data = shipped_bytes(blob)
    atomic_write_bytes(path, data)
    record_checksum(path, data)
    return len(data)


def update_card(path, **fields) -> int:
    """Set ``fields`` in the card of the shipped file ``path`` (weights untouched), written atomically, its new
    SHA-256 recorded."""
    blob = read_shipped(path)
    blob["card"] = {**blob["card"], **fields}
    return write_shipped(path, blob)


def available() -> list[str]:
    """Names of the shipped models: ``flagship`` and ``study/<model>`` (the study at its equal budget), as recorded
    in ``weights/generators.sha256``."""
    return sorted(k.removesuffix(".safetensors") for k in read_checksums(WEIGHTS_DIR))


def default_name() -> str:
    """The default shipped generator: the buffers generator (depth and the appearance model's buffers -> face) where
    it ships, else the depth-only flagship."""
    return "buffers" if "buffers" in available() else "flagship"


def load_pretrained(name: str | None = None, device: str = "cpu") -> PretrainedGenerator:
    """The shipped generator ``name`` (default ``default_name()``; see ``available()``; or the path of an exported
    ``.safetensors`` file, or
    ``.pt`` of the older format), rebuilt from its file, float32, eval mode. Nothing in the file runs
    (``read_shipped``); a shipped file is checked against its recorded SHA-256 (a file elsewhere when its folder
    records one)."""
    from .training import device_problem

    name = default_name() if name is None else name
    problem = device_problem(str(device), "device")
    if problem:  # before anything is read, or the first tensor moved there raises
        raise ValueError(f"{name}: cannot be loaded on {problem}")
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    path = Path(name) if str(name).endswith((".safetensors", ".pt")) else WEIGHTS_DIR / f"{name}.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no shipped model {name!r}; available: {available()}")
    return generator_from_blob(read_shipped(path), path, device)


def generator_from_blob(blob: dict, path, device: str = "cpu") -> PretrainedGenerator:
    """A ``PretrainedGenerator`` from a ``shipped_blob`` (read from ``path``, or not yet written there): its
    networks rebuilt from the settings, the float16 weights loaded as float32."""
    from .training import TrainConfig

    path = Path(path)
    try:
        cfg = TrainConfig(**blob["config"], device=device)
        nets = build_networks(cfg)
        G = nets.get("G")
        G.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["G"].items()})
        out = {"G": G}
        if blob["E"] is not None:
            nets["E"].load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["E"].items()})
            out["E"] = nets["E"]
    except Exception as e:
        raise ValueError(f"{path}: not a readable shipped model ({type(e).__name__}: {e})") from e
    out = {k: v.to(device).eval().requires_grad_(False) for k, v in out.items()}
    return PretrainedGenerator(out, cfg, RenderConfig.from_dict(blob["render"]), PoseJitter(**blob["pose"]),
                               blob["card"], path, blob.get("latent"))


# ---- the card's numbers: a small fixed set of synthetic inputs, judged by dlib ---------------------------------------
def fixed_inputs(model, render: RenderConfig, pose: PoseJitter, n: int = 64, seed: int = 2024, train=None):
    """``n`` face-model depth maps, their masks, the face model's own 68 landmarks in their pixel frame and
    appearance codes z ~ N(0, I) (8-D): a fixed function of ``seed``. With ``train`` (a ``PairedFaceDataset``) the
    faces are ``train.synthetic``'s: identity ~ N(0, I) over 15 components, pose and expression drawn from the
    photos' fits, the distribution the generator is trained and evaluated on (notebook 04); without it, identity
    with ``pose`` jitter and a neutral expression."""
    from .evaluation import model_landmarks
    from .rasterize import render_depth

    g = torch.Generator().manual_seed(seed)
    if train is not None:
        s = train.synthetic(n, seed=seed, model=model)
        d, m = s.render_batch(list(range(n)))
        z = normal(n, 8, generator=g)
        return d, m, model_landmarks(model, s.coeffs, s.config.render, s.poses, s.expressions), z
    coeffs = model.sample_coefficients(n, 15, generator=g)
    poses = pose.sample(n, generator=g)
    z = normal(n, 8, generator=g)
    d, m = render_depth(model, coeffs, render, poses)
    return d[:, None], m[:, None].float(), model_landmarks(model, coeffs, render, poses), z


def face_scores(images: torch.Tensor, target_landmarks: np.ndarray, reference: torch.Tensor, ref=None) -> dict:
    """dlib judges (``judges``; measures of ``metrics``) on generated faces: detection rate, landmark NME against
    the face model's own landmarks (inner points 17-67, fallback box = the reference photos' median detection box),
    face-FD of descriptors against ``reference`` photos, diversity of descriptors (beside the reference's own).
    ``ref``: the reference photos already analysed (``judges().analyse(reference)``), to score many generators."""
    from . import judges as J
    from . import metrics as M

    jd = J.judges()
    ref = jd.analyse(reference) if ref is None else ref
    box = tuple(float(v) for v in np.median(ref.boxes[ref.found], 0) / reference.shape[-1])
    faces = jd.analyse(images, fallback_box=box)
    det, e = M.detection_rate(faces.found), M.nme(faces.landmarks, target_landmarks, J.INNER_POINTS)
    return {"detection": float(det["rate"]), "detection_ci": [float(v) for v in det["ci"]],
            "nme": float(e["nme"]), "nme_ci": [float(v) for v in e["ci"]],
            "face_fd": float(M.frechet_distance_features(faces.embeddings, ref.embeddings)),
            "diversity": float(M.mean_pairwise_distance(faces.embeddings)),
            "reference_diversity": float(M.mean_pairwise_distance(ref.embeddings)),
            "reference_detection": float(ref.found.mean())}


def reference_photos(n: int = 64, size: int = 64) -> torch.Tensor:
    """The first ``n`` photos of the paired set's test split (never trained on), in [-1, 1]."""
    from .datasets import PairedConfig, PairedFaceDataset

    test = PairedFaceDataset("test", PairedConfig(size=size), progress=False)
    return test.tensors()[0][:n]


def card_numbers(gen, model, n: int = 64, seed: int = 2024, train=None) -> dict:
    """The numbers the card records and ``tests/test_pretrained.py`` recomputes: ``face_scores`` of ``gen`` on
    ``fixed_inputs(n, seed)`` (drawn from the fitted pose and expression distribution of the paired training set,
    ``train``, loaded when not given) against ``reference_photos(n)``."""
    faces, lm = card_images(gen, model, n, seed, train)
    ref, ref_faces = _analysed_reference(n, gen.cfg.image_size)
    return face_scores(faces, lm, ref, ref_faces)


def card_images(gen, model, n: int = 64, seed: int = 2024, train=None):
    """The faces ``card_numbers`` judges: ``gen`` in float64 (``PretrainedGenerator.in_float64``, so the same
    8-bit images on any CPU) on ``fixed_inputs(n, seed)``, as float32 images in [-1, 1], and their target
    landmarks."""
    if train is None:
        from .datasets import PairedConfig, PairedFaceDataset

        train = PairedFaceDataset("train", PairedConfig(size=gen.cfg.image_size), progress=False)
    d, m, lm, z = fixed_inputs(model, gen.render, gen.pose, n, seed, train=train)
    g64 = gen.in_float64()
    z_dim = getattr(gen.nets["G"], "z_dim", 0)
    faces = torch.cat([g64.generate(d[s:s + 32], m[s:s + 32], z=z[s:s + 32, :z_dim]) for s in range(0, n, 32)])
    return faces, lm


@functools.lru_cache(maxsize=4)
def _analysed_reference(n: int, size: int):
    """``reference_photos(n, size)`` and their dlib analysis, once per process (many cards are scored against
    them)."""
    from .judges import judges

    ref = reference_photos(n, size)
    return ref, judges().analyse(ref)


def write_card(path, title: str, sections: dict) -> None:
    """MODEL_CARD.md from ``sections`` = {heading: markdown text}."""
    text = f"# {title}\n\n" + "\n\n".join(f"## {h}\n\n{body.strip()}" for h, body in sections.items()) + "\n"
    atomic_write_bytes(path, text.encode())


# ---- export with a full evaluation (python -m frankenstein_utils.pretrained CHECKPOINT ...) ------------------------
def evaluate_for_card(generate, model, train, test, n: int = 256, seed: int = 2024, z_dim: int = 8,
                      references: bool = True) -> dict:
    """The card's evaluation on ``n`` fixed synthetic inputs (``fixed_inputs``) against ``n`` test photos, with the
    reference rows the targets are stated against: training photos (real, and blurred with sigma = 2 px) vs the test
    photos (face-FD), the real-photo oracle and shuffled rows for landmark error (test photos' dlib landmarks vs their
    own MediaPipe landmarks mapped to iBUG, ``evaluation.mediapipe_ibug_map``), identity AUC under the
    depth-blind-proof design (``evaluation.identity_set``), checkerboard score beside real photos'."""
    from . import evaluation as EV
    from . import judges as J
    from . import metrics as M

    render, pose = train.render_config(model), train.pose_jitter(model)
    d, m, lm, z = fixed_inputs(model, render, pose, n, seed, train=train)
    ref = test.tensors()[0][:n]
    imgs = torch.cat([generate(d[s:s + 64], m[s:s + 64], z[s:s + 64, :z_dim]) for s in range(0, n, 64)])
    out = {"model": face_scores(imgs, lm, ref), "n": n}
    out["model"]["checkerboard"] = _cb(imgs)
    jd = J.judges()
    ref_faces = jd.analyse(ref)
    box = tuple(float(v) for v in np.median(ref_faces.boxes[ref_faces.found], 0) / ref.shape[-1])
    _identity(out, generate, model, render, pose, seed, z_dim, jd, box)
    if not references:
        return out
    tr = train.tensors()[0]
    real = tr[1000:1000 + n]  # training photos not used to fit the landmark map
    for name, x in (("train photos", real), ("train photos blurred sigma 2", EV.gaussian_blur(real, 2.0))):
        f = jd.analyse(x, fallback_box=box)
        out[name] = {"face_fd": float(M.frechet_distance_features(f.embeddings, ref_faces.embeddings)),
                     "detection": float(f.found.mean()), "diversity": float(M.mean_pairwise_distance(f.embeddings)),
                     "checkerboard": _cb(x)}
    W = EV.mediapipe_ibug_map(train, jd, 1000, cache_dir="outputs/cache")["W"]
    test_lm = J.map_mediapipe(EV.photo_mediapipe(test)[:n], W)
    tf = jd.analyse(ref, embed=False, fallback_box=box)
    out["real-photo oracle"] = {"nme": float(M.nme(tf.landmarks, test_lm, J.INNER_POINTS)["nme"])}
    out["shuffled"] = {"nme": float(M.nme(tf.landmarks, np.roll(test_lm, 1, 0), J.INNER_POINTS)["nme"])}
    # chance for the synthetic inputs: another input's target landmarks put forward as the prediction
    out["synthetic targets shuffled"] = {"nme": float(M.nme(np.roll(lm, 1, 0), lm, J.INNER_POINTS)["nme"])}
    return out


def _identity(out, generate, model, render, pose, seed, z_dim, jd, box):
    """Identity AUC under the matched pair design (``metrics.identity_pairs``): 2 codes x 50 identities x 5 poses
    (``evaluation.identity_set``), interval by bootstrap over identities."""
    from . import evaluation as EV
    from . import metrics as M

    idd, idm, ids, codes, pidx = EV.identity_set(model, render, pose, 2, 50, 5, seed)
    zc = normal(2, z_dim, generator=torch.Generator().manual_seed(seed + 4242))[torch.from_numpy(codes)]
    emb = jd.analyse(torch.cat([generate(idd[s:s + 64], idm[s:s + 64], zc[s:s + 64]) for s in range(0, len(idd), 64)]),
                     fallback_box=box).embeddings
    ia = M.identity_auc(emb, ids, codes, pidx, seed=seed)
    out["model"]["identity_auc"], out["model"]["identity_auc_ci"] = ia["auc"], ia["ci"]


def _cb(x):
    from .flagship import checkerboard_score

    return checkerboard_score(x)


EVALUATION_SECTION = "Evaluation at one N (every shipped model and every control, one context)"
SUPERSEDED = ("Superseded measure, kept as this run's history: face-FD at {n} samples of 128-D descriptors is "
              "mostly small-sample bias (two samples of the same photos score about 0.08 at 128), and the "
              "same-pose identity AUC punishes a generator for turning the head with its input. The section "
              f"\"{EVALUATION_SECTION}\" replaces these numbers.")


def evaluate_shipped(names=None, workers: int = 2, out_md=None, **context_kw) -> dict:
    """Every shipped model (or ``names``) scored by ``evaluation`` in one judges-only context at its default sizes
    (N = 500 synthetic faces with descriptors against all test photos; identity on 50 identities x 5 poses x 2
    codes, with its controls), beside the reference and control rows and the ladder checks. Writes
    ``weights/EVALUATION.md`` (the table, the checks, the command), stores each model's row in its file's card
    (``evaluation_n``) and replaces the section ``EVALUATION_SECTION`` of its MODEL_CARD.md. Returns the results."""
    import time

    from . import evaluation as EV
    from .datasets import PairedConfig, PairedFaceDataset
    from .facemodel import load_face_model

    t0 = time.time()
    model = load_face_model()
    names = list(names or available())
    size = load_pretrained(names[0]).cfg.image_size
    pcfg = PairedConfig(size=size)
    train = PairedFaceDataset("train", pcfg, model=model, progress=False)
    test = PairedFaceDataset("test", pcfg, model=model, progress=False)
    ctx = EV.build_context(model, train, test, judges_only=True, cache_dir="outputs/cache", workers=workers,
                           **context_kw)
    refs = EV.reference_rows(ctx)
    checks = EV.ladder_checks(refs)
    rows = {}
    for name in names:
        gen = load_pretrained(name)
        f = generator_fn(gen)
        rows[name] = EV.evaluate_generator(ctx, f, f.z_dim)
        print(f"{name}: KID x 10^3 {1e3 * rows[name]['kid']:.1f}, NME {rows[name]['nme']:.3f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    n, n_ref = rows[names[0]]["n_judged"], rows[names[0]]["n_reference"]
    command = "python -m frankenstein_utils.pretrained evaluate" + ("" if names == available() else " " + " ".join(names))
    table = EV.results_table(refs, rows, checks)
    checks_md = "\n".join(f"- {k}: {'passed' if v['ok'] else '**FAILED**'} ({v['rule']})" for k, v in checks.items())
    text = (f"# {EVALUATION_SECTION}\n\nN = {n} synthetic inputs per model (`evaluation.build_context`: identity "
            f"~ N(0, I) over 15 components, pose and expression drawn from the training photos' fits), judged with "
            f"descriptors against all {n_ref} test photos; identity on {ctx.id_ids.max() + 1} identities x "
            f"{ctx.id_poses.max() + 1} poses x {ctx.id_codes.max() + 1} codes. KID x 10^3 on dlib descriptors "
            f"(standardized by training photos') is the realism number; face-FD is shown at this N only. "
            f"Generated in float32 on {__import__('platform').machine()}; {time.time() - t0:.0f} s on "
            f"{__import__('os').cpu_count()} cores. Reproduce: `{command}`.\n\n## Ladders and controls\n\n"
            f"{checks_md}\n\n## Table\n\n{table}\n")
    path = Path(out_md) if out_md else WEIGHTS_DIR / "EVALUATION.md"
    old = path.read_text() if path.exists() else ""
    mark = f"## {SWEEP_SECTION}"  # the sweeps (``sweep_shipped``) are kept
    text += ("\n" + old[old.index(mark):]) if mark in old else ""
    atomic_write_bytes(path, text.encode())
    keep = ("kid", "kid_se", "n_judged", "n_reference", "detection", "detection_ci", "nme", "nme_ci", "face_fd",
            "diversity_share", "code_spread", "identity_spread", "identity_auc", "identity_auc_ci",
            "identity_mean_shape", "identity_mean_shape_ok", "identity_auc_same_pose")
    for name in names:
        gen = load_pretrained(name)
        row = {k: rows[name][k] for k in keep if k in rows[name]}
        update_card(gen.path, evaluation_n=EV.to_json(row))
        md = gen.path.with_name(f"{gen.path.stem}_MODEL_CARD.md")
        rel = "../EVALUATION.md" if gen.path.parent.name == "study" else "EVALUATION.md"
        fmt = lambda k: (f"{row[k]:.3f}" if isinstance(row.get(k), (int, float))  # noqa: E731
                         and np.isfinite(row[k]) else "–")
        section = (f"## {EVALUATION_SECTION}\n\nThe measures of the evaluation issue at N = {n} against all "
                   f"{n_ref} test photos, beside every other shipped model and every control in [{rel.split('/')[-1]}]"
                   f"({rel}) (`{command}`); they replace the face-FD (small-N, biased) and the same-pose identity "
                   f"AUC quoted elsewhere in this card.\n\n| KID x 10^3 | NME | detection | diversity share | code "
                   f"spread | identity spread | identity AUC | mean-shape control |\n|---|---|---|---|---|---|---|---|"
                   f"\n| {1e3 * row['kid']:.2f} ± {1e3 * row['kid_se']:.2f} | {fmt('nme')} | {fmt('detection')} | "
                   f"{fmt('diversity_share')} | {fmt('code_spread')} | {fmt('identity_spread')} | "
                   f"{fmt('identity_auc')} [{row['identity_auc_ci'][0]:.3f}, {row['identity_auc_ci'][1]:.3f}] | "
                   f"{fmt('identity_mean_shape')}{'' if row.get('identity_mean_shape_ok') else ' (outside 0.4-0.6)'} |\n")
        replace_card_section(md, EVALUATION_SECTION, section)
    return {"references": refs, "checks": checks, "rows": rows}


def replace_card_section(md, heading: str, section: str) -> None:
    """Put ``section`` (markdown starting with ``## heading``) in place of that section of the card ``md``, or at
    its end where it has none; the rest of the card is kept as it is."""
    md = Path(md)
    body = md.read_text()
    head = f"## {heading}\n"
    if head in body:
        start = body.index(head)
        nxt = body.find("\n## ", start + len(head))
        body = body[:start] + section.rstrip("\n") + "\n" + (body[nxt:] if nxt >= 0 else "")
    else:
        body = body.rstrip("\n") + "\n\n" + section
    atomic_write_bytes(md, body.encode())


ABLATION_SECTION = "Ablations and peers at one N (short equal budget)"


def ablation_section(results: dict, command: str) -> str:
    """The flagship card's section for ``flagship.run_study`` results scored at one N (KID on descriptors), every
    number from ``results``; rows in order of KID."""
    first = next(iter(results.values()))
    n, n_ref, steps = first["n"], first["n_reference"], first["steps"]
    if any((r["n"], r["n_reference"], r["steps"]) != (n, n_ref, steps) for r in results.values()):
        raise ValueError("the ablation's runs were scored at different N or trained for different steps")
    rows = "\n".join(
        f"| {k} | {r['kid']:.1f} ± {r['kid_se']:.1f} | {r['nme']:.3f} | {r['detection']:.3f} | "
        f"{r['diversity_share']:.3f} | {r['checkerboard']:.1e} | {r['wall_s']:.0f} |"
        for k, r in sorted(results.items(), key=lambda kv: kv[1]["kid"]))
    return (f"## {ABLATION_SECTION}\n\nEach run: {steps} steps, batch 8, width 8 (a budget far below this model's), "
            f"one seed, retrained and scored by `flagship.run_study` (`{command}`): N = {n} generated faces "
            f"({first['inputs']}) against all {n_ref} test photos. KID x 10^3 on dlib descriptors (± its standard "
            f"error over subsets), NME against the face model's landmarks, detection, diversity share (of the test "
            f"photos'), checkerboard (test photos: {first['reference_checkerboard']:.1e}). It replaces the section "
            f"headed \"Ablations and peers (short equal budget; superseded measure)\".\n\n"
            f"| run | KID x 10^3 | NME | detection | diversity share | checkerboard | wall s |\n"
            f"|---|---|---|---|---|---|---|\n{rows}\n")


def ship_ablation(results_path, command: str, name: str = "flagship", weights_dir=None) -> dict:
    """Store ``flagship.run_study``'s one-N results (``results_path``) in the shipped ``name``'s card
    (``ablation_n``) and write them as its MODEL_CARD.md's section ``ABLATION_SECTION``. Returns the results."""
    results = json.loads(Path(results_path).read_text())
    section = ablation_section(results, command)
    folder = Path(weights_dir) if weights_dir else WEIGHTS_DIR
    update_card(folder / f"{name}.safetensors", ablation_n={"command": command, "results": results})
    replace_card_section(folder / f"{name}_MODEL_CARD.md", ABLATION_SECTION, section)
    return results


SWEEP_SECTION = "Sweeps over the explorer's range"


def sweep_shipped(names=None, workers: int = 2, md=None, **sweep_kw) -> dict:
    """Every shipped model (or ``names``) swept over the explorer's range (``sweep.slider_sweep``: each of the 15
    shape components at -3 ... 3 sigma and a head turn of -30 ... 30 degrees, 8 codes) beside the depth-as-image
    reference; writes the section ``SWEEP_SECTION`` of ``weights/EVALUATION.md``: one headline number per sweep
    (score = min(intact share, response), 1 = robust) and the summary, and stores each model's summary in its file's
    card (``sweep``). Returns {name: sweep result}."""
    import time

    from . import sweep as SW
    from .datasets import PairedConfig, PairedFaceDataset
    from .facemodel import load_face_model
    from .judges import judges

    t0 = time.time()
    model = load_face_model()
    names = list(names or available())
    first = load_pretrained(names[0])
    ref_photos = reference_photos(100, first.cfg.image_size)
    found = judges().analyse(ref_photos, embed=False)
    box = tuple(float(v) for v in np.median(found.boxes[found.found], 0) / ref_photos.shape[-1])
    reference = SW.reference_sweep(model, first.render, fallback_box=box, workers=workers, **sweep_kw)
    out = {}
    for name in names:
        gen = load_pretrained(name)
        f = generator_fn(gen)
        out[name] = SW.slider_sweep(f, model, gen.render, f.z_dim, fallback_box=box, workers=workers, **sweep_kw)
        sm = out[name]["summary"]
        print(f"{name}: sweep score {sm['score']:.3f} (worst {sm['worst_sweep']}), broken {sm['broken']}, "
              f"ignored {sm['ignored']} ({time.time() - t0:.0f} s)", flush=True)
        update_card(gen.path, sweep=dict(sm))
    sweeps = list(reference["sweeps"])
    head = "| model | " + " | ".join(sweeps) + " | score (worst sweep) | broken | ignored |"
    lines = [head, "|---|" + "---|" * (len(sweeps) + 3),
             "| reference: depth maps as images (descriptor response only) | " + " | ".join(
                 f"{reference['sweeps'][k]['descriptor_response']:.2f}" for k in sweeps) + " | – | – | – |"]
    for name, r in out.items():
        sm = r["summary"]
        lines.append(f"| {name} | " + " | ".join(f"{r['sweeps'][k]['score']:.2f}" for k in sweeps) +
                     f" | {sm['score']:.2f} ({sm['worst_sweep']}) | {', '.join(sm['broken']) or '–'} | "
                     f"{', '.join(sm['ignored']) or '–'} |")
    section = (f"## {SWEEP_SECTION}\n\nEach of the 15 shape components at -3, -1.5, 0, 1.5, 3 sigma (others 0, "
               f"neutral pose) and the mean face turned -30 ... 30 degrees about the eyes, each position with the "
               f"same 8 codes (`sweep.slider_sweep`); per sweep one number, score = min(intact, response): intact = "
               f"the worst share over positions of codes whose face dlib detects and whose high-frequency energy "
               f"is at most 1.25x the same code's centre face (breaks show), response = Spearman's correlation of "
               f"slider distance and descriptor distance, yaw: landmark follow (ignores show). 1 = robust. Broken: "
               f"intact < 0.5; ignored: response < 0.5. {time.time() - t0:.0f} s on "
               f"{__import__('os').cpu_count()} cores. Reproduce: `python -m frankenstein_utils.pretrained sweep`."
               f"\n\n" + "\n".join(lines) + "\n")
    path = Path(md) if md else WEIGHTS_DIR / "EVALUATION.md"
    body = path.read_text() if path.exists() else ""
    mark = f"## {SWEEP_SECTION}"
    body = (body[:body.index(mark)] if mark in body else body.rstrip("\n") + "\n\n") + section
    atomic_write_bytes(path, body.encode())
    return out


# the card line that states the small-set numbers (written by the card sections and by ``rescore_shipped``)
SMALL_SET_LINE = {"flagship": "Small fixed set recomputed by `tests/test_pretrained.py` (`pretrained.card_numbers`, "
                              "64 inputs, generated in float64 so that every CPU judges the same 8-bit images): ",
                  "study": "`card_numbers` of the float16 weights (recomputed by `tests/test_pretrained.py`), "
                           "generated in float64 so that every CPU judges the same 8-bit images: "}


def small_set_line(kind: str, small: dict) -> str:
    nums = json.dumps({k: round(v, 4) for k, v in small.items() if isinstance(v, float)})
    return f"{SMALL_SET_LINE[kind]}`{nums}`."


def rescore_shipped(names=None) -> dict:
    """Recompute the small-set numbers (``card_numbers``) of shipped models in place: the file's card and the
    matching line of its MODEL_CARD.md (and the study index). For a change of the scoring itself, not of the
    weights; the rest of each card is left as it was written. Returns {name: new small set}."""
    from .datasets import PairedConfig, PairedFaceDataset
    from .facemodel import load_face_model

    model = load_face_model()
    out, train = {}, None
    for name in names or available():
        gen = load_pretrained(name)
        if gen.cfg.buffers:  # its card is the comparison's (buffers_report), with no small fixed set
            print(f"{name}: a buffers generator, scored by python -m frankenstein_utils.buffers_report compare")
            continue
        if train is None or train.config.size != gen.cfg.image_size:
            train = PairedFaceDataset("train", PairedConfig(size=gen.cfg.image_size), model=model, progress=False)
        small = card_numbers(gen, model, train=train)
        update_card(gen.path, small_set=small,
                    small_set_scoring="card_numbers: float64 generation, CPU-independent draws")
        md = gen.path.with_name(f"{gen.path.stem}_MODEL_CARD.md")
        kind = "study" if gen.path.parent.name == "study" else "flagship"
        old_lead = {"flagship": "Small fixed set recomputed by", "study": "`card_numbers` of the float16 weights"}[kind]
        text, n_sub = _replace_line(md.read_text(), old_lead, small_set_line(kind, small))
        if n_sub != 1:
            raise ValueError(f"{md}: no line starting {old_lead!r} to update")
        atomic_write_bytes(md, text.encode())
        out[name] = small
        print(f"{name}: {small_set_line(kind, small)}", flush=True)
    if any(n.startswith("study/") for n in out):
        write_study_index(WEIGHTS_DIR / "study", "notebooks/params/study_budget.yaml")
    return out


def _replace_line(text: str, lead: str, new: str):
    lines = text.split("\n")
    hits = [i for i, line in enumerate(lines) if line.startswith(lead)]
    for i in hits:
        lines[i] = new
    return "\n".join(lines), len(hits)


def main(argv=None):
    """Export a flagship checkpoint: weights (fp16) + card numbers + MODEL_CARD.md. Usage:
    python -m frankenstein_utils.pretrained CHECKPOINT --name flagship --wall-s SECONDS --command "..." """
    import argparse
    import platform
    import time

    from .datasets import PairedConfig, PairedFaceDataset
    from .facemodel import load_face_model
    from .training import load_run

    if argv is None:
        import sys

        argv = sys.argv[1:]
    if argv[:1] == ["rescore"]:  # python -m frankenstein_utils.pretrained rescore [NAME ...]
        rescore_shipped(argv[1:] or None)
        return
    if argv[:1] == ["sweep"]:  # python -m frankenstein_utils.pretrained sweep [NAME ...]
        torch.set_num_threads(1)
        sweep_shipped(argv[1:] or None)
        return
    if argv[:1] == ["evaluate"]:  # python -m frankenstein_utils.pretrained evaluate [NAME ...]
        torch.set_num_threads(1)
        evaluate_shipped(argv[1:] or None)
        return
    if argv[:1] == ["ablation"]:  # python -m frankenstein_utils.pretrained ablation RESULTS --command "..."
        ab = argparse.ArgumentParser(prog="python -m frankenstein_utils.pretrained ablation",
                                     description=ship_ablation.__doc__)
        ab.add_argument("results", help="results.json of python -m frankenstein_utils.flagship OUT")
        ab.add_argument("--command", required=True, help="the command that trained and scored it")
        ab.add_argument("--name", default="flagship")
        b = ab.parse_args(argv[1:])
        ship_ablation(b.results, b.command, b.name)
        return
    ap = argparse.ArgumentParser(epilog="python -m frankenstein_utils.pretrained rescore [NAME ...]: recompute the "
                                        "small-set numbers of shipped models (after a change of the scoring); "
                                        "python -m frankenstein_utils.pretrained evaluate [NAME ...]: every shipped "
                                        "model and every control at N = 500 (weights/EVALUATION.md); "
                                        "python -m frankenstein_utils.pretrained ablation RESULTS --command ...: "
                                        "the flagship card's ablation at one N")
    ap.add_argument("checkpoint")
    ap.add_argument("--name", default="flagship")
    ap.add_argument("--wall-s", type=float, required=True, help="training wall time (from the run's log)")
    ap.add_argument("--command", required=True, help="the command that trained it")
    ap.add_argument("--curve", default="", help="JSON file: [{step, wall_s, detection, nme, face_fd}, ...]")
    ap.add_argument("--study", default="", help="results.json of the ablation / peer study")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--machine-note", default="", help="what else ran on the machine while it trained")
    ap.add_argument("--card-only", action="store_true",
                    help="rewrite the shipped model's MODEL_CARD.md from its stored card numbers with this --curve, "
                         "--study, --command and --note (nothing retrained or re-scored; CHECKPOINT is only named)")
    ap.add_argument("--note", default="", help="provenance the run did not record, shown in the card as written")
    a = ap.parse_args(argv)
    if a.card_only:
        gen = load_pretrained(a.name)
        curve = json.loads(Path(a.curve).read_text()) if a.curve else []
        study = json.loads(Path(a.study).read_text()) if a.study else {}
        card = {**gen.card, "command": a.command, "note": a.note}
        write_card(WEIGHTS_DIR / f"{a.name}_MODEL_CARD.md", f"Model card: {a.name} (depth map -> face, "
                   f"{gen.cfg.image_size} px)", card_sections(card, gen.path.stat().st_size, gen, curve, study))
        record_checksum(gen.path)
        return
    torch.set_num_threads(1)
    t0 = time.time()
    run = load_run(a.checkpoint)
    model = load_face_model()
    pcfg = PairedConfig(size=run.cfg.image_size)
    train = PairedFaceDataset("train", pcfg, model=model, progress=False)
    test = PairedFaceDataset("test", pcfg, model=model, progress=False)
    render, pose = train.render_config(model), train.pose_jitter(model)
    path = WEIGHTS_DIR / f"{a.name}.safetensors"
    latent = None
    if "E" in run.nets:
        from .widgets import latent_directions

        mean, dirs, scales = latent_directions(run.nets["E"], train.tensors()[0][:2000], k=4)
        latent = {"mean": mean, "directions": dirs, "scales": scales}
    blob = shipped_blob(run, render, pose, {}, latent)  # scored as shipped (float16), before its card is written
    gen = generator_from_blob(blob, path)
    small = card_numbers(gen, model, train=train)
    ev = evaluate_for_card(lambda d, m, z: gen.generate(d, m, z=z), model, train, test, a.n, z_dim=gen.cfg.z_dim)
    raw = None
    if "G_ema" in run.nets:  # the EMA ablation, free: the same run's raw generator weights
        G = run.nets["G"].eval().requires_grad_(False)
        raw = evaluate_for_card(lambda d, m, z: G(generator_input(d, m, run.cfg.mask_input), z).detach(), model, train,
                                test, a.n, z_dim=gen.cfg.z_dim, references=False)["model"]
    starts = [{k: h[k] for k in ("init_from", "source_step")} | {"source_source": h["source_config"].get(
        "input_convention", {}).get("source", "not recorded")} for h in run.config_history if "init_from" in h]
    card = {"small_set": small, "evaluation": ev, "raw_G": raw, "step": run.step, "wall_s": a.wall_s, "starts": starts,
            "command": a.command, "note": a.note, "config": {k: v for k, v in asdict(run.cfg).items() if k != "data"},
            "data": run.cfg.data, "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPU cores "
            f"{' (' + a.machine_note + ')' if a.machine_note else ''}, torch {torch.__version__}, 1 thread, no GPU"}
    size = write_shipped(path, {**blob, "card": card})
    curve = json.loads(Path(a.curve).read_text()) if a.curve else []
    study = json.loads(Path(a.study).read_text()) if a.study else {}
    write_card(WEIGHTS_DIR / f"{a.name}_MODEL_CARD.md", f"Model card: {a.name} (depth map -> face, "
               f"{run.cfg.image_size} px)", card_sections(card, size, gen, curve, study))
    record_checksum(path)  # its line in the card just written
    print(json.dumps({k: card[k] for k in ("small_set", "evaluation", "raw_G", "step")}, indent=1, default=float))
    print(f"exported {path} ({size / 2 ** 20:.2f} MiB) in {time.time() - t0:.0f} s")


def _row(name, r, keys):
    fmt = lambda k: "–" if r.get(k) is None else (f"{r[k]:.1e}" if k == "checkerboard" else f"{r[k]:.3f}")
    return f"| {name} | " + " | ".join(fmt(k) for k in keys) + " |"


def card_sections(card: dict, size: int, gen, curve: list, study: dict) -> dict:
    """The model card's text, every number from ``card`` (nothing typed in)."""
    ev, m, cfg = card["evaluation"], card["evaluation"]["model"], card["config"]
    defaults = {}
    from .training import TrainConfig

    base = asdict(TrainConfig())
    changed = {k: v for k, v in cfg.items() if k in base and base[k] != v and k not in ("out_dir", "steps")}
    n_g = sum(p.numel() for p in gen.nets["G"].parameters())
    n_e = sum(p.numel() for p in gen.nets["E"].parameters()) if "E" in gen.nets else 0
    keys = ("face_fd", "nme", "detection", "diversity", "identity_auc", "checkerboard")
    rows = [_row("this model (G's EMA), z ~ N(0, I)", m, keys)]
    if card.get("raw_G"):
        rows.append(_row("same run, raw G weights (no EMA)", card["raw_G"], keys))
    for k in ("train photos", "train photos blurred sigma 2", "real-photo oracle", "shuffled",
              "synthetic targets shuffled"):
        rows.append(_row(k, ev[k], keys))
    blur_fd, oracle = ev["train photos blurred sigma 2"]["face_fd"], ev["real-photo oracle"]["nme"]
    div_ref = m["reference_diversity"]
    targets = [("face-FD <= blurred (sigma 2) photos'", m["face_fd"], blur_fd, m["face_fd"] <= blur_fd),
               ("NME <= 1.5 x real-photo oracle", m["nme"], 1.5 * oracle, m["nme"] <= 1.5 * oracle),
               ("identity AUC >= 0.8 (depth-blind-proof design)", m["identity_auc"], 0.8, m["identity_auc"] >= 0.8),
               ("diversity >= 80 % of test photos'", m["diversity"], 0.8 * div_ref, m["diversity"] >= 0.8 * div_ref),
               ("checkerboard score <= 2 x real photos'", m["checkerboard"], 2 * ev["train photos"]["checkerboard"],
                m["checkerboard"] <= 2 * ev["train photos"]["checkerboard"])]
    source = card["data"].get("paired", {}).get("depth_source", "landmarks")
    pairs_text = ("depth of the face model fitted to each photo's landmarks, rendered by the synthetic inputs' own "
                  "path (`PairedConfig(depth_source='fitted')`, model-domain pairs)" if source == "fitted" else
                  "depth rasterized from each photo's MediaPipe FaceMesh landmark mesh (`PairedConfig(depth_source="
                  "'landmarks')`)")
    sec = {}
    sec["What it is"] = (
        f"A generator from a face-model depth map (1 x {cfg['image_size']} x {cfg['image_size']}, the package's depth "
        f"convention, rendered with the stored `render`/`pose` settings) and an appearance code z ({cfg['z_dim']}-D, "
        f"N(0, I) prior) to an RGB face in [-1, 1]: `frankenstein_utils.flagship.FlagshipGenerator` "
        f"({n_g:,} parameters; bottleneck {cfg['fs_bottleneck']} px, upsampling `{cfg['fs_upsample']}`, modulation "
        f"`{cfg['fs_modulation']}`), the exponential moving average (decay {cfg['fs_ema']}) of its weights, plus the "
        f"appearance encoder ({n_e:,} parameters) that maps a photo to z. Stored in float16: {size / 2 ** 20:.2f} MiB. "
        f"Load with `frankenstein_utils.pretrained.load_pretrained('flagship')` (float32, CPU, eval mode).")
    sec["Data and terms"] = (
        "- Photos: the 10,000-image CelebA subset in `../shared/data/celeba_10k` (img_align_celeba 000001-010000, "
        "downscaled 2x), cropped and resized as `datasets.PairedConfig`; per-image split train/val/test 90/5/5 % "
        "(seed 0; no identity labels, so one celebrity can be in train and test). **CelebA may be used only for "
        "non-commercial research and educational purposes**; these weights are derived from it and carry the same "
        "restriction.\n"
        f"- Training pairs: {pairs_text}; "
        f"unpaired reals: the same training photos; synthetic inputs: ICT-FaceKit face-model renders (MIT licence) "
        f"with the paired set's framing ({card['data'].get('n_synthetic', '?')} faces; recorded convention: "
        f"{cfg['input_convention'].get('source', 'not recorded')}).")
    starts = card.get("starts", [])
    total = card["step"] + sum(st["source_step"] for st in starts)
    chain = "".join(f"- Started from `{st['init_from']}` at its step {st['source_step']:,} (`--init-from`: its "
                    f"networks and optimizer moments; that run's inputs: {st['source_source']}), then "
                    f"{card['step']:,} steps on this run's inputs ({cfg['input_convention'].get('source', '?')}).\n"
                    for st in starts)
    sec["Training"] = (
        chain +
        f"- Steps: {total:,} in all (batch {cfg['batch_size']} paired + {cfg['batch_size']} synthetic + "
        f"{cfg['batch_size']} real photos per step); wall time {card['wall_s'] / 3600:.2f} h on {card['machine']}.\n"
        f"- Objective: hinge/NS loss `{cfg['gan_loss']}` on a {cfg['fs_scales']}-scale spectral-norm PatchGAN, lazy R1 "
        f"(gamma {cfg['fs_r1']}, every {cfg['fs_r1_every']} steps), DiffAugment `{cfg['fs_diffaug']}`, L1 x "
        f"{cfg['l1_weight']} and KL x {cfg['kl_weight']} (cVAE branch on pairs), pix2pixHD feature matching x "
        f"{cfg['feature_matching']}, latent regression x {cfg['latent_weight']} (cLR branch on synthetic depth).\n"
        f"- Settings that differ from `TrainConfig`'s defaults: `{json.dumps(changed)}`\n"
        + (f"- Reproduce, one command after the other (each resumes if interrupted; stop the first at step "
           f"{starts[0]['source_step']} and the last at step {card['step']}, or pass `--steps`):\n\n" if starts else
           f"- Reproduce (resumes if interrupted; stop it at step {card['step']}, or pass `--steps {card['step']}`):"
           f"\n\n") +
        f"```bash\n{card['command'].strip()}\n```\n\nthen export: `python -m frankenstein_utils.pretrained "
        f"{card['config']['out_dir']}/checkpoint.pt --wall-s {card['wall_s']:.0f} --command \"...\"`.")
    sec["Evaluation at export (superseded)"] = (
        SUPERSEDED.format(n=ev['n']) + "\n\n" +
        f"{ev['n']} fixed synthetic inputs (`pretrained.fixed_inputs`, seed 2024: identity ~ N(0, I), pose and "
        f"expression drawn from the training photos' fits) with z ~ N(0, I), judged by dlib "
        f"(`judges`: HOG detector, 68-point shape predictor, ResNet descriptor; images upsampled bicubic to 256 px); "
        f"reference = the first {ev['n']} test photos (never trained on). face-FD: Fréchet distance of dlib "
        f"descriptors vs the test photos; NME: inner 51 points vs the face model's own landmarks (photos: vs their "
        f"MediaPipe landmarks mapped to iBUG), divided by the outer-eye-corner distance; identity AUC: same identity "
        f"in other poses closer than other identities with the same code and pose; checkerboard: share of spectral "
        f"power on the Nyquist lines.\n\n| row | face-FD | NME | detection | diversity | identity AUC | checkerboard |\n"
        f"|---|---|---|---|---|---|---|\n" + "\n".join(rows) +
        f"\n\nTest photos' own descriptor diversity: {div_ref:.3f}.\n\n**Targets** (issue 12), computed:\n\n"
        "| target | measured | bound | met |\n|---|---|---|---|\n" +
        "\n".join(f"| {t} | {v:.4g} | {b:.4g} | {'yes' if ok else '**no**'} |" for t, v, b, ok in targets) +
        "\n\n" + small_set_line("flagship", card["small_set"]))
    if curve:
        sec["Training curve (superseded measure)"] = (
            SUPERSEDED.format(n=64) + "\n\nSnapshots of the run, each scored with `card_numbers` (64 inputs):\n\n"
                                 "| step | wall h | face-FD | NME | detection |\n|---|---|---|---|---|\n" +
                                 "\n".join(f"| {c['step']} | {c['wall_s'] / 3600:.2f} | {c['face_fd']:.3f} | "
                                           f"{c['nme']:.3f} | {c['detection']:.3f} |" for c in curve))
    if study:
        keys = ("face_fd", "nme", "detection", "diversity", "checkerboard", "wall_s")
        sec["Ablations and peers (short equal budget; superseded measure)"] = (
            SUPERSEDED.format(n=128) + "\n\n" +
            f"Each run: {next(iter(study.values()))['steps']} steps, batch 8, width 8 (a budget far below this "
            f"model's), scored by `flagship.run_study` on 128 fixed synthetic inputs vs 128 test photos; inputs: "
            f"{'; '.join(sorted({v.get('inputs', 'not recorded') for v in study.values()}))}.\n\n"
            "| run | face-FD | NME | detection | diversity | checkerboard | wall s |\n|---|---|---|---|---|---|---|\n" +
            "\n".join(_row(k, v, keys) for k, v in study.items()))
    if card.get("note"):
        sec["Note"] = card["note"]
    sec["Limitations"] = (
        "64 px; CPU budget of about an hour on a shared 2-core machine, far below what GAN faces need; the test "
        "photos come from the same CelebA subset (per-image split); the identity rows use jitter poses and neutral "
        "expressions.")
    return sec



def from_run(run, render: RenderConfig, pose: PoseJitter) -> PretrainedGenerator:
    """A trained run's sampling generator (G's EMA where there is one) and encoder as a ``PretrainedGenerator``
    (float32, as trained: for scoring checkpoints along a run)."""
    nets = {"G": run.nets.get("G_ema", run.nets["G"]).eval()}
    if "E" in run.nets:
        nets["E"] = run.nets["E"].eval()
    return PretrainedGenerator(nets, run.cfg, render, pose, {}, Path(run.out) / "checkpoint.pt")


def export_study(params_path, params: dict, names=None, machine_note: str = "", weights_dir=None) -> dict:
    """Ship every finished model of the budget study (``experiments.budget_study``) as
    ``weights/study/<model>.safetensors``
    (G and encoder in float16, no EMA: these objectives keep none) with ``<model>_MODEL_CARD.md``: its curve, the
    card numbers of the shipped weights (``card_numbers``: 64 fixed synthetic inputs), training time and the
    command that retrains it. Returns {model: card}."""
    import os
    import platform

    from .datasets import PairedConfig, PairedFaceDataset
    from .facemodel import load_face_model
    from .training import TrainConfig, load_run

    model = load_face_model()
    size = params["settings"].get("image_size", 64)
    train = PairedFaceDataset("train", PairedConfig(size=size), model=model, progress=False)
    render, pose = train.render_config(model), train.pose_jitter(model)
    base = asdict(TrainConfig())
    cards = {}
    for name in names or params["models"]:
        run_dir = Path(params["out_dir"]) / name
        curve = json.loads((run_dir / "curve.json").read_text())
        if curve["points"][-1]["step"] != params["steps"]:
            print(f"{name}: not finished ({curve['points'][-1]['step']} of {params['steps']} steps), not shipped")
            continue
        run = load_run(run_dir / "checkpoint.pt")
        path = Path(weights_dir or WEIGHTS_DIR) / "study" / f"{name}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = shipped_blob(run, render, pose, {})  # scored as shipped (float16), before its card is written
        small = card_numbers(generator_from_blob(blob, path), model, train=train)
        cfg = asdict(run.cfg)
        card = {"small_set": small, "curve": curve["points"], "step": run.step, "streams": curve["streams"],
                "n_eval": params["n_eval"],
                "train_s": curve["points"][-1]["train_s"], "data": run.cfg.data,
                "command": f"python -m frankenstein_utils.experiments {params_path} --models '{name}' --export",
                "changed": {k: v for k, v in cfg.items() if k in base and base[k] != v
                            and k not in ("out_dir", "steps", "input_convention", "data")},
                "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores"
                           f"{' (' + machine_note + ')' if machine_note else ''}, torch {torch.__version__}, "
                           f"1 thread, no GPU"}
        size_b = write_shipped(path, {**blob, "card": card})
        write_card(path.with_name(f"{name}_MODEL_CARD.md"), f"Model card: study/{name} (the study at one "
                   f"equal budget, {run.cfg.image_size} px)", study_card_sections(name, card, size_b, run))
        record_checksum(path)  # its line in the card just written
        cards[name] = card
        print(f"exported {path} ({size_b / 2 ** 10:.0f} KiB): {json.dumps(small, default=float)}")
    write_study_index(Path(weights_dir or WEIGHTS_DIR) / "study", params_path)
    return cards


def write_study_index(folder, params_path) -> None:
    """``study/README.md``: every shipped study model with its size, budget and card numbers (read from the files)."""
    rows = []
    for f in sorted(Path(folder).glob("*.safetensors")):
        card = read_shipped_card(f)
        sm = card["small_set"]
        rows.append(f"| [`{f.stem}`]({f.stem}_MODEL_CARD.md) | {f.stat().st_size / 2 ** 10:.0f} KiB | {card['step']:,} | "
                    f"{card['train_s'] / 60:.1f} | {sm['face_fd']:.3f} | {sm['nme']:.3f} | {sm['detection']:.2f} |")
    text = ("# The study at one equal budget (shipped)\n\nEvery model of the study trained with the same steps, batch, "
            f"width and data by `python -m frankenstein_utils.experiments {params_path} --export` (the parameter "
            "file states the budget); each card has the model's curve and the command that retrains it alone. "
            "Numbers: `pretrained.card_numbers` of the shipped float16 weights (64 fixed synthetic inputs vs 64 test "
            f"photos). Files: `<model>.safetensors` (reading one runs no code), SHA-256 in [`{CHECKSUMS}`](../"
            f"{CHECKSUMS}) and in each card, checked by `load_pretrained`.\n\n"
            "| model | size | steps | train min | face-FD | NME | detection |\n|---|---|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")
    atomic_write_bytes(Path(folder) / "README.md", text.encode())


def study_card_sections(name: str, card: dict, size: int, run) -> dict:
    """A study model's card, every number from ``card``."""
    from .models import count_parameters

    c = run.cfg
    n = {k: count_parameters(v) for k, v in run.nets.items() if k in ("G", "E")}
    pts = card["curve"]
    sec = {"What it is": (
        f"Model `{name}` of the study (mode `{c.mode}`, generator `{c.generator if c.mode not in OBJECTIVES else c.mode}`, "
        f"{n['G']:,} generator parameters" + (f", appearance encoder {n['E']:,}" if "E" in n else "") +
        f"), trained at the study's one equal budget so that every model of the comparison had the same steps, "
        f"batch and width. Stored in float16: {size / 2 ** 10:.0f} KiB. Load with "
        f"`frankenstein_utils.pretrained.load_pretrained('study/{name}')`; notebook 04 evaluates it beside its own "
        f"runs.")}
    sec["Data and terms"] = (
        "CelebA photos (`../shared/data/celeba_10k`; **non-commercial research and educational use only**; these "
        "weights are derived from them and carry the same restriction), per-image split 90/5/5 %. Streams this "
        f"model read (observed): {', '.join(card['streams'])}; paired depth: the face model fitted to each photo; "
        f"recorded input convention: {c.input_convention.get('source', 'not recorded')}.")
    sec["Training"] = (
        f"- {card['step']:,} steps, batch {c.batch_size}, width {c.width}, {c.image_size} px, seed {c.seed}; "
        f"{card['train_s'] / 60:.1f} min of training (scoring excluded) on {card['machine']}.\n"
        f"- Settings that differ from `TrainConfig`'s defaults: `{json.dumps(card['changed'])}`\n"
        f"- Retrain (resumes if interrupted): `{card['command']}`")
    sec["Curve"] = (
        f"Scored after every segment on {card['n_eval']} fixed synthetic inputs (`pretrained.fixed_inputs`, seed "
        f"2024) against as many test photos, dlib judges (`pretrained.face_scores`):\n\n| step | train min | face-FD | NME | detection | "
        "diversity |\n|---|---|---|---|---|---|\n" +
        "\n".join(f"| {p['step']} | {p['train_s'] / 60:.1f} | {p['face_fd']:.3f} | {p['nme']:.3f} | "
                  f"{p['detection']:.3f} | {p['diversity']:.3f} |" for p in pts))
    sec["Evaluation of the shipped weights"] = (
        small_set_line("study", card["small_set"]))
    return sec


def generator_fn(gen: PretrainedGenerator, seed: int = 0):
    """``f(depth, mask, z=None) -> faces`` for ``evaluation.evaluate_generator`` (notebook 04): z ~ N(0, I) seeded
    when None, as ``evaluation.generator_fn`` does for trained runs. A buffers generator gives a
    ``buffers.BufferGenerator`` (it reads the faces' parameters; z = appearance codes, then the network's code)."""
    if gen.cfg.buffers:
        from .buffers import BufferGenerator
        from .facemodel import load_face_model

        return BufferGenerator(gen, load_face_model(), gen.appearance(), gen.render, seed=seed)
    z_dim = getattr(gen.nets["G"], "z_dim", 0)

    @torch.no_grad()
    def f(depth, mask, z=None):
        g = torch.Generator().manual_seed(seed)
        out = []
        for s in range(0, len(depth), 256):
            n = len(depth[s:s + 256])
            zz = z[s:s + 256] if z is not None else normal(n, z_dim, generator=g)
            out.append(gen.generate(depth[s:s + 256], mask[s:s + 256], z=zz))
        return torch.cat(out)
    f.z_dim = z_dim
    return f


if __name__ == "__main__":
    main()
