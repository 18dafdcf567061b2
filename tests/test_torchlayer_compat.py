"""QuantumLayer against the behaviour PennyLane's ``qml.qnn.TorchLayer`` documents.

Written from TorchLayer's docstring and the behaviours its test suite specifies
(PennyLane 0.45, ``tests/qnn/test_qnn_torch.py``), one test per behaviour, mostly with
TorchLayer itself as the oracle on the same QNode. Deliberate differences (README,
"Hybrid quantum–classical models") are tested as such at the end.
"""

from __future__ import annotations

import math

import numpy as np
import pennylane as qml
import pytest
import torch
from torch import nn

from quflow import QuantumLayer

TOL = 1e-10
N = 3

WEIGHT_SHAPES = {"w1": (2, N, 3), "w2": (1,), "w3": 1, "w4": [3], "w5": 3}


def full_circuit(inputs, w1, w2, w3, w4, w5):
    qml.AngleEmbedding(inputs, wires=range(N))
    qml.StronglyEntanglingLayers(w1, wires=range(N))
    qml.RX(w2[0], wires=0)
    qml.RX(w3, wires=1)
    qml.Rot(*w4, wires=2)
    qml.Rot(*w5, wires=0)
    return [qml.expval(qml.PauliZ(i)) for i in range(N)]


def qnode(func=full_circuit, device="default.qubit", **kwargs):
    return qml.QNode(func, qml.device(device, wires=N), interface="torch", **kwargs)


def pair(func=full_circuit, shapes=WEIGHT_SHAPES, **kwargs):
    """A TorchLayer and a QuantumLayer (lightning, adjoint) with the same weights, double."""
    torch.manual_seed(0)
    ref = qml.qnn.TorchLayer(qnode(func, diff_method="backprop"), shapes).double()
    ours = QuantumLayer(qnode(func), shapes, device="lightning.qubit", **kwargs).double()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def inputs(*shape, seed=1):
    return torch.rand(*shape, N, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 2


# ----------------------------------------------------------------- weights


def test_weight_shapes_convention_int_one_is_a_scalar():
    layer = QuantumLayer(qnode(), WEIGHT_SHAPES)
    shapes = {k: tuple(getattr(layer, k).shape) for k in WEIGHT_SHAPES}
    assert shapes == {"w1": (2, N, 3), "w2": (1,), "w3": (), "w4": (3,), "w5": (3,)}


def test_weights_are_registered_parameters_in_order_and_require_grad():
    layer = QuantumLayer(qnode(), WEIGHT_SHAPES)
    assert list(dict(layer.named_parameters())) == list(WEIGHT_SHAPES)
    assert all(p.requires_grad for p in layer.parameters())
    assert layer.w1 is layer._parameters["w1"]


def test_torchlayer_state_dict_loads_and_gives_the_same_outputs():
    ref, ours = pair()
    assert list(ref.state_dict()) == list(ours.state_dict())
    x = inputs(4)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=TOL)


def test_default_init_is_uniform_on_zero_two_pi():
    torch.manual_seed(0)
    layer = QuantumLayer(qnode(), {"w1": (50, N, 3), "w2": (1,), "w3": 1, "w4": 3, "w5": 3})
    w = layer.w1.detach()
    assert float(w.min()) >= 0 and float(w.max()) <= 2 * math.pi and float(w.max()) > 6


def test_callable_init_method_is_applied_to_every_weight():
    layer = QuantumLayer(qnode(), WEIGHT_SHAPES, init_method=torch.nn.init.ones_)
    assert all(torch.equal(p.detach(), torch.ones_like(p)) for p in layer.parameters())


def test_dict_init_method_with_tensors_and_callables():
    values = {
        "w1": torch.normal(0, 1, size=(2, N, 3)),
        "w2": torch.nn.init.zeros_,
        "w3": torch.tensor(0.5),
        "w4": torch.tensor([1.0, 2.0, 3.0]),
        "w5": torch.nn.init.ones_,
    }
    layer = QuantumLayer(qnode(), WEIGHT_SHAPES, init_method=values)
    assert torch.equal(layer.w1.detach(), values["w1"])
    assert torch.equal(layer.w2.detach(), torch.zeros(1))
    assert layer.w3.shape == () and float(layer.w3.detach()) == 0.5
    assert torch.equal(layer.w5.detach(), torch.ones(3))


