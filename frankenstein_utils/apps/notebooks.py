"""Run the numbered notebooks headlessly with papermill, and record numbers from inside them.

``python -m frankenstein_utils.apps.notebooks`` executes ``notebooks/0*.ipynb`` in order with the parameters of
``notebooks/params/default.yaml`` (or ``--params FILE``), writing executed copies to ``outputs/notebooks/``.
Inside a notebook, ``record(name, value)`` stores a number where ``read_records`` (and the tests) find it.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..io.paths import REPO_ROOT

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


# ---- what each notebook's parameters accept, checked before anything runs -------------------------------------------
# The type of each parameter is its default's in the notebook's parameters cell (an int default takes an int, a float
# default an int or a float, a None default the ``kind`` of its rule); each notebook's ``Schema`` adds, per parameter,
# the values it takes (ranges, names from the package's registries) and, for the notebook as a whole, the objects the
# notebook builds from them (its TrainConfigs, RenderConfig, ...), built here first so that their own checks run before
# any notebook does. ``tests/test_late_checks.py`` keeps every schema in step with its parameters cell.
@dataclass(frozen=True)
class Rule:
    """What one parameter takes beyond its default's type: ``test(value)`` says what is wrong ("" if nothing);
    ``none``: None is allowed too; ``kind``: the type when the default is None."""

    what: str
    test: Callable = lambda v: ""
    none: bool = False
    kind: type | None = None


def _at_least(lo, kind=None, none=False) -> Rule:
    return Rule(f">= {lo}" + (" or null" if none else ""), lambda v: "" if v >= lo else f"must be >= {lo}", none,
                kind)


def _number(lo: float, hi: float | None = None, lo_open: bool = False) -> Rule:
    lo_ok = (lambda v: v > lo) if lo_open else (lambda v: v >= lo)
    what = f"a finite number {'>' if lo_open else '>='} {lo}" + (f" and < {hi}" if hi is not None else "")
    return Rule(what, lambda v: "" if math.isfinite(v) and lo_ok(v) and (hi is None or v < hi) else f"must be {what}")


def _hint(name, names) -> str:
    close = difflib.get_close_matches(str(name), [str(n) for n in names], 1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _one_of(names: Callable) -> Rule:
    """A name from ``names()`` (a registry of the package, read when checked)."""
    def test(v):
        return "" if v in names() else f"unknown name {v!r}{_hint(v, names())}; choose one of {list(names())}"
    return Rule("one of the registry's names", test)


def _names(names: Callable, what: str) -> Rule:
    """A non-empty list of distinct names from ``names()``."""
    def test(v):
        if not v:
            return f"must name at least one {what}"
        for x in v:
            if not isinstance(x, str):
                return f"entries must be {what} names (strings), got {x!r}"
            if x not in names():
                return f"unknown {what} {x!r}{_hint(x, names())}; choose from {sorted(names())}"
        dup = sorted({x for x in v if v.count(x) > 1})
        return f"names {dup} twice" if dup else ""
    return Rule(f"a list of {what} names", test)


def _text(v) -> str:
    return "" if v.strip() else "must not be empty"


TEXT = Rule("a non-empty string", _text)
ANY = Rule("anything of its default's type")


def _variants():
    from ..study.variants import VARIANTS

    return VARIANTS


def _supervised():
    from ..study.variants import SUPERVISED

    return SUPERVISED


def _depth_sources():
    from ..data.pairs import DEPTH_SOURCES

    return DEPTH_SOURCES


# the synthetic inputs' sources (data.depth_sets.DepthSetConfig's pose_source / expression_source) and notebook 04's
# SHIPPED
POSE_SOURCES, EXPRESSION_SOURCES = ("fitted", "jitter"), ("fitted", "neutral")
SHIPPED = ("default", "all", "flagship", "none")


def _overrides(v) -> str:
    """OVERRIDES: {variant: {TrainConfig field: value}}; the values are checked with the variants' configs."""
    from dataclasses import fields as dc_fields

    from ..train.config import TrainConfig

    known = [f.name for f in dc_fields(TrainConfig)]
    for name, settings in v.items():
        if name not in _variants():
            return f"unknown variant {name!r}{_hint(name, _variants())}; choose from {sorted(_variants())}"
        if not isinstance(settings, dict):
            return f"OVERRIDES[{name!r}] must be a mapping of TrainConfig settings, got {type(settings).__name__}"
        for k in settings:
            if k not in known:
                return f"OVERRIDES[{name!r}]: unknown TrainConfig setting {k!r}{_hint(k, known)}"
    return ""


