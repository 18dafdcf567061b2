"""QuantumLayer: values and derivatives of every order against default.qubit backprop.

Oracles: PennyLane's default.qubit with ``diff_method="backprop"`` (torch autograd
through a dense state-vector simulation, correct at every order), central finite
differences, torch.autograd.gradcheck/gradgradcheck, and the per-sample loop.
Tolerances (double precision throughout): 1e-10 against backprop and loops,
1e-6 against finite differences (step 1e-4, error O(h²)).
"""

from __future__ import annotations

import math

import numpy as np
import pennylane as qml
import pytest
import torch
from torch import nn

import quflow
from quflow import QuantumLayer

TOL = 1e-10

N_WIRES = 3


def rich_circuit(inputs, weights, extra):
    """Many gate kinds: embedding, template, controlled and Pauli rotations, adjoints."""
    qml.AngleEmbedding(inputs, wires=range(N_WIRES), rotation="Y")
    qml.StronglyEntanglingLayers(weights, wires=range(N_WIRES))
    qml.CRX(extra[0] * 2.0, wires=[0, 1])
    qml.PauliRot(inputs[..., 1] * 0.7 + extra[1], "XY", wires=[1, 2])
    qml.IsingZZ(inputs[..., 0] * inputs[..., 2], wires=[0, 2])
    qml.adjoint(qml.S(0))
    qml.adjoint(qml.RX(extra[2], wires=2))
    qml.PhaseShift(inputs[..., 2], wires=1)
    qml.Hadamard(0)
    return [
        qml.expval(qml.PauliZ(0)),
        qml.expval(qml.PauliX(0) @ qml.PauliY(1)),
        qml.expval(0.5 * qml.PauliZ(2) + qml.PauliX(1) + 0.25 * qml.Identity(0)),
        qml.expval(qml.Hadamard(2)),
    ]


SHAPES = {"weights": (2, N_WIRES, 3), "extra": (3,)}


def hybrid(device="lightning.qubit", diff_method="adjoint", seed=1, circuit=rich_circuit, shapes=SHAPES):
    """Linear(1→3) → tanh → circuit → Linear(4→1), identical init for every backend."""
    torch.manual_seed(seed)
    layer = QuantumLayer(circuit, shapes, wires=N_WIRES, device=device, diff_method=diff_method)
    return nn.Sequential(nn.Linear(1, N_WIRES), nn.Tanh(), layer, nn.Linear(4, 1)).double()


def flat(grads, params):
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(grads, params)])