def test_dict_init_method_errors():
    bad_shape = {k: torch.zeros(1) for k in WEIGHT_SHAPES}
    with pytest.raises(ValueError, match="shape"):
        QuantumLayer(qnode(), WEIGHT_SHAPES, init_method=bad_shape)
    with pytest.raises(KeyError):
        QuantumLayer(qnode(), WEIGHT_SHAPES, init_method={"w1": torch.zeros(2, N, 3)})


# ----------------------------------------------------------------- signature


def test_signature_errors():
    with pytest.raises(ValueError, match="must not be in weight_shapes"):
        QuantumLayer(qnode(), {**WEIGHT_SHAPES, "inputs": N})
    partial = dict(WEIGHT_SHAPES)
    del partial["w1"]
    with pytest.raises(ValueError, match="missing \\['w1'\\]"):
        QuantumLayer(qnode(), partial)

    def var_pos(inputs, w1, *args):
        return qml.expval(qml.PauliZ(0))

    with pytest.raises(TypeError, match="\\*args"):
        QuantumLayer(var_pos, {"w1": 1}, wires=1)


def test_var_keyword_circuit():
    def with_kwargs(inputs, **kwargs):
        return full_circuit(inputs, **kwargs)

    ref, ours = pair(with_kwargs)
    x = inputs(2)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=TOL)


def test_non_input_defaults():
    def with_default(inputs, w1, w2, w4, w5, w3=0.5):
        return full_circuit(inputs, w1, w2, w3, w4, w5)

    ref, ours = pair(with_default)
    x = inputs(2)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=TOL)


@pytest.mark.parametrize("where", ["shuffled", "default"])
def test_inputs_argument_is_found_by_name(where):
    def shuffled(w1, inputs, w2, w3, w4, w5):
        return full_circuit(inputs, w1, w2, w3, w4, w5)

    def default(w1, w2, w3, w4, w5, inputs=None):
        return full_circuit(inputs, w1, w2, w3, w4, w5)

    ref, ours = pair(shuffled if where == "shuffled" else default)
    x = inputs(3)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=TOL)


def test_input_arg_with_another_name():
    def circuit(x, weights):
        qml.AngleEmbedding(x, wires=range(N), rotation="Y")
        qml.RY(weights[0], wires=0)
        qml.RY(weights[1], wires=1)
        return qml.probs(op=qml.PauliZ(1))

    layer = QuantumLayer(qnode(circuit), {"weights": (2,)}, input_arg="x").double()
    x = inputs(10)
    out = layer(x)
    assert out.shape == (10, 2)
    ref = qnode(circuit)
    for x_, r in zip(x, out):
        torch.testing.assert_close(r, ref(x_, layer.weights), rtol=0, atol=TOL)


# ----------------------------------------------------------------- shapes


def test_single_input_batched_input_and_extra_batch_dimensions():
    ref, ours = pair()
    for shape in [(), (2,), (2, 5), (3, 2, 4)]:
        x = inputs(*shape)
        out = ours(x)
        assert out.shape == (*shape, N)
        torch.testing.assert_close(out, ref(x), rtol=0, atol=TOL)


def test_extra_batch_dimensions_backpropagate_to_every_weight():
    ref, ours = pair()
    x = inputs(2, 5)
    ours(x).backward(torch.ones(2, 5, N, dtype=torch.float64))
    ref(x).backward(torch.ones(2, 5, N, dtype=torch.float64))
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert a.grad is not None
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=TOL)


