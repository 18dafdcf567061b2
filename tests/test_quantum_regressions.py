"""Regression tests for cases that were silently wrong or crashed (issue 11).

Each test failed on the code before the fix: per-sample angles from single-feature
inputs, ``init``'s return value, numpy integers, non-finite weights, copying and saving
models that hold a QuantumLayer, and QNG's metric taken from the wrong forward call.
"""

from __future__ import annotations

import copy
import io
import math
import pickle

import numpy as np
import pennylane as qml
import pytest
import torch
from torch import nn

import quflow
from quflow import QuantumLayer

TOL = 1e-10


def one_feature(inputs, w):
    """``inputs[0]`` is the single feature of one sample (TorchLayer's convention)."""
    qml.RX(inputs[0], wires=0)
    qml.RY(w, wires=0)
    return qml.expval(qml.PauliZ(0))


def two_features(inputs, w):
    qml.RX(inputs[0], wires=0)
    qml.RY(inputs[1] * w[0], wires=1)
    qml.CNOT(wires=[0, 1])
    return [qml.expval(qml.PauliZ(0)), qml.expval(qml.PauliZ(1))]


def embedded(inputs, weights):
    qml.AngleEmbedding(inputs, wires=range(2))
    qml.StronglyEntanglingLayers(weights, wires=range(2))
    return [qml.expval(qml.PauliZ(0)), qml.expval(qml.PauliZ(1))]


# ----------------------------------------------------------------- per-sample angles


def test_single_feature_batch_gets_each_samples_angle():
    # before: RX(inputs[0]) on (3, 1) inputs applied sample 0's angle to all three
    layer = QuantumLayer(one_feature, {"w": 1}, wires=1).double()
    x = torch.tensor([[0.1], [0.7], [1.5]], dtype=torch.float64)
    out = layer(x)
    w = layer.w.detach()
    expected = torch.cos(x[:, 0]) * torch.cos(w)  # ⟨Z⟩ after RY(w)RX(x)|0⟩
    assert out.shape == (3,)
    torch.testing.assert_close(out, expected, rtol=0, atol=TOL)
    loop = torch.stack([layer(x[b]) for b in range(3)])
    torch.testing.assert_close(out, loop, rtol=0, atol=TOL)


def test_single_feature_batch_gives_per_point_derivatives():
    layer = QuantumLayer(one_feature, {"w": 1}, wires=1).double()
    x = torch.tensor([[0.1], [0.7], [1.5]], dtype=torch.float64, requires_grad=True)
    (ux,) = torch.autograd.grad(layer(x).sum(), x, create_graph=True)
    w = layer.w.detach()
    torch.testing.assert_close(ux[:, 0], -torch.sin(x[:, 0].detach()) * torch.cos(w), rtol=0, atol=TOL)
    # weight gradient of a loss with du/dx in it: d/dw Σ sin(x)·sin(w) ... = Σ sin(x_b) sin(w)
    ux.sum().backward()
    expected = (torch.sin(x.detach()[:, 0]) * torch.sin(w)).sum()
    torch.testing.assert_close(layer.w.grad, expected, rtol=0, atol=TOL)


def test_as_many_features_as_samples_is_not_mistaken_for_a_batch():
    # before: with B == F, inputs[0] (a row of 2) was taken as one angle per sample
    layer = QuantumLayer(two_features, {"w": (1,)}, wires=2).double()
    x = torch.tensor([[0.3, 1.1], [2.0, -0.4]], dtype=torch.float64)
    out = layer(x).detach()
    w = float(layer.w.detach())
    torch.testing.assert_close(out[:, 0], torch.cos(x[:, 0]), rtol=0, atol=TOL)  # ⟨Z0⟩ = cos x0
    assert abs(float(out[1, 1]) - math.cos(2.0) * math.cos(-0.4 * w)) < TOL  # ⟨Z0 Z1⟩ before the CNOT
    loop = torch.stack([layer(x[b]) for b in range(2)])
    torch.testing.assert_close(layer(x), loop, rtol=0, atol=TOL)