def pinn_loss(model, x, order, residual_only):
    u = model(x)
    (ux,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    loss = (ux - torch.cos(x)).pow(2).mean()
    if order >= 2:
        (uxx,) = torch.autograd.grad(ux.sum(), x, create_graph=True)
        loss = loss + (uxx + torch.sin(x)).pow(2).mean()
    if order >= 3:
        (uxxx,) = torch.autograd.grad(uxx.sum(), x, create_graph=True)
        loss = loss + uxxx.pow(2).mean()
    if not residual_only:
        loss = loss + u.pow(2).mean()
    return loss


@pytest.fixture
def points():
    return torch.linspace(-1.0, 2.0, 5, dtype=torch.float64).reshape(-1, 1).requires_grad_(True)


def test_values_and_first_derivatives_match_default_qubit(points):
    ref, ours = hybrid("default.qubit", "backprop"), hybrid()
    u_ref, u = ref(points), ours(points)
    assert torch.allclose(u, u_ref, atol=TOL, rtol=0)
    g_ref = torch.autograd.grad(u_ref.pow(2).sum(), [points, *ref.parameters()])
    g = torch.autograd.grad(u.pow(2).sum(), [points, *ours.parameters()])
    for a, b in zip(g, g_ref):
        assert torch.allclose(a, b, atol=TOL, rtol=0)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("residual_only", [False, True], ids=["with-data", "residual-only"])
def test_physics_informed_weight_gradients_match_backprop(points, order, residual_only):
    """The trap: weight gradients of a loss containing du/dx (and d²u/dx²)."""
    ref, ours = hybrid("default.qubit", "backprop"), hybrid()
    params_ref, params = list(ref.parameters()), list(ours.parameters())
    loss_ref = pinn_loss(ref, points, order, residual_only)
    loss = pinn_loss(ours, points, order, residual_only)
    assert abs(loss.item() - loss_ref.item()) < TOL
    g_ref = torch.autograd.grad(loss_ref, params_ref, allow_unused=True)
    g = torch.autograd.grad(loss, params, allow_unused=True)
    circuit_weights = [i for i, (name, _) in enumerate(ours.named_parameters()) if name.startswith("2.")]
    assert all(g[i] is not None and g[i].abs().sum() > 0 for i in circuit_weights)
    assert torch.allclose(flat(g, params), flat(g_ref, params_ref), atol=TOL, rtol=0)


def test_third_derivative_matches_backprop(points):
    ref, ours = hybrid("default.qubit", "backprop"), hybrid()
    loss_ref = pinn_loss(ref, points, 3, True)
    loss = pinn_loss(ours, points, 3, True)
    g_ref = torch.autograd.grad(loss_ref, list(ref.parameters()), allow_unused=True)
    g = torch.autograd.grad(loss, list(ours.parameters()), allow_unused=True)
    assert torch.allclose(flat(g, list(ours.parameters())), flat(g_ref, list(ref.parameters())), atol=TOL, rtol=0)


def test_parameter_shift_method_matches_adjoint(points):
    adj, shift = hybrid(), hybrid(diff_method="parameter-shift")
    la, ls = pinn_loss(adj, points[:2], 1, False), pinn_loss(shift, points[:2], 1, False)
    ga = torch.autograd.grad(la, list(adj.parameters()))
    gs = torch.autograd.grad(ls, list(shift.parameters()))
    assert torch.allclose(flat(ga, list(adj.parameters())), flat(gs, list(shift.parameters())), atol=TOL, rtol=0)


def test_generic_device_parameter_shift_matches_backprop():
    def circuit(inputs, weights):
        qml.RY(inputs[..., 0], wires=0)
        qml.RX(weights[0], wires=1)
        qml.CNOT(wires=[0, 1])
        qml.RZ(weights[1] * inputs[..., 0], wires=1)
        qml.RX(weights[2], wires=1)
        return qml.expval(qml.PauliY(1))

    torch.manual_seed(0)
    ref = QuantumLayer(circuit, {"weights": 3}, wires=2, device="default.qubit", diff_method="backprop").double()
    torch.manual_seed(0)
    ours = QuantumLayer(circuit, {"weights": 3}, wires=2, device="default.qubit", diff_method="parameter-shift").double()
    x = torch.tensor([[0.3], [1.1]], dtype=torch.float64, requires_grad=True)
    results = []
    for layer in (ref, ours):
        u = layer(x)
        (ux,) = torch.autograd.grad(u.sum(), x, create_graph=True)
        results.append(torch.cat([u, ux.flatten(), *torch.autograd.grad(ux.pow(2).sum(), [layer.weights])]))
    assert torch.allclose(results[0], results[1], atol=TOL, rtol=0)


def test_second_derivative_against_finite_differences():
    model = hybrid()
    x = torch.tensor([[0.4], [1.3]], dtype=torch.float64, requires_grad=True)
    u = model(x)
    (ux,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    (uxx,) = torch.autograd.grad(ux.sum(), x)
    h = 1e-4
    with torch.no_grad():
        fd1 = (model(x + h) - model(x - h)) / (2 * h)
        fd2 = (model(x + h) - 2 * model(x) + model(x - h)) / h**2
    assert torch.allclose(ux, fd1, atol=1e-6, rtol=0)
    assert torch.allclose(uxx, fd2, atol=1e-5, rtol=0)  # O(h²) + round-off ε/h² ≈ 1e-8


def test_weight_gradient_of_residual_loss_against_finite_differences(points):
    model = hybrid()
    weights = model[2].weights
    loss = pinn_loss(model, points, 1, True)
    (g,) = torch.autograd.grad(loss, [weights])
    h = 1e-4
    for index in [(0, 0, 0), (1, 2, 1), (0, 1, 2)]:
        with torch.no_grad():
            weights[index] += h
        up = pinn_loss(model, points, 1, True).item()
        with torch.no_grad():
            weights[index] -= 2 * h
        down = pinn_loss(model, points, 1, True).item()
        with torch.no_grad():
            weights[index] += h
        assert abs((up - down) / (2 * h) - g[index].item()) < 1e-6


def test_gradcheck_and_gradgradcheck_double():
    torch.manual_seed(3)
    layer = QuantumLayer(rich_circuit, SHAPES, wires=N_WIRES).double()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in layer.named_parameters()}
    x = torch.rand(2, N_WIRES, dtype=torch.float64, requires_grad=True)

    def f(x, weights, extra):
        return torch.func.functional_call(layer, {"weights": weights, "extra": extra}, (x,))

    args = (x, params["weights"], params["extra"])
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-8)
    assert torch.autograd.gradgradcheck(f, args, eps=1e-6, atol=1e-7)