def test_single_measurement_gives_no_output_axis():
    def one(inputs, w):
        qml.AngleEmbedding(inputs, wires=range(N))
        qml.RX(w, wires=0)
        return qml.expval(qml.PauliZ(0))

    ref, ours = pair(one, {"w": 1})
    x = inputs(4)
    assert ours(x).shape == ref(x).shape == (4,)
    assert ours(x[0]).shape == ref(x[0]).shape == ()


# ----------------------------------------------------------------- measurements


def mixed(inputs, w):
    qml.AngleEmbedding(inputs, wires=range(N))
    qml.StronglyEntanglingLayers(w, wires=range(N))
    return [
        qml.expval(qml.PauliZ(1)),
        qml.probs(wires=[2, 0]),
        qml.var(qml.PauliX(0) @ qml.PauliY(2) + 0.5 * qml.PauliZ(1)),
        qml.var(qml.Hermitian(np.array([[1.0, 0.3], [0.3, -2.0]]), wires=1)),
        qml.probs(wires=1),
    ]


def test_expval_probs_var_concatenated_in_torchlayers_order():
    ref, ours = pair(mixed, {"w": (2, N, 3)})
    x = inputs(5)
    out = ours(x)
    assert out.shape == (5, 1 + 4 + 1 + 1 + 2)
    torch.testing.assert_close(out, ref(x), rtol=0, atol=TOL)


def test_probs_of_all_wires_and_of_one_wire():
    def all_wires(inputs, w):
        qml.AngleEmbedding(inputs, wires=range(N))
        qml.StronglyEntanglingLayers(w, wires=range(N))
        return qml.probs()

    def single(inputs, w):
        qml.AngleEmbedding(inputs, wires=range(N))
        qml.StronglyEntanglingLayers(w, wires=range(N))
        return qml.probs(wires=[1])

    for func, width in [(all_wires, 2**N), (single, 2)]:
        ref, ours = pair(func, {"w": (1, N, 3)})
        x = inputs(3)
        assert ours(x).shape == (3, width)
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=TOL)
        torch.testing.assert_close(ours(x).sum(-1), torch.ones(3, dtype=torch.float64), rtol=0, atol=TOL)


