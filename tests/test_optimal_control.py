"""examples/optimal_control.py: each optimiser reaches fidelity ≥ 0.999, the Hessian–vector
products its Newton-CG uses equal forward-over-reverse and a dense reference (the derivatives
snippet of docs/simulator.md runs in test_docs.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import dense_crank_nicolson
from test_pinn import load_example

example = load_example("optimal_control")


@pytest.mark.parametrize("method", ["Newton-CG", "L-BFGS", "Adam"])
def test_dipole_allowed_transition_reaches_the_goal(method):
    """φ₁ → φ₂, docs/simulator.md's first table (seed 0): every method gets there."""
    r = example.solve(method, 1, 2, seed=0)
    assert r["reached"] and r["fidelity"] >= example.GOAL
    with torch.no_grad():  # the returned control really does it
        assert example.Problem(initial=1, target=2).fidelity(r["u"]).item() >= example.GOAL
    assert (r["hvps"] > 0) == (method == "Newton-CG")


@pytest.mark.parametrize("method", ["Newton-CG", "Adam"])
def test_dipole_forbidden_transition_reaches_the_goal(method):
    """φ₁ → φ₃ from the flat start: Newton-CG and Adam get there; L-BFGS stalls on most
    seeds (docs/simulator.md), which is not asserted: where it stalls depends on round-off."""
    r = example.solve(method, 1, 3, seed=0)
    assert r["reached"] and r["fidelity"] >= example.GOAL


def test_zero_control_is_stationary():
    """Why the runs start from a small random control: at u = 0 the gradient vanishes."""
    problem = example.Problem(initial=1, target=2)
    u = torch.zeros(example.STEPS, dtype=torch.float64, requires_grad=True)
    f = problem.loss(u, stop=False)
    (g,) = torch.autograd.grad(f, u)
    assert f.item() == pytest.approx(1, abs=1e-12)
    assert g.abs().max().item() < 1e-12


def test_hessian_vector_products_agree():
    """Double backward (what Newton-CG uses) = jvp(grad(f)) = autograd through the dense
    reference, at a random control."""
    problem = example.Problem(steps=12, initial=1, target=2)
    gen = torch.Generator().manual_seed(0)
    u0 = torch.randn(12, dtype=torch.float64, generator=gen)
    v = torch.randn(12, dtype=torch.float64, generator=gen)
    grid = example.GRID

    def f(u):
        return 1 - problem.fidelity(u)

    def f_dense(u):
        psi = dense_crank_nicolson(problem.psi0[None], torch.zeros(grid.n, dtype=torch.float64),
                                   example.DT, grid.dx, 12, control=u, control_shape=grid.x)[0]
        return 1 - (problem.target.conj() * psi).sum().abs() ** 2

    u = u0.clone().requires_grad_()
    (g,) = torch.autograd.grad(f(u), u, create_graph=True)
    (hv,) = torch.autograd.grad(g, u, v)
    _, hv_fwd = torch.func.jvp(torch.func.grad(f), (u0,), (v,))
    (g_d,) = torch.autograd.grad(f_dense(u), u, create_graph=True)
    (hv_d,) = torch.autograd.grad(g_d, u, v)
    assert torch.allclose(hv, hv_fwd, atol=1e-12)
    assert torch.allclose(hv, hv_d, atol=1e-10)


def test_steihaug_cg_solves_a_convex_quadratic_and_stops_at_the_boundary():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(6, 6, dtype=torch.float64, generator=gen)
    h = a @ a.T + 6 * torch.eye(6, dtype=torch.float64)
    g = torch.randn(6, dtype=torch.float64, generator=gen)
    newton = -torch.linalg.solve(h, g)
    p, hp = example.steihaug_cg(lambda d: h @ d, g, radius=10 * newton.norm().item(),
                                tol=1e-12, max_iter=6)
    assert torch.allclose(p, newton, atol=1e-10) and torch.allclose(hp, h @ p, atol=1e-10)
    p, hp = example.steihaug_cg(lambda d: h @ d, g, radius=0.5 * newton.norm().item(),
                                tol=1e-12, max_iter=6)
    assert p.norm().item() == pytest.approx(0.5 * newton.norm().item(), rel=1e-12)
    assert torch.allclose(hp, h @ p, atol=1e-10)
    # negative curvature along the first direction: straight to the boundary
    p, _ = example.steihaug_cg(lambda d: -d, g, radius=2.0, tol=1e-12, max_iter=6)
    assert torch.allclose(p, -2.0 * g / g.norm(), atol=1e-12)