def test_weight_hessian_matches_backprop():
    def circuit(weights):
        qml.RX(weights[0], wires=0)
        qml.RY(weights[1], wires=1)
        qml.CNOT(wires=[0, 1])
        qml.Rot(weights[2], weights[3], weights[0], wires=1)
        return qml.expval(qml.PauliZ(1) @ qml.PauliX(0))

    w = torch.tensor([0.3, -0.7, 1.1, 0.4], dtype=torch.float64)
    hessians = []
    for device, method in (("default.qubit", "backprop"), ("lightning.qubit", "adjoint")):
        layer = QuantumLayer(circuit, {"weights": 4}, wires=2, device=device, diff_method=method).double()
        hessians.append(torch.autograd.functional.hessian(
            lambda v, layer=layer: torch.func.functional_call(layer, {"weights": v}, ()), w
        ))
    assert torch.allclose(hessians[0], hessians[1], atol=TOL, rtol=0)


def test_batch_equals_per_sample_loop():
    torch.manual_seed(5)
    layer = QuantumLayer(rich_circuit, SHAPES, wires=N_WIRES).double()
    x = torch.rand(7, N_WIRES, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    g_batch = torch.autograd.grad(out.pow(2).sum(), [x, layer.weights])
    rows = [layer(x[i]) for i in range(7)]
    assert all(r.shape == (4,) for r in rows)
    loop = torch.stack(rows)
    g_loop = torch.autograd.grad(loop.pow(2).sum(), [x, layer.weights])
    assert torch.allclose(out, loop, atol=TOL, rtol=0)
    for a, b in zip(g_batch, g_loop):
        assert torch.allclose(a, b, atol=TOL, rtol=0)


def test_circuit_without_inputs_and_single_output():
    def circuit(weights):
        qml.RX(weights[0], wires=0)
        qml.RY(weights[1], wires=0)
        return qml.expval(qml.PauliZ(0))

    layer = QuantumLayer(circuit, {"weights": 2}, wires=1).double()
    with torch.no_grad():
        layer.weights.copy_(torch.tensor([0.3, 0.5], dtype=torch.float64))
    value = layer()
    assert value.shape == ()
    assert abs(value.item() - math.cos(0.3) * math.cos(0.5)) < 1e-14
    value.backward()
    expected = torch.tensor([-math.sin(0.3) * math.cos(0.5), -math.cos(0.3) * math.sin(0.5)], dtype=torch.float64)
    assert torch.allclose(layer.weights.grad, expected, atol=1e-14, rtol=0)


def test_single_measurement_batched_shape_and_float32_output():
    layer = quflow.templates.strongly_entangling(2, 1)
    assert layer.weights.dtype == torch.float32
    out = layer(torch.zeros(3, 2))
    assert out.shape == (3, 2) and out.dtype == torch.float32

    def circuit(inputs, weights):
        qml.RY(inputs[..., 0] + weights[0], wires=0)
        return qml.expval(qml.PauliZ(0))

    single = QuantumLayer(circuit, {"weights": (1,)}, wires=1)
    with torch.no_grad():
        single.weights.zero_()
    x = torch.tensor([[0.0], [0.5], [1.0]])
    assert single(x).shape == (3,)
    assert torch.allclose(single(x), torch.cos(x[:, 0]), atol=1e-6)


def test_accepts_a_qnode():
    dev = qml.device("default.qubit", wires=2)

    @qml.qnode(dev)
    def circuit(inputs, weights):
        qml.AngleEmbedding(inputs, wires=range(2))
        qml.BasicEntanglerLayers(weights, wires=range(2))
        return [qml.expval(qml.PauliZ(i)) for i in range(2)]

    torch.manual_seed(0)
    layer = QuantumLayer(circuit, {"weights": (2, 2)}, wires=2).double()
    reference = qml.qnn.TorchLayer(circuit, {"weights": (2, 2)}).double()
    with torch.no_grad():
        reference.weights.copy_(layer.weights)
    x = torch.rand(4, 2, dtype=torch.float64)
    assert torch.allclose(layer(x), reference(x), atol=TOL, rtol=0)


# ----------------------------------------------------------------------------- errors


def simple(inputs, weights):
    qml.AngleEmbedding(inputs, wires=range(2))
    qml.StronglyEntanglingLayers(weights, wires=range(2))
    return [qml.expval(qml.PauliZ(i)) for i in range(2)]


def test_wrong_input_width_is_reported():
    layer = QuantumLayer(simple, {"weights": (1, 2, 3)}, wires=2, input_size=2)
    with pytest.raises(ValueError, match="3 features per sample; this layer expects 2"):
        layer(torch.zeros(4, 3))
    lazy = QuantumLayer(simple, {"weights": (1, 2, 3)}, wires=2)
    lazy(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="expects 2"):
        lazy(torch.zeros(4, 1))


@pytest.mark.parametrize(
    "shapes, message",
    [
        ({"weights": (1, 2, 2)}, "recording the circuit"),  # template wants (L, 2, 3)
        ({"weights": (1, 3, 3)}, "recording the circuit"),
        ({"weights": (1, 2, 3), "other": 2}, "unknown \\['other'\\]"),
        ({}, "missing \\['weights'\\]"),
    ],
)
def test_weight_shapes_that_do_not_match_the_circuit(shapes, message):
    with pytest.raises(ValueError, match=message):
        QuantumLayer(simple, shapes, wires=2)(torch.zeros(2, 2))


def test_unused_weight_entries_are_reported():
    def circuit(inputs, weights):
        qml.RY(inputs[..., 0] + weights[0], wires=0)
        return qml.expval(qml.PauliZ(0))

    with pytest.raises(ValueError, match="uses 1 of them"):
        QuantumLayer(circuit, {"weights": 3}, wires=1)(torch.zeros(2, 1))


def test_bad_inputs():
    layer = QuantumLayer(simple, {"weights": (1, 2, 3)}, wires=2)
    with pytest.raises(ValueError, match="NaN or Inf"):
        layer(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(TypeError, match="real floating"):
        layer(torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        layer(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="shape \\(\\.\\.\\., features\\)"):
        layer(torch.tensor(1.0))
    with pytest.raises(ValueError, match="takes .inputs."):
        layer()


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"device": "default.qubit", "diff_method": "adjoint"}, ValueError, "adjoint' runs on lightning.qubit"),
        ({"diff_method": "backprop"}, ValueError, "needs default.qubit"),
        ({"diff_method": "finite-diff"}, ValueError, "diff_method must be one of"),
        ({"wires": 0}, ValueError, "wires must be"),
        ({"wires": 2.5}, TypeError, "wires must be"),
        ({"input_size": 0}, ValueError, "input_size"),
    ],
)
def test_bad_configuration(kwargs, error, message):
    config = {"wires": 2, **kwargs}
    with pytest.raises(error, match=message):
        QuantumLayer(simple, {"weights": (1, 2, 3)}, **config)


