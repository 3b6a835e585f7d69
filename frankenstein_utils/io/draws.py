"""Seeded random draws that are the same on any CPU.

``torch.randn`` in float32 picks its kernel by the CPU's instruction set (a vectorised Box-Muller on some, the scalar
one on others), so the same seed gives values that differ in the last bits from machine to machine, and fixed
evaluation inputs are then not fixed. The float64 path is scalar everywhere; its values rounded to float32 are the
same on any CPU (checked by ``tests/test_pretrained.py`` under other kernel settings).
"""

from __future__ import annotations

import torch


def normal(*shape: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """N(0, 1) draws of ``shape`` as float32, identical on every CPU for the same ``generator`` state."""
    return torch.randn(*shape, generator=generator, dtype=torch.float64).float()