@pytest.mark.parametrize("order", [1, 2])
def test_probs_and_var_derivatives_are_exact(order):
    ref, ours = pair(mixed, {"w": (2, N, 3)})
    coeffs = torch.linspace(-1, 1, 9, dtype=torch.float64)

    def loss(layer, x):
        out = layer(x) @ coeffs
        (dx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        if order == 2:
            (dx,) = torch.autograd.grad(dx[:, 0].sum(), x, create_graph=True)
        return (dx**2).sum() + out.sum()

    grads = []
    for layer in (ours, ref):
        x = inputs(3).requires_grad_(True)
        grads.append(torch.autograd.grad(loss(layer, x), list(layer.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def test_gradients_equal_the_qnodes():
    ref, ours = pair()
    x = inputs(1)[0]
    ours(x).sum().backward()
    ref(x).sum().backward()
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=TOL)


# ----------------------------------------------------------------- operations


class FixedRotation(qml.operation.Operation):
    """A custom operation defined only by its matrix."""

    num_wires = 1
    num_params = 1

    @staticmethod
    def compute_matrix(theta):  # noqa: D102
        theta = float(qml.math.unwrap(theta))
        c, s = math.cos(theta / 2), math.sin(theta / 2)
        return np.array([[c, -1j * s], [-1j * s, c]])


def matrix_ops(inputs, w):
    qml.AngleEmbedding(inputs, wires=range(N))
    qml.QubitUnitary(qml.matrix(qml.Hadamard(0) @ qml.S(1)), wires=[0, 1])
    FixedRotation(0.7, wires=2)
    qml.adjoint(FixedRotation(0.2, wires=1))
    qml.StronglyEntanglingLayers(w, wires=range(N))
    return [qml.expval(qml.PauliZ(i)) for i in range(N)]


def test_matrix_only_operations():
    ref, ours = pair(matrix_ops, {"w": (1, N, 3)})
    x = inputs(4).requires_grad_(True)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=TOL)
    ga = torch.autograd.grad(ours(x).sum(), [x, ours.w])
    gb = torch.autograd.grad(ref(x).sum(), [x, ref.w])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL)


def test_matrix_only_operation_of_a_differentiated_input_is_a_clear_error():
    def circuit(inputs, w):
        FixedRotation(inputs[0], wires=0)
        qml.RX(w, wires=0)
        return qml.expval(qml.PauliZ(0))

    layer = QuantumLayer(circuit, {"w": 1}, wires=1).double()
    x = torch.tensor([[0.1], [0.2]], dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="given only by a matrix that depends on the inputs"):
        layer(x)

    def weight_in_matrix(inputs, w):
        qml.RX(inputs[0], wires=0)
        FixedRotation(w, wires=0)
        return qml.expval(qml.PauliZ(0))

    with pytest.raises(ValueError, match="only by a matrix has no exact derivative"):
        QuantumLayer(weight_in_matrix, {"w": 1}, wires=1)(torch.zeros(2, 1))


# ----------------------------------------------------------------- QNode device and shots


def test_qnode_device_is_used():
    layer = QuantumLayer(qnode(diff_method="parameter-shift"), WEIGHT_SHAPES)
    assert layer.device_name == "default.qubit" and layer.diff_method == "parameter-shift"
    assert layer.wires == list(range(N))
    layer = QuantumLayer(qnode(), WEIGHT_SHAPES)
    assert layer.diff_method == "backprop"
    layer = QuantumLayer(qnode(device="lightning.qubit"), WEIGHT_SHAPES)
    assert layer.diff_method == "adjoint"


def shot_circuit(inputs, w):
    qml.RX(inputs[0], wires=0)
    qml.RY(w, wires=0)
    return qml.expval(qml.PauliZ(0)), qml.probs(wires=[0])


@pytest.mark.parametrize("device", ["default.qubit", "lightning.qubit"])
def test_shots_give_sampled_estimates_and_shift_gradients(device):
    shots = 4000
    node = qml.set_shots(qml.QNode(shot_circuit, qml.device(device, wires=1, seed=7)), shots)
    layer = QuantumLayer(node, {"w": 1}, init_method={"w": torch.tensor(0.4)}).double()
    assert layer.shots == shots and layer.diff_method == "parameter-shift"
    x = torch.tensor([[0.3], [1.2]], dtype=torch.float64, requires_grad=True)
    out = layer(x)
    values = out.detach()
    exact = torch.cos(x.detach()[:, 0]) * math.cos(0.4)
    sigma = 1 / math.sqrt(shots)
    assert float((values[:, 0] - exact).abs().max()) < 5 * sigma
    assert float((values[:, 0] - exact).abs().max()) > 0  # sampled, not exact
    counts = values[:, 1:] * shots
    assert torch.allclose(counts, counts.round(), atol=1e-9)  # probabilities are frequencies
    (dx,) = torch.autograd.grad(out[:, 0].sum(), x)
    assert float((dx[:, 0] + torch.sin(x.detach()[:, 0]) * math.cos(0.4)).abs().max()) < 5 * sigma


def test_shots_with_an_exact_gradient_method_or_a_shot_vector_are_errors():
    node = qml.set_shots(qml.QNode(shot_circuit, qml.device("lightning.qubit", wires=1)), 100)
    with pytest.raises(ValueError, match="sampled estimates"):
        QuantumLayer(node, {"w": 1}, diff_method="adjoint")
    vector = qml.set_shots(qml.QNode(shot_circuit, qml.device("default.qubit", wires=1)), [10, 10])
    with pytest.raises(ValueError, match="shot vector"):
        QuantumLayer(vector, {"w": 1})


# ----------------------------------------------------------------- drawing, specs


def test_draw_and_specs_of_the_layers_circuit():
    def circuit(inputs, w1, w2):
        qml.AngleEmbedding(inputs, wires=[0, 1])
        qml.RX(w1, wires=0)
        qml.StronglyEntanglingLayers(w2, wires=[0, 1])
        return qml.expval(qml.PauliZ(0)), qml.expval(qml.PauliZ(1))

    layer = QuantumLayer(qml.QNode(circuit, qml.device("default.qubit", wires=3)), {"w1": 1, "w2": (3, 2, 3)})
    x = torch.rand(2)
    drawing = qml.draw(layer.qnode)(x)
    assert "AngleEmbedding" in drawing and f"RX({float(layer.w1.detach()):.2f})" in drawing
    specs = qml.specs(layer.qnode)(x)
    assert specs["resources"].gate_types == {"AngleEmbedding": 1, "RX": 1, "StronglyEntanglingLayers": 1}
    assert specs["device_name"] == "default.qubit" and specs["num_device_wires"] == 3
    tape = qml.workflow.construct_tape(layer.qnode)(x)
    assert len(tape.operations) == 3


# ----------------------------------------------------------------- in a model


class Net(nn.Module):
    def __init__(self, make):
        super().__init__()
        self.clayer1 = nn.Linear(N, N)
        self.qlayer1 = make()
        self.clayer2 = nn.Linear(N, N)
        self.qlayer2 = make()

    def forward(self, x):
        return self.qlayer2(self.clayer2(self.qlayer1(self.clayer1(x))))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_module_step_state_dict_and_reload(dtype, tmp_path):
    def make():
        return QuantumLayer(qnode(device="lightning.qubit"), WEIGHT_SHAPES)

    torch.manual_seed(0)
    net = Net(make).to(dtype)
    keys = {f"qlayer{i}.{k}" for i in (1, 2) for k in WEIGHT_SHAPES} | {
        f"clayer{i}.{p}" for i in (1, 2) for p in ("weight", "bias")
    }
    assert set(net.state_dict()) == keys
    x = torch.zeros(2, N, dtype=dtype)
    before = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    loss = net(x).pow(2).mean()
    assert loss.dtype == dtype
    loss.backward()
    assert all(p.grad is not None and p.grad.is_floating_point() for p in net.parameters())
    opt.step()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, net.parameters()))
    torch.save(net.state_dict(), tmp_path / "net.pt")
    again = Net(make).to(dtype)
    again.load_state_dict(torch.load(tmp_path / "net.pt"))
    torch.testing.assert_close(again(x + 0.3), net(x + 0.3), rtol=0, atol=0)