def test_unsupported_operations_and_measurements():
    class Opaque(qml.operation.Operation):
        num_wires = 1
        num_params = 1

    def opaque(inputs, weights):
        Opaque(weights[0], wires=0)
        return qml.expval(qml.PauliZ(0))

    with pytest.raises(ValueError, match="Opaque on wires \\[0\\] has no decomposition"):
        QuantumLayer(opaque, {"weights": (1,)}, wires=1)(torch.zeros(1, 1))

    def mid_circuit(inputs, weights):
        qml.RX(weights[0], wires=0)
        qml.cond(qml.measure(0), qml.RX)(inputs[..., 0], wires=0)
        return qml.expval(qml.PauliZ(0))

    with pytest.raises(ValueError, match="mid-circuit measurements and qml.cond"):
        QuantumLayer(mid_circuit, {"weights": (1,)}, wires=1)(torch.zeros(1, 1))

    def state(inputs, weights):
        qml.RX(weights[0], wires=0)
        return qml.state()

    with pytest.raises(ValueError, match="is not supported"):
        QuantumLayer(state, {"weights": (1,)}, wires=1)(torch.zeros(1, 1))

    def outside(inputs, weights):
        qml.RX(weights[0], wires=5)
        return qml.expval(qml.PauliZ(0))

    with pytest.raises(ValueError, match="not in the layer's wires"):
        QuantumLayer(outside, {"weights": (1,)}, wires=1)(torch.zeros(1, 1))


