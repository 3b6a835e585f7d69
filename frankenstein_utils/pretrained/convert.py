"""Converting files of the older, pickled formats (checkpoints, shipped models) to tensors-only files.

The converter runs no code from the file either. The older formats held, besides tensors and plain values, numpy's
RNG key (an array), numpy numbers in the history and paths. The file is read with a weights-only load in which the
names numpy and pathlib were pickled by point to small stand-ins here (``OLD_FORMAT_GLOBALS``): they check the
pickled description and copy the bytes into a new array, so no numpy object is ever built in place from what the file
says (numpy's own ``_reconstruct`` and ``ndarray.__setstate__`` can be steered into reading freed memory), and a
path becomes its string. Anything else in the file, code included, is refused before it runs."""

from __future__ import annotations

import io
import math
import pathlib
from pathlib import Path

import numpy as np
import torch

from ..io.files import atomic_write_bytes
from ..train.checkpoint import _first_line, load_tensors_only, read_checkpoint, to_plain

# numbers only: an object, string or structured dtype could make numpy read raw pointers
_NUMBER_TYPES = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"}


class OldDType:
    """``numpy.dtype`` as the older files pickled it (``dtype('u4', False, True)``, then its state ``(3, '<', None,
    None, None, -1, -1, 0)``): a number type and a byte order, nothing else."""

    def __init__(self, spec, align=False, copy=True):
        if not isinstance(spec, str) or spec.lstrip("<>|=") not in _NUMBER_TYPES:
            raise ValueError(f"numpy dtype {spec!r}: not a number type of the older formats")
        self.spec, self.order = spec.lstrip("<>|="), "="

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[1] in ("<", ">", "|", "=")
                and all(v is None for v in state[2:5])):
            raise ValueError(f"numpy dtype state {state!r}: not that of a number type")
        self.order = state[1]

    def numpy(self) -> np.dtype:
        d = np.dtype(self.spec)
        return d.newbyteorder(self.order) if self.order in "<>" else d


class OldArray:
    """``numpy.ndarray`` as pickled (``_reconstruct(ndarray, (0,), b'b')``, then ``(1, shape, dtype, fortran,
    bytes)``): the bytes are checked against the shape and type and copied into a new array (``.array``)."""

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise ValueError("numpy array state: not (version, shape, dtype, fortran, bytes)")
        _, shape, dtype, fortran, raw = state
        if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)
                and isinstance(dtype, OldDType) and isinstance(fortran, bool) and isinstance(raw, bytes)):
            raise ValueError("numpy array state: not (version, shape, dtype, fortran, bytes) of a number array")
        d = dtype.numpy()
        if len(raw) != math.prod(shape) * d.itemsize:
            raise ValueError(f"numpy array of shape {shape} and type {d}: {len(raw)} bytes")
        self.array = np.frombuffer(raw, dtype=d).copy().reshape(shape, order="F" if fortran else "C")


def _old_reconstruct(cls, shape, typecode):
    if cls is not OldArray:
        raise ValueError("numpy _reconstruct of something other than an array")
    return OldArray()


def _old_scalar(dtype, raw):
    """A numpy number as pickled (``scalar(dtype, bytes)``): the Python number."""
    if not (isinstance(dtype, OldDType) and isinstance(raw, bytes) and len(raw) == dtype.numpy().itemsize):
        raise ValueError("numpy scalar: not a number type and its bytes")
    return np.frombuffer(raw, dtype=dtype.numpy())[0].item()


def _old_path(*parts) -> str:
    if not all(isinstance(p, str) for p in parts):
        raise ValueError("path: parts that are not strings")
    return str(pathlib.PurePath(*parts))


# (stand-in, the name a pickle calls it by): numpy 1 wrote numpy.core..., numpy 2 writes numpy._core...; Python 3.13
# pickles paths as pathlib._local...
OLD_FORMAT_GLOBALS = [
    *[(f, f"numpy.{core}.multiarray.{name}") for f, name in ((_old_reconstruct, "_reconstruct"), (_old_scalar, "scalar"))
      for core in ("core", "_core")],
    (OldArray, "numpy.ndarray"), (OldDType, "numpy.dtype"),
    *[(_old_path, f"pathlib.{where}{c}") for where in ("", "_local.")
      for c in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath")],
]


def _arrays(obj):
    """``obj`` with each stand-in array replaced by its numpy array."""
    if isinstance(obj, OldArray):
        if not hasattr(obj, "array"):
            raise ValueError("a numpy array without its data")
        return obj.array
    if isinstance(obj, dict):
        return type(obj)((k, _arrays(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_arrays(v) for v in obj)
    return obj


def read_old_format(path):
    """A file of the older formats, read with a weights-only load that also allows numpy arrays and numbers and
    paths through the stand-ins above (building them runs nothing from the file and reads only its bytes);
    anything else is refused in one line naming the file."""
    with torch.serialization.safe_globals(OLD_FORMAT_GLOBALS):
        obj = load_tensors_only(path, "file", "the older formats hold only tensors, plain values, numpy arrays and "
                                "numbers and paths, so it was not made by this package: not converted")
    try:
        return _arrays(obj)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


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
    try:  # reads back without unpickling before it is written
        torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    except Exception as e:
        raise ValueError(f"{old}: its values do not read back without unpickling ({_first_line(e)}): not converted")
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
