"""The package's shape: each stage is one folder and data flows downward only.

Every module is imported, and every import in it (those deferred into functions included) is read: a module may
import from its own stage or one below, never from a stage above. The order is written here, once."""
import ast
import importlib
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "frankenstein_utils"
# lowest first: files and draws; the face model's renderer; the face model; data sets; networks; objectives;
# training; evaluation; shipped models; studies (which train, score and ship them); apps (CLIs, the explorer, the notebook runner)
STAGES = ("io", "render", "facemodel", "data", "nets", "objectives", "train", "evaluation", "pretrained", "study", "apps")


def modules():
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def dotted(path: pathlib.Path) -> str:
    return ".".join(("frankenstein_utils",) + path.relative_to(PKG).with_suffix("").parts).removesuffix(".__init__")


def imported(path: pathlib.Path):
    """(line, absolute module) for every import of the package's own modules in ``path``."""
    here = dotted(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "frankenstein_utils":
                continue
            # "from ..pkg import module" imports modules: name each
            for a in node.names:
                sub = f"{base}.{a.name}"
                is_module = (PKG.parent / (sub.replace(".", "/") + ".py")).exists() or \
                    (PKG.parent / sub.replace(".", "/")).is_dir()
                yield node.lineno, sub if is_module else base
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "frankenstein_utils":
                    yield node.lineno, a.name


def exists(module: str) -> bool:
    path = PKG.parent / module.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def test_every_module_sits_in_a_stage_and_opens_with_one_line_saying_what_it_is():
    for p in modules():
        rel = p.relative_to(PKG)
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue
        assert rel.parts[0] in STAGES, f"{rel}: not in a stage folder {STAGES}"
        doc = ast.get_docstring(ast.parse(p.read_text()))
        assert doc and doc.splitlines()[0].strip().endswith("."), f"{rel}: no one-line docstring saying what it is"


def test_imports_run_downward_only():
    wrong = []
    for p in modules():
        mine = stage_of(dotted(p))
        if mine is None:
            continue
        for line, target in imported(p):
            theirs = stage_of(target)
            if not exists(target):
                wrong.append(f"{p.relative_to(PKG)}:{line} imports {target}, which does not exist")
            elif theirs is None:
                wrong.append(f"{p.relative_to(PKG)}:{line} imports {target}, which is in no stage")
            elif STAGES.index(theirs) > STAGES.index(mine):
                wrong.append(f"{p.relative_to(PKG)}:{line} ({mine}) imports {target} ({theirs}, a stage above)")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("path", [p for p in modules() if p.name != "__main__.py"], ids=lambda p: str(p.relative_to(PKG)))
def test_every_module_imports(path):
    importlib.import_module(dotted(path))


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The direction test would pass on any tree if ``imported`` missed deferred or relative imports."""
    f = PKG / "io" / "files.py"
    found = dict((t, n) for n, t in imported(f))
    assert all(stage_of(t) in ("io", None) for t in found)
    src = "def f():\n    from ..apps import widgets\n    from ..train.config import TrainConfig\n"
    fake = tmp_path / "x.py"
    fake.write_text(src)
    monkeypatch.setattr(pathlib.Path, "relative_to", lambda self, other: pathlib.Path("io/x.py"))
    targets = [t for _, t in imported(fake)]
    assert targets == ["frankenstein_utils.apps.widgets", "frankenstein_utils.train.config"]


# ---- the old flat module names (shipped cards' commands, older scripts, pickled files) ----------------------------
OLD_NAMES = {  # one public name of every old module -> the new module that defines it
    "apply": ("check_depth_png", "apps.apply"), "appearance": ("build_appearance", "data.appearance_build"),
    "buffers": ("BufferGenerator", "data.buffers"), "buffers_report": ("curve", "study.buffers_report"),
    "datasets": ("PairedFaceDataset", "data.pairs"), "depthdata": ("FittedFaceParams", "facemodel.fitting"),
    "draws": ("normal", "io.draws"), "evaluation": ("build_context", "evaluation.context"),
    "experiments": ("budget_study", "study.variants"), "facemodel": ("load_face_model", "facemodel.model"),
    "facerender": ("RawRender", "facemodel.appearance_render"), "figures": ("image_grid", "io.figures"),
    "fileio": ("atomic_write_bytes", "io.files"), "fitting": ("fit_landmarks", "facemodel.fitting"),
    "flagship": ("FlagshipGenerator", "nets.flagship"), "generate": ("generate_faces", "apps.generate"),
    "judges": ("FaceJudges", "evaluation.judges"), "landmark_regressor": ("train_regressor", "apps.downstream"),
    "landmarks": ("build_landmarks", "data.landmarks"), "losses": ("GANLoss", "objectives.losses"),
    "metrics": ("kernel_distance_features", "evaluation.measures"), "models": ("Generator", "nets.study"),
    "notebooks": ("record", "apps.notebooks"), "objectives": ("L1Objective", "objectives.study"),
    "paths": ("find_dataset", "io.paths"), "pretrained": ("load_pretrained", "pretrained.shipped"),
    "raster_numba": ("rasterize_depth_numba", "render.raster_numba"), "rasterize": ("RenderConfig", "render.rasterize"),
    "replay": ("ReplayBuffer", "train.replay"), "splat": ("splat_depth", "render.splat"),
    "sweep": ("slider_sweep", "evaluation.sweep"), "train": ("input_convention", "train.cli"),
    "training": ("Trainer", "train.trainer"), "widgets": ("FaceExplorer", "apps.widgets"),
}


def test_every_old_module_name_resolves_to_where_its_code_lives_now():
    from frankenstein_utils.io.moved import MOVED

    assert set(OLD_NAMES) == set(MOVED), "every old flat module has a home, and no more"
    for old, (name, home) in OLD_NAMES.items():
        old_module = importlib.import_module(f"frankenstein_utils.{old}")
        assert getattr(old_module, name) is getattr(importlib.import_module(f"frankenstein_utils.{home}"), name), old
        with pytest.raises(AttributeError, match="moved to"):
            getattr(old_module, "no_such_name_anywhere")
    # names whose meaning moved with them: the old registries held the study's modes, or the flagship's and peers'
    from frankenstein_utils.objectives.registry import PEER_OBJECTIVES, PEER_PRESETS, STUDY_OBJECTIVES

    assert importlib.import_module("frankenstein_utils.objectives").OBJECTIVES is STUDY_OBJECTIVES
    assert importlib.import_module("frankenstein_utils.flagship").OBJECTIVES is PEER_OBJECTIVES
    assert importlib.import_module("frankenstein_utils.training").OBJECTIVES is PEER_OBJECTIVES
    assert importlib.import_module("frankenstein_utils.flagship").PRESETS is PEER_PRESETS
    # every name the package's files and tests took from the old modules before
    for old, name in [("models", "init_weights"), ("models", "count_parameters"), ("pretrained", "generator_fn"),
                      ("experiments", "train_with_curve"), ("datasets", "normalize_depth"),
                      ("flagship", "generator_input"), ("training", "EncoderDecoder")]:
        assert getattr(importlib.import_module(f"frankenstein_utils.{old}"), name) is not None
    # ``from OLD import NAME``, the form of older scripts and of the shipped cards' snippets
    from frankenstein_utils.training import TrainConfig

    from frankenstein_utils.pretrained import load_pretrained

    assert load_pretrained.__module__ == "frankenstein_utils.pretrained.shipped"
    assert TrainConfig.__module__ == "frankenstein_utils.train.config"


def test_a_pickle_naming_an_old_class_path_loads():
    """Files of the older, pickled formats name classes by the old module paths (read by ``pretrained.convert``)."""
    import pickle

    from frankenstein_utils.train.config import TrainConfig

    data = pickle.dumps(TrainConfig(steps=7), protocol=0)  # text protocol: the class path is a plain line
    assert b"frankenstein_utils.train.config\nTrainConfig" in data
    old = data.replace(b"frankenstein_utils.train.config\nTrainConfig", b"frankenstein_utils.training\nTrainConfig")
    cfg = pickle.loads(old)
    assert isinstance(cfg, TrainConfig) and cfg.steps == 7


@pytest.mark.parametrize("old,new", [("experiments", "study.variants"), ("flagship", "study.ablation"),
                                     ("appearance", "data.appearance_build"), ("train", "train"),
                                     ("pretrained", "pretrained"), ("training", "pretrained.convert")])
def test_the_shipped_cards_old_commands_still_run(old, new):
    """``python -m frankenstein_utils.<old> --help`` runs the command's new home (the cards keep their commands)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", f"frankenstein_utils.{old}", "--help"], capture_output=True, text=True,
                       cwd=PKG.parent, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: python -m frankenstein_utils.{new} "), r.stdout[:200]


def commands():
    """Every ``python -m`` command of the package: modules with a main guard, and the stages' ``__main__``."""
    out = []
    for p in modules():
        if p.name == "__main__.py":
            out.append(dotted(p.parent))
        elif '__name__ == "__main__"' in p.read_text():
            out.append(dotted(p))
    return sorted(out)


def test_every_command_has_argparse_help_under_its_own_name():
    """``python -m NAME --help`` prints a usage line naming the command as it is typed, and exits 0."""
    import subprocess
    import sys

    cmds = commands()
    assert "frankenstein_utils.train" in cmds and "frankenstein_utils.pretrained" in cmds and len(cmds) >= 15
    code = ("import contextlib, io, runpy, sys\n"
            "bad = []\n"
            "for name in sys.argv[1:]:\n"
            "    sys.argv = [name, '--help']\n"
            "    out = io.StringIO()\n"
            "    try:\n"
            "        with contextlib.redirect_stdout(out):\n"
            "            runpy.run_module(name, run_name='__main__', alter_sys=True)\n"
            "        bad.append(f'{name}: no exit')\n"
            "    except SystemExit as e:\n"
            "        first = out.getvalue().splitlines()[:1]\n"
            "        if e.code not in (0, None) or not first or not first[0].startswith(f'usage: python -m {name}'):\n"
            "            bad.append(f'{name}: exit {e.code}, {first}')\n"
            "print('\\n'.join(bad))\n")
    r = subprocess.run([sys.executable, "-c", code, *cmds], capture_output=True, text=True, cwd=PKG.parent, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "", r.stdout
