"""quflow: learning through differentiable quantum simulation.

A C++/Eigen Crank–Nicolson simulator for the 1-D Schrödinger equation with a
hand-written adjoint, exposed as PyTorch ops.
"""

from __future__ import annotations

from .grid import Grid, random_states
from .schrodinger import crank_nicolson

__version__ = "0.1.0"

__all__ = [
    "Grid",
    "crank_nicolson",
    "random_states",
]
