"""Ready-made :class:`~quflow.QuantumLayer` circuits for the common cases.

* :func:`strongly_entangling` — angle embedding of the inputs, then
  ``StronglyEntanglingLayers``; outputs ``⟨Z_i⟩`` on every wire.
* :func:`data_reuploading` — the embedding repeated before every trainable layer
  inside one circuit (Pérez-Salinas et al., "Data re-uploading for a universal
  quantum classifier", Quantum 4, 226 (2020)), rather than stacking several
  measured layers; outputs ``⟨Z_i⟩`` on every wire.

Both expect inputs of width ``n_inputs ≤ n_qubits`` (one feature per wire,
wires ``0 … n_inputs−1``) and already scaled to angles (e.g. ``π·tanh(·)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._extras import require

qml = require("pennylane", "quantum")

from . import _checks
from .quantum import QuantumLayer

__all__ = ["data_reuploading", "strongly_entangling"]

_ROTATIONS = ("X", "Y", "Z")
_OBSERVABLES = {"X": qml.PauliX, "Y": qml.PauliY, "Z": qml.PauliZ}


def _check(n_qubits: int, n_layers: int, n_inputs: int | None, rotation: str, observable: str):
    n_qubits = _checks.count("n_qubits", n_qubits, minimum=1)
    _checks.count("n_layers", n_layers, minimum=1)
    n_inputs = n_qubits if n_inputs is None else _checks.count("n_inputs", n_inputs, minimum=1)
    if n_inputs > n_qubits:
        raise ValueError(f"n_inputs: expected at most n_qubits={n_qubits}, got {n_inputs}")
    if rotation not in _ROTATIONS:
        raise ValueError(f"rotation must be one of {_ROTATIONS}, got {rotation!r}")
    if observable not in _OBSERVABLES:
        raise ValueError(f"observable must be one of {tuple(_OBSERVABLES)}, got {observable!r}")
    return n_inputs


@dataclass(frozen=True)
class _Circuit:
    """The templates' circuit as a module-level callable, so that layers built from it
    pickle (``torch.save(model)``, ``copy.deepcopy``)."""

    n_qubits: int
    n_layers: int
    n_inputs: int
    rotation: str
    observable: str
    reupload: bool

    def __call__(self, inputs, weights):
        wires, embedded = range(self.n_qubits), range(self.n_inputs)
        if self.reupload:
            for layer in range(self.n_layers):
                qml.AngleEmbedding(inputs, wires=embedded, rotation=self.rotation)
                qml.StronglyEntanglingLayers(weights[layer : layer + 1], wires=wires)
        else:
            qml.AngleEmbedding(inputs, wires=embedded, rotation=self.rotation)
            qml.StronglyEntanglingLayers(weights, wires=wires)
        measure = _OBSERVABLES[self.observable]
        return [qml.expval(measure(i)) for i in wires]


def strongly_entangling(
    n_qubits: int,
    n_layers: int,
    *,
    n_inputs: int | None = None,
    rotation: str = "X",
    observable: str = "Z",
    **layer_kwargs: Any,
) -> QuantumLayer:
    """Angle embedding + strongly entangling layers, ``⟨σ_i⟩`` on every wire.

    Circuit: ``AngleEmbedding(x, rotation)`` on wires ``0 … n_inputs−1``, then
    ``StronglyEntanglingLayers(weights)`` with weights ``(n_layers, n_qubits, 3)``.

    Args:
        n_qubits: wires of the circuit.
        n_layers: entangling layers.
        n_inputs: input features (default ``n_qubits``).
        rotation: embedding rotation ``"X"``, ``"Y"`` or ``"Z"``.
        observable: measured Pauli on each wire.
        **layer_kwargs: passed to :class:`QuantumLayer` (``device``,
            ``diff_method``, ``init``).

    Returns:
        A layer mapping ``(B, n_inputs)`` to ``(B, n_qubits)``.

    Example:
        >>> import torch
        >>> layer = strongly_entangling(3, 2)
        >>> layer(torch.zeros(4, 3)).shape
        torch.Size([4, 3])
    """
    n_inputs = _check(n_qubits, n_layers, n_inputs, rotation, observable)
    circuit = _Circuit(n_qubits, n_layers, n_inputs, rotation, observable, reupload=False)
    return QuantumLayer(
        circuit, {"weights": (n_layers, n_qubits, 3)}, wires=n_qubits, input_size=n_inputs, **layer_kwargs
    )


def data_reuploading(
    n_qubits: int,
    n_layers: int,
    *,
    n_inputs: int | None = None,
    rotation: str = "Y",
    observable: str = "Z",
    **layer_kwargs: Any,
) -> QuantumLayer:
    """Data re-uploading: ``[AngleEmbedding(x); StronglyEntanglingLayer(w_l)]`` × ``n_layers``.

    The inputs enter ``n_layers`` times inside one circuit, which raises the
    frequencies the model can represent in each input to ``n_layers``
    (a re-uploaded rotation ``R(x)`` contributes the spectrum ``{−1, 0, 1}`` per use).

    Args:
        n_qubits: wires of the circuit.
        n_layers: number of (embedding, trainable layer) blocks.
        n_inputs: input features (default ``n_qubits``).
        rotation: embedding rotation ``"X"``, ``"Y"`` or ``"Z"``.
        observable: measured Pauli on each wire.
        **layer_kwargs: passed to :class:`QuantumLayer`.

    Returns:
        A layer mapping ``(B, n_inputs)`` to ``(B, n_qubits)`` with weights
        ``(n_layers, n_qubits, 3)``.

    Example:
        >>> import torch
        >>> layer = data_reuploading(2, 3, n_inputs=1)
        >>> layer(torch.zeros(5, 1)).shape
        torch.Size([5, 2])
    """
    n_inputs = _check(n_qubits, n_layers, n_inputs, rotation, observable)
    circuit = _Circuit(n_qubits, n_layers, n_inputs, rotation, observable, reupload=True)
    return QuantumLayer(
        circuit, {"weights": (n_layers, n_qubits, 3)}, wires=n_qubits, input_size=n_inputs, **layer_kwargs
    )
