"""quflow.QNG: one step equals qml.QNGOptimizer's; hybrid updates by the stated formula;
torch optimizer conventions; singular metrics; bad input."""

from __future__ import annotations

import copy

import numpy as np
import pennylane as qml
import pytest
import torch
from pennylane import numpy as pnp
from torch import nn

import quflow
from quflow import QNG, QuantumLayer, metric_tensor

N = 3
H = qml.Hamiltonian([1.0, 0.5, -0.7], [qml.PauliZ(0) @ qml.PauliZ(1), qml.PauliX(2), qml.PauliY(0) @ qml.PauliX(1)])


def vqe(weights):
    for i in range(N):
        qml.Hadamard(wires=i)
    with qml.QueuingManager.stop_recording():
        ops = qml.StronglyEntanglingLayers(weights, wires=range(N)).decomposition()
    for op in ops:
        qml.apply(op)
    return qml.expval(H)


SHAPE = (2, N, 3)


def vqe_layer(seed=0):
    layer = QuantumLayer(vqe, {"weights": SHAPE}, wires=N).double()
    w = torch.rand(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 3
    with torch.no_grad():
        layer.weights.copy_(w)
    return layer


@pytest.mark.parametrize("approx, pl_approx", [("block-diag", "block-diag"), ("diag", "diag"), ("full", None)])
def test_one_step_equals_pennylane_qng_optimizer(approx, pl_approx):
    layer = vqe_layer()
    w0 = layer.weights.detach().numpy().copy()
    opt = QNG(layer, lr=0.1, lam=1e-2, approx=approx)
    loss = layer()
    opt.zero_grad()
    loss.backward()
    opt.step()
    qnode = qml.QNode(vqe, qml.device("default.qubit", wires=N + 1), interface="autograd")
    reference = qml.QNGOptimizer(stepsize=0.1, approx=pl_approx, lam=1e-2)
    new = reference.step(qnode, pnp.array(w0, requires_grad=True))
    assert np.abs(np.asarray(new) - layer.weights.detach().numpy()).max() < 1e-10


def hybrid(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(2, N), nn.Tanh(), quflow.templates.strongly_entangling(N, 1), nn.Linear(N, 1)
    ).double()


def test_hybrid_step_follows_the_formula_and_adam_for_classical_parts():
    model = hybrid()
    reference = copy.deepcopy(model)
    x = torch.rand(5, 2, dtype=torch.float64)
    y = torch.rand(5, 1, dtype=torch.float64)
    opt = QNG(model, lr=0.05, lam=1e-3)
    loss = (model(x) - y).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    quantum = model[2]
    grad = quantum.weights.grad.detach().reshape(-1).clone()
    circuit_inputs = torch.tanh(model[0](x)).detach()  # the layer's inputs in this batch
    g = metric_tensor(quantum, circuit_inputs)
    expected = quantum.weights.detach().reshape(-1) - 0.05 * torch.linalg.solve(g + 1e-3 * torch.eye(g.shape[0], dtype=g.dtype), grad)
    opt.step()
    assert torch.allclose(quantum.weights.detach().reshape(-1), expected, atol=1e-10, rtol=0)

    classical = [p for n, p in reference.named_parameters() if not n.startswith("2.")]
    adam = torch.optim.Adam(classical, lr=0.05)
    loss = (reference(x) - y).pow(2).mean()
    adam.zero_grad()
    loss.backward()
    adam.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        if not name.startswith("2."):
            assert torch.allclose(p, q, atol=1e-12, rtol=0)


def test_several_quantum_layers_get_their_own_metric():
    torch.manual_seed(0)
    model = nn.Sequential(
        quflow.templates.strongly_entangling(2, 1), quflow.templates.data_reuploading(2, 2)
    ).double()
    opt = QNG(model, lr=0.1)
    assert [g["kind"] for g in opt.param_groups] == ["quantum", "quantum"]
    x = torch.rand(4, 2, dtype=torch.float64)
    loss = model(x).sum()
    loss.backward()
    second_inputs = model[0](x).detach()  # before the step changes the first layer
    expected = [metric_tensor(model[0], x), metric_tensor(model[1], second_inputs)]
    opt.step()
    metrics = [opt.state[g["params"][0]]["metric"] for g in opt.param_groups]
    assert metrics[0].shape == (6, 6) and metrics[1].shape == (12, 12)
    for got, want in zip(metrics, expected):
        assert torch.allclose(got, want, atol=1e-12, rtol=0)


def test_singular_metric_with_lam_zero_warns_and_does_not_crash():
    def circuit(weights):
        qml.RZ(weights[0], wires=0)  # acts on |0⟩: zero metric row
        qml.RX(weights[1], wires=0)
        return qml.expval(qml.PauliY(0))

    layer = QuantumLayer(circuit, {"weights": 2}, wires=1).double()
    opt = QNG(layer, lr=0.1, lam=0.0)
    loss = layer()
    loss.backward()
    with pytest.warns(RuntimeWarning, match="singular"):
        opt.step()
    assert torch.isfinite(layer.weights).all()


def test_closure_state_dict_round_trip_and_metric_every():
    x = torch.rand(6, 2, dtype=torch.float64)
    y = torch.rand(6, 1, dtype=torch.float64)

    def run(model, opt, steps):
        losses = []
        for _ in range(steps):
            def closure():
                opt.zero_grad()
                loss = (model(x) - y).pow(2).mean()
                loss.backward()
                return loss
            losses.append(opt.step(closure).item())
        return losses

    model = hybrid()
    opt = QNG(model, lr=0.05, metric_every=3)
    run(model, opt, 2)
    quantum_state = opt.state[opt.param_groups[0]["params"][0]]
    assert quantum_state["step"] == 2 and quantum_state["metric_age"] == 2
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    continued = run(model, opt, 3)

    fresh = hybrid(seed=5)
    fresh.load_state_dict(saved_model)
    fresh_opt = QNG(fresh, lr=0.05, metric_every=3)
    fresh_opt.load_state_dict(saved_opt)
    assert run(fresh, fresh_opt, 3) == continued


def test_lr_scheduler_reaches_both_groups():
    model = hybrid()
    opt = QNG(model, lr=0.1, classical="sgd")
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    model(torch.rand(2, 2, dtype=torch.float64)).sum().backward()
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.05]
    model(torch.rand(2, 2, dtype=torch.float64)).sum().backward()
    opt.step()
    assert opt._base.param_groups[0]["lr"] == 0.05