# ----------------------------------------------------------------- deliberate differences


def test_differences_plain_functions_no_inputs_and_any_qnode_interface():
    # a plain function (no QNode) runs on lightning.qubit with the given wires
    layer = QuantumLayer(full_circuit, WEIGHT_SHAPES, wires=N)
    assert layer.device_name == "lightning.qubit"

    # a circuit without inputs is allowed (TorchLayer requires one)
    def no_inputs(w):
        qml.RX(w, wires=0)
        return qml.expval(qml.PauliZ(0))

    assert QuantumLayer(no_inputs, {"w": 1}, wires=1)().shape == ()
    # the QNode's interface is neither required to be torch nor changed
    node = qml.QNode(full_circuit, qml.device("default.qubit", wires=N), interface="autograd")
    QuantumLayer(node, WEIGHT_SHAPES)
    assert node.interface == "autograd"


def test_difference_a_tuple_return_is_concatenated_like_a_list():
    # TorchLayer 0.45 stacks a tuple's measurements first, (M, B, 1), and cannot stack
    # measurements of different sizes; its documented example feeds a tuple-returning
    # circuit to nn.Linear, i.e. expects (B, M), which is what QuantumLayer gives
    def as_tuple(inputs, w):
        return tuple(mixed(inputs, w))

    ref, ours = pair(mixed, {"w": (2, N, 3)})
    tup = QuantumLayer(as_tuple, {"w": (2, N, 3)}, wires=N).double()
    tup.load_state_dict(ours.state_dict())
    x = inputs(4)
    torch.testing.assert_close(tup(x), ref(x), rtol=0, atol=TOL)
