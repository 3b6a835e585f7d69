"""Converting files of the older, pickled formats (checkpoints, shipped models) to tensors-only files.

The converter runs no code from the file either: the older formats held, besides tensors and plain values, numpy's RNG
key (an array), numpy numbers in the history and paths, and the file is read with a weights-only load that allows
exactly those (``OLD_FORMAT_GLOBALS``); anything else in it, code included, is refused before it runs."""

from __future__ import annotations

import io
import pathlib
from pathlib import Path

import numpy as np
import torch

from ..io.files import atomic_write_bytes
from ..train.checkpoint import _first_line, load_tensors_only, read_checkpoint, to_plain

try:
    from numpy._core import multiarray
except ImportError:  # numpy 1
    from numpy.core import multiarray

_NUMBER_DTYPES = [getattr(np.dtypes, n) for n in np.dtypes.__all__
                  if n not in ("ObjectDType", "StrDType", "BytesDType", "VoidDType", "StringDType")]
# (object, the path a pickle names it by): numpy 1 wrote numpy.core..., numpy 2 writes numpy._core...
OLD_FORMAT_GLOBALS = [
    *[(f, f"numpy.{core}.multiarray.{f.__name__}") for f in (multiarray._reconstruct, multiarray.scalar)
      for core in ("core", "_core")],
    (np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype"),
    *[(t, f"numpy.dtypes.{t.__name__}") for t in _NUMBER_DTYPES],
    *[(c, f"pathlib.{c.__name__}") for c in (pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath,
                                             pathlib.PureWindowsPath)],
]


def read_old_format(path):
    """A file of the older formats, read with a weights-only load that also allows numpy arrays, numpy numbers and
    paths (building them runs nothing from the file); anything else is refused in one line naming the file."""
    with torch.serialization.safe_globals(OLD_FORMAT_GLOBALS):
        return load_tensors_only(path, "file", "the older formats hold only tensors, plain values, numpy arrays and "
                                 "numbers and paths, so it was not made by this package: not converted")


def convert(old, new) -> str:
    """Rewrite a file of the older, pickled formats so that it is read without unpickling: a training checkpoint
    (numpy's RNG state and every other value as tensors and plain values; ``new``: a ``.pt`` file) or a shipped model
    (``pretrained.shipped.export``'s old ``.pt``; ``new``: a ``.safetensors`` file, its SHA-256 recorded beside it).
    ``old`` is read without running code inside it (``read_old_format``). Returns what was written."""
    old, new = Path(old), Path(new)
    obj = read_old_format(old)
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
    try:
        plain = to_plain(obj, str(old))
    except TypeError as e:
        raise ValueError(str(e)) from e
    buf = io.BytesIO()
    torch.save(plain, buf)
    torch.load(io.BytesIO(buf.getvalue()), weights_only=True)  # reads back without unpickling before it is written
    atomic_write_bytes(new, buf.getvalue())
    read_checkpoint(new)
    return f"{new}: checkpoint at step {obj.get('step')}, read with weights_only=True"



def main(argv=None) -> int:
    """python -m frankenstein_utils.pretrained.convert OLD NEW"""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m frankenstein_utils.pretrained.convert",
                                 description="Convert a checkpoint or shipped model of the older, pickled format so "
                                             "that the package reads it. OLD is read without running code inside "
                                             "it: a file holding more than the older formats did is refused.")
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