# ----------------------------------------------------------------- init


def test_init_return_value_is_used():
    # before: the returned tensor was dropped and the weight kept torch.empty's memory
    init = lambda t: torch.nn.init.normal_(torch.empty_like(t), std=0.1)  # noqa: E731
    torch.manual_seed(3)
    layer = QuantumLayer(embedded, {"weights": (1, 2, 3)}, wires=2, init=init)
    torch.manual_seed(3)
    expected = torch.nn.init.normal_(torch.empty(1, 2, 3), std=0.1)
    assert torch.equal(layer.weights.detach(), expected)
    assert torch.isfinite(layer(torch.zeros(4, 2))).all()


def test_in_place_init_and_init_method_dict():
    layer = QuantumLayer(embedded, {"weights": (1, 2, 3)}, wires=2, init=torch.nn.init.zeros_)
    assert torch.equal(layer.weights.detach(), torch.zeros(1, 2, 3))
    value = torch.arange(6.0).reshape(1, 2, 3)
    layer = QuantumLayer(
        two_features, {"w": (1,)}, wires=2,
        init_method={"w": torch.nn.init.ones_},
    )
    assert torch.equal(layer.w.detach(), torch.ones(1))
    layer = QuantumLayer(embedded, {"weights": (1, 2, 3)}, wires=2, init_method={"weights": value})
    assert torch.equal(layer.weights.detach(), value)
    with pytest.raises(KeyError, match="no entry for weight 'weights'"):
        QuantumLayer(embedded, {"weights": (1, 2, 3)}, wires=2, init_method={"other": value})
    with pytest.raises(ValueError, match="has shape"):
        QuantumLayer(embedded, {"weights": (1, 2, 3)}, wires=2, init_method={"weights": torch.zeros(3)})
    with pytest.raises(ValueError, match="not both"):
        QuantumLayer(embedded, {"weights": (1, 2, 3)}, wires=2, init=torch.nn.init.zeros_, init_method=torch.nn.init.ones_)


def test_non_finite_weights_are_an_error():
    # before: NaN weights gave NaN outputs with no error
    with pytest.raises(ValueError, match="initial value of weight 'weights'.*NaN or Inf"):
        QuantumLayer(embedded, {"weights": (1, 2, 3)}, wires=2, init=lambda t: torch.full_like(t, float("nan")))
    layer = QuantumLayer(embedded, {"weights": (1, 2, 3)}, wires=2)
    with torch.no_grad():
        layer.weights[0, 1, 2] = float("inf")
    with pytest.raises(ValueError, match="weight 'weights'.*NaN or Inf"):
        layer(torch.zeros(2, 2))


# ----------------------------------------------------------------- numpy integers


def test_numpy_integers_are_accepted():
    # before: wires=np.int64(3) and np.int64 entries in weight_shapes were rejected
    def circuit(inputs, w, v):
        qml.AngleEmbedding(inputs, wires=range(3))
        qml.StronglyEntanglingLayers(w, wires=range(3))
        qml.RX(v[0] + v[1], wires=0)
        return qml.expval(qml.PauliZ(0))

    layer = QuantumLayer(
        circuit, {"w": (1, np.int64(3), 3), "v": np.int64(2)}, wires=np.int64(3), input_size=np.int32(3)
    )
    assert layer.w.shape == (1, 3, 3) and layer.v.shape == (2,)
    assert layer(torch.zeros(2, 3)).shape == (2,)
    assert quflow.templates.strongly_entangling(np.int64(2), np.int64(1)).wires == [0, 1]


# ----------------------------------------------------------------- copy and save


