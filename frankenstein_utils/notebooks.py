"""Run the numbered notebooks headlessly with papermill, and record numbers from inside them.

``python -m frankenstein_utils.notebooks`` executes ``notebooks/0*.ipynb`` in order with the parameters of
``notebooks/params/default.yaml`` (or ``--params FILE``), writing executed copies to ``outputs/notebooks/``.
Inside a notebook, ``record(name, value)`` stores a number where ``read_records`` (and the tests) find it.
"""
from __future__ import annotations

import argparse
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


def check_parameters(nb_path, params: dict) -> None:
    """Fail on a parameter the notebook's ``parameters`` cell does not define (papermill only warns)."""
    import papermill as pm

    known = set(pm.inspect_notebook(str(nb_path)))
    unknown = set(params) - known
    if unknown:
        raise ValueError(f"{nb_path}: unknown parameters {sorted(unknown)}; the parameters cell defines {sorted(known)}")


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

    with open(path) as f:
        return yaml.safe_load(f) or {}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(NOTEBOOK_DIR / "params" / "default.yaml"),
                    help="YAML: {common: {...}, <notebook stem>: {...}}")
    ap.add_argument("--out", default=str(REPO_ROOT / "outputs" / "notebooks"))
    ap.add_argument("--only", nargs="*", help="notebook stems to run (default: all, in order)")
    a = ap.parse_args(argv)
    cfg = load_params(a.params)
    summary = {}
    for nb in notebook_paths():
        if a.only and nb.stem not in a.only:
            continue
        params = {**cfg.get("common", {}), **cfg.get(nb.stem, {})}
        t0 = time.time()
        print(f"[{time.strftime('%H:%M:%S')}] running {nb.name} with {params}", flush=True)
        records = execute(nb, Path(a.out) / nb.name, params)
        summary[nb.stem] = {"seconds": round(time.time() - t0, 1), "records": records}
        print(f"  done in {time.time() - t0:.0f} s: {records}", flush=True)
    from .fileio import atomic_write_json

    atomic_write_json(Path(a.out) / "summary.json", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
