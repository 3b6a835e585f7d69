"""Stage 8, evaluation: pure measures, dlib judges, metric networks, the evaluation context, sweeps, the raw render."""

from ..io.moved import stage_getattr

__getattr__ = stage_getattr("evaluation")  # names of the old module evaluation.py, from where they live now