def test_fisher_block_for_classical_parameters():
    model = hybrid()
    before = model[0].weight.detach().clone()
    opt = QNG(model, lr=0.05, classical="fisher")
    for _ in range(2):
        opt.zero_grad()
        model(torch.rand(4, 2, dtype=torch.float64)).pow(2).sum().backward()
        opt.step()
    state = opt.state[opt.param_groups[1]["params"][0]]
    assert state["fisher"].shape == (13, 13)
    assert not torch.equal(before, model[0].weight)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"approx": "kfac"}, "approx must be one of"),
        ({"lam": -1.0}, "lam must be ≥ 0"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"lr": -0.1}, "lr must be > 0"),
        ({"metric_every": 0}, "metric_every"),
        ({"classical": "lbfgs"}, "classical must be"),
        ({"max_samples": 0}, "max_samples"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QNG(hybrid(), **kwargs)


def test_model_without_quantum_layer_and_step_before_forward():
    with pytest.raises(ValueError, match="no quflow.QuantumLayer"):
        QNG(nn.Linear(2, 2))
    model = hybrid()
    opt = QNG(model)
    model[2].weights.grad = torch.ones_like(model[2].weights)
    with pytest.raises(RuntimeError, match="forward"):
        opt.step()


def test_float32_model_survives_state_dict_round_trip_with_metric_reuse():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, N), quflow.templates.strongly_entangling(N, 1), nn.Linear(N, 1))
    opt = QNG(model, lr=0.05, metric_every=3, classical="fisher")
    x = torch.rand(4, 2)
    model(x).sum().backward()
    opt.step()
    fresh = QNG(model, lr=0.05, metric_every=3, classical="fisher")
    fresh.load_state_dict(opt.state_dict())
    opt.zero_grad()
    model(x).sum().backward()
    fresh.step()
    assert torch.isfinite(model[1].weights).all()


def test_metric_rejects_empty_batches_and_bad_widths():
    layer = quflow.templates.strongly_entangling(2, 1)
    with pytest.raises(ValueError, match="empty batch"):
        metric_tensor(layer, torch.zeros(0, 2))
    with pytest.raises(ValueError, match="2 features|expects 2"):
        metric_tensor(layer, torch.zeros(3, 0))


def test_vqe_demo_qng_beats_gradient_descent_at_the_same_step_size():
    from test_pinn import load_example

    demo = load_example("qng_vqe")
    target = demo.ground_energy() + 0.01
    qng = demo.run("qng:full", 0.1, 150, target, seed=0)
    gd = demo.run("gd", 0.1, 150, target, seed=0)
    assert qng["steps"] is not None
    assert gd["steps"] is None or qng["steps"] < gd["steps"]


def test_classifier_demo_runs():
    from test_pinn import load_example

    result = load_example("qng_classifier").train("qng", epochs=2)
    assert np.isfinite(result["final_loss"]) and 0 <= result["final_accuracy"] <= 1
