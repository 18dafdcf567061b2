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


# ----------------------------------------------------------------- code review of issue 11


@pytest.mark.parametrize("head", ["relu_inplace", "add_inplace", "setitem"])
def test_in_place_ops_on_the_output_work_with_a_qng_optimizer(head):
    # before: the output was a view made in a custom Function; any in-place op raised
    def run(use_qng):
        torch.manual_seed(0)
        q = QuantumLayer(embedded, {"weights": (1, 2, 3)}, wires=2).double()
        lin = nn.Linear(2, 2).double()
        opt = quflow.QNG(nn.Sequential(lin, q), lr=0.1) if use_qng else None
        x = torch.rand(4, 2, dtype=torch.float64)
        out = q(lin(x))
        if head == "relu_inplace":
            out = nn.ReLU(inplace=True)(out)
        elif head == "add_inplace":
            out += torch.tensor([0.5, -0.25], dtype=torch.float64)
        else:
            out[:, 0] = 0.0
        out.pow(2).sum().backward()
        grads = (q.weights.grad.clone(), lin.weight.grad.clone())
        if use_qng:
            assert [tuple(c.inputs.shape) for c in q._stepped] == [(4, 2)]
            opt.step()
        return grads

    for a, b in zip(run(False), run(True)):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL)


def test_pinn_derivatives_count_the_batch_once_in_the_qng_metric():
    # before: check_pointwise's probe forward registered a call, so the first step's
    # metric summed the collocation batch twice
    torch.manual_seed(0)
    q = QuantumLayer(embedded, {"weights": (1, 2, 3)}, wires=2)
    model = nn.Sequential(nn.Linear(1, 2), nn.Tanh(), q, nn.Linear(2, 1)).double()
    opt = quflow.QNG(model, lr=0.05)
    x = torch.linspace(0, 1, 6, dtype=torch.float64).reshape(-1, 1)
    x0 = torch.zeros(1, 1, dtype=torch.float64)
    for _ in range(2):  # the first step runs check_pointwise, the second does not
        opt.zero_grad()
        u, ux = quflow.pinn.derivatives(model, x, order=1)
        loss = (ux - torch.cos(x)).pow(2).mean() + model(x0).pow(2).sum()
        loss.backward()
        assert [tuple(c.inputs.shape) for c in q._stepped] == [(6, 2), (1, 2)]
        with torch.no_grad():
            expected = quflow.metric_tensor(q, model[1](model[0](x))) + quflow.metric_tensor(
                q, model[1](model[0](x0))
            )
        opt.step()
        metric = opt.state[q.weights]["metric"]
        torch.testing.assert_close(metric, expected, rtol=0, atol=1e-12)


def test_calls_do_not_pile_up_while_another_optimizer_trains():
    # before: Adam warm-up with a QNG alive kept every call, and the first QNG metric was
    # the sum of all of them (200× too large after 200 Adam steps)
    torch.manual_seed(0)
    q = QuantumLayer(embedded, {"weights": (1, 2, 3)}, wires=2).double()
    qng = quflow.QNG(q, lr=0.05)
    adam = torch.optim.Adam(q.parameters(), lr=1e-2)
    x = torch.rand(5, 2, dtype=torch.float64)
    for _ in range(20):
        adam.zero_grad()
        q(x).pow(2).sum().backward()
        adam.step()
    assert len(q._stepped) <= 1
    # the next QNG step, without QNG.zero_grad (model.zero_grad() instead): one call
    q.zero_grad()
    q(x).pow(2).sum().backward()
    assert len(q._stepped) == 1
    expected = quflow.metric_tensor(q, x)
    qng.step()
    torch.testing.assert_close(qng.state[q.weights]["metric"], expected, rtol=0, atol=1e-12)
    # QNG.zero_grad clears registered calls (forward before or after it: backward registers)
    q(x).sum().backward()
    qng.zero_grad()
    assert q._stepped == []


def test_registered_calls_are_capped(monkeypatch):
    # frozen weights never change, so nothing marks old calls stale: the cap bounds memory
    from quflow import quantum

    monkeypatch.setattr(quantum, "_MAX_STEPPED", 3)
    torch.manual_seed(0)
    q = QuantumLayer(embedded, {"weights": (1, 2, 3)}, wires=2).double()
    opt = quflow.QNG(q, lr=0.05)
    for b in range(1, 8):
        q(torch.rand(b, 2, dtype=torch.float64)).sum().backward()
    assert [c.inputs.shape[0] for c in q._stepped] == [5, 6, 7]
    with pytest.warns(RuntimeWarning, match="last 3"):
        opt.step()
    assert q._stepped == []


