"""Run the numbered notebooks headlessly with papermill, and record numbers from inside them.

``python -m frankenstein_utils.notebooks`` executes ``notebooks/0*.ipynb`` in order with the parameters of
``notebooks/params/default.yaml`` (or ``--params FILE``), writing executed copies to ``outputs/notebooks/``.
Inside a notebook, ``record(name, value)`` stores a number where ``read_records`` (and the tests) find it.
"""
from __future__ import annotations

import argparse
import difflib
import json
import sys
import time
from pathlib import Path

from .paths import REPO_ROOT

RECORD_MIME = "application/x.frankenstein+json"
NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def record(name: str, value) -> None:
    """Store ``value`` (JSON-serialisable) under ``name`` in the executed notebook's outputs."""
    from IPython.display import display

    display({RECORD_MIME: {name: value}, "text/plain": f"{name} = {value!r}"}, raw=True)


def read_records(path) -> dict:
    """All values recorded with ``record`` in an executed notebook."""
    nb = json.loads(Path(path).read_text())
    out = {}
    for cell in nb.get("cells", []):
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            if RECORD_MIME in data:
                out.update(data[RECORD_MIME])
    return out


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def notebook_parameters(nb_path) -> dict:
    """The parameters cell of a notebook: name -> default value (the literal, or None if it is not one)."""
    import ast

    import papermill as pm

    out = {}
    for name, p in pm.inspect_notebook(str(nb_path)).items():
        try:
            out[name] = ast.literal_eval(p["default"])
        except (ValueError, SyntaxError):
            out[name] = None
    return out


def _kind(v):
    if isinstance(v, bool) or v is None:
        return type(v)
    if isinstance(v, (int, float)):
        return float  # an int where a float is expected is fine, and the reverse (papermill writes them as typed)
    return type(v)


def check_parameters(nb_path, params: dict, known: dict | None = None) -> None:
    """Fail on a parameter the notebook's ``parameters`` cell does not define (papermill only warns), or one whose
    type differs from the default's (nanoGPT's configurator habit)."""
    known = notebook_parameters(nb_path) if known is None else known
    unknown = set(params) - set(known)
    if unknown:
        hints = {k: difflib.get_close_matches(k, list(known), 1) for k in unknown}
        hint = "; ".join(f"{k!r}: did you mean {h[0]!r}?" for k, h in sorted(hints.items()) if h)
        raise ValueError(f"{nb_path}: unknown parameters {sorted(unknown)}"
                         + (f" ({hint})" if hint else "") + f"; the parameters cell defines {sorted(known)}")
    for k, v in params.items():
        d = known[k]
        if d is not None and v is not None and _kind(v) is not _kind(d):
            raise ValueError(f"{nb_path}: parameter {k} = {v!r} is a {type(v).__name__}, the notebook's default "
                             f"{d!r} is a {type(d).__name__}")


def plan_runs(cfg: dict, only=None, params_path="params") -> list[tuple[Path, dict]]:
    """(notebook, parameters) for every notebook to run, everything checked before anything runs: section names
    (a misspelled one would otherwise run that notebook at its defaults), ``only``, and every key and type of every
    section against the notebook's parameters cell."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{params_path}: expected a mapping of sections, got {type(cfg).__name__}")
    nbs = {nb.stem: nb for nb in notebook_paths()}
    for name, section in ((n, cfg[n]) for n in cfg):
        if name != "common" and name not in nbs:
            close = difflib.get_close_matches(str(name), list(nbs), 1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{params_path}: unknown section {name!r}{hint}; sections: common, {', '.join(nbs)}")
        if not isinstance(section or {}, dict):
            raise ValueError(f"{params_path}: section {name!r} must be a mapping, got {type(section).__name__}")
    for stem in only or []:
        if stem not in nbs:
            raise ValueError(f"--only {stem!r}: no such notebook; choose from {', '.join(nbs)}")
    plan = []
    for stem, nb in nbs.items():
        if only and stem not in only:
            continue
        params = {**(cfg.get("common") or {}), **(cfg.get(stem) or {})}
        try:
            check_parameters(nb, params)
        except ValueError as e:
            raise ValueError(f"{params_path}: {e}") from None
        plan.append((nb, params))
    return plan


def execute(nb_path, out_path, params: dict | None = None, timeout: int | None = None):
    """Execute one notebook with papermill in the repository root; returns its records."""
    import papermill as pm

    params = params or {}
    check_parameters(nb_path, params)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(nb_path), str(out_path), parameters=params, cwd=str(REPO_ROOT), kernel_name="python3",
                        progress_bar=False, execution_timeout=timeout)
    return read_records(out_path)


def load_params(path) -> dict:
    import yaml

    try:
        with open(path) as f:
            return yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})".replace("\n", " ")) from e


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(NOTEBOOK_DIR / "params" / "default.yaml"),
                    help="YAML: {common: {...}, <notebook stem>: {...}}")
    ap.add_argument("--out", default=str(REPO_ROOT / "outputs" / "notebooks"))
    ap.add_argument("--only", nargs="*", help="notebook stems to run (default: all, in order)")
    ap.add_argument("--debug", action="store_true", help="show the traceback of expected errors too")
    a = ap.parse_args(argv)
    try:
        plan = plan_runs(load_params(a.params), a.only, a.params)
    except (ValueError, OSError) as e:  # nothing has run: say what is wrong in one line
        if a.debug:
            raise
        print(f"notebooks: error: {e}", file=sys.stderr)
        return 2
    from .fileio import atomic_write_json

    summary_path = Path(a.out) / "summary.json"
    for nb, params in plan:
        t0 = time.time()
        print(f"[{time.strftime('%H:%M:%S')}] running {nb.name} with {params}", flush=True)
        records = execute(nb, Path(a.out) / nb.name, params)
        # merged into what earlier runs recorded (``--only`` reruns one notebook without losing the others)
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        summary[nb.stem] = {"seconds": round(time.time() - t0, 1), "params": params, "records": records}
        atomic_write_json(summary_path, summary)
        print(f"  done in {time.time() - t0:.0f} s: {records}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