def test_set_lightning_threads_validates():
    with pytest.raises(ValueError, match="positive int"):
        quflow.set_lightning_threads(0)
    quflow.set_lightning_threads(1)


# ----------------------------------------------------------------------------- templates


def test_data_reuploading_is_the_documented_circuit():
    torch.manual_seed(0)
    layer = quflow.templates.data_reuploading(2, 3, n_inputs=1).double()

    def written_out(inputs, weights):
        for l in range(3):
            qml.RY(inputs[..., 0], wires=0)
            qml.StronglyEntanglingLayers(weights[l : l + 1], wires=range(2))
        return [qml.expval(qml.PauliZ(i)) for i in range(2)]

    ref = QuantumLayer(written_out, {"weights": (3, 2, 3)}, wires=2, device="default.qubit", diff_method="backprop").double()
    with torch.no_grad():
        ref.weights.copy_(layer.weights)
    x = torch.linspace(0, 1, 4, dtype=torch.float64).reshape(-1, 1)
    assert torch.allclose(layer(x), ref(x), atol=TOL, rtol=0)
    assert layer.input_size == 1


def test_template_arguments_are_validated():
    with pytest.raises(ValueError, match="n_inputs"):
        quflow.templates.strongly_entangling(2, 1, n_inputs=3)
    with pytest.raises(ValueError, match="rotation"):
        quflow.templates.data_reuploading(2, 1, rotation="W")
    with pytest.raises(ValueError, match="n_layers"):
        quflow.templates.strongly_entangling(2, 0)


# ----------------------------------------------------------------------------- review cases


def test_outputs_follow_the_returned_order_and_all_measurements_must_be_returned():
    def swapped(inputs, weights):
        qml.RX(weights[0], wires=0)
        z0 = qml.expval(qml.PauliZ(0))
        z1 = qml.expval(qml.PauliZ(1))
        return [z1, z0]

    layer = QuantumLayer(swapped, {"weights": (1,)}, wires=2).double()
    with torch.no_grad():
        layer.weights.fill_(3.0)
    out = layer(torch.zeros(1, 1, dtype=torch.float64))
    assert torch.allclose(out, torch.tensor([[1.0, math.cos(3.0)]], dtype=torch.float64), atol=1e-14)

    def dropped(inputs, weights):
        qml.RX(weights[0], wires=0)
        qml.expval(qml.PauliZ(1))
        return qml.expval(qml.PauliZ(0))

    with pytest.raises(ValueError, match="must return every measurement"):
        QuantumLayer(dropped, {"weights": (1,)}, wires=2)(torch.zeros(1, 1))

    def outside(inputs, weights):
        qml.RX(weights[0], wires=0)
        return qml.expval(qml.PauliZ(3))

    with pytest.raises(ValueError, match="measurement .* not in the layer's wires"):
        QuantumLayer(outside, {"weights": (1,)}, wires=1)(torch.zeros(1, 1))


def test_weight_check_is_robust_to_zero_inputs_frozen_weights_and_no_grad():
    def scaled(inputs, w):
        qml.RY(w[0] * inputs[..., 0], wires=0)
        return qml.expval(qml.PauliZ(0))

    QuantumLayer(scaled, {"w": (1,)}, wires=1)(torch.zeros(2, 1))  # x = 0 hides no weight
    frozen = QuantumLayer(scaled, {"w": (1,)}, wires=1)
    frozen.w.requires_grad_(False)
    frozen(torch.rand(2, 1))

    def unused(inputs, w):
        qml.RY(w[0] * inputs[..., 0], wires=0)
        return qml.expval(qml.PauliZ(0))

    with torch.no_grad(), pytest.raises(ValueError, match="uses 1 of them"):
        QuantumLayer(unused, {"w": 2}, wires=1)(torch.rand(2, 1))


def test_failed_first_call_leaves_no_state():
    def two_features(inputs, weights):
        qml.RX(inputs[..., 1] + weights[0], wires=0)
        return qml.expval(qml.PauliZ(0))

    layer = QuantumLayer(two_features, {"weights": (1,)}, wires=1)
    with pytest.raises(ValueError, match="recording the circuit"):
        layer(torch.rand(3, 1))
    assert layer.input_size is None and not layer._checked
    assert layer(torch.rand(3, 2)).shape == (3,)