def test_threads_share_a_layer_with_a_qng_optimizer(monkeypatch):
    # the engine cache's eviction and the registered calls are guarded by a lock
    import threading

    from quflow import quantum

    monkeypatch.setattr(quantum, "_ENGINE_CACHE_SIZE", 1)

    def circuit(inputs, w):
        for i in range(int(inputs.shape[-1])):  # a different program per input width
            qml.RX(inputs[..., i], wires=i % 2)
        qml.RY(w, wires=0)
        return qml.expval(qml.PauliZ(0))

    q = QuantumLayer(circuit, {"w": 1}, wires=2).double()
    opt = quflow.QNG(q, lr=0.05)
    errors = []

    def work(seed):
        try:
            gen = torch.Generator().manual_seed(seed)
            for _ in range(10):
                x = torch.rand(3, 2, generator=gen, dtype=torch.float64)
                q(x).sum().backward()
                q._take_stepped()
        except Exception as err:  # pragma: no cover - what the test looks for
            errors.append(err)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(q._engines) <= 1
    del opt


def arccos_angles(inputs, w):
    qml.AngleEmbedding(torch.arccos(inputs), wires=range(4), rotation="Y")
    qml.RY(w, wires=0)
    qml.CNOT(wires=[0, 1])
    return [qml.expval(qml.PauliZ(0)), qml.expval(qml.PauliZ(1))]


def test_batching_probe_uses_the_users_inputs():
    # before: random probes in [0.3, 2.3] gave NaN angles for arccos, the batched and
    # per-sample recordings compared unequal and the layer silently recorded per sample
    torch.manual_seed(0)
    q = QuantumLayer(arccos_angles, {"w": 1}, wires=4).double()
    x = torch.rand(6, 4, dtype=torch.float64)
    out = q(x)
    assert q._per_sample is False
    loop = torch.stack([q(x[b]) for b in range(6)])
    torch.testing.assert_close(out, loop, rtol=0, atol=TOL)


@pytest.mark.parametrize("normalize", [True, False])
def test_amplitude_embedding_without_normalisation_matches_torchlayer(normalize):
    # before: normalize=False failed on the first call (the random probe is not normalised)
    def circuit(inputs, w):
        qml.AmplitudeEmbedding(inputs, wires=range(2), normalize=normalize)
        qml.RY(w, wires=0)
        qml.CNOT(wires=[0, 1])
        return [qml.expval(qml.PauliZ(i)) for i in range(2)]

    torch.manual_seed(0)
    tl = qml.qnn.TorchLayer(qml.QNode(circuit, qml.device("default.qubit", wires=2), interface="torch"), {"w": 1})
    x = torch.rand(3, 4, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    q = QuantumLayer(circuit, {"w": 1}, wires=2)
    q.load_state_dict(tl.state_dict())
    torch.testing.assert_close(q(x), tl(x).to(q(x).dtype), rtol=0, atol=1e-6)


def basis(inputs, w):
    qml.BasisEmbedding(inputs, wires=range(2))
    qml.RY(w, wires=0)
    return qml.expval(qml.PauliZ(0))


def test_basis_embedding_on_its_first_call():
    # before: the random probe's non-binary values failed with "Basis state must only
    # consist of 0s and 1s". BasisEmbedding's gates depend on the bits, so a batch of
    # different bit strings gets the structure error with its rotation equivalent; a batch
    # of one bit string (or one row) runs
    q = QuantumLayer(basis, {"w": 1}, wires=2).double()
    with pytest.raises(ValueError, match="AngleEmbedding"):
        q(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    for x in ([[1.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]):
        q = QuantumLayer(basis, {"w": 1}, wires=2).double()
        x = torch.tensor(x, dtype=torch.float64)
        w = q.w.detach()
        # ⟨Z_0⟩ after RY(w) on |b_0⟩: −cos(w) for b_0 = 1
        torch.testing.assert_close(q(x), -torch.cos(w).expand(x.shape[0]), rtol=0, atol=TOL)


def test_probe_errors_name_the_users_samples():
    def circuit(inputs, w):
        qml.RX(inputs[0], wires=0)
        qml.RY(w[0], wires=0)  # w is a scalar: indexing it fails on every sample
        return qml.expval(qml.PauliZ(0))

    q = QuantumLayer(circuit, {"w": 1}, wires=1)
    with pytest.raises(ValueError, match="sample 0 of the inputs"):
        q(torch.rand(3, 1))


def test_weight_dependence_hidden_by_zero_inputs_is_still_found():
    # the user's batch is all zeros: w enters only as inputs[0] * w, so the check falls
    # back to random inputs rather than reporting an unused weight
    def circuit(inputs, w):
        qml.RX(inputs[..., 0] * w, wires=0)
        return qml.expval(qml.PauliZ(0))

    q = QuantumLayer(circuit, {"w": 1}, wires=1).double()
    assert q(torch.zeros(4, 1, dtype=torch.float64)).shape == (4,)


@pytest.mark.parametrize("size", [0, -2, np.int64(0)])
def test_non_positive_int_weight_shapes_name_the_weight(size):
    # before: 0 gave an empty weight, -2 torch's RuntimeError from torch.empty
    with pytest.raises(ValueError, match=r"weight_shapes\['w'\]"):
        QuantumLayer(one_feature, {"w": size}, wires=1)


def test_plain_function_without_wires_uses_the_wires_it_touches():
    # what the README says about wires=None for a plain function
    q = QuantumLayer(embedded, {"weights": (1, 2, 3)}).double()
    assert q.wires is None
    q(torch.rand(2, 2, dtype=torch.float64))
    assert q.wires == [0, 1]
