"""quflow.transfer: frozen backbones stay frozen; the transfer-learning example."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import quflow
from quflow.transfer import Frozen, hybrid_head

from test_pinn import load_example


def test_frozen_parameters_do_not_train_and_stay_in_eval_mode():
    backbone = nn.Sequential(nn.Linear(3, 5), nn.Dropout(0.5), nn.BatchNorm1d(5))
    model = hybrid_head(backbone, quflow.templates.strongly_entangling(2, 1), in_features=5, out_features=1)
    model.train()
    assert not model.backbone.module.training
    assert all(not p.requires_grad for p in model.backbone.parameters())
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)  # even given every parameter
    x = torch.randn(8, 3, requires_grad=True)
    for _ in range(3):
        loss = model(x).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    assert x.grad is not None and x.grad.abs().sum() > 0  # gradients still flow through
    assert model.quantum.weights.grad.abs().sum() > 0


def test_hybrid_head_validates():
    from quflow import QuantumLayer
    import pennylane as qml

    def circuit(inputs, weights):
        qml.RY(inputs[..., 0] + weights[0], wires=0)
        return qml.expval(qml.PauliZ(0))

    unknown_width = QuantumLayer(circuit, {"weights": 1}, wires=1)
    with pytest.raises(ValueError, match="input_size is unknown"):
        hybrid_head(nn.Linear(2, 2), unknown_width, 2, 1)
    with pytest.raises(TypeError, match="quflow.QuantumLayer"):
        hybrid_head(nn.Linear(2, 2), nn.Linear(2, 2), 2, 1)
    with pytest.raises(TypeError, match="nn.Module"):
        Frozen(lambda x: x)


def test_transfer_learning_example():
    result = load_example("transfer_learning").run(epochs=30, verbose=False)
    assert result["frozen_unchanged"]
    assert result["source_accuracy"] > 0.9
    assert result["target_accuracy"] > 0.9