def model_with_layer():
    torch.manual_seed(0)
    layer = QuantumLayer(embedded, {"weights": (1, 2, 3)}, wires=2)
    return nn.Sequential(nn.Linear(1, 2), nn.Tanh(), layer, nn.Linear(2, 1)).double()


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_model_copies_and_saves_after_a_forward(how):
    # before: after the first forward these raised "cannot pickle 'StateVectorC128'"
    model = model_with_layer()
    x = torch.linspace(0, 1, 5, dtype=torch.float64).reshape(-1, 1)
    before = model(x)
    before.sum().backward()
    if how == "deepcopy":
        clone = copy.deepcopy(model)
    elif how == "pickle":
        clone = pickle.loads(pickle.dumps(model))
    else:
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        clone = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(clone(x), before, rtol=0, atol=TOL)
    clone.zero_grad()
    clone(x).sum().backward()
    for p, q in zip(model.parameters(), clone.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=TOL)
    # the original keeps working and the two do not share parameters
    with torch.no_grad():
        next(clone.parameters()).add_(1.0)
    torch.testing.assert_close(model(x), before, rtol=0, atol=TOL)


def test_copy_before_first_forward_and_of_a_default_qubit_layer():
    # (passed before too; kept so the cache reset covers the backprop QNode and devices)
    layer = QuantumLayer(embedded, {"weights": (1, 2, 3)}, wires=2, device="default.qubit", diff_method="backprop").double()
    clone = copy.deepcopy(layer)
    x = torch.rand(3, 2, dtype=torch.float64)
    torch.testing.assert_close(clone(x), layer(x), rtol=0, atol=TOL)
    again = pickle.loads(pickle.dumps(layer))
    torch.testing.assert_close(again(x), layer(x), rtol=0, atol=TOL)


# ----------------------------------------------------------------- QNG's metric


def qng_model(seed=0):
    torch.manual_seed(seed)
    layer = QuantumLayer(embedded, {"weights": (2, 2, 3)}, wires=2)
    return nn.Sequential(nn.Linear(2, 2), nn.Tanh(), layer, nn.Linear(2, 1)).double()


