"""Small figure helpers for the notebooks (matplotlib), saved atomically as PNG."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from .fileio import atomic_write_bytes


def image_grid(images, ncol: int = 8, pad: int = 2, value: float = 1.0) -> np.ndarray:
    """Tile (N, H, W) or (N, C, H, W) images (tensor or array, values in [0, 1]) into one (H', W') or (H', W', C)."""
    x = images.detach().cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
    if x.ndim == 4:
        x = x.transpose(0, 2, 3, 1)
        if x.shape[-1] == 1:
            x = x[..., 0]
    n, h, w = x.shape[:3]
    nrow = (n + ncol - 1) // ncol
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad) + x.shape[3:], value, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = x[i]
    return grid


def save_figure(fig, path, dpi: int = 110) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
