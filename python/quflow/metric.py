"""The metric tensor (Fubini–Study) of a :class:`~quflow.QuantumLayer`'s weights.

For a circuit state ``|ψ(a)⟩`` with gate angles ``a_j`` (gates ``exp(−i a_j G_j)``),
PennyLane's ``qml.metric_tensor`` convention is

    g_ij = Re⟨∂_iψ|∂_jψ⟩ − ⟨∂_iψ|ψ⟩⟨ψ|∂_jψ⟩,                                   (1)

and, over trainable arguments ``θ`` with angles ``a(θ)``, ``g(θ) = Jᵀ g(a) J`` with the
classical Jacobian ``J = ∂a/∂θ``. Approximations (Stokes et al., "Quantum Natural
Gradient", Quantum 4, 269 (2020)):

* ``"block-diag"``: PennyLane's layering — trainable gates are taken in order and a
  new layer starts when a gate depends on a gate of the current layer; within a layer
  ``g_kl = ⟨G_k G_l⟩ − ⟨G_k⟩⟨G_l⟩`` on the state prepared by the layer's ancestors,
  zero between layers;
* ``"diag"``: the diagonal of that, ``Var(G_k)``.

Note: PennyLane 0.45.1's ``qml.metric_tensor(approx="block-diag")`` disagrees with its own
``qml.adjoint_metric_tensor`` (and with this module) on cross terms between a
``PhaseShift`` and another gate of the same layer; with ``RZ`` (the same gate up to a
global phase, which the metric ignores) all three agree. quflow's blocks equal the exact
metric's entries.

The full metric (1) is computed exactly from all derivative states ``|∂_jψ⟩ = −i G_j
|ψ_after j⟩`` carried forward through the circuit in one sweep (``O(G·gates·2ⁿ)``),
vectorised over samples and derivative states; no Hadamard tests, no per-entry circuits.
Block-diag carries only the current layer's derivative states, diag one at a time.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch

from ._extras import require

qml = require("pennylane", "quantum")

from . import _checks
from . import _qprogram as _qp

__all__ = ["metric_tensor"]

APPROXIMATIONS = ("full", "block-diag", "diag")

_X = np.array([[0, 1], [1, 0]], dtype=np.complex128)
_Y = np.array([[0, -1j], [1j, 0]], dtype=np.complex128)
_Z = np.array([[1, 0], [0, -1]], dtype=np.complex128)


@lru_cache(maxsize=None)
def _generator(name: str, n_wires: int) -> np.ndarray:
    """``G`` with ``U(a) = exp(−i a G)`` (PhaseShift: ``G = −|1⟩⟨1|``, the global
    phase of ``e^{ia/2} RZ(a)`` does not enter (1))."""
    if name in ("RX", "RY", "RZ"):
        return {"RX": _X, "RY": _Y, "RZ": _Z}[name] / 2
    if name == "PhaseShift":
        return np.diag([0.0, -1.0]).astype(np.complex128)
    if name in ("IsingXX", "IsingYY", "IsingZZ"):
        p = {"IsingXX": _X, "IsingYY": _Y, "IsingZZ": _Z}[name]
        return np.kron(p, p) / 2
    if name == "MultiRZ":
        out = np.ones(1)
        for _ in range(n_wires):
            out = np.kron(out, np.array([1.0, -1.0]))
        return np.diag(out).astype(np.complex128) / 2
    raise ValueError(f"no generator for {name}")  # pragma: no cover - gate set is closed


@lru_cache(maxsize=None)
def _fixed_matrix(name: str, n_wires: int, inverse: bool) -> np.ndarray:
    m = qml.matrix(getattr(qml, name)(wires=range(n_wires)))
    return np.ascontiguousarray(m.conj().T if inverse else m, dtype=np.complex128)


def _gate_matrix(gate: _qp.Gate, angles: np.ndarray) -> np.ndarray:
    """``(d, d)`` or ``(B, d, d)`` for per-sample angles ``(B,)``."""
    k = len(gate.wires)
    if gate.name == _qp.MATRIX:
        return gate.matrix
    if gate.column < 0:
        return _fixed_matrix(gate.name, k, gate.inverse)
    a = angles[:, gate.column]
    if np.all(a == a[0]):
        a = a[:1]
    gen = _generator(gate.name, k)
    if gate.name == "PhaseShift":  # diag(1, e^{ia})
        m = np.zeros((a.shape[0], 2, 2), dtype=np.complex128)
        m[:, 0, 0] = 1.0
        m[:, 1, 1] = np.exp(1j * a)
    else:  # G = P/2 with P² = I: exp(−i a G) = cos(a/2) I − i sin(a/2) P
        pauli = 2 * gen
        m = np.cos(a / 2)[:, None, None] * np.eye(2**k) - 1j * np.sin(a / 2)[:, None, None] * pauli
    if gate.inverse:
        m = np.conj(np.swapaxes(m, -1, -2))
    return m[0] if m.shape[0] == 1 else m


def _initial(batch: int, n: int) -> np.ndarray:
    psi = np.zeros((batch, 1, 2**n), dtype=np.complex128)
    psi[:, 0, 0] = 1.0
    return psi


def _fubini_study(psi: np.ndarray, derivs: np.ndarray) -> np.ndarray:
    """(1) from ``|ψ⟩`` ``(B, 1, 2**n)`` and ``|∂_jψ⟩`` ``(B, K, 2**n)``: ``(B, K, K)``."""
    gram = np.einsum("bin,bjn->bij", derivs.conj(), derivs).real
    overlap = np.einsum("bin,bn->bi", derivs.conj(), psi[:, 0])  # ⟨∂_iψ|ψ⟩
    return gram - np.einsum("bi,bj->bij", overlap, overlap.conj()).real


def _pennylane_layers(program: _qp.Program, trainable: list[int]) -> dict[int, int]:
    """PennyLane's parametrised layers as ``{gate index: layer number}``: trainable gates in
    order, a new layer whenever a gate depends on (has an ancestor in) the current one."""
    last_on_wire: dict[int, int] = {}
    ancestors = []  # bitmask of each gate's ancestors
    for i, gate in enumerate(program.gates):
        mask = 0
        for w in gate.wires:
            if w in last_on_wire:
                j = last_on_wire[w]
                mask |= (1 << j) | ancestors[j]
        ancestors.append(mask)
        for w in gate.wires:
            last_on_wire[w] = i
    wanted = set(trainable)
    layer_of, number, current_mask = {}, 0, 0
    for i, gate in enumerate(program.gates):
        if gate.column not in wanted:
            continue
        if ancestors[i] & current_mask:
            number, current_mask = number + 1, 0
        layer_of[i] = number
        current_mask |= 1 << i
    return layer_of


def _metric(program: _qp.Program, angles: np.ndarray, trainable: list[int], approx: str) -> np.ndarray:
    """(1) over the trainable columns, restricted to blocks: ``(B, T, T)``.

    One sweep carries the derivative states ``|∂_kψ⟩ = −i G_k |ψ after gate k⟩`` of the
    current block and closes the block, eq. (1), when a gate of the next one comes.
    ``"full"`` is one block of every trainable gate; ``"block-diag"`` uses PennyLane's
    layers — within a layer the gates do not depend on each other, so the block equals
    the exact metric's entries, ``⟨G_k G_l⟩ − ⟨G_k⟩⟨G_l⟩`` on the state prepared by
    their ancestors; ``"diag"`` is a block per gate, ``Var(G_k)``.
    """
    n, batch = program.n_wires, angles.shape[0]
    position = {c: k for k, c in enumerate(trainable)}
    gates = [i for i, g in enumerate(program.gates) if g.column in position]
    if approx == "full":
        block_of = dict.fromkeys(gates, 0)
    elif approx == "diag":
        block_of = {i: k for k, i in enumerate(gates)}
    else:
        block_of = _pennylane_layers(program, trainable)
    out = np.zeros((batch, len(trainable), len(trainable)))
    psi = _initial(batch, n)
    derivs = np.zeros((batch, 0, 2**n), dtype=np.complex128)
    current: list[int] = []
    current_block = -1

    def close():
        if current:
            out[(slice(None), *np.ix_(current, current))] = _fubini_study(psi, derivs)

    for i, gate in enumerate(program.gates):
        if i in block_of and block_of[i] != current_block:
            close()
            derivs = derivs[:, :0]
            current, current_block = [], block_of[i]
        m = _gate_matrix(gate, angles)
        both = _qp.apply_matrix(np.concatenate([psi, derivs], axis=1), m, gate.wires, n)
        psi, derivs = both[:, :1], both[:, 1:]
        if i in block_of:
            gen = _generator(gate.name, len(gate.wires))
            derivs = np.concatenate([derivs, -1j * _qp.apply_matrix(psi, gen, gate.wires, n)], axis=1)
            current.append(position[gate.column])
    close()
    return out


def _classical_jacobian(columns: list, weights: list[torch.Tensor], batch: int) -> torch.Tensor:
    """``∂a_bj/∂θ_p`` as ``(B, G, P)``, or ``(1, G, P)`` when no column depends on the sample.

    One small backward pass per shared column (a scalar angle), one batched pass per
    column that differs between samples.
    """
    sizes = [w.numel() for w in weights]
    n_params = sum(sizes)

    def flat(grads, lead):
        return torch.cat(
            [
                torch.zeros(*lead, s, dtype=torch.float64) if g is None else g.reshape(*lead, s).to(torch.float64)
                for g, s in zip(grads, sizes)
            ],
            dim=-1,
        )

    per_sample = any(p and a.requires_grad for a, p in columns)
    jac = torch.zeros(batch if per_sample else 1, len(columns), n_params, dtype=torch.float64)
    for j, (angle, sample_dependent) in enumerate(columns):
        if not angle.requires_grad:
            continue
        if sample_dependent:
            grads = torch.autograd.grad(
                angle, weights, grad_outputs=torch.eye(batch, dtype=angle.dtype),
                is_grads_batched=True, allow_unused=True, retain_graph=True,
            )
            jac[:, j] = flat(grads, (batch,))
        else:
            grads = torch.autograd.grad(angle, weights, allow_unused=True, retain_graph=True)
            jac[:, j] = flat(grads, ())
    return jac


def metric_tensor(
    layer: Any,
    inputs: torch.Tensor | None = None,
    approx: str = "full",
    *,
    max_samples: int | None = None,
) -> torch.Tensor:
    r"""Metric tensor of a QuantumLayer's weights, averaged over the inputs.

    ``g = (1/B) Σ_b J_bᵀ g(a_b) J_b`` with ``g(a)`` of eq. (1) in PennyLane's
    ``qml.metric_tensor`` convention and ``J_b = ∂a_b/∂θ`` over the layer's flattened
    weights (in ``weight_shapes`` order); the circuit inputs are constants, never
    differentiated.

    Args:
        layer: a :class:`quflow.QuantumLayer`.
        inputs: ``(..., features)`` for a layer with inputs (leading dimensions are samples); ``None``
            for a circuit without inputs.
        approx: ``"full"`` (exact), ``"block-diag"`` or ``"diag"`` (PennyLane's layering;
            equal to PennyLane's when the parametrised gates are RX/RY/RZ/Rot/PhaseShift/
            IsingXX/YY/ZZ/MultiRZ or templates of them — controlled rotations are
            expanded first, which changes the blocks but not the full metric).
        max_samples: average over at most this many inputs, evenly spaced rows
            ``inputs[::ceil(B/max_samples)]``.

    Returns:
        ``(P, P)`` float64, symmetric positive semi-definite.

    Raises:
        TypeError: ``layer`` is not a QuantumLayer.
        ValueError: unknown ``approx``, missing/unexpected inputs, a layer without
            weights, bad ``max_samples``.

    Example:
        >>> import pennylane as qml, torch, quflow
        >>> def circuit(weights):
        ...     qml.RX(weights[0], wires=0)
        ...     qml.RY(weights[1], wires=0)
        ...     return qml.expval(qml.PauliZ(0))
        >>> layer = quflow.QuantumLayer(circuit, {"weights": 2}, wires=1)
        >>> g = quflow.metric_tensor(layer)
        >>> round(g[0, 0].item(), 6)   # Var(X/2) on |0⟩
        0.25
    """
    from .quantum import QuantumLayer

    if not isinstance(layer, QuantumLayer):
        raise TypeError(f"layer must be a quflow.QuantumLayer, got {type(layer).__name__}")
    if approx not in APPROXIMATIONS:
        raise ValueError(f"approx must be one of {APPROXIMATIONS}, got {approx!r}")
    if not layer.weight_shapes:
        raise ValueError("the layer has no weights: its metric tensor is empty")
    if max_samples is not None:
        _checks.count("max_samples", max_samples, minimum=1)
    if layer._has_inputs:
        if inputs is None:
            raise ValueError("this layer's circuit takes inputs: pass inputs=(B, features)")
        layer._validate_inputs(inputs)
        x = inputs.detach().to(torch.float64)
        x = x.reshape(-1, x.shape[-1])
        if x.shape[0] == 0:
            raise ValueError("inputs have an empty batch")
        if max_samples is not None and x.shape[0] > max_samples:
            x = x[:: -(-x.shape[0] // max_samples)]
        if layer._per_sample is None:
            layer._detect_batching(x)
        batch = x.shape[0]
    else:
        if inputs is not None:
            raise ValueError("this layer's circuit has no inputs: call with inputs=None")
        x, batch = None, 1

    weights = {k: getattr(layer, k).detach().to(torch.float64).requires_grad_(True) for k in layer.weight_shapes}
    columns: list = []
    with torch.enable_grad():
        program, angles = layer._record(x, weights, batch, columns)
        jac = _classical_jacobian(columns, list(weights.values()), batch)  # (B|1, G, P)
    trainable = [j for j in range(program.n_angles) if bool(jac[:, j].ne(0).any())]
    n_params = jac.shape[-1]
    if not trainable:
        return torch.zeros(n_params, n_params, dtype=torch.float64)
    g = torch.from_numpy(_metric(program, angles.detach().numpy(), trainable, approx))  # (B, T, T)
    j = jac[:, trainable]  # (B|1, T, P)
    out = torch.einsum("btp,btu,buq->pq", j.expand(batch, -1, -1), g, j.expand(batch, -1, -1)) / batch
    return 0.5 * (out + out.T)
