"""Checkpoint files: read tensors-only (no code runs), plain values, RNG states, and the refusal of pickled ones."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from ..objectives.base import generator_input  # noqa: F401  (public names of this module before the split)

# ---- reading files without running code in them ---------------------------------------------------------------
CONVERT = "python -m frankenstein_utils.pretrained.convert"  # the command that converts a pickled file


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def load_tensors_only(path, what: str, hint: str, map_location="cpu"):
    """``torch.load(path, weights_only=True)``: tensors and plain Python values only, so nothing inside the file runs.
    A file that needs unpickling (an older format, or code hidden in it) is refused with one line that names it, the
    Python objects it needs and ``hint``; a damaged file with one line naming it. ``FileNotFoundError`` passes."""
    import pickle

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise ValueError(f"{path}: not a readable {what} ({type(e).__name__}: {_first_line(e)})") from e
        try:
            allowed = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}"
                       for g in torch.serialization.get_safe_globals()}  # those a caller allowed are not the reason
            names = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(path) if n not in allowed]
            needs = f" ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})" if names else ""
        except Exception:  # not a zip checkpoint: a bare pickle
            needs = ""
        raise ValueError(f"{path}: a {what} holding Python objects that only unpickling reads{needs}, and unpickling "
                         f"runs any code inside the file: refused; {hint}") from e
    except Exception as e:  # torch raises several types for damaged files
        raise ValueError(f"{path}: not a readable {what} ({type(e).__name__}: {_first_line(e)})") from e


def read_checkpoint(path, map_location="cpu") -> dict:
    """A training checkpoint (``Trainer.state``), read without unpickling (``load_tensors_only``); one of the older,
    pickled format is refused with the command that converts it."""
    ck = load_tensors_only(path, "checkpoint", f"an older checkpoint of this package? Convert it: "
                           f"{CONVERT} {path} NEW.pt", map_location)
    if isinstance(ck, dict) and "G" in ck and "render" in ck and "nets" not in ck:
        raise ValueError(f"{path}: a shipped model of the older format, not a training checkpoint: load it with "
                         f"pretrained.load_pretrained({str(path)!r}), or convert it: {CONVERT} {path} "
                         f"{Path(path).with_suffix('.safetensors')}")
    if not isinstance(ck, dict) or "config" not in ck or "nets" not in ck:
        raise ValueError(f"{path}: not a training checkpoint (no config and networks)")
    return ck


def to_plain(obj, where: str = "checkpoint"):
    """``obj`` with numpy numbers as Python numbers and paths as strings; anything else that is not a tensor or a
    plain value (dict, list, tuple, str, int, float, bool, None) raises ``TypeError`` naming where it is: what a
    weights-only load reads back. Containers with nothing to change are returned as they are (a state dict keeps
    its ``_metadata``)."""
    if isinstance(obj, np.generic):  # before the plain types: numpy's float64 is a subclass of float
        return obj.item()
    if obj is None or isinstance(obj, (str, bool, int, float, torch.Tensor, torch.dtype, torch.Size)):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        new = {k: to_plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
        if all(new[k] is v for k, v in obj.items()) and type(obj) in (dict, OrderedDict):
            return obj
        return OrderedDict(new) if isinstance(obj, OrderedDict) else new
    if isinstance(obj, (list, tuple)):
        new = [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if all(a is b for a, b in zip(new, obj)) and type(obj) in (list, tuple):
            return obj
        return new if isinstance(obj, list) else tuple(new)
    raise TypeError(f"{where}: {type(obj).__name__} is neither a tensor nor a plain value (a weights-only load "
                    f"could not read it back)")


def numpy_rng_state() -> dict:
    """numpy's global RNG state as a tensor and plain numbers."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    if name != "MT19937":
        raise ValueError(f"numpy RNG {name!r}: only MT19937 is stored")
    return {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached)}


def set_numpy_rng_state(st: dict) -> None:
    np.random.set_state(("MT19937", st["key"].cpu().numpy().astype(np.uint32), st["pos"], st["has_gauss"],
                         st["cached_gaussian"]))
