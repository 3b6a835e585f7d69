"""Atomic file writes: a crash mid-write never leaves a half-written file under the final name."""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file in the same folder, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_savez(path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def png_bytes(array: np.ndarray) -> bytes:
    """Encode a 2-D uint8 or uint16 array (or HxWx3 uint8) as PNG; uint16 stays 16-bit."""
    img = Image.fromarray(np.ascontiguousarray(array))  # uint16 -> mode "I;16", a 16-bit PNG
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def save_png(path, array: np.ndarray) -> None:
    atomic_write_bytes(path, png_bytes(array))


def load_png(path, expect_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a PNG as a numpy array (uint16 stays uint16); errors name the file."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            arr = np.array(img)
    except FileNotFoundError:
        raise
    except Exception as e:  # Pillow raises several types for corrupt files
        raise ValueError(f"{path}: cannot read image ({e})") from e
    if expect_size is not None and arr.shape[:2] != tuple(expect_size):
        raise ValueError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]}, expected {expect_size[1]}x{expect_size[0]}")
    return arr
