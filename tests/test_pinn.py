"""quflow.pinn: per-point derivatives, the mixing check, and the hybrid PINN example."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

import quflow
from quflow.pinn import MixingError, check_pointwise, derivatives

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_derivatives_analytic_1d():
    x = torch.linspace(0, 2, 7, dtype=torch.float64)
    u, ux, uxx = derivatives(torch.sin, x)
    assert u.shape == ux.shape == uxx.shape == (7,)
    assert torch.allclose(ux, torch.cos(x), atol=1e-14)
    assert torch.allclose(uxx, -torch.sin(x), atol=1e-14)


def test_derivatives_analytic_2d_points():
    x = torch.rand(6, 2, dtype=torch.float64)
    u, ux, uxx = derivatives(lambda p: p[:, 0] ** 2 * p[:, 1], x)
    assert ux.shape == uxx.shape == (6, 2)
    assert torch.allclose(ux, torch.stack([2 * x[:, 0] * x[:, 1], x[:, 0] ** 2], 1), atol=1e-14)
    assert torch.allclose(uxx, torch.stack([2 * x[:, 1], torch.zeros(6, dtype=torch.float64)], 1), atol=1e-14)


def test_derivatives_keep_the_graph_to_parameters():
    model = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    x = torch.linspace(0, 1, 5, dtype=torch.float64).reshape(-1, 1)
    _, ux, uxx = derivatives(model, x)
    (uxx.sum() + ux.sum()).backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0


def packed(n):
    """The mistake: all collocation points in one input vector."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(n, 16), nn.Tanh(), nn.Linear(16, n)).double()
    return lambda x: net(x.reshape(1, -1)).reshape(-1, 1)


def test_mixing_check_fires_on_a_packed_model():
    x = torch.linspace(0, 1, 6, dtype=torch.float64).reshape(-1, 1)
    with pytest.raises(MixingError, match="depends on the input of point .*packed into one input vector"):
        check_pointwise(packed(6), x)
    with pytest.raises(MixingError):
        derivatives(packed(6), x)


def test_mixing_check_fires_on_batchnorm_in_training_mode_only():
    model = nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).double()
    x = torch.linspace(0, 1, 6, dtype=torch.float64).reshape(-1, 1)
    with pytest.raises(MixingError):
        check_pointwise(model, x)
    model.eval()
    check_pointwise(model, x)


def test_mixing_check_passes_pointwise_models():
    x = torch.linspace(0, 1, 6, dtype=torch.float64).reshape(-1, 1)
    check_pointwise(nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1)).double(), x)
    hybrid = nn.Sequential(nn.Linear(1, 2), quflow.templates.data_reuploading(2, 2), nn.Linear(2, 1)).double()
    check_pointwise(hybrid, x)


def test_bad_arguments():
    x = torch.linspace(0, 1, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="order must be 0, 1 or 2"):
        derivatives(torch.sin, x, order=3)
    with pytest.raises(ValueError, match="one scalar per point"):
        derivatives(lambda p: torch.stack([p, p], 1).reshape(4, 2), x)
    with pytest.raises(ValueError, match="shape \\(N,\\) or \\(N, d\\)"):
        derivatives(torch.sin, torch.zeros(2, 2, 2))
    with pytest.raises(TypeError, match="real floating"):
        derivatives(torch.sin, torch.arange(4))


@pytest.mark.slow
def test_hybrid_pinn_example_reaches_the_stated_accuracy():
    """README: u' = cos x, u(0) = 0 on [0, 2π]; 400 Adam steps, max|u − sin x| < 0.05."""
    example = load_example("pinn_sine")
    _, err, _ = example.train(steps=400, points=24, seed=0, log_every=0)
    assert err < 0.05


def test_constant_and_linear_models_have_zero_higher_derivatives():
    x = torch.linspace(0, 1, 4, dtype=torch.float64)
    _, ux, uxx = derivatives(lambda p: 3 * p, x)
    assert torch.all(ux == 3) and torch.all(uxx == 0)
    _, ux, uxx = derivatives(lambda p: torch.ones(4, dtype=p.dtype), x)
    assert torch.all(ux == 0) and torch.all(uxx == 0)


def test_mixing_check_always_probes_the_last_point():
    x = torch.linspace(0, 1, 10, dtype=torch.float64).reshape(-1, 1)

    def last_depends_on_first(p):
        return p[:, 0] + torch.cat([torch.zeros(9, dtype=p.dtype), p[0]])

    with pytest.raises(MixingError, match="point 9 depends on the input of point 0"):
        check_pointwise(last_depends_on_first, x)


def test_check_pointwise_validates_its_settings():
    x = torch.linspace(0, 1, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="probes"):
        check_pointwise(torch.sin, x, probes=0)
    with pytest.raises(ValueError, match="rtol"):
        check_pointwise(torch.sin, x, rtol=-1.0)
