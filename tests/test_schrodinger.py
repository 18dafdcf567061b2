"""quflow.crank_nicolson: values, gradients and conservation laws against independent oracles.

Oracles: (1) the dense reference in conftest.py (one torch.linalg.solve per step,
differentiated by plain autograd); (2) torch.autograd.gradcheck in complex128;
(3) closed forms for box eigenstates, written out in tests/README.md.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import quflow
from conftest import ATOL, GRAD_ATOL, REAL, dense_crank_nicolson, sample_inputs


def _reference(case, trajectory=False):
    return dense_crank_nicolson(case.psi0, case.potential, case.dt, case.dx, case.steps,
                                case.control, case.control_shape, trajectory=trajectory)


def _loss(psi, target):
    """A real loss touching every component: Σ |⟨target, ψ⟩|² + Σ Re(ψ)·Im(target)."""
    overlap = (target.conj() * psi).sum(-1)
    return overlap.abs().pow(2).sum() + (psi.real * target.imag).sum()


# ---------------------------------------------------------------- forward values

@pytest.mark.parametrize("case", sample_inputs(torch.complex128), ids=lambda c: c.name)
def test_forward_matches_dense_reference_double(case):
    out = quflow.crank_nicolson(case.psi0, case.potential, **case.kwargs())
    assert out.dtype == torch.complex128
    torch.testing.assert_close(out, _reference(case), atol=ATOL[torch.complex128], rtol=0)


@pytest.mark.parametrize("case", sample_inputs(torch.complex64), ids=lambda c: c.name)
def test_forward_matches_dense_reference_float(case):
    out = quflow.crank_nicolson(case.psi0, case.potential, **case.kwargs())
    assert out.dtype == torch.complex64
    ref = dense_crank_nicolson(case.psi0.to(torch.complex128), case.potential.double(),
                               case.dt, case.dx, case.steps,
                               None if case.control is None else case.control.double(),
                               None if case.control_shape is None else case.control_shape.double())
    torch.testing.assert_close(out.to(torch.complex128), ref, atol=ATOL[torch.complex64], rtol=0)


@pytest.mark.parametrize("case", sample_inputs(torch.complex128, steps=12), ids=lambda c: c.name)
def test_trajectory_matches_reference_and_final_state(case):
    traj = quflow.crank_nicolson(case.psi0, case.potential, trajectory=True, **case.kwargs())
    assert traj.shape == (case.psi0.shape[0], case.steps + 1, case.psi0.shape[1])
    torch.testing.assert_close(traj, _reference(case, trajectory=True), atol=1e-12, rtol=0)
    assert torch.equal(traj[:, 0], case.psi0)
    final = quflow.crank_nicolson(case.psi0, case.potential, **case.kwargs())
    assert torch.equal(traj[:, -1], final)  # the same arithmetic, whether steps are kept


@pytest.mark.parametrize("dtype,tol", [(torch.complex128, 1e-13), (torch.complex64, 1e-5)])
def test_constant_h_steps_alternate_factorisations_and_agree_everywhere(dtype, tol):
    """A constant H's forward runs one pass per step, alternating the LU and UL
    factorisations of I + i·h·H (cn_kernels.cpp's header). Both step-count parities, grids
    whose passes start and end on the same or neighbouring points (n = 1, 2, 3), every block
    width (batch 1, 3, 8, 11): every step against the dense reference (tolerance per dtype:
    1e-13 double, 1e-5 float, absolute, unit-norm states), each state bitwise the same alone
    and in a batch, and the trajectory's last state bitwise the final state."""
    gen = torch.Generator().manual_seed(7)
    real = REAL[dtype]
    for n in (1, 2, 3, 17):
        grid = quflow.Grid(n, 2.0)
        V = 5 * torch.randn(n, dtype=torch.float64, generator=gen)
        psi = torch.randn(11, n, dtype=torch.complex128, generator=gen)
        psi = (psi / torch.linalg.vector_norm(psi, dim=-1, keepdim=True)).to(dtype)
        for steps in (1, 2, 3, 4):
            kw = dict(dt=0.3, dx=grid.dx, steps=steps)
            ref = dense_crank_nicolson(psi.to(torch.complex128), V, 0.3, grid.dx, steps,
                                       trajectory=True)
            traj = quflow.crank_nicolson(psi, V.to(real), trajectory=True, **kw)
            torch.testing.assert_close(traj.to(torch.complex128), ref, atol=tol, rtol=0)
            final = quflow.crank_nicolson(psi, V.to(real), **kw)
            assert torch.equal(traj[:, -1], final), (n, steps)
            for b in (1, 3, 8):
                assert torch.equal(quflow.crank_nicolson(psi[:b], V.to(real), **kw), final[:b])
                assert torch.equal(quflow.crank_nicolson(psi[-b:], V.to(real), **kw),
                                   final[-b:])


def test_constant_h_forward_either_side_of_the_small_step_switch():
    """Below h·e = dt/2dx² = 2^−20 the constant-H forward leaves the β form (whose 1/he
    would be large) for the two-sweep α form: both sides agree with the dense reference."""
    grid = quflow.Grid(16, 2.0)
    psi = quflow.random_states(grid, 9, seed=8)
    V = 3 * torch.sin(2 * grid.x)
    for factor in (1 - 1e-6, 1 + 1e-6, 1e-3, 1e3):
        dt = factor * 2.0 ** -20 * 2 * grid.dx ** 2
        out = quflow.crank_nicolson(psi, V, dt=dt, dx=grid.dx, steps=7)
        ref = dense_crank_nicolson(psi, V, dt, grid.dx, 7)
        torch.testing.assert_close(out, ref, atol=1e-14, rtol=0)


def test_issue_example_shapes():
    grid = quflow.Grid(n=20, length=2.0)
    psi0 = quflow.random_states(grid, batch=200, seed=0)
    assert psi0.shape == (200, 20) and psi0.dtype == torch.complex128
    V = torch.zeros(20, dtype=torch.float64, requires_grad=True)
    assert quflow.crank_nicolson(psi0, V, dt=0.2, dx=grid.dx, steps=100).shape == (200, 20)
    u = torch.zeros(200, 50, dtype=torch.float64, requires_grad=True)
    out = quflow.crank_nicolson(psi0, V, dt=0.2, dx=grid.dx, control=u, control_shape=grid.x)
    assert out.shape == (200, 20)
    traj = quflow.crank_nicolson(psi0, V, dt=0.2, dx=grid.dx, steps=100, trajectory=True)
    assert traj.shape == (200, 101, 20)


def test_unbatched_and_broadcast_inputs():
    grid = quflow.Grid(12, 1.5)
    psi = quflow.random_states(grid, 1, seed=3)[0]
    V = torch.linspace(-2, 2, 12, dtype=torch.float64)
    out = quflow.crank_nicolson(psi, V, dt=0.1, dx=grid.dx, steps=7)
    assert out.shape == (12,)
    torch.testing.assert_close(out, dense_crank_nicolson(psi[None], V, 0.1, grid.dx, 7)[0],
                               atol=1e-13, rtol=0)
    # one initial state under four controls: psi0 broadcasts over the control batch
    u = torch.randn(4, 7, dtype=torch.float64)
    out = quflow.crank_nicolson(psi, V, dt=0.1, dx=grid.dx, control=u, control_shape=grid.x)
    ref = dense_crank_nicolson(psi.expand(4, 12), V, 0.1, grid.dx, 7, u, grid.x)
    torch.testing.assert_close(out, ref, atol=1e-13, rtol=0)


def test_real_input_is_promoted_and_potential_defaults_to_zero():
    grid = quflow.Grid(10, 1.0)
    phi = grid.eigenstates(2, dtype=torch.float64)
    out = quflow.crank_nicolson(phi, dt=0.05, dx=grid.dx, steps=3)
    assert out.dtype == torch.complex128
    ref = quflow.crank_nicolson(phi.to(torch.complex128), torch.zeros(10, dtype=torch.float64),
                                dt=0.05, dx=grid.dx, steps=3)
    assert torch.equal(out, ref)
    assert quflow.crank_nicolson(phi.float(), dt=0.05, dx=grid.dx, steps=3).dtype == torch.complex64


def test_zero_steps_is_identity():
    psi = quflow.random_states(quflow.Grid(6), 3, seed=1)
    out = quflow.crank_nicolson(psi, dt=0.1, dx=0.1, steps=0)
    assert torch.equal(out, psi) and out.data_ptr() != psi.data_ptr()


def test_non_contiguous_and_conjugated_inputs():
    grid = quflow.Grid(9, 1.0)
    big = quflow.random_states(grid, 10, seed=4)
    psi = big[::2]  # non-contiguous rows
    V = torch.randn(9, 2, dtype=torch.float64)[:, 0]  # strided
    u = torch.randn(7, 5, dtype=torch.float64).t()  # (5, 7) transposed view
    for p in (psi, psi.conj()):
        assert not p.is_contiguous() or p.is_conj()
        out = quflow.crank_nicolson(p, V, dt=0.3, dx=grid.dx, control=u, control_shape=grid.x)
        ref = dense_crank_nicolson(p.resolve_conj().contiguous(), V.contiguous(), 0.3, grid.dx,
                                   7, u.contiguous(), grid.x)
        torch.testing.assert_close(out, ref, atol=1e-13, rtol=0)


def test_thread_count_does_not_change_results():
    grid = quflow.Grid(16, 2.0)
    psi = quflow.random_states(grid, 37, seed=5)
    u = torch.randn(37, 20, dtype=torch.float64, requires_grad=True)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out = quflow.crank_nicolson(psi, dt=0.2, dx=grid.dx, control=u, control_shape=grid.x)
            (g,) = torch.autograd.grad(out.abs().pow(2).mul(grid.x).sum(), u)
            results.append((out, g))
    finally:
        torch.set_num_threads(before)
    for out, g in results[1:]:
        assert torch.equal(out, results[0][0])  # per-state work is independent of threads
        torch.testing.assert_close(g, results[0][1], atol=1e-13, rtol=0)


# ---------------------------------------------------------------- conservation and analytic cases

@pytest.mark.parametrize("dtype,tol", [(torch.complex128, 1e-12), (torch.complex64, 1e-3)])
def test_norm_is_conserved_over_ten_thousand_steps(dtype, tol):
    grid = quflow.Grid(64, 2.0)
    psi = quflow.random_states(grid, 8, seed=6, dtype=dtype)
    V = (50 * torch.sin(3 * grid.x)).to(REAL[dtype])
    u = torch.randn(8, 10_000, dtype=torch.float64).to(REAL[dtype])
    for kw in (dict(steps=10_000), dict(control=u, control_shape=grid.x.to(REAL[dtype]))):
        out = quflow.crank_nicolson(psi, V, dt=0.2, dx=grid.dx, **kw)
        norms = torch.linalg.vector_norm(out.to(torch.complex128), dim=-1)
        assert (norms - 1).abs().max().item() < tol


@pytest.mark.parametrize("n,dt,V,tol", [(20, 0.2, 0.0, 5e-4), (64, 0.01, 0.0, 8e-4),
                                        (64, 0.2, 50.0, 2e-4)])
def test_float_norm_drift_over_a_hundred_thousand_steps(n, dt, V, tol):
    """The constant-H forward in float: its multipliers are those of the matrix that its
    rounded right-hand side implies, balanced so that no rounding error is the same at
    every point (see balanced_multipliers in crank_nicolson.cpp). Measured max |‖ψ‖ − 1|
    over 64 random states, 10^5 steps: 1.9e-4 / 3.0e-4 / 4.9e-5 (per row); the two-sweep
    α form had 1.7e-3 / 3.7e-3 / 1.7e-4 and the unbalanced β form 1.9e-2 / 6.9e-3 /
    3.8e-4 (10^4 steps in the last row). A drift linear in the steps is what a
    constant rounding error in the step gives; the bound is ~2.5x the measured one."""
    grid = quflow.Grid(n, 2.0)
    psi = quflow.random_states(grid, 64, seed=0, dtype=torch.complex64)
    steps = 10_000 if V else 100_000
    out = quflow.crank_nicolson(psi, (V * torch.sin(3 * grid.x)).float(), dt=dt, dx=grid.dx,
                                steps=steps)
    drift = torch.linalg.vector_norm(out.to(torch.complex128), dim=-1) - 1
    assert drift.abs().max().item() < tol


@pytest.mark.parametrize("adjoint", ["reverse", "store"])
@pytest.mark.parametrize("dtype,tol", [(torch.complex128, 1e-13), (torch.complex64, 1e-4)])
def test_adjoint_conserves_the_cotangents_norm(dtype, tol, adjoint):
    """The step map is unitary, so is its adjoint: ‖∂L/∂ψ0‖ = ‖∂L/∂ψ_T‖ for every state.

    An invariant the kernels do not use anywhere (they form g_k = 2λ − g_{k+1}): 1 000 steps,
    a stiff step (h·e = dt/2dx² ≈ 100), a constant H and a per-sample control. It catches
    what breaks unitarity (a wrong g_k, drift), not a wrong H (any Hermitian H keeps the
    norm): the dense-reference tests catch that. Tolerance: relative, 1e-13 in double
    (seen 2e-15), 1e-4 in float (seen 1.5e-6).
    """
    grid = quflow.Grid(64, 2.0)
    real = REAL[dtype]
    psi = quflow.random_states(grid, 6, seed=11, dtype=dtype).requires_grad_()
    w = quflow.random_states(grid, 6, seed=12, dtype=dtype) * torch.arange(1, 7).to(real)[:, None]
    V = (50 * torch.sin(3 * grid.x)).to(real)
    u = torch.randn(6, 1000, dtype=torch.float64, generator=torch.Generator().manual_seed(13))
    for kw in (dict(steps=1000), dict(control=u.to(real), control_shape=grid.x.to(real))):
        out = quflow.crank_nicolson(psi, V, dt=0.2, dx=grid.dx, adjoint=adjoint, **kw)
        (g0,) = torch.autograd.grad(out, psi, grad_outputs=w)
        ratio = (torch.linalg.vector_norm(g0.to(torch.complex128), dim=-1)
                 / torch.linalg.vector_norm(w.to(torch.complex128), dim=-1))
        assert (ratio - 1).abs().max().item() < tol, ratio


def _cn_factor(energy, dt):
    """Per-step CN factor r(E) = (1 − i·dt·E/2)/(1 + i·dt·E/2) (tests/README.md, case A)."""
    return (1 - 0.5j * dt * energy) / (1 + 0.5j * dt * energy)


def test_box_eigenstate_only_picks_up_the_cn_phase():
    grid = quflow.Grid(30, 2.0)
    steps, dt, shift = 500, 0.05, 1.7
    phi = grid.eigenstates(5)                      # (5, 30)
    energies = grid.eigenvalues(5) + shift         # constant potential shifts E
    V = torch.full((30,), shift, dtype=torch.float64)
    out = quflow.crank_nicolson(phi, V, dt=dt, dx=grid.dx, steps=steps)
    expected = torch.tensor([_cn_factor(e.item(), dt) ** steps for e in energies],
                            dtype=torch.complex128)
    torch.testing.assert_close(out, expected[:, None] * phi, atol=1e-11, rtol=0)


def test_box_eigenstate_gradients_are_analytic():
    """Case B of tests/README.md: d⟨φ,ψ_T⟩ w.r.t. a uniform potential and a uniform control."""
    grid = quflow.Grid(25, 2.0)
    m, steps, dt = 3, 40, 0.1
    phi = grid.eigenstates(m)[m - 1]
    energy = grid.eigenvalues(m)[m - 1].item()
    u = torch.linspace(-1, 2, steps, dtype=torch.float64, requires_grad=True)
    V = torch.full((25,), 0.4, dtype=torch.float64, requires_grad=True)
    ones = torch.ones(25, dtype=torch.float64)
    psi = quflow.crank_nicolson(phi, V, dt=dt, dx=grid.dx, control=u, control_shape=ones)
    f = (phi.conj() * psi).sum()
    loss = f.real + 0.3 * f.imag
    g_V, g_u = torch.autograd.grad(loss, (V, u))

    def dr(e):  # r'(E) = −i·dt / (1 + i·dt·E/2)²
        return -1j * dt / (1 + 0.5j * dt * e) ** 2

    es = [energy + 0.4 + uk for uk in u.tolist()]
    f_exact = math.prod(_cn_factor(e, dt) for e in es)
    df_du = [f_exact * dr(e) / _cn_factor(e, dt) for e in es]
    expect_u = torch.tensor([d.real + 0.3 * d.imag for d in df_du], dtype=torch.float64)
    torch.testing.assert_close(f.detach(), torch.tensor(f_exact, dtype=torch.complex128),
                               atol=1e-12, rtol=0)
    torch.testing.assert_close(g_u, expect_u, atol=1e-12, rtol=0)
    # a uniform shift of V moves every step's energy: dL/dv = Σ_j ∂L/∂V_j = Σ_k ∂L/∂u_k
    torch.testing.assert_close(g_V.sum(), expect_u.sum(), atol=1e-12, rtol=0)


# ---------------------------------------------------------------- gradients

def _inputs(case):
    return [t for t in (case.psi0, case.potential, case.control, case.control_shape)
            if t is not None]


def _call(case, adjoint, trajectory=False):
    def fn(*args):
        psi0, potential, *rest = args
        kw = case.kwargs()
        if rest:
            kw["control"], kw["control_shape"] = rest
        return quflow.crank_nicolson(psi0, potential, adjoint=adjoint, trajectory=trajectory, **kw)
    return fn


@pytest.mark.parametrize("adjoint", ["reverse", "store"])
@pytest.mark.parametrize("case", sample_inputs(torch.complex128, n=5, steps=4, requires_grad=True),
                         ids=lambda c: c.name)
def test_gradcheck_complex128(case, adjoint):
    assert torch.autograd.gradcheck(_call(case, adjoint), _inputs(case), eps=1e-6, atol=1e-7,
                                    rtol=1e-5)


@pytest.mark.parametrize("case", sample_inputs(torch.complex128, n=4, steps=3, requires_grad=True)[::2],
                         ids=lambda c: c.name)
def test_gradcheck_trajectory(case):
    assert torch.autograd.gradcheck(_call(case, "reverse", trajectory=True), _inputs(case),
                                    eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("adjoint", ["reverse", "store"])
def test_gradients_match_dense_reference(cdtype, adjoint):
    for case in sample_inputs(cdtype, steps=25, requires_grad=True, seed=7):
        target = quflow.random_states(quflow.Grid(20, 2.0), case.psi0.shape[0], seed=8).to(cdtype)
        inputs = _inputs(case)
        got = torch.autograd.grad(_loss(_call(case, adjoint)(*inputs), target), inputs)
        ref_inputs = [t.detach().to(torch.complex128 if t.is_complex() else torch.float64)
                      .requires_grad_() for t in inputs]
        psi0, potential, *rest = ref_inputs
        ref_out = dense_crank_nicolson(psi0, potential, case.dt, case.dx, case.steps, *rest)
        want = torch.autograd.grad(_loss(ref_out, target.to(torch.complex128)), ref_inputs)
        for name, g, w in zip(["psi0", "potential", "control", "control_shape"], got, want):
            assert g.dtype == case.psi0.dtype or g.dtype == REAL[cdtype], name
            scale = max(1.0, w.abs().max().item())
            torch.testing.assert_close(g.to(w.dtype), w, atol=GRAD_ATOL[cdtype] * scale, rtol=0,
                                       msg=f"{case.name}: d/d{name}")


def test_trajectory_gradients_match_dense_reference():
    for case in sample_inputs(torch.complex128, n=8, steps=10, requires_grad=True, seed=9):
        inputs = _inputs(case)
        weights = torch.randn(case.steps + 1, dtype=torch.float64)

        def loss(traj):
            return (traj.abs().pow(2) * torch.arange(8.0, dtype=torch.float64)).sum(-1) \
                .mul(weights).sum() + traj.imag[:, :, 2].sum()

        got = torch.autograd.grad(loss(_call(case, "reverse", trajectory=True)(*inputs)), inputs)
        psi0, potential, *rest = inputs
        want = torch.autograd.grad(loss(dense_crank_nicolson(psi0, potential, case.dt, case.dx,
                                                             case.steps, *rest, trajectory=True)),
                                   inputs)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-11, rtol=0)


@pytest.mark.parametrize("dtype,tol", [(torch.complex128, 1e-10), (torch.complex64, 5e-3)])
def test_reverse_rebuild_agrees_with_stored_states_over_long_runs(dtype, tol):
    """The reverse adjoint rebuilds ψ_k by inverting each step; its error must stay small."""
    grid = quflow.Grid(32, 2.0)
    psi = quflow.random_states(grid, 6, seed=10, dtype=dtype).requires_grad_()
    u = (0.5 * torch.randn(6, 3000, dtype=torch.float64)).to(REAL[dtype]).requires_grad_()
    x = grid.x.to(REAL[dtype])
    target = quflow.random_states(grid, 6, seed=11, dtype=dtype)
    grads = {}
    for adjoint in ("reverse", "store"):
        out = quflow.crank_nicolson(psi, control=u, control_shape=x, dt=0.2, dx=grid.dx,
                                    adjoint=adjoint)
        grads[adjoint] = torch.autograd.grad(_loss(out, target), (psi, u))
    for a, b in zip(grads["reverse"], grads["store"]):
        scale = b.abs().max().item()
        assert (a - b).abs().max().item() <= tol * scale


def test_only_requested_gradients_are_computed():
    grid = quflow.Grid(10)
    psi = quflow.random_states(grid, 3, seed=12)
    u = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    out = quflow.crank_nicolson(psi, control=u, control_shape=grid.x, dt=0.1, dx=grid.dx)
    (g,) = torch.autograd.grad(out.real.sum(), u)
    assert g.shape == (3, 5) and psi.grad is None


@pytest.mark.parametrize("adjoint", ["reverse", "store"])
@pytest.mark.parametrize("dt", [0.2, 0.01], ids=["he-above-1", "he-below-1"])
def test_any_subset_of_gradients_equals_the_full_request(cdtype, adjoint, dt):
    """The adjoint accumulates ∂L/∂V, ∂L/∂u and ∂L/∂W only when asked: every subset of
    requested inputs gets the gradients of a call that asks for all of them, to 4 ε of the
    largest component (seen: 1.4 ε; not bitwise, since the compiler contracts an
    accumulation into an FMA where fewer sums share it). dt = 0.2 gives h·e > 1, 0.01
    h·e < 1 (the scaled pivots, h·e beyond ~1e11 in float, are tested with every gradient
    in test_schrodinger_limits.py)."""
    for case in sample_inputs(cdtype, steps=7, seed=13):
        case.dt = dt
        present = [t for t in (case.psi0, case.potential, case.control, case.control_shape)
                   if t is not None]
        target = quflow.random_states(quflow.Grid(20, 2.0), case.psi0.shape[0],
                                      seed=14).to(cdtype)

        def grads(asked):
            inputs = [t.detach().clone().requires_grad_(i in asked)
                      for i, t in enumerate(present)]
            psi0, potential, *rest = inputs + [None] * (4 - len(inputs))
            kw = case.kwargs()
            kw.update(control=rest[0], control_shape=rest[1], adjoint=adjoint)
            if rest[0] is None:
                del kw["control"], kw["control_shape"]
            out = quflow.crank_nicolson(psi0, potential, **kw)
            wanted = [inputs[i] for i in sorted(asked)]
            return dict(zip(sorted(asked), torch.autograd.grad(_loss(out, target), wanted)))

        full = grads(set(range(len(present))))
        for size in range(1, len(present)):
            for asked in itertools.combinations(range(len(present)), size):
                got = grads(set(asked))
                for i in asked:
                    eps = torch.finfo(full[i].dtype).eps
                    worst = (got[i] - full[i]).abs().max().item()
                    assert worst <= 4 * eps * full[i].abs().max().item(), (case.name, asked, i)


_BASELINE_CHECK = """
import torch, quflow
from quflow import _core
from conftest import dense_crank_nicolson, sample_inputs
assert _core.kernel_isa() == "baseline", _core.kernel_isa()
worst = 0.0
for dtype, tol in ((torch.complex128, 1e-11), (torch.complex64, 1e-4)):
    for case in sample_inputs(dtype, n=12, steps=9, requires_grad=True):
        inputs = [t for t in (case.psi0, case.potential, case.control, case.control_shape) if t is not None]
        kw = case.kwargs()
        out = quflow.crank_nicolson(case.psi0, case.potential, **kw)
        got = torch.autograd.grad(out.abs().pow(2).mul(torch.arange(12.0)).sum() + out.real.sum(), inputs)
        ref_in = [t.detach().to(torch.complex128 if t.is_complex() else torch.float64).requires_grad_() for t in inputs]
        p, v, *rest = ref_in
        ref = dense_crank_nicolson(p, v, case.dt, case.dx, case.steps, *rest)
        want = torch.autograd.grad(ref.abs().pow(2).mul(torch.arange(12.0, dtype=torch.float64)).sum() + ref.real.sum(), ref_in)
        assert (out.to(torch.complex128) - ref).abs().max() < tol, case.name
        for g, w in zip(got, want):
            assert (g.to(w.dtype) - w).abs().max() < tol * max(1.0, w.abs().max().item()), case.name
print("ok")
"""


def test_portable_kernels_agree_with_the_reference():
    """QUFLOW_ISA=baseline forces the SSE2 fallback kernels (checked here on any CPU)."""
    import os
    import subprocess
    import sys

    here = os.path.dirname(__file__)
    env = dict(os.environ, QUFLOW_ISA="baseline", PYTHONPATH=here)
    done = subprocess.run([sys.executable, "-c", _BASELINE_CHECK], env=env, cwd=here,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
