"""Stage 9, shipped models: safetensors files and checksums, loading, cards, their scoring, conversion of old files."""

from ..io.moved import stage_getattr

__getattr__ = stage_getattr("pretrained")  # names of the old module pretrained.py, from where they live now