def _run_roots(v) -> str:
    bad = [k for k, d in v.items() if not isinstance(k, str) or not isinstance(d, str) or not d.strip()]
    return f"must map run-name prefixes to folders (strings), got {bad[0]!r}: {v[bad[0]]!r}" if bad else ""


def _compare_form(v) -> str:
    # [] compares no run (the shipped generators alone); each entry must name a run (check_compare)
    bad = [c for c in v if not isinstance(c, str) or not c.strip()]
    return f"entries must be run names (strings), got {bad[0]!r}" if bad else ""


_TRAIN_FIELDS = {"steps": "STEPS", "batch_size": "BATCH", "width": "WIDTH", "d_width": "WIDTH", "image_size": "SIZE",
                 "z_dim": "Z_DIM", "lr": "LR", "beta1": "BETA1", "kl_weight": "KL_WEIGHT", "masked_l1": "MASKED_L1",
                 "pretrain_steps": "PRETRAIN_STEPS", "seed": "SEED", "out_channels": "GREYSCALE"}


def _train_config_problem(name: str, build: Callable, overrides: dict | None = None) -> str:
    """What TrainConfig says about the config ``build()`` makes for model ``name``, naming the parameters."""
    try:
        build()
    except (ValueError, TypeError) as e:
        msg = str(e).splitlines()[0]
        named = [f for f in dict.fromkeys([*(overrides or {}), *_TRAIN_FIELDS]) if re.search(rf"\b{f}\b", msg)]
        params = list(dict.fromkeys([f"OVERRIDES[{name!r}][{f!r}]" if f in (overrides or {}) else _TRAIN_FIELDS[f]
                                     for f in named]))
        return f"model {name!r}: {msg}" + (f" (set by {', '.join(params)})" if params else "")
    return ""


def _builds_01(p) -> str:
    from ..facemodel.appearance import AppearanceConfig
    from ..render.rasterize import RenderConfig

    try:
        RenderConfig(resolution=p["RESOLUTION"], region=p["REGION"])
    except ValueError as e:
        return f"RESOLUTION / REGION: {e}"
    if p["APPEARANCE_COMPONENTS"] < min(AppearanceConfig.candidates):
        return (f"APPEARANCE_COMPONENTS = {p['APPEARANCE_COMPONENTS']}: must be >= {min(AppearanceConfig.candidates)}, "
                f"the smallest of AppearanceConfig.candidates {AppearanceConfig.candidates}")
    return ""


