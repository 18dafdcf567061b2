"""quflow: learning through differentiable quantum simulation.

A C++/Eigen Crank–Nicolson simulator for the 1-D Schrödinger equation with a
hand-written adjoint, exposed as PyTorch ops, and the phase-invariant fidelity loss
with the modified gradient flow of Schnell & Thuerey (ICML 2023 workshop); hybrid
quantum–classical layers on PennyLane's lightning.qubit (``QuantumLayer``,
``quflow.templates``, ``quflow.pinn``, ``quflow.transfer``), imported on first use
so that the simulator does not pay PennyLane's import time.
"""

from __future__ import annotations

from .fidelity import (FidelityLoss, bures_loss, fidelity_loss, fubini_study_loss,
                       log_fidelity_loss, to_complex, to_real)
from .grid import Grid, random_states
from .schrodinger import crank_nicolson

__version__ = "0.1.0"

_LAZY = {
    "QNG": ("qng", "QNG"),
    "QuantumLayer": ("quantum", "QuantumLayer"),
    "metric_tensor": ("metric", "metric_tensor"),
    "set_lightning_threads": ("quantum", "set_lightning_threads"),
    "pinn": ("pinn", None),
    "templates": ("templates", None),
    "transfer": ("transfer", None),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        module = importlib.import_module(f".{module_name}", __name__)
        value = module if attr is None else getattr(module, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'quflow' has no attribute {name!r}")

__all__ = [
    "FidelityLoss",
    "Grid",
    "QNG",
    "QuantumLayer",
    "bures_loss",
    "crank_nicolson",
    "fidelity_loss",
    "fubini_study_loss",
    "log_fidelity_loss",
    "metric_tensor",
    "pinn",
    "random_states",
    "set_lightning_threads",
    "templates",
    "to_complex",
    "to_real",
    "transfer",
]
