"""The package's old flat module names mapped to the stage modules that now hold their code, for what was made before.

Shipped model cards, notebooks and scripts written before the stage folders name modules such as
``frankenstein_utils.flagship`` or run ``python -m frankenstein_utils.experiments``. A finder installed by the package
resolves such a name to a small module whose attributes are looked up in the new homes, in order; run with ``-m``, it
runs the first home (the one with the old command's ``main``). The five stage folders whose names were module names
(``train``, ``evaluation``, ``objectives``, ``pretrained``, ``facemodel``) answer the old module's public names the same way. Pickled
files of the old formats name classes by these paths too (``python -m frankenstein_utils.pretrained.convert``).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

PACKAGE = "frankenstein_utils"
# old module -> its new homes; the first runs the old command
MOVED: dict[str, tuple[str, ...]] = {
    "appearance": ('data.appearance_build', 'facemodel.appearance'),
    "apply": ('apps.apply',),
    "buffers": ('data.buffers',),
    "buffers_report": ('study.buffers_report',),
    "datasets": ('data.pairs', 'data.photos', 'facemodel.framing', 'io.images', 'render.rasterize'),
    "depthdata": ('data.depth_sets', 'facemodel.fitting'),
    "draws": ('io.draws',),
    "evaluation": ('evaluation.context',),
    "experiments": ('study.variants', 'study.runner'),  # runner.train_with_curve takes (cfg, data, score, folder, every)
    "facemodel": ('facemodel.model',),
    "facerender": ('evaluation.raw_render', 'facemodel.appearance_render'),
    "figures": ('io.figures',),
    "fileio": ('io.files',),
    "fitting": ('facemodel.fitting',),
    "flagship": ('study.ablation', 'objectives.flagship', 'evaluation.measures', 'nets.flagship', 'nets.peers',
                 'objectives.flagship_parts', 'objectives.peers', 'objectives.registry', 'objectives.base'),
    "generate": ('apps.generate',),
    "judges": ('evaluation.judges', 'facemodel.framing'),
    "landmark_regressor": ('apps.downstream',),
    "landmarks": ('data.landmarks',),
    "losses": ('objectives.losses',),
    "metrics": ('evaluation.measures', 'evaluation.metric_nets'),
    "models": ('nets.study', 'nets.layers'),
    "notebooks": ('apps.notebooks',),
    "objectives": ('objectives.study', 'nets.study', 'objectives.base', 'objectives.registry', 'data.buffers'),
    "paths": ('io.paths',),
    "pretrained": ('pretrained.cli', 'pretrained.shipped', 'pretrained.cards', 'pretrained.scoring',
                   'pretrained.study_export', 'pretrained.convert', 'evaluation.context'),
    "raster_numba": ('render.raster_numba',),
    "rasterize": ('render.rasterize',),
    "replay": ('train.replay',),
    "splat": ('render.splat',),
    "sweep": ('evaluation.sweep', 'facemodel.framing'),
    "train": ('train.cli',),
    "training": ('pretrained.convert', 'train.trainer', 'train.checkpoint', 'train.config', 'objectives.registry',
                 'nets.study'),
    "widgets": ('apps.widgets', 'io.images', 'pretrained.shipped'),
}


# names whose meaning moved with them: (old module, name) -> (new module, name there)
RENAMED = {("objectives", "OBJECTIVES"): ("objectives.registry", "STUDY_OBJECTIVES"),  # the study's seven modes
           ("flagship", "OBJECTIVES"): ("objectives.registry", "PEER_OBJECTIVES"),  # the flagship and its peers
           ("training", "OBJECTIVES"): ("objectives.registry", "PEER_OBJECTIVES"),
           ("training", "BUILTIN_OBJECTIVES"): ("objectives.registry", "STUDY_OBJECTIVES"),
           ("flagship", "PRESETS"): ("objectives.registry", "PEER_PRESETS")}


def attribute_of(old: str, name: str):
    """``name`` of the old module ``old``: renamed (``RENAMED``), or from the first of its new homes that has it."""
    if (old, name) in RENAMED:
        home, new = RENAMED[(old, name)]
        return getattr(importlib.import_module(f"{PACKAGE}.{home}"), new)
    for home in MOVED[old]:
        module = importlib.import_module(f"{PACKAGE}.{home}")
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"{PACKAGE}.{old} (moved to {', '.join(MOVED[old])}) has no attribute {name!r}")


def stage_getattr(old: str):
    """A module ``__getattr__`` (PEP 562) for a stage folder named like the old module ``old``."""
    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return attribute_of(old, name)
    return __getattr__


class _MovedLoader(importlib.abc.InspectLoader):
    def __init__(self, old: str):
        self.old = old

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__getattr__ = stage_getattr(self.old)
        module.__doc__ = f"Moved to {', '.join(PACKAGE + '.' + h for h in MOVED[self.old])}."

    def get_source(self, fullname):  # what ``python -m OLD`` runs: the new home of its command
        return f"import runpy\nrunpy.run_module({PACKAGE + '.' + MOVED[self.old][0]!r}, run_name='__main__', alter_sys=True)\n"

    def is_package(self, fullname):
        return False


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        head, _, old = fullname.rpartition(".")
        if head != PACKAGE or old not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedLoader(old))


def install() -> None:
    """Put the finder after the normal ones (a module that exists is always found first); once."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
