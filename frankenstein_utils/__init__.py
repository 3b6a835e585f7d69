"""Deep Frankenstein: realistic face images from a 3D morphable face model's faces; one folder per stage (README)."""
from .io import moved as _moved

_moved.install()  # the old flat module names (shipped cards, pickled files, older scripts) keep resolving
