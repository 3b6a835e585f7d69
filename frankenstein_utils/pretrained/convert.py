"""Converting files of the older, pickled formats (checkpoints, shipped models) to tensors-only files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from ..io.files import atomic_write_bytes
from ..train.checkpoint import _first_line, read_checkpoint, to_plain

UNPICKLE_WARNING = ("WARNING: converting unpickles {old}, which runs any code inside it: convert only files you made "
                    "or trust.")


def convert(old, new) -> str:
    """Rewrite a file of the older, pickled formats so that it is read without unpickling: a training checkpoint
    (numpy's RNG state and every other value as tensors and plain values; ``new``: a ``.pt`` file) or a shipped model
    (``pretrained.shipped.export``'s old ``.pt``; ``new``: a ``.safetensors`` file, its SHA-256 recorded beside it).
    Reading ``old`` UNPICKLES it, which runs any code inside it: only for files the user trusts (the command says so
    each time). Returns what was written."""
    import sys

    old, new = Path(old), Path(new)
    print(UNPICKLE_WARNING.format(old=old), file=sys.stderr)
    obj = torch.load(old, map_location="cpu", weights_only=False)
    if isinstance(obj, dict) and "G" in obj and "render" in obj and "card" in obj:  # a shipped model
        from .shipped import write_shipped

        if new.suffix != ".safetensors":
            raise ValueError(f"{new}: a shipped model converts to a .safetensors file")
        size = write_shipped(new, obj)
        return f"{new}: shipped model, safetensors ({size:,} bytes; SHA-256 recorded in its folder)"
    if not (isinstance(obj, dict) and "config" in obj and "nets" in obj):
        raise ValueError(f"{old}: neither a training checkpoint nor a shipped model")
    rng = obj.get("rng", {})
    if isinstance(rng.get("numpy"), tuple):  # np.random.get_state()
        name, key, pos, has_gauss, cached = rng["numpy"]
        rng["numpy"] = {"key": torch.from_numpy(np.asarray(key).astype(np.int64)), "pos": int(pos),
                        "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    buf = io.BytesIO()
    torch.save(to_plain(obj, str(old)), buf)
    atomic_write_bytes(new, buf.getvalue())
    read_checkpoint(new)  # reads back without unpickling
    return f"{new}: checkpoint at step {obj.get('step')}, read with weights_only=True"



def main(argv=None) -> int:
    """python -m frankenstein_utils.pretrained.convert OLD NEW"""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m frankenstein_utils.pretrained.convert",
                                 description="Convert a checkpoint or shipped model of the older, pickled format so "
                                             "that it is read without running code. Reading OLD unpickles it, which "
                                             "runs any code inside it: convert only files you made or trust.")
    ap.add_argument("old", help="the file of the older, pickled format")
    ap.add_argument("new", help="what to write: a .pt checkpoint, or a .safetensors shipped model")
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 3 and argv[0] == "convert":  # the old command: python -m frankenstein_utils.training convert OLD NEW
        argv = argv[1:]
    a = ap.parse_args(argv)
    try:
        print(convert(a.old, a.new))
    except (ValueError, OSError) as e:
        print(f"error: {_first_line(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
