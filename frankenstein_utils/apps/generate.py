"""Labelled synthetic faces: ``python -m frankenstein_utils.apps.generate --n N --out DIR``.

Each face is drawn from the face model (identity ~ N(0, I) over 15 components; pose and expression from the fitted
training photos, or a pose jitter) and the appearance model (``--appearance from-shape`` or ``free``), rendered in the
photos' framing, and turned into an image by ``--model``: by default the shipped default generator
(``pretrained.shipped.default_name()``: the buffers generator, which reads depth and the appearance render's buffers),
``raw`` (the appearance render over the mean training photo, no network), any shipped model
(``pretrained.shipped.available()``, e.g. ``study/U``), an exported shipped-model file or a training checkpoint whose
inputs were rendered in that framing (``apps.apply.load_generator``). A buffers generator sees the first k appearance
components it was trained with (the ``appearance`` PNGs and ``meta.npz`` then hold those k). Layout of ``DIR``::

    manifest.json        configuration, model, file layout, counts, the data terms
    meta.npz             per face: coeffs (n, 15), expressions (n, E), poses (n, 6), appearance (n, K) in sd units,
                         landmarks (n, 68, 2) in pixels of the images (x right, y down, pixel i covers [i, i + 1))
    image/000000.png     the face, 8-bit RGB
    depth/000000.png     16-bit depth (near = bright, background 0), as depth sets are written
    mask/000000.png      8-bit face mask
    appearance/000000.png  the appearance render (colour buffer, black outside the mask)

Same seed and settings -> the same bytes; an interrupted run resumes (finished files kept); a folder lock refuses a
second writer; a folder holding another configuration is refused. ``GeneratedFaceDataset`` reads a folder back.

Speed (bench/bench_generate.py): faces are rendered with one torch thread while a second thread encodes and writes
the previous blocks' PNGs, so two cores work without OpenMP's threads waiting on each other (on a shared machine
two-thread torch ops were several times slower per face than one thread); the bytes do not depend on the caller's
thread count. PNGs are zlib level 1 (lossless, ~8 % bigger than level 6, half the encoding time).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..data.buffers import render_buffers
from ..data.depth_sets import DEPTH_SCALE, DepthSetConfig, sample_face_params
from ..facemodel.appearance import MODES, TERMS, load_appearance
from ..facemodel.appearance_render import appearance_coefficients, composite, model_landmarks, render_face
from ..io.draws import normal
from ..io.files import (atomic_savez, atomic_write_bytes, atomic_write_json, holds_folder_lock, load_npz, load_png,
                        png_is_complete)
from ..render.rasterize import PoseJitter, RenderConfig

RAW = "raw"
BLOCK = 16  # faces rendered together: fixed blocks keep float round-off, and so the bytes, the same on resume
KINDS = ("image", "depth", "mask", "appearance")
WRITE_ORDER = ("appearance", "depth", "mask", "image")  # image last: it marks the face done
PNG_LEVEL = 1  # zlib level: lossless; level 6 (Pillow's default) takes twice the time for ~8 % smaller files
IN_FLIGHT = 4  # blocks rendered ahead of the writer thread at most (bounds the memory held)


def _names(i: int) -> dict:
    return {k: f"{k}/{i:06d}.png" for k in KINDS}


def _to8(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8 (rounded to nearest)."""
    return (np.clip(x.numpy().transpose(0, 2, 3, 1), 0, 1) * 255 + 0.5).astype(np.uint8)