def test_threads_calling_one_layer_get_serial_results():
    import threading

    layer = quflow.templates.strongly_entangling(4, 2).double()
    xs = [torch.rand(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    with torch.no_grad():
        serial = [layer(x) for x in xs]
        results = [None] * 4

        def work(i):
            for _ in range(3):
                results[i] = layer(xs[i])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert all(torch.equal(a, b) for a, b in zip(serial, results))


def test_device_instance_with_labelled_wires():
    def circuit(inputs, weights):
        qml.RY(inputs[..., 0], wires="a")
        qml.CNOT(wires=["a", "b"])
        qml.RX(weights[0], wires="b")
        return qml.expval(qml.PauliZ("b") @ qml.PauliX("a"))

    dev = qml.device("default.qubit", wires=["a", "b"])
    torch.manual_seed(0)
    ours = QuantumLayer(circuit, {"weights": (1,)}, wires=["a", "b"], device=dev, diff_method="parameter-shift").double()
    torch.manual_seed(0)
    ref = QuantumLayer(circuit, {"weights": (1,)}, wires=["a", "b"], device=dev, diff_method="backprop").double()
    x = torch.tensor([[0.4], [1.2]], dtype=torch.float64)
    assert torch.allclose(ours(x), ref(x), atol=TOL, rtol=0)


def test_set_lightning_threads_type():
    with pytest.raises(TypeError, match="must be an int"):
        quflow.set_lightning_threads("2")


def test_torch_func_transforms_get_a_clear_error():
    layer = quflow.templates.strongly_entangling(2, 1).double()
    x = torch.rand(3, 2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="does not support torch.func transforms"):
        torch.func.vmap(layer)(x)
    with pytest.raises(RuntimeError, match="does not support torch.func transforms"):
        torch.func.grad(lambda w: torch.func.functional_call(layer, {"weights": w}, (x,)).sum())(layer.weights.detach())


def test_last_order_sweep_equals_the_shift_rule_path():
    """The forward-over-adjoint sweep (a backward that builds no graph) against the
    differentiable shift-rule path (the same backward with create_graph=True)."""

    class Fixed(qml.operation.Operation):
        num_wires = 2
        num_params = 0

        @staticmethod
        def compute_matrix():  # noqa: D102
            return qml.matrix(qml.CRY(0.4, wires=[0, 1]) @ qml.Hadamard(0), wire_order=[0, 1])

    def circuit(inputs, weights):
        # a run of one-qubit gates on wire 0 (fused by the sweep), three of them on inputs
        qml.RX(inputs[..., 0], wires=0)
        qml.RZ(weights[0, 0, 1], wires=0)
        qml.RY(inputs[..., 1] * weights[0, 0, 2], wires=0)
        qml.PhaseShift(inputs[..., 2], wires=0)
        qml.AngleEmbedding(inputs, wires=range(3), rotation="Y")
        qml.StronglyEntanglingLayers(weights, wires=range(3))
        qml.PhaseShift(inputs[..., 0] * weights[0, 0, 0], wires=1)
        Fixed(wires=[2, 0])
        qml.MultiRZ(inputs[..., 1], wires=[0, 1, 2])
        qml.IsingXX(weights[0, 1, 1], wires=[0, 2])
        return [
            qml.expval(qml.PauliX(0) @ qml.PauliY(1)),
            qml.expval(qml.Hermitian(np.array([[1.0, 0.5j], [-0.5j, -1.0]]), wires=2)),
            qml.var(qml.PauliZ(1) + 0.3 * qml.PauliX(2)),
            qml.probs(wires=[0, 2]),
        ]

    torch.manual_seed(4)
    layer = QuantumLayer(circuit, {"weights": (1, 3, 3)}, wires=3).double()
    x = torch.rand(5, 3, dtype=torch.float64, requires_grad=True)
    coeffs = torch.randn(7, dtype=torch.float64)
    grads = []
    for create_graph in (True, False):
        u = layer(x) @ coeffs
        (ux,) = torch.autograd.grad(u.sum(), x, create_graph=True)
        loss = (ux * torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)).pow(2).sum() + u.sum()
        grads.append(torch.autograd.grad(loss, [x, layer.weights], create_graph=create_graph))
    for slow, fast in zip(*grads):
        torch.testing.assert_close(fast, slow.detach(), rtol=0, atol=TOL)