def _builds_02(p) -> str:
    from ..train.config import supervised_config

    kw = dict(steps=p["STEPS"], batch_size=p["BATCH"], width=p["WIDTH"], image_size=p["SIZE"],
              masked_l1=p["MASKED_L1"], kl_weight=p["KL_WEIGHT"], z_dim=p["Z_DIM"], lr=p["LR"], beta1=p["BETA1"],
              seed=p["SEED"], sample_every=max(p["STEPS"] // 4, 1), checkpoint_every=max(p["STEPS"] // 2, 1),
              out_channels=1 if p["GREYSCALE"] else 3)
    for name in p["MODELS"]:
        problem = _train_config_problem(name, lambda: supervised_config(name, **kw))
        if problem:
            return problem
    return ""


def _builds_03(p) -> str:
    from ..train.config import TrainConfig

    if p["N_SYNTH"] < p["BATCH"]:
        return f"N_SYNTH = {p['N_SYNTH']} synthetic inputs cannot fill one batch of BATCH = {p['BATCH']}"
    base = dict(steps=p["STEPS"], batch_size=p["BATCH"], image_size=p["SIZE"], width=p["WIDTH"], d_width=p["WIDTH"],
                pretrain_steps=p["PRETRAIN_STEPS"], seed=p["SEED"], sample_every=max(p["STEPS"] // 3, 1),
                checkpoint_every=max(p["STEPS"] // 2, 1), out_channels=1 if p["GREYSCALE"] else 3)
    over = p["OVERRIDES"]
    for name in dict.fromkeys([*p["VARIANTS"], *over]):  # as experiments.variant_config builds them, types checked
        problem = _train_config_problem(
            name, lambda: TrainConfig.from_dict({**base, **_variants()[name], **over.get(name, {})}), over.get(name))
        if problem:
            return problem
    return ""


def run_names(prefix: str, names) -> list[str]:
    """The names notebook 04 gives the runs ``names`` under a ``RUN_ROOTS`` prefix
    (``evaluation.context.discover_runs``)."""
    return [f"{prefix}/{n}" if prefix else str(n) for n in names]


def _compare_name_ok(c: str, roots) -> bool:
    """Whether run name ``c`` has a form ``evaluation.context.discover_runs`` can give under ``roots``' prefixes."""
    return any((c.startswith(f"{k}/") and c[len(k) + 1:] and "/" not in c[len(k) + 1:]) if k else "/" not in c
               for k in roots)


def _builds_04(p) -> str:
    for c in p["COMPARE"]:
        if not _compare_name_ok(c, p["RUN_ROOTS"]):
            return (f"COMPARE entry {c!r} is no run name under RUN_ROOTS {sorted(p['RUN_ROOTS'])}: runs are named "
                    f"PREFIX/RUN (or RUN for the prefix \"\"), e.g. {run_names(next(iter(p['RUN_ROOTS']), ''), ['U'])[0]!r}")
    return ""


@dataclass(frozen=True)
class Schema:
    """One notebook's parameters: a ``Rule`` per parameter, and ``builds(params)``: what the notebook makes from
    them, made here first (returns what is wrong, "" if nothing)."""

    rules: dict
    builds: Callable = lambda p: ""


_DIRS = {"OUT_DIR": TEXT, "FIG_DIR": TEXT, "CACHE_DIR": TEXT}
_INPUTS = {"DEPTH_SOURCE": _one_of(_depth_sources), "SYNTHETIC_POSE": _one_of(lambda: POSE_SOURCES),
           "SYNTHETIC_EXPRESSIONS": _one_of(lambda: EXPRESSION_SOURCES)}
SCHEMAS: dict[str, Schema] = {
    "01_data_generation": Schema({
        "N": _at_least(1), "RESOLUTION": _at_least(4), "K": _at_least(1), "SEED": _at_least(0), "REGION": TEXT,
        "WRITE_PLY": ANY, "PAIR_SIZE": _at_least(4), "LIMIT": _at_least(1, kind=int, none=True),
        "APPEARANCE_COMPONENTS": _at_least(1), "APPEARANCE_ROUNDS": _at_least(1), **_DIRS}, _builds_01),
    "02_supervised_baseline": Schema({
        "SIZE": _at_least(4), "STEPS": _at_least(1), "BATCH": _at_least(1), "WIDTH": _at_least(1),
        "MODELS": _names(_supervised, "supervised model"), "GREYSCALE": ANY, "MASKED_L1": ANY,
        "KL_WEIGHT": _number(0), "LR": _number(0, lo_open=True), "BETA1": _number(0, 1), "Z_DIM": _at_least(0),
        "SEED": _at_least(0), "LIMIT": _at_least(0), **_INPUTS, **_DIRS}, _builds_02),
    "03_refinement_experiments": Schema({
        "VARIANTS": _names(_variants, "variant"), "STEPS": _at_least(1), "BATCH": _at_least(1), "SIZE": _at_least(4),
        "WIDTH": _at_least(1), "N_SYNTH": _at_least(1), "PRETRAIN_STEPS": _at_least(0), "SEED": _at_least(0),
        "LIMIT": _at_least(0), "OVERRIDES": Rule("{variant: {TrainConfig setting: value}}", _overrides),
        "GREYSCALE": ANY, **_INPUTS, **_DIRS}, _builds_03),
    "04_evaluation": Schema({
        **{k: _at_least(1) for k in ("N_SYNTH", "N_EMBED", "N_CODES", "N_IDS", "N_POSES", "N_MAP", "ORL_PEOPLE",
                                     "ORL_PER_PERSON", "FEATURE_STEPS", "DEPTH_STEPS", "C2ST_STEPS", "N_GRID",
                                     "SWEEP_CODES", "JUDGE_WORKERS")},
        "SIZE": _at_least(4), "SEED": _at_least(0), "LIMIT": _at_least(0), "SWEEP_COMPONENTS": _at_least(0),
        "RUN_ROOTS": Rule("{prefix: folder}", _run_roots), "SHIPPED": _one_of(lambda: SHIPPED),
        "COMPARE": Rule("a list of run names ([] = none)", _compare_form), **_DIRS}, _builds_04),
}


def _type_problem(v, d, rule: Rule | None) -> str:
    """Whether ``v`` has the type of the default ``d`` (or of ``rule.kind`` for a None default)."""
    want = rule.kind if d is None and rule is not None and rule.kind else (None if d is None else type(d))
    if v is None:
        return "" if d is None or (rule is not None and rule.none) else "null"
    if want is None:
        return ""
    if want is float:  # an int where a float is expected is fine (papermill writes it as typed)
        return "" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__
    if want is int:
        return "" if isinstance(v, int) and not isinstance(v, bool) else type(v).__name__
    return "" if isinstance(v, want) else type(v).__name__


def check_parameters(nb_path, params: dict, known: dict | None = None) -> None:
    """Fail on a parameter the notebook's ``parameters`` cell does not define (papermill only warns), one whose type
    differs from the default's (nanoGPT's configurator habit: an int default takes an int, not 2.5 or null), or one
    whose value the notebook's ``SCHEMAS`` entry refuses (ranges, names from the registries, the configs the notebook
    builds from them) -- before it runs, in one line naming the parameter."""
    known = notebook_parameters(nb_path) if known is None else known
    unknown = set(params) - set(known)
    if unknown:
        hints = {k: difflib.get_close_matches(k, list(known), 1) for k in unknown}
        hint = "; ".join(f"{k!r}: did you mean {h[0]!r}?" for k, h in sorted(hints.items()) if h)
        raise ValueError(f"{nb_path}: unknown parameters {sorted(unknown)}"
                         + (f" ({hint})" if hint else "") + f"; the parameters cell defines {sorted(known)}")
    schema = SCHEMAS.get(Path(nb_path).stem, Schema({}))
    for k, v in params.items():
        d, rule = known[k], schema.rules.get(k)
        bad = _type_problem(v, d, rule)
        if bad:
            shown = f"{rule.kind.__name__} or null" if d is None and rule and rule.kind else \
                f"{type(d).__name__}{' or null' if rule and rule.none else ''}"
            given = "is null" if bad == "null" else f"= {v!r} is a {bad}"
            raise ValueError(f"{nb_path}: parameter {k} {given}, the notebook's default {d!r} is a {shown}")
        problem = rule.test(v) if rule is not None and v is not None else ""
        if problem:
            raise ValueError(f"{nb_path}: parameter {k} = {v!r}: {problem}")
    full = {**known, **params}
    if set(schema.rules) == set(known):  # a schema in step with the cell (tests/test_late_checks.py)
        problem = schema.builds(full)
        if problem:
            raise ValueError(f"{nb_path}: {problem}")


def _resolve(d) -> Path:
    """A folder parameter as the notebooks read it: relative to the repository."""
    return (REPO_ROOT / d).resolve()


def check_compare(plan: list[tuple[Path, dict]], params_path="params") -> None:
    """Notebook 04's ``COMPARE`` entries must name runs it will find: on disk now under ``RUN_ROOTS``, or made by
    the notebooks of this plan that run before it (02's ``MODELS`` into its ``OUT_DIR``, 03's ``VARIANTS`` into its
    ``OUT_DIR``, when a ``RUN_ROOTS`` folder is that ``OUT_DIR``). A misspelt entry once made the notebook fall back,
    without a word, to the first two runs found; the notebook itself now stops on one, but only once it runs."""
    from ..evaluation.context import discover_runs

    full = {nb.stem: {**notebook_parameters(nb), **params} for nb, params in plan}
    ev = full.get("04_evaluation")
    if ev is None:
        return
    roots = {k: _resolve(d) for k, d in ev["RUN_ROOTS"].items()}
    names = set(discover_runs(roots))
    for stem, key in (("02_supervised_baseline", "MODELS"), ("03_refinement_experiments", "VARIANTS")):
        if stem in full:
            out = _resolve(full[stem]["OUT_DIR"])
            names |= {n for prefix, root in roots.items() if root == out for n in run_names(prefix, full[stem][key])}
    for c in ev["COMPARE"]:
        if c not in names:
            raise ValueError(f"{params_path}: 04_evaluation: COMPARE entry {c!r} names no run{_hint(c, names)}: no "
                             f"run of that name is under RUN_ROOTS now or made by the notebooks that run before it; "
                             f"runs it will find: {sorted(names) or 'none'}")


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
    if only is not None and not list(only):  # a bare --only ran every notebook
        raise ValueError(f"--only needs at least one notebook: {', '.join(nbs)}")
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
    check_compare(plan, params_path)
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


class DuplicateKeyError(ValueError):
    """A parameter file gives one key twice in a mapping."""


def _unique_key_loader():
    """yaml's SafeLoader, refusing a key given twice in one mapping (yaml keeps the last value without a word)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # yaml itself reports it
                if key in seen:
                    raise DuplicateKeyError(f"key {key!r} is given twice in one mapping (lines {seen[key] + 1} and "
                                            f"{key_node.start_mark.line + 1}); YAML would keep the last value")
                seen[key] = key_node.start_mark.line
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def load_params(path) -> dict:
    """The parameter file: YAML text, each key once per mapping."""
    import yaml

    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text file (byte {e.start} is not UTF-8); the parameters are YAML, "
                         f"e.g. notebooks/params/tiny.yaml") from None
    try:
        return yaml.load(text, Loader=_unique_key_loader()) or {}
    except DuplicateKeyError as e:
        raise ValueError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})".replace("\n", " ")) from e


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m frankenstein_utils.apps.notebooks",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    from ..io.files import atomic_write_json

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
