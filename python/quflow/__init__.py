"""quflow: learning through differentiable quantum simulation.

A C++/Eigen Crank–Nicolson simulator for the 1-D Schrödinger equation with a
hand-written adjoint, exposed as PyTorch ops, and the phase-invariant fidelity loss
with the modified gradient flow of Schnell & Thuerey (ICML 2023 workshop).
"""

from __future__ import annotations

from .fidelity import FidelityLoss, fidelity_loss, to_complex, to_real
from .grid import Grid, random_states
from .schrodinger import crank_nicolson

__version__ = "0.1.0"

__all__ = [
    "FidelityLoss",
    "Grid",
    "crank_nicolson",
    "fidelity_loss",
    "random_states",
    "to_complex",
    "to_real",
]
