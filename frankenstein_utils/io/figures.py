"""Small figure helpers for the notebooks (matplotlib), saved atomically as PNG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from .files import atomic_write_bytes


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


def smooth(values, window: int = 25) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if len(v) < window:
        return v
    k = np.ones(window) / window
    return np.convolve(v, k, mode="valid")


def plot_loss_curves(histories: dict, keys=None, window: int = 25):
    """One subplot per loss name; one line per run. ``histories``: run name -> list of {step, loss...} dicts."""
    import matplotlib.pyplot as plt

    names = keys or sorted({k for h in histories.values() for row in h for k in row if k != "step"})
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.2), squeeze=False)
    for ax, key in zip(axes[0], names):
        for run, h in histories.items():
            ys = [row[key] for row in h if key in row]
            if ys:
                s = smooth(ys, window)
                ax.plot(np.arange(len(s)) + (len(ys) - len(s)) + 1, s, label=run)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def markdown_table(rows: list[dict], columns: list[str] | None = None, digits: int = 3) -> str:
    """A GitHub markdown table of dicts (floats rounded)."""
    columns = columns or list(rows[0])
    fmt = lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def plot_metric_curves(curves: dict, keys=("face_fd", "nme", "detection"), log_keys=("kid",)):
    """One subplot per metric, one line per model: ``curves`` = model -> [{step, metric...}, ...] (a budget study's
    scored segments, e.g. the shipped study models' cards). Metrics in ``log_keys`` on a log axis where every value
    is positive (KID spans three decades from real-looking to broken)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    styles = ["-", "--", ":", "-."]
    for ax, key in zip(axes[0], keys):
        for i, (name, pts) in enumerate(curves.items()):
            ax.plot([p["step"] for p in pts], [p[key] for p in pts], styles[(i // 10) % 4], marker=".", label=name)
        ax.set_title(key)
        ax.set_xlabel("step")
        if key in log_keys and all(p[key] > 0 for pts in curves.values() for p in pts):
            ax.set_yscale("log")
    axes[0][-1].legend(fontsize=6, ncol=2, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return fig
