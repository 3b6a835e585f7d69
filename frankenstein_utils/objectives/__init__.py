"""Stage 6, objectives: losses, one Objective base, the study's modes, the flagship's, the peers', one registry."""

from ..io.moved import stage_getattr

__getattr__ = stage_getattr("objectives")  # names of the old module objectives.py, from where they live now
