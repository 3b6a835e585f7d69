"""Turn every depth-map PNG in a folder into a face image with a trained generator (the original `test` script).

    python -m frankenstein_utils.apps.apply --model study/U --input DIR --output DIR
    python -m frankenstein_utils.apps.apply --checkpoint outputs/experiments/.../checkpoint.pt --input DIR --output DIR

``--model`` and ``--checkpoint`` are one option: a shipped model's name (``pretrained.shipped.available()``), an
exported shipped-model file or a training checkpoint (``load_generator``).

Depth PNGs must be square, 16-bit (as ``generate_depth_dataset`` writes them) or 8-bit greyscale; near = bright,
background 0 (other modes, e.g. 1-bit or palette, are refused: their values are not depths). The mask is taken from
``DIR/../mask/<name>`` (8-bit greyscale, as the depth set writes it) when present, else depth > 0. An
appearance-conditioned or noise generator uses z = 0, or z ~ N(0, I) with ``--z-seed`` (drawn for every file in
order, skipped ones included).

The input must follow the model's input convention (recorded in a checkpoint, and in a shipped model as the render
of its inputs: framing and window, depth mode and range, region, ...). When the folder (or its parent) holds the
``config.json`` of a generated depth set or the ``manifest.json`` of a ``generate`` folder, it is compared with the
model's: a different resolution is converted (resized to the model's size), anything else is refused with
a message saying what differs; a set whose faces are drawn otherwise than a checkpoint's synthetic training inputs
(e.g. neutral expressions for a model trained on the photos' fitted expressions) is accepted with a note. A PNG that cannot be read stops the run (``--on-error stop``, the default) or is
skipped and counted (``--on-error skip``); so does a depth map of another mode or not square, and these are
found before anything is written. ``--output`` may not be the input folder (or its mask folder), and is locked
while written (``io.files.FolderLock``): a second apply into it fails instead of mixing its images with the first's.
A generator with non-finite parameters (a diverged run) is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..io.files import FolderBusyError, FolderLock, PngHeader, load_png, png_header, remove_orphan_tmp, save_png
from ..train.trainer import load_run

# RenderConfig keys that change what a depth map means, and the keys that matter only under one setting
CONVENTION_KEYS = ("framing", "depth_mode", "fg_floor", "region")
CONVENTION_DEPENDENT = {("framing", "fixed"): "window_cm", ("framing", "fit"): "fit_margin",
                        ("depth_mode", "fixed"): "depth_range_cm", ("depth_mode", "relative"): "relative_span_cm"}


def check_depth_png(path) -> PngHeader:
    """The header of a depth PNG of the convention (16-bit or 8-bit greyscale); ``ValueError`` naming the file for
    any other mode: a 1-bit map would read as depths of at most 1/255, a palette map as its palette indices."""
    h = png_header(path)
    if not (h.greyscale and h.bit_depth in (8, 16)):
        raise ValueError(f"{path}: depth map must be a 16-bit or 8-bit greyscale PNG, got {h.describe()}")
    return h


def read_depth(path) -> torch.Tensor:
    """A depth PNG (16-bit or 8-bit greyscale: ``check_depth_png``) as (1, 1, H, W) float in [0, 1]; errors name
    the file."""
    h = check_depth_png(path)
    a = load_png(path)
    if a.ndim != 2:
        raise ValueError(f"{path}: depth map must be single-channel, got shape {a.shape}")
    scale = 65535.0 if h.bit_depth == 16 else 255.0
    return torch.from_numpy(a.astype(np.float32) / scale)[None, None]


def check_mask_png(path, size) -> None:
    """``ValueError`` naming the file unless ``path`` is an 8-bit greyscale PNG of ``size`` (H, W), as a depth set
    writes its masks: a 1-bit mask would read as empty (> 127), an RGB one as three."""
    h = png_header(path)
    if not (h.greyscale and h.bit_depth == 8):
        raise ValueError(f"{path}: mask must be an 8-bit greyscale PNG, got {h.describe()}")
    if (h.height, h.width) != tuple(size):
        raise ValueError(f"{path}: mask is {h.width}x{h.height}, its depth map {size[1]}x{size[0]}")


def read_mask(path, size) -> torch.Tensor:
    """An 8-bit greyscale mask PNG of ``size`` (H, W) as (1, 1, H, W) float 0/1 (> 127); errors name the file."""
    check_mask_png(path, size)
    return torch.from_numpy(load_png(path, size) > 127).float()[None, None]


def check_output_folder(input_dir, output_dir) -> None:
    """Refuse an output folder that is the input folder or its mask folder (the same folder by another path
    included): the faces would be written over the depth maps (or masks) they are made from."""
    inp, out = Path(input_dir), Path(output_dir)
    for folder, what in ((inp, "the input folder"), (inp.parent / "mask", "the input's mask folder")):
        same = out.resolve() == folder.resolve() or (out.exists() and folder.exists() and os.path.samefile(out, folder))
        if same:
            raise ValueError(f"{output_dir}: is {what} ({folder}); the faces would overwrite the maps they are made "
                             f"from: choose another --output")


def folder_config(input_dir) -> tuple[dict | None, Path | None]:
    """The configuration (``DepthSetConfig`` dict) of a generated set holding ``input_dir`` (a depth set's
    ``config.json``, or the ``faces`` entry of a ``generate`` folder's ``manifest.json``) and its file, or
    (None, None)."""
    for d in (Path(input_dir), Path(input_dir).parent):
        for name, key in (("config.json", None), ("manifest.json", "faces")):  # a depth set; a generate folder
            f = d / name
            if f.exists():
                try:
                    cfg = json.loads(f.read_text())
                    cfg = cfg if key is None else cfg.get(key)
                    render = cfg.get("render") if cfg is not None else None
                except (ValueError, AttributeError) as e:
                    raise ValueError(f"{f}: not a readable set configuration ({e})") from e
                if isinstance(render, dict):
                    return cfg, f
    return None, None


def distribution_notes(expected: dict | None, found: dict) -> list[str]:
    """Where a set's faces are drawn otherwise than the checkpoint's synthetic training inputs (pose from the
    photos' fits or a jitter, fitted or neutral expressions): allowed (same convention), but said, since the
    generator has seen fewer such faces."""
    if not expected:
        return []
    have = {"pose": found.get("pose_source", "jitter"), "expressions": found.get("expression_source", "neutral")}
    diff = [f"{k} {have[k]} (trained on {expected[k]})" for k in ("pose", "expressions") if have[k] != expected[k]]
    return ["the input faces are drawn otherwise than the checkpoint's synthetic training inputs: " + ", ".join(diff)
            ] if diff else []


def convention_differences(expected: dict, found: dict, label: str = "checkpoint") -> list[str]:
    """What differs between two RenderConfig dicts, apart from the resolution (which ``apply`` converts);
    ``label`` names the expected side in the messages."""
    keys = list(CONVENTION_KEYS) + [dep for (k, v), dep in CONVENTION_DEPENDENT.items() if expected.get(k) == v]
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v
    return [f"{k}: {label} {norm(expected.get(k))!r}, input {norm(found.get(k))!r}" for k in keys
            if norm(expected.get(k)) != norm(found.get(k))]


class Generator:
    """A generator to apply, from a training checkpoint or a shipped model, behind one interface:
    ``generate(depth, mask, z=None)`` -> images (B, C, S, S) in [-1, 1] (no gradients), ``z_dim`` (0: no code),
    ``image_size``, ``convention`` (the input convention: ``render`` (a RenderConfig dict, None for a checkpoint of
    an older run) and ``synthetic`` (how its synthetic inputs were drawn, or None)), ``kind`` ("checkpoint" or
    "model", for messages), ``source`` (what was asked for), ``net`` (the ``Trainer`` or ``PretrainedGenerator``)
    and ``device``."""

    def __init__(self, net, kind: str, source: str, convention: dict, device):
        self.net, self.kind, self.source, self.convention = net, kind, source, convention
        self.device = torch.device(device)
        G = net.nets["G"]
        for name, t in [*G.named_parameters(), *G.named_buffers()]:
            if t.is_floating_point() and not torch.isfinite(t).all():  # would give blank images, not an error
                bad = int((~torch.isfinite(t)).sum())
                raise ValueError(f"{source}: the generator has non-finite parameters ({name}: {bad} of {t.numel()} "
                                 f"values NaN or infinite), a diverged or damaged {kind}; use an earlier checkpoint")
        self.z_dim = int(getattr(G, "z_dim", 0) or 0)
        self.image_size = net.cfg.image_size
        from ..data.buffers import buffer_names

        # a buffers generator also reads the appearance model's buffers (``generate`` renders them; ``apply`` cannot)
        self.buffer_names = buffer_names(getattr(net.cfg, "buffers", ""))
        self.appearance_k = getattr(net.cfg, "appearance_k", 0)
        self.buffers_supersample = getattr(net.cfg, "buffers_supersample", 1)

    @torch.no_grad()
    def generate(self, depth, mask, z=None, buffers=None):
        if buffers is None:
            return self.net.generate(depth, mask, z=z)
        return self.net.generate(depth, mask, z=z, buffers=buffers)

    def render_hint(self) -> str:
        return ("load_run(...).cfg.input_convention['render']" if self.kind == "checkpoint" else
                f"load_pretrained({self.source!r}).render")


def load_generator(model, device: str = "cpu") -> Generator:
    """``model``: a shipped model's name (``pretrained.shipped.available()``, e.g. ``study/U``), the path of an exported
    shipped-model file (``.safetensors``, ``pretrained.shipped.export``) or of a training checkpoint (any other file,
    read by ``load_run``). Errors name what was asked for: ``FileNotFoundError`` (neither a shipped name nor a file,
    listing the shipped names), ``ValueError`` (a file that cannot be read as what its name says)."""
    from ..pretrained.shipped import available, load_pretrained

    name = str(model)
    shipped = available()
    path = Path(name)
    if name in shipped or path.suffix == ".safetensors":
        if name not in shipped and not path.is_file():
            raise FileNotFoundError(f"{name}: no such file")
        gen = load_pretrained(name, device)
        return Generator(gen, "model", name, {"render": gen.render.to_dict(), "synthetic": None}, device)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: neither a shipped model ({', '.join(shipped)}) nor a checkpoint file")
    run = load_run(path, device)
    conv = run.cfg.input_convention or {}
    return Generator(run, "checkpoint", name, {"render": conv.get("render"), "synthetic": conv.get("synthetic")},
                     device)


def check_convention(gen: Generator, input_dir) -> list[str]:
    """Refuse input of another convention than ``gen``'s (``ValueError`` saying what differs); returns notes to
    print."""
    expected = gen.convention.get("render")
    config, where = folder_config(input_dir)
    found = config["render"] if config else None
    if expected is None:
        return ["the checkpoint does not record its input convention (an older run): only the size is checked"]
    if found is None:
        return [f"{input_dir}: no config.json or manifest.json of a generated set here or above: the input "
                f"convention cannot be checked; the {gen.kind} expects {expected}"]
    diff = convention_differences(expected, found, gen.kind)
    if diff:
        raise ValueError(f"{where}: the depth maps follow another convention than the {gen.kind}'s ("
                         + "; ".join(diff) + f"); generate them with the {gen.kind}'s RenderConfig "
                         f"({gen.render_hint()})")
    return distribution_notes(gen.convention.get("synthetic"), config)


def fit_size(depth: torch.Tensor, mask: torch.Tensor, size: int):
    """Resize a depth map and its mask to ``size`` (the one conversion apply makes): depth by area averaging /
    bilinear inside the face, mask by nearest neighbour; the background stays 0."""
    if depth.shape[-1] == size and depth.shape[-2] == size:
        return depth, mask
    mask = F.interpolate(mask, size=(size, size), mode="nearest-exact")
    w = F.interpolate(mask.new_ones(1, 1, *depth.shape[-2:]) * (depth > 0), size=(size, size), mode="bilinear",
                      antialias=True)
    d = F.interpolate(depth, size=(size, size), mode="bilinear", antialias=True) / w.clamp_min(1e-6)
    return d.clamp(0, 1) * mask, mask


def apply_folder(model, input_dir, output_dir, z_seed: int | None = None, device: str = "cpu",
                 progress: bool = True, on_error: str = "stop", report: dict | None = None) -> list[Path]:
    """Generate a face for every depth PNG of ``input_dir`` into ``output_dir`` (same names) with ``model`` (a
    shipped model's name, an exported shipped-model file or a training checkpoint: ``load_generator``); returns the
    written files. ``on_error="skip"`` skips unreadable PNGs, listed in ``report["skipped"]`` if a dict is given."""
    if on_error not in ("stop", "skip"):
        raise ValueError(f"on_error must be 'stop' or 'skip', got {on_error!r}")
    check_output_folder(input_dir, output_dir)
    gen = load_generator(model, device)
    size = gen.image_size
    files = sorted(Path(input_dir).glob("*.png"))
    if not files:
        raise FileNotFoundError(f"{input_dir}: no .png depth maps")
    if gen.buffer_names:
        raise ValueError(f"{model}: reads the appearance model's buffers ({', '.join(gen.buffer_names)}) beside depth, "
                         f"which a depth folder lacks; make faces with python -m frankenstein_utils.apps.generate "
                         f"--model {model}")
    notes = check_convention(gen, input_dir)
    # every map's (and mask's) mode and shape, from its header, before anything is written: a refused set leaves no
    # output
    mask_dir = Path(input_dir).parent / "mask"
    refused = {}
    for f in files:
        try:
            h = check_depth_png(f)
            if h.width != h.height:
                raise ValueError(f"{f}: depth map is {h.width}x{h.height}, not square; the {gen.kind} makes "
                                 f"{size}x{size} faces and apply does not stretch or crop: render square maps")
            if (mask_dir / f.name).exists():
                check_mask_png(mask_dir / f.name, (h.height, h.width))
        except ValueError as e:
            if on_error == "stop":
                raise
            refused[f] = f"{e}"
    g = torch.Generator().manual_seed(z_seed) if z_seed is not None else None
    z_dim = gen.z_dim
    written, skipped, resized = [], [], 0
    with FolderLock(output_dir, f"apply {model} to {input_dir}"):  # a second apply here fails, not mixes
        remove_orphan_tmp(output_dir, recursive=False)
        for f in tqdm(files, desc="apply", disable=not progress):
            z = None
            if z_dim:  # drawn for every file in order, so a skipped file does not change the others' z
                z = torch.randn(1, z_dim, generator=g) if g is not None else torch.zeros(1, z_dim)
            try:
                if f in refused:
                    raise ValueError(refused[f])
                depth = read_depth(f)
                mask_file = mask_dir / f.name
                mask = read_mask(mask_file, depth.shape[-2:]) if mask_file.exists() else (depth > 0).float()
            except ValueError as e:
                if on_error == "stop":
                    raise
                skipped.append(f"{e}")
                continue
            resized += depth.shape[-1] != size or depth.shape[-2] != size
            depth, mask = fit_size(depth, mask, size)
            img = gen.generate(depth.to(gen.device), mask.to(gen.device),
                               z=None if z is None else z.to(gen.device))[0]
            arr = ((img.cpu().clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).numpy()
            out = Path(output_dir) / f.name
            save_png(out, arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
            written.append(out)
    if resized:
        notes.append(f"{resized} depth map(s) resized to the {gen.kind}'s {size}x{size}")
    if report is not None:
        report.update(skipped=skipped, notes=notes)
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m frankenstein_utils.apps.apply",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", "--checkpoint", dest="model", required=True,
                    help="a shipped model's name (see pretrained.available(), e.g. flagship, study/U), an exported "
                         "shipped-model file (.safetensors) or a training checkpoint")
    ap.add_argument("--input", required=True, help="folder of depth-map PNGs")
    ap.add_argument("--output", required=True)
    ap.add_argument("--z-seed", type=int, default=None, help="sample z ~ N(0, I) with this seed (default z = 0)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--on-error", choices=("stop", "skip"), default="stop",
                    help="an unreadable PNG stops the run (default) or is skipped and counted")
    ap.add_argument("--debug", action="store_true", help="show the traceback of expected errors too")
    a = ap.parse_args(argv)
    report = {}
    try:
        written = apply_folder(a.model, a.input, a.output, a.z_seed, a.device, on_error=a.on_error,
                               report=report)
    except (ValueError, OSError, FolderBusyError) as e:
        if a.debug:
            traceback.print_exc()
        print(f"apply: error: {e}", file=sys.stderr)
        return 1
    for note in report["notes"]:
        print(f"note: {note}", file=sys.stderr)
    for s in report["skipped"]:
        print(f"skipped: {s}", file=sys.stderr)
    print(f"wrote {len(written)} images to {a.output}" + (f", skipped {len(report['skipped'])}" if report["skipped"]
                                                          else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
