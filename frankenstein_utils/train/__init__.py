"""Stage 7, training: config, trainer, checkpoints, replay pools, command line (python -m frankenstein_utils.train)."""

from ..io.moved import stage_getattr

__getattr__ = stage_getattr("train")  # names of the old module train.py, from where they live now
