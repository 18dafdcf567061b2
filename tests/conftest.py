"""Shared fixtures and the plain dense reference for quflow's tests."""

from __future__ import annotations

import dataclasses
import os

# One intra-op thread per test process: the suite's ops are small, and more threads only
# oversubscribe a 2-core machine. Set QUFLOW_TEST_THREADS (or OMP_NUM_THREADS) to override;
# tests that exercise threading set their own counts.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Idle OpenMP threads sleep instead of spinning (libgomp reads this once, when torch loads
# it): the tests that use two threads, and their subprocesses, do not compete with each
# other or with the rest of a busy machine (bench/bench_threads_busy.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("QUFLOW_TEST_THREADS", os.environ["OMP_NUM_THREADS"])))

import quflow

# Stated tolerances per dtype, for quflow vs the dense float64 reference over ≤ 100 steps
# of n ≤ 20 (relative to unit-norm states). float32 carries ~1e-7 per step of round-off.
ATOL = {torch.complex128: 1e-12, torch.complex64: 2e-5}
GRAD_ATOL = {torch.complex128: 1e-11, torch.complex64: 1e-4}
REAL = {torch.complex128: torch.float64, torch.complex64: torch.float32}


def dense_crank_nicolson(psi0, potential, dt, dx, steps, control=None, control_shape=None,
                         trajectory=False):
    """Plain reference: build H_k densely and call torch.linalg.solve every step.

    psi0 (B, n) complex, potential (n,) or (B, n), control (T,) or (B, T), control_shape (n,).
    Differentiable by ordinary autograd. Computes in the inputs' own dtype.
    """
    batch, n = psi0.shape
    e = 1.0 / dx**2
    off = torch.ones(n - 1, dtype=potential.dtype)
    lap = torch.diag(torch.full((n,), 2 * e, dtype=potential.dtype)) \
        - e * torch.diag(off, 1) - e * torch.diag(off, -1)
    eye = torch.eye(n, dtype=psi0.dtype)
    v = potential.expand(batch, n)
    states = [psi0]
    psi = psi0
    for k in range(steps):
        diag = v
        if control is not None:
            uk = control[..., k]
            diag = diag + (uk[:, None] if control.ndim == 2 else uk) * control_shape
        h = lap + torch.diag_embed(diag)
        a = eye + 0.5j * dt * h
        b = eye - 0.5j * dt * h
        psi = torch.linalg.solve(a, (b @ psi[..., None]))[..., 0]
        states.append(psi)
    return torch.stack(states, 1) if trajectory else psi


@dataclasses.dataclass
class Case:
    """One set of inputs for crank_nicolson (see sample_inputs)."""
    name: str
    psi0: torch.Tensor
    potential: torch.Tensor
    steps: int
    control: torch.Tensor | None = None
    control_shape: torch.Tensor | None = None
    dt: float = 0.2
    dx: float = 2.0 / 21

    def kwargs(self):
        kw = dict(dt=self.dt, dx=self.dx)
        if self.control is None:
            kw["steps"] = self.steps
        else:
            kw.update(control=self.control, control_shape=self.control_shape)
        return kw


def sample_inputs(dtype=torch.complex128, n=20, steps=30, requires_grad=False, seed=0):
    """Shared and per-sample potential and control, at batch sizes that reach every block
    width of the kernels (1 lane, one, two and four registers, and partial blocks)."""
    gen = torch.Generator().manual_seed(seed)
    real = REAL[dtype]
    grid = quflow.Grid(n, 2.0)

    def states(b):
        return quflow.random_states(grid, b, generator=gen).to(dtype)

    def r(*shape, scale=1.0):
        return (scale * torch.randn(*shape, dtype=torch.float64, generator=gen)).to(real)

    x = grid.x.to(real)
    cases = [
        Case("const-b1", states(1), r(n, scale=5), steps),
        Case("const-b7", states(7), r(n, scale=5), steps),
        Case("perV-b6", states(6), r(6, n, scale=5), steps),
        Case("sharedu-b5", states(5), r(n, scale=5), steps, r(steps, scale=3), x),
        Case("peru-b9", states(9), r(9, n, scale=5), steps, r(9, steps, scale=3), x),
        Case("peru-b1", states(1), r(1, n, scale=5), steps, r(1, steps, scale=3), r(n)),
        Case("const-b19", states(19), r(n, scale=5), steps),  # wide blocks + a partial one
        Case("peru-b19", states(19), r(19, n, scale=5), steps, r(19, steps, scale=3), x),
        # more than two full blocks of two registers (8 doubles, 16 floats) + a partial one
        Case("const-b37", states(37), r(n, scale=5), steps),
    ]
    for c in cases:
        c.dx = grid.dx
        if requires_grad:
            for t in (c.psi0, c.potential, c.control, c.control_shape):
                if t is not None:
                    t.requires_grad_(True)
    return cases


@pytest.fixture(params=[torch.complex128, torch.complex64], ids=["c128", "c64"])
def cdtype(request):
    return request.param
