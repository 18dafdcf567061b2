"""Property tests: crank_nicolson on random problems against the dense reference.

A seeded generator draws the batch, n, steps, which inputs are batched, shared or
broadcast rows of 1, non-contiguous or conjugated layouts, the precision, the adjoint mode,
trajectory output and the thread count; values and the gradients of a random real loss
must equal the dense reference (tests/conftest.py) differentiated by autograd, within the
per-dtype tolerances. The same cases run on the portable kernels (QUFLOW_ISA=baseline) in
a subprocess, so both instruction sets are covered.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

import quflow
from conftest import ATOL, GRAD_ATOL, dense_crank_nicolson

CASES = 300  # per instruction set; a few seconds each


def _layout(x: torch.Tensor, how: str) -> torch.Tensor:
    """The same values (a differentiable function of x) in another memory layout."""
    if how == "strided":  # every other element of a wider tensor
        return torch.stack([x, torch.zeros_like(x)], -1)[..., 0]
    if how == "transposed" and x.ndim == 2:
        return x.t().contiguous().t()
    if how == "conj" and x.is_complex():  # a lazily conjugated view of conj(x)
        return x.conj().resolve_conj().conj()
    return x


def _draw(gen: torch.Generator):
    def randint(lo, hi):
        return int(torch.randint(lo, hi + 1, (), generator=gen))

    def choice(options):
        return options[randint(0, len(options) - 1)]

    def randn(*shape, scale=1.0):
        return scale * torch.randn(*shape, dtype=torch.float64, generator=gen)

    cdtype = choice([torch.complex128, torch.complex64])
    real = torch.float64 if cdtype == torch.complex128 else torch.float32
    batch, n, steps = randint(1, 19), randint(1, 12), randint(0, 10)
    dt = float(10 ** torch.empty((), dtype=torch.float64).uniform_(-3, -0.3, generator=gen))
    dx = float(torch.empty((), dtype=torch.float64).uniform_(0.05, 1.0, generator=gen))
    psi_rows = choice([None, 1, batch])          # None: unbatched (n,)
    v_rows = choice([None, 1, batch])            # None: shared (n,)
    u_rows = choice(["none", None, 1, batch]) if steps > 0 else "none"
    if {psi_rows, v_rows, u_rows} <= {None, 1, "none"}:
        batch = 1                                # no input carries a batch of its own
    psi = quflow.random_states(quflow.Grid(n), max(batch, 1), generator=gen)
    psi0 = psi[0] if psi_rows is None else psi[:psi_rows]
    potential = randn(*(() if v_rows is None else (v_rows,)), n, scale=5.0)
    control = control_shape = None
    if u_rows != "none":
        control = randn(*(() if u_rows is None else (u_rows,)), steps, scale=3.0)
        control_shape = randn(n)
    leaves = [t.to(cdtype if t.is_complex() else real).requires_grad_()
              for t in (psi0, potential, control, control_shape) if t is not None]
    layouts = [choice(["contiguous", "strided", "transposed", "conj"]) for _ in leaves]
    settings = dict(dt=dt, dx=dx, trajectory=choice([False, True]),
                    adjoint=choice(["reverse", "store"]), threads=randint(1, 3),
                    with_control=control is not None, steps=steps, batch=batch)
    return cdtype, leaves, layouts, settings


def _run(cdtype, leaves, layouts, s, reference: bool):
    args = [_layout(x, how) for x, how in zip(leaves, layouts)]
    psi0, potential, *rest = args
    control, control_shape = rest if rest else (None, None)
    if not reference:
        kw = dict(control=control, control_shape=control_shape) if s["with_control"] \
            else dict(steps=s["steps"])
        return quflow.crank_nicolson(psi0, potential, dt=s["dt"], dx=s["dx"],
                                     trajectory=s["trajectory"], adjoint=s["adjoint"], **kw)
    up = [None if t is None else t.to(torch.complex128 if t.is_complex() else torch.float64)
          for t in (psi0, potential, control, control_shape)]
    psi0, potential, control, control_shape = up
    batched = psi0.ndim == 2 or potential.ndim == 2 or (control is not None and control.ndim == 2)
    out = dense_crank_nicolson(psi0.reshape(-1, psi0.shape[-1]).expand(s["batch"], -1), potential,
                               s["dt"], s["dx"], s["steps"], control, control_shape,
                               trajectory=s["trajectory"])
    return out if batched else out[0]


def check_cases(seed: int, count: int) -> int:
    """Runs `count` random cases; raises AssertionError with the case on a mismatch."""
    gen = torch.Generator().manual_seed(seed)
    before = torch.get_num_threads()
    try:
        for i in range(count):
            cdtype, leaves, layouts, s = _draw(gen)
            torch.set_num_threads(s["threads"])
            out = _run(cdtype, leaves, layouts, s, reference=False)
            ref = _run(cdtype, leaves, layouts, s, reference=True)
            where = f"case {i} (seed {seed}): {cdtype}, layouts {layouts}, {s}"
            assert out.dtype == cdtype and out.shape == ref.shape, where
            torch.testing.assert_close(out.to(torch.complex128), ref, atol=ATOL[cdtype], rtol=0,
                                       msg=where)
            w = torch.rand(out.shape, dtype=torch.float64, generator=gen)
            c = torch.randn(out.shape, dtype=torch.float64, generator=gen)

            def loss(y):
                return (y.abs().square().double() * w).sum() + (y.real.double() * c).sum()

            got = torch.autograd.grad(loss(out), leaves, materialize_grads=True)
            want = torch.autograd.grad(loss(ref), leaves, materialize_grads=True)
            for k, (g, r) in enumerate(zip(got, want)):
                assert g.dtype == leaves[k].dtype, where
                scale = max(1.0, r.abs().max().item())
                torch.testing.assert_close(g.to(r.dtype), r, atol=GRAD_ATOL[cdtype] * scale,
                                           rtol=0, msg=f"{where}: gradient of input {k}")
    finally:
        torch.set_num_threads(before)
    return count


def test_random_problems_match_the_dense_reference():
    assert check_cases(seed=1234, count=CASES) == CASES


def test_random_problems_match_the_dense_reference_on_the_portable_kernels():
    here = os.path.dirname(__file__)
    env = dict(os.environ, QUFLOW_ISA="baseline",
               PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    code = ("from quflow import _core; assert _core.kernel_isa() == 'baseline'\n"
            f"from test_properties import check_cases; print(check_cases(4321, {CASES}))")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=here, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.split()[-1:] == [str(CASES)], done.stderr[-3000:]
