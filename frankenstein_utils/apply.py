"""Turn every depth-map PNG in a folder into a face image with a trained checkpoint (the original `test` script).

    python -m frankenstein_utils.apply --checkpoint outputs/experiments/.../checkpoint.pt --input DIR --output DIR

Depth PNGs may be 16-bit (as ``generate_depth_dataset`` writes them) or 8-bit; near = bright, background 0. The mask
is taken from ``DIR/../mask/<name>`` when present, else depth > 0. Each must have the checkpoint's image size.
An appearance-conditioned or noise generator uses z = 0, or z ~ N(0, I) with ``--z-seed``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .fileio import load_png, save_png
from .training import load_run


def read_depth(path, size: int) -> torch.Tensor:
    a = load_png(path)
    if a.ndim != 2:
        raise ValueError(f"{path}: depth map must be single-channel, got shape {a.shape}")
    if a.shape != (size, size):
        raise ValueError(f"{path}: depth map is {a.shape[1]}x{a.shape[0]}, the checkpoint expects {size}x{size}")
    scale = 65535.0 if a.dtype == np.uint16 else 255.0
    return torch.from_numpy(a.astype(np.float32) / scale)[None, None]


def apply_folder(checkpoint, input_dir, output_dir, z_seed: int | None = None, device: str = "cpu",
                 progress: bool = True) -> list[Path]:
    run = load_run(checkpoint, device)
    size = run.cfg.image_size
    files = sorted(Path(input_dir).glob("*.png"))
    if not files:
        raise FileNotFoundError(f"{input_dir}: no .png depth maps")
    g = torch.Generator().manual_seed(z_seed) if z_seed is not None else None
    z_dim = run.nets["G"].z_dim
    written = []
    for f in tqdm(files, desc="apply", disable=not progress):
        depth = read_depth(f, size)
        mask_file = Path(input_dir).parent / "mask" / f.name
        mask = (torch.from_numpy(load_png(mask_file, (size, size)) > 127).float()[None, None]
                if mask_file.exists() else (depth > 0).float())
        z = None
        if z_dim:
            z = torch.randn(1, z_dim, generator=g) if g is not None else torch.zeros(1, z_dim)
        img = run.generate(depth.to(run.device), mask.to(run.device), z=None if z is None else z.to(run.device))[0]
        arr = ((img.cpu().clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).numpy()
        out = Path(output_dir) / f.name
        save_png(out, arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
        written.append(out)
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--input", required=True, help="folder of depth-map PNGs")
    ap.add_argument("--output", required=True)
    ap.add_argument("--z-seed", type=int, default=None, help="sample z ~ N(0, I) with this seed (default z = 0)")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    written = apply_folder(a.checkpoint, a.input, a.output, a.z_seed, a.device)
    print(f"wrote {len(written)} images to {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