def one_step(model, x, y, between=None):
    opt = quflow.QNG(model, lr=0.1, lam=1e-2, classical="sgd")
    loss = (model(x)[:, 0] - y).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    if between is not None:
        between(model)
    opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_validation_forward_between_backward_and_step_does_not_change_the_update():
    # before: the metric was taken at the most recent forward's inputs (the validation batch)
    x = torch.rand(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.rand(6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    validation = torch.rand(9, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 3

    def evaluate(model):
        with torch.no_grad():
            model(validation)
        model(validation[:2]).sum()  # with gradients on, but never backpropagated

    plain = one_step(qng_model(), x, y)
    with_eval = one_step(qng_model(), x, y, between=evaluate)
    for a, b in zip(plain, with_eval):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def doubled(inputs, weights):
    """Two registers with the same weights: the product state of two calls of ``embedded``."""
    qml.AngleEmbedding(inputs[..., :2], wires=[0, 1])
    qml.StronglyEntanglingLayers(weights, wires=[0, 1])
    qml.AngleEmbedding(inputs[..., 2:], wires=[2, 3])
    qml.StronglyEntanglingLayers(weights, wires=[2, 3])
    return [qml.expval(qml.PauliZ(0)), qml.expval(qml.PauliZ(2))]


def test_layer_called_twice_gets_the_metric_of_both_calls():
    # before: Sequential(q, q) got the metric of the second call only
    torch.manual_seed(0)
    q = QuantumLayer(embedded, {"weights": (1, 2, 3)}, wires=2).double()
    x = torch.rand(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    opt = quflow.QNG(q, lr=0.1, lam=1e-3)
    start = q.weights.detach().clone()
    hidden = q(x)
    out = q(hidden)
    out.sum().backward()
    grad = q.weights.grad.detach().reshape(-1).clone()
    summed = quflow.metric_tensor(q, x) + quflow.metric_tensor(q, hidden.detach())
    opt.step()
    # oracle: the product state of both calls, one circuit on 4 wires with shared weights
    pair = QuantumLayer(doubled, {"weights": (1, 2, 3)}, wires=4, init_method={"weights": start}).double()
    g = quflow.metric_tensor(pair, torch.cat([x, hidden.detach()], dim=1))
    torch.testing.assert_close(g, summed, rtol=0, atol=1e-12)
    expected = start.reshape(-1) - 0.1 * torch.linalg.solve(g + 1e-3 * torch.eye(6, dtype=torch.float64), grad)
    torch.testing.assert_close(q.weights.detach().reshape(-1), expected, rtol=0, atol=1e-10)


def test_physics_informed_loss_counts_each_call_once():
    torch.manual_seed(0)
    q = QuantumLayer(one_feature, {"w": 1}, wires=1).double()
    x = torch.linspace(0, 1, 4, dtype=torch.float64).reshape(-1, 1).requires_grad_(True)
    opt = quflow.QNG(q, lr=0.1, lam=1e-3)
    u = q(x)
    (ux,) = torch.autograd.grad(u.sum(), x, create_graph=True)  # passes the call once
    loss = (ux + 1).pow(2).mean() + u.pow(2).mean()  # and backward passes it again
    loss.backward()
    assert len(q._stepped) == 1
    opt.step()
    assert q._stepped == []


def test_template_layers_and_transfer_heads_save_whole():
    # before: the templates' circuits were closures, so torch.save(model) could not pickle them
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    model = nn.Sequential(
        quflow.transfer.hybrid_head(backbone, quflow.templates.data_reuploading(2, 2), 4, 1),
        nn.Tanh(),
    ).double()
    x = torch.rand(5, 3, dtype=torch.float64)
    before = model(x)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    clone = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(clone(x), before, rtol=0, atol=TOL)


def test_calls_are_kept_only_while_a_qng_optimizer_steps_the_layer():
    torch.manual_seed(0)
    q = QuantumLayer(embedded, {"weights": (1, 2, 3)}, wires=2).double()
    x = torch.rand(3, 2, dtype=torch.float64)
    for _ in range(3):  # plain torch optimizers: nothing accumulates
        q(x).sum().backward()
    assert q._stepped == []
    opt = quflow.QNG(q, lr=0.1)
    q(x).sum().backward()
    assert len(q._stepped) == 1
    opt.step()
    assert q._stepped == []
    del opt
    import gc

    gc.collect()
    q(x).sum().backward()
    assert q._stepped == []


def test_metric_of_a_per_sample_circuit_averages_each_samples_metric():
    # RY(w) after RX(x)|0⟩: g = Var(Y/2) = (1 − ⟨Y⟩²)/4 = cos²(x)/4, averaged over the samples
    q = QuantumLayer(one_feature, {"w": 1}, wires=1).double()
    x = torch.tensor([[0.1], [0.7], [1.5]], dtype=torch.float64)
    g = quflow.metric_tensor(q, x)
    each = torch.stack([quflow.metric_tensor(q, x[b]) for b in range(3)]).mean(0)
    torch.testing.assert_close(g, each, rtol=0, atol=1e-12)
    expected = (torch.cos(x[:, 0]) ** 2 / 4).mean().reshape(1, 1)
    torch.testing.assert_close(g, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "device, method", [("default.qubit", "backprop"), ("default.qubit", "parameter-shift")]
)
def test_per_sample_recording_on_other_devices(device, method):
    ours = QuantumLayer(one_feature, {"w": 1}, wires=1, init_method={"w": torch.tensor(0.3)}).double()
    other = QuantumLayer(
        one_feature, {"w": 1}, wires=1, device=device, diff_method=method, init_method={"w": torch.tensor(0.3)}
    ).double()
    x = torch.tensor([[0.1], [0.7], [1.5]], dtype=torch.float64, requires_grad=True)
    a, b = ours(x), other(x)
    torch.testing.assert_close(b, a, rtol=0, atol=TOL)
    ga = torch.autograd.grad(a.sum(), [x, ours.w])
    gb = torch.autograd.grad(b.sum(), [x, other.w])
    for p, q in zip(ga, gb):
        torch.testing.assert_close(q, p, rtol=0, atol=TOL)
