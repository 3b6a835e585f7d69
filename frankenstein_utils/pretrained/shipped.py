"""The generators shipped with the package: ``load_pretrained()`` gives a ready generator on CPU, no training needed.

Files (``frankenstein_utils/weights/``): ``<name>.safetensors`` holds the generator's weights in half precision (for
the flagship the exponential moving average of G, what its training samples with) and its appearance encoder as
tensors, and as JSON strings in its metadata the settings that rebuild them, the input convention (render
configuration and pose spread of its synthetic inputs) and the numbers of its model card; reading it runs no code.
Its SHA-256 is recorded in ``weights/generators.sha256`` (``sha256sum -c`` format; also in its card) and checked
by ``load_pretrained``; ``<name>_MODEL_CARD.md`` says how it was made and what it scores.

    from frankenstein_utils.pretrained.shipped import load_pretrained
    g = load_pretrained()                      # the flagship, float32 on CPU, eval mode
    faces = g.generate(depth, mask)            # depth, mask (B, 1, 64, 64) in [0, 1] -> faces (B, 3, 64, 64) in [-1, 1]
    faces = g.generate(depth, mask, z=z)       # z (B, 8): appearance code, N(0, I) is the prior; None -> 0
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..facemodel.appearance import load_appearance
from ..io.files import atomic_write_bytes
from ..objectives.base import generator_input
from ..objectives.registry import OBJECTIVES
from ..render.rasterize import PoseJitter, RenderConfig
from ..train.checkpoint import CONVERT

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
CHECKSUMS = "generators.sha256"  # in a weights folder: "<sha256>  <path relative to it>" per shipped generator
FORMAT = "frankenstein_utils.shipped/2"  # safetensors; format 1: a ``.pt`` file, read weights-only (``read_shipped``)
# the settings that rebuild a generator and its encoder (the rest of a TrainConfig is about training)
BUILD_KEYS = ("mode", "width", "d_width", "encoder_width", "z_dim", "image_size", "out_channels", "mask_input",
              "gan_loss", "spectral_norm", "fs_bottleneck", "fs_upsample", "fs_modulation", "fs_skips", "fs_scales",
              "fs_ema", "fs_input_blur", "generator", "norm", "flat_layers", "discriminator", "d_norm", "buffers",
              "appearance_k", "buffers_supersample")


def build_networks(cfg) -> dict:
    """The networks of ``cfg``'s mode, randomly initialised: the flagship and the peers build theirs from the
    config alone; the study's objectives are built as a trainer would, without data."""
    from types import SimpleNamespace


    cpu = torch.device("cpu")
    return OBJECTIVES[cfg.mode](SimpleNamespace(cfg=cfg, device=cpu, place=lambda nets: nets)).nets


class PretrainedGenerator:
    """A shipped generator: ``nets`` ({"G", "E"}: generator and appearance encoder, float32, eval mode), ``cfg``
    (the TrainConfig that rebuilds them), ``render`` / ``pose`` (the input convention: how its synthetic inputs
    are rendered), ``card`` (the model card's numbers) and ``generate`` like a trained run's."""

    def __init__(self, nets: dict, cfg, render: RenderConfig, pose: PoseJitter, card: dict, path: Path,
                 latent: dict | None = None):
        self.nets, self.cfg, self.render, self.pose, self.card, self.path = nets, cfg, render, pose, card, path
        self.latent = latent  # {"mean", "directions", "scales"} of the encoder's codes of training photos, or None

    @torch.no_grad()
    def generate(self, depth, mask, image=None, z=None, buffers=None):
        """Faces (B, C, S, S) in [-1, 1] for depth maps and masks (B, 1, S, S) in [0, 1] at the model's size (and,
        for a buffers generator, its attribute ``buffers`` (B, 3 n, S, S) in [0, 1]; ``faces`` renders them);
        z = E(image) mean if a photo is given, else ``z`` (None -> 0, the prior's mean)."""
        from ..objectives.base import batch_buffers

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
        from ..facemodel.appearance import SHIPPED, sha256_of

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
    """Write ``shipped_blob`` of a trained run (float16 G and encoder with its settings, input convention, card numbers
    and ``latent``: the encoder's main directions for appearance sliders, ``pretrained.shipped.latent_directions`` of
    training photos) to ``path`` (a ``.safetensors`` file, atomically; its SHA-256 recorded). Returns the file size in
    bytes."""
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
        from ..train.checkpoint import load_tensors_only

        blob = load_tensors_only(path, "shipped model", f"convert it: {CONVERT} {path} "
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
    from ..train.trainer import device_problem

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
    from ..train.config import TrainConfig

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



@torch.no_grad()
def latent_directions(encoder, images: torch.Tensor, k: int = 4, batch_size: int = 256):
    """Mean, the top-``k`` principal directions (k, z_dim) and their standard deviations of the encoder's mean codes
    of ``images``."""
    encoder.eval()
    dev = next(encoder.parameters()).device
    mu = torch.cat([encoder(images[s:s + batch_size].to(dev))[0].cpu() for s in range(0, len(images), batch_size)])
    mean = mu.mean(0)
    _, sv, vt = torch.linalg.svd(mu - mean, full_matrices=False)
    std = sv / max(len(mu) - 1, 1) ** 0.5
    return mean, vt[:k], std[:k]
