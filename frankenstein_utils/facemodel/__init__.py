"""Stage 3, the face model: shape and expressions, .obj/.ply, fitting to landmarks, framing, the appearance model."""

from ..io.moved import stage_getattr

__getattr__ = stage_getattr("facemodel")  # names of the old module facemodel.py, from where they live now
