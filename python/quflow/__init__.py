"""quflow: learning through differentiable quantum simulation.

A C++/Eigen Crank–Nicolson simulator for the 1-D Schrödinger equation with a
hand-written adjoint, exposed as PyTorch ops, and the phase-invariant fidelity loss
with the modified gradient flow of Schnell & Thuerey (ICML 2023 workshop); hybrid
quantum–classical layers on PennyLane's lightning.qubit (``QuantumLayer``,
``quflow.templates``, ``quflow.pinn``, ``quflow.transfer``).

Every public name is imported on first use (PEP 562), so that ``import quflow`` costs
neither torch's import time nor PennyLane's: the ``quflow`` command parses its command
line, and answers ``--help``, before torch loads. The first use of any simulator name
(``crank_nicolson``, ``Grid``, the fidelity losses...) imports the simulator's modules
together, which registers the operators ``torch.ops.quflow.*``; the hybrid parts load
PennyLane only when they are used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time, __getattr__ below
    from . import pinn, templates, transfer
    from .fidelity import (FidelityLoss, bures_loss, fidelity_loss, fubini_study_loss,
                           log_fidelity_loss, to_complex, to_real)
    from .grid import Grid, random_states
    from .metric import metric_tensor
    from .qng import QNG
    from .quantum import QuantumLayer, set_lightning_threads
    from .schrodinger import crank_nicolson

# module -> the public names it defines. A name added to the imports above goes here and
# into __all__ too (tests/test_cli.py checks that the three agree).
_EXPORTS = {
    "fidelity": ("FidelityLoss", "bures_loss", "fidelity_loss", "fubini_study_loss",
                 "log_fidelity_loss", "to_complex", "to_real"),
    "grid": ("Grid", "random_states"),
    "schrodinger": ("crank_nicolson",),
    "metric": ("metric_tensor",),
    "qng": ("QNG",),
    "quantum": ("QuantumLayer", "set_lightning_threads"),
}
# the simulator's modules: the first use of any of them or their names imports all three,
# as `import quflow` once did, which registers the operators torch.ops.quflow.*
_SIMULATOR = ("fidelity", "grid", "schrodinger")
_SUBMODULES = (*_SIMULATOR, "_checks", "_core", "_ops", "metric", "pinn", "qng", "quantum",
               "templates", "transfer")
_SOURCE = {name: module for module, names in _EXPORTS.items() for name in names}


def _import(module: str):
    if module in _SIMULATOR:
        for part in _SIMULATOR:
            importlib.import_module(f".{part}", __name__)
    elif module == "_core":  # torch first: the core binds to the libgomp.so.1 it loads
        importlib.import_module("torch")
    return importlib.import_module(f".{module}", __name__)


def __getattr__(name: str):
    if name in _SOURCE:
        value = getattr(_import(_SOURCE[name]), name)
    elif name in _SUBMODULES:
        value = _import(name)
    else:
        raise AttributeError(f"module 'quflow' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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
