"""quflow.metric_tensor against PennyLane (full: qml.adjoint_metric_tensor; block-diag and
diag: qml.metric_tensor) on several circuits, averaged over inputs; analytic cases.
Tolerance 1e-10 (double precision)."""

from __future__ import annotations

import math

import numpy as np
import pennylane as qml
import pytest
import torch
from pennylane import numpy as pnp

from quflow import QuantumLayer, metric_tensor

TOL = 1e-10
N = 3


def sel(weights):
    """StronglyEntanglingLayers as primitive gates (adjoint_metric_tensor cannot expand templates)."""
    with qml.QueuingManager.stop_recording():
        ops = qml.StronglyEntanglingLayers(weights, wires=range(N)).decomposition()
    for op in ops:
        qml.apply(op)


def entangling(inputs, weights):
    for i in range(N):
        qml.RX(inputs[..., i], wires=i)
    sel(weights)
    qml.RY(2.0 * weights[0, 0, 0], wires=1)  # a weight used twice, scaled
    qml.IsingZZ(weights[1, 1, 1], wires=[0, 2])
    return qml.expval(qml.PauliZ(0))


def mixed(inputs, weights):
    for i in range(N):
        qml.Hadamard(wires=i)
        qml.RY(inputs[..., i], wires=i)
    for l in range(2):
        qml.RZ(weights[l, 0], wires=0)
        qml.MultiRZ(weights[l, 1], wires=[0, 1, 2])
        qml.IsingXX(weights[l, 2], wires=[1, 2])
        qml.CNOT(wires=[2, 0])
        qml.RX(weights[l, 0] * inputs[..., 1], wires=2)  # weight × input: J depends on the sample
    return qml.expval(qml.PauliX(1))


CASES = {"entangling": (entangling, (2, N, 3)), "mixed": (mixed, (2, 3))}


def pennylane_metric(circuit, shape, weights, inputs, approx):
    qnode = qml.QNode(circuit, qml.device("default.qubit", wires=N), interface="autograd")
    w = pnp.array(weights, requires_grad=True)
    total = 0
    for x in inputs:
        xs = pnp.array(x, requires_grad=False)
        if approx == "full":
            g = qml.adjoint_metric_tensor(qnode)(xs, w)
        else:
            g = qml.metric_tensor(qnode, approx=approx)(xs, w)
        total = total + np.asarray(g).reshape(w.size, w.size)
    return total / len(inputs)


def make_layer(circuit, shape, seed=0):
    torch.manual_seed(seed)
    return QuantumLayer(circuit, {"weights": shape}, wires=N).double()


@pytest.mark.parametrize("approx", ["full", "block-diag", "diag"])
@pytest.mark.parametrize("case", list(CASES))
def test_metric_equals_pennylane_averaged_over_inputs(case, approx):
    circuit, shape = CASES[case]
    layer = make_layer(circuit, shape)
    x = torch.rand(3, N, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3
    ours = metric_tensor(layer, x, approx).numpy()
    ref = pennylane_metric(circuit, shape, layer.weights.detach().numpy(), x.numpy(), approx)
    assert ours.shape == (layer.weights.numel(),) * 2
    assert np.abs(ours - ref).max() < TOL
    assert np.linalg.eigvalsh(ours).min() > -1e-12


def test_block_entries_equal_the_full_metric_within_layers():
    """Within a layer the block-diagonal approximation is exact. PennyLane 0.45.1's
    qml.metric_tensor(approx="block-diag") gives +0.0459 instead of -0.0556 for the
    (RX, PhaseShift) pair below, disagreeing with its own adjoint_metric_tensor; with RZ
    in place of PhaseShift (the same gate up to a global phase) it agrees with us."""

    def circuit(weights):
        for i in range(3):
            qml.Hadamard(wires=i)
            qml.RY(0.3 * (i + 1), wires=i)
        qml.PhaseShift(weights[0], wires=0)
        qml.IsingXX(weights[1], wires=[1, 2])  # layer 1: PhaseShift, IsingXX
        qml.CNOT(wires=[2, 0])
        qml.RX(weights[2], wires=2)
        qml.PhaseShift(weights[3], wires=0)  # layer 2: RX, PhaseShift
        return qml.expval(qml.PauliX(1))

    layer = QuantumLayer(circuit, {"weights": 4}, wires=3).double()
    with torch.no_grad():
        layer.weights.copy_(torch.tensor([0.3, 0.8, -0.4, 1.2], dtype=torch.float64))
    full, block = metric_tensor(layer), metric_tensor(layer, approx="block-diag")
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2, :2] = mask[2:, 2:] = True
    assert torch.allclose(block[mask], full[mask], atol=1e-14, rtol=0)
    assert torch.all(block[~mask] == 0)
    assert abs(block[2, 3].item() - (-0.0556)) < 1e-4
    diag = metric_tensor(layer, approx="diag")
    assert torch.allclose(diag, torch.diag(torch.diagonal(full)), atol=1e-14, rtol=0)


