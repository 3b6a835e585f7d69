"""Images: reading any photo as RGB or grey, tensors from PIL, the centre square, listing a folder, uint8 views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


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


def to_uint8(img) -> np.ndarray:
    img = img.detach().cpu().numpy() if torch.is_tensor(img) else np.asarray(img)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