def _png(array: np.ndarray) -> bytes:
    """``io.files.png_bytes`` at zlib level ``PNG_LEVEL``: 2-D uint8 / uint16 (stays 16-bit) or (H, W, 3) uint8."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def _write_faces(out: Path, faces: list, stop: threading.Event) -> None:
    """Encode and write ``faces`` = [(index, {kind: array})] (the writer thread's work); stops before the next face
    once ``stop`` is set, and sets it on an error (no later block is then started)."""
    try:
        for i, arrays in faces:
            if stop.is_set():
                return
            names = _names(i)
            for kind in WRITE_ORDER:
                # no fsync per PNG: a resume re-checks that each decodes to the end (``done``)
                atomic_write_bytes(out / names[kind], _png(arrays[kind]), durable=False)
    except BaseException:
        stop.set()
        raise


def load_model(name: str):
    """``raw`` -> None (the appearance render is the image); a shipped model's name, an exported shipped-model file
    or a training checkpoint -> ``apps.apply.Generator``."""
    if name == RAW:
        return None
    from .apply import load_generator

    return load_generator(name)


class _OneThread:
    """torch at one intra-op thread inside the ``with`` block (the count is restored after): the render and the
    writer thread then use two cores without OpenMP threads spinning on a busy core, and the bytes cannot depend on
    the machine's thread count."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


@holds_folder_lock("out", "generating faces")
def generate_faces(n: int, out, seed: int = 0, model_name: str = RAW, appearance: str = "from-shape",
                   pose: str = "fitted", appearance_path=None, progress: bool = True) -> Path:
    """Write ``n`` labelled faces into ``out`` (see the module docstring); returns the folder. Computes with one
    torch thread (the caller's count is restored afterwards) and writes the PNGs from a second thread."""
    with _OneThread():
        return _generate_faces(n, out, seed, model_name, appearance, pose, appearance_path, progress)


def _generate_faces(n, out, seed, model_name, appearance, pose, appearance_path, progress) -> Path:
    from ..facemodel.model import load_face_model

    if appearance not in MODES:
        raise ValueError(f"--appearance {appearance!r}; choose one of {MODES}")
    if pose not in ("fitted", "frontal"):
        raise ValueError(f"--pose {pose!r}; choose fitted or frontal")
    out = Path(out)
    app = load_appearance(appearance_path)
    render = app.render_config()
    gen = load_model(model_name)
    if gen is not None:
        expects = gen.convention.get("render")
        if expects is None:
            raise ValueError(f"{model_name}: the checkpoint does not record the render of its inputs (an older run); "
                             f"generate needs a model trained on inputs rendered with {render.to_dict()}")
        if RenderConfig.from_dict(expects).to_dict() != render.to_dict():
            raise ValueError(f"model {model_name!r} expects inputs rendered with {expects}, the appearance "
                             f"model's framing is {render.to_dict()}; they must match")
        if gen.buffer_names and gen.appearance_k > app.n_components:
            raise ValueError(f"model {model_name!r} reads {gen.appearance_k} appearance components; the appearance "
                             f"model has {app.n_components}")
    face_model = load_face_model()
    table = app.fitted_face_params() if pose == "fitted" else None
    dcfg = DepthSetConfig(n=n, seed=seed, render=render, pose=PoseJitter(),
                          pose_source="fitted" if table is not None else "jitter",
                          expression_source="fitted" if table is not None else "neutral",
                          table=None if table is None else table.describe())
    manifest = {"format": "frankenstein generated faces 1", "n": n, "seed": seed, "model": model_name,
                "appearance": appearance, "pose": pose, "faces": dcfg.to_dict(),
                "appearance_model": {"components": app.n_components, "light": app.config.light,
                                     "region": app.config.region},
                **({"model_reads": {"buffers": gen.buffer_names, "appearance_components": gen.appearance_k}}
                   if gen is not None and gen.buffer_names else {}),
                "files": {k: f"{k}/NNNNNN.png" for k in KINDS}, "meta": "meta.npz", "terms": TERMS,
                "landmarks": "68 iBUG points of the face model (ICT landmark vertices) projected like the mesh, "
                             "pixels of the images (x right, y down); points 0-16 are fixed jaw vertices"}
    mpath = out / "manifest.json"
    if mpath.exists():
        old = json.loads(mpath.read_text())
        if old != json.loads(json.dumps(manifest)):
            raise ValueError(f"{mpath}: folder holds faces made with another configuration; use a new --out")
    coeffs, poses, expressions = sample_face_params(face_model, dcfg, table)
    g = torch.Generator().manual_seed(seed + 1)
    z = normal(n, app.n_components, generator=g)
    a = appearance_coefficients(app, z, coeffs, appearance)
    lights = app.sample_light(n, generator=g)
    zg = None if gen is None or not gen.z_dim else normal(n, gen.z_dim, generator=g)
    if not mpath.exists():  # the manifest is written after meta.npz: it marks meta.npz complete
        lms = model_landmarks(face_model, coeffs, render, poses, expressions).astype(np.float32)
        atomic_savez(out / "meta.npz", coeffs=coeffs.numpy(), expressions=expressions.numpy(), poses=poses.numpy(),
                     appearance=(a[:, :gen.appearance_k] if gen is not None and gen.buffer_names else a).numpy(),
                     landmarks=lms)
        atomic_write_json(mpath, manifest)

    def done(i):
        return all((out / p).exists() and png_is_complete(out / p) for p in _names(i).values())

    def render_block(block, todo):
        """The PNG arrays of faces ``todo`` of ``block``: the whole block is rendered (fixed round-off)."""
        sl = slice(block.start, block.stop)
        reads = [] if gen is None else gen.buffer_names
        # a buffers generator sees the first k appearance components, as it was trained (and the files show them)
        a_sl = a[sl, :gen.appearance_k] if reads else a[sl]
        z = None if zg is None else zg[sl]
        if reads:  # what the network reads, rendered and stored as in training
            buf = render_buffers(face_model, app, coeffs[sl], a_sl, render, poses[sl], expressions[sl],
                                 None if lights is None else lights[sl], reads, gen.buffers_supersample)
            img = (gen.generate(buf["depth"], buf["mask"], z=z, buffers=buf["buffers"]) + 1) / 2
        else:
            buf = render_face(face_model, app, coeffs[sl], a_sl, render, poses[sl], expressions[sl],
                              None if lights is None else lights[sl], normals=False)
            if gen is None:  # the raw render
                img = (composite(buf["colour"], buf["mask"], app.background) + 1) / 2
            else:  # a depth-only generator
                img = ((gen.generate(buf["depth"], buf["mask"], z=z) + 1) / 2).expand(-1, 3, -1, -1)
        arrays = {"image": _to8(img), "appearance": _to8(buf["colour"] * buf["mask"]),
                  "depth": torch.round(buf["depth"][:, 0] * DEPTH_SCALE).to(torch.int32).numpy().astype(np.uint16),
                  "mask": buf["mask"][:, 0].numpy().astype(np.uint8) * 255}
        return [(i, {k: v[i - block.start] for k, v in arrays.items()}) for i in todo]

    pending = deque()  # (future or None, faces in the block), oldest first
    writer = ThreadPoolExecutor(1, thread_name_prefix="generate-writer")
    stop = threading.Event()
    try:
        with tqdm(total=n, desc="faces", unit="face", disable=not progress) as bar:
            for s in range(0, n, BLOCK):
                block = range(s, min(s + BLOCK, n))
                todo = [i for i in block if not done(i)]
                pending.append((writer.submit(_write_faces, out, render_block(block, todo), stop) if todo else None,
                                len(block)))
                # the bar counts written faces; a writer error surfaces here
                while pending and (len(pending) > IN_FLIGHT or pending[0][0] is None or pending[0][0].done()):
                    f, k = pending.popleft()
                    if f is not None:
                        f.result()
                    bar.update(k)
            while pending:
                f, k = pending.popleft()
                if f is not None:
                    f.result()
                bar.update(k)
    finally:  # nothing may write into the folder once its lock is released
        stop.set()  # on an error or interrupt: the writer finishes its current face and starts nothing more
        writer.shutdown(wait=True, cancel_futures=True)
    return out


class GeneratedFaceDataset(Dataset):
    """A ``generate`` folder as a torch Dataset: items dict(image (3, S, S) in [-1, 1], depth, mask (1, S, S) in
    [0, 1], appearance_render (3, S, S) in [0, 1], landmarks (68, 2) pixels, coeffs, expressions, pose, appearance,
    index)."""

    def __init__(self, root):
        self.root = Path(root)
        mpath = self.root / "manifest.json"
        if not mpath.exists():
            raise FileNotFoundError(f"{mpath}: not a generated face folder (run python -m frankenstein_utils.apps.generate)")
        self.manifest = json.loads(mpath.read_text())
        self.meta = {k: torch.from_numpy(np.asarray(v)) for k, v in load_npz(self.root / "meta.npz").items()}
        S = self.manifest["faces"]["render"]["resolution"]
        self.size = (S, S)
        missing = [i for i in range(self.manifest["n"]) if not (self.root / _names(i)["image"]).exists()]
        if missing:
            raise FileNotFoundError(f"{self.root}: {len(missing)} of {self.manifest['n']} faces missing (first "
                                    f"{_names(missing[0])['image']}); run generate again to finish")

    def __len__(self):
        return self.manifest["n"]

    def __getitem__(self, i):
        names = _names(i)
        img = load_png(self.root / names["image"], self.size).astype(np.float32)
        app = load_png(self.root / names["appearance"], self.size).astype(np.float32)
        depth = load_png(self.root / names["depth"], self.size).astype(np.float32) / DEPTH_SCALE
        mask = load_png(self.root / names["mask"], self.size) > 127
        return {"image": torch.from_numpy(img).permute(2, 0, 1) / 127.5 - 1,
                "appearance_render": torch.from_numpy(app).permute(2, 0, 1) / 255.0,
                "depth": torch.from_numpy(depth)[None], "mask": torch.from_numpy(mask.astype(np.float32))[None],
                "landmarks": self.meta["landmarks"][i], "coeffs": self.meta["coeffs"][i],
                "expressions": self.meta["expressions"][i], "pose": self.meta["poses"][i],
                "appearance": self.meta["appearance"][i], "index": i}


def main(argv=None):
    from ..pretrained.shipped import available, default_name

    ap = argparse.ArgumentParser(prog="python -m frankenstein_utils.apps.generate", description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, required=True, help="number of faces")
    ap.add_argument("--out", required=True, help="output folder (resumed if it holds the same configuration)")
    ap.add_argument("--model", default=default_name(),
                    help=f"a shipped model ({', '.join(available())}; default {default_name()}), '{RAW}' (the "
                         f"appearance render, no network), an exported shipped-model file or a training checkpoint")
    ap.add_argument("--appearance", choices=MODES, default="from-shape")
    ap.add_argument("--pose", choices=("fitted", "frontal"), default="fitted",
                    help="pose and expression from the fitted training photos (default), or frontal and neutral")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--appearance-model", help="an appearance model file (default: the shipped one)")
    a = ap.parse_args(argv)
    if a.n < 1:
        print(f"generate: --n must be >= 1, got {a.n}", file=sys.stderr)
        return 2
    try:
        out = generate_faces(a.n, a.out, a.seed, a.model, a.appearance, a.pose, a.appearance_model)
    except (ValueError, OSError, RuntimeError) as e:  # FolderBusyError is a RuntimeError
        print(f"generate: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.n} faces to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