def test_batch_average_equals_explicit_loop_and_subsample():
    layer = make_layer(*CASES["mixed"])
    x = torch.rand(6, N, dtype=torch.float64) * 3
    batch = metric_tensor(layer, x)
    loop = sum(metric_tensor(layer, x[i]) for i in range(6)) / 6
    assert torch.allclose(batch, loop, atol=TOL, rtol=0)
    sub = metric_tensor(layer, x, max_samples=2)  # rows 0 and 3
    assert torch.allclose(sub, (metric_tensor(layer, x[0]) + metric_tensor(layer, x[3])) / 2, atol=TOL, rtol=0)


def test_inputs_are_excluded_and_not_differentiated():
    layer = make_layer(*CASES["entangling"])
    x = torch.rand(2, N, dtype=torch.float64, requires_grad=True)
    g = metric_tensor(layer, x)
    assert g.shape == (18, 18)
    assert x.grad is None and layer.weights.grad is None


def test_analytic_single_qubit():
    def circuit(weights):
        qml.RX(weights[0], wires=0)
        qml.RY(weights[1], wires=0)
        return qml.expval(qml.PauliZ(0))

    layer = QuantumLayer(circuit, {"weights": 2}, wires=1).double()
    with torch.no_grad():
        layer.weights.copy_(torch.tensor([0.7, -0.2], dtype=torch.float64))
    g = metric_tensor(layer)
    # RX on |0⟩: Var(X/2) = 1/4; then RY: Var(Y/2) on RX(θ)|0⟩ = (1 − sin²θ)/4; no cross term
    expected = torch.tensor([[0.25, 0.0], [0.0, math.cos(0.7) ** 2 / 4]], dtype=torch.float64)
    assert torch.allclose(g, expected, atol=1e-14, rtol=0)


def test_errors():
    layer = make_layer(*CASES["entangling"])
    with pytest.raises(TypeError, match="QuantumLayer"):
        metric_tensor(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="approx must be one of"):
        metric_tensor(layer, torch.zeros(1, N), "kfac")
    with pytest.raises(ValueError, match="takes inputs"):
        metric_tensor(layer)
    with pytest.raises(ValueError, match="max_samples"):
        metric_tensor(layer, torch.zeros(1, N), max_samples=0)

    def no_inputs(weights):
        qml.RX(weights[0], wires=0)
        return qml.expval(qml.PauliZ(0))

    with pytest.raises(ValueError, match="has no inputs"):
        metric_tensor(QuantumLayer(no_inputs, {"weights": 1}, wires=1), torch.zeros(1, 1))

    def no_weights(inputs):
        qml.RX(inputs[..., 0], wires=0)
        return qml.expval(qml.PauliZ(0))

    with pytest.raises(ValueError, match="no weights"):
        metric_tensor(QuantumLayer(no_weights, {}, wires=1), torch.zeros(1, 1))
