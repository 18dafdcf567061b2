"""crank_nicolson as a PyTorch operator: forward mode, second order, torch.func, compile.

Oracles: torch.autograd.gradcheck / gradgradcheck (finite differences) in complex128 with
forward- and reverse-mode checks and batched (vmap) checks; the dense reference of
conftest.py (differentiated by plain autograd); loops for vmap; eager mode for compiled
graphs; torch.library.opcheck for the operator registrations.

Tolerances: gradcheck's defaults in double (atol 1e-5, rtol 1e-3 on finite differences of
step 1e-6); analytic comparisons 1e-10 (double), 1e-4 (float, relative to unit-norm states).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vmap

import quflow
from conftest import dense_crank_nicolson

ops = torch.ops.quflow
GRID = quflow.Grid(6, 2.0)
DT = 0.2


@dataclasses.dataclass
class Small:
    """Inputs small enough for finite differences (n = 6, 4 steps)."""
    name: str
    psi0: torch.Tensor
    potential: torch.Tensor
    control: torch.Tensor | None = None
    control_shape: torch.Tensor | None = None
    steps: int = 4

    def inputs(self):
        return [t for t in (self.psi0, self.potential, self.control, self.control_shape)
                if t is not None]

    def call(self, *args, **kw):
        p, v, *rest = args
        if self.control is None:
            return quflow.crank_nicolson(p, v, dt=DT, dx=GRID.dx, steps=self.steps, **kw)
        u, w = rest
        return quflow.crank_nicolson(p, v, dt=DT, dx=GRID.dx, control=u, control_shape=w, **kw)


def _cases(dtype=torch.complex128):
    gen = torch.Generator().manual_seed(5)
    real = torch.float64 if dtype == torch.complex128 else torch.float32

    def r(*shape, scale=1.0):
        return (scale * torch.randn(*shape, dtype=torch.float64, generator=gen)).to(real)

    def s(b):
        return quflow.random_states(GRID, b, generator=gen).to(dtype)

    x = GRID.x.to(real)
    return [
        Small("constH-b3", s(3), r(6, scale=3)),
        Small("perV-b2", s(2), r(2, 6, scale=3)),
        Small("sharedu-b3", s(3), r(6, scale=3), r(4, scale=2), x + 0.1 * r(6)),
        Small("peru-b2", s(2), r(2, 6, scale=3), r(2, 4, scale=2), x + 0.1 * r(6)),
    ]


MODES = {"reverse": {}, "store": {"adjoint": "store"}, "trajectory": {"trajectory": True}}


def _real_scalar_parts(case, mode):
    """f(one input) → real tensor, the other inputs fixed, for each differentiable input."""
    base = case.inputs()

    def make(i):
        def f(x):
            args = list(base)
            args[i] = x
            out = case.call(*args, **MODES[mode])
            return torch.view_as_real(out) * 1.0
        return f
    return [(i, make(i)) for i in range(len(base))]


# ---------------------------------------------------------------- first and second order

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.name)
def test_gradcheck_reverse_forward_and_batched(case, mode):
    """Reverse and forward mode, and both under vmap, against finite differences."""
    for i, f in _real_scalar_parts(case, mode):
        x = case.inputs()[i].detach().clone().requires_grad_()
        assert torch.autograd.gradcheck(f, (x,), check_forward_ad=True, check_backward_ad=True,
                                        check_batched_grad=True,
                                        check_batched_forward_grad=True), (case.name, i)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.name)
def test_gradgradcheck_every_input(case, mode):
    for i, f in _real_scalar_parts(case, mode):
        x = case.inputs()[i].detach().clone().requires_grad_()
        assert torch.autograd.gradgradcheck(f, (x,), check_fwd_over_rev=True,
                                            check_rev_over_rev=True), (case.name, i)


def test_gradgradcheck_all_inputs_at_once():
    """Mixed second derivatives (∂²/∂V∂u, ∂²/∂ψ0∂W, …) with every input requiring grad."""
    case = _cases()[3]
    xs = [t.detach().clone().requires_grad_() for t in case.inputs()]
    f = lambda *a: torch.view_as_real(case.call(*a)) * 1.0  # noqa: E731
    assert torch.autograd.gradgradcheck(f, xs)


def _objective(case, target):
    def f(p, v, u=None, w=None):
        args = [p, v] + ([u, w] if case.control is not None else [])
        out = case.call(*args)
        return (target.conj() * out).sum(-1).abs().pow(2).sum() + out.real.mul(GRID.x).sum()
    return f


def _dense_objective(case, target):
    def f(p, v, u=None, w=None):
        out = dense_crank_nicolson(p, v, DT, GRID.dx, case.steps, u, w)
        return (target.conj() * out).sum(-1).abs().pow(2).sum() + out.real.mul(GRID.x).sum()
    return f


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.name)
def test_jacfwd_equals_jacrev_equals_dense(case):
    """Per-sample Jacobians wrt each real input, from both modes and from the reference."""
    target = quflow.random_states(GRID, case.psi0.shape[0], seed=9)
    base = case.inputs()

    def per_sample(fn, i):
        def f(x):
            args = list(base)
            args[i] = x
            out = fn(*args)
            return (target.conj() * out).sum(-1).abs().pow(2) + out.real.mul(GRID.x).sum(-1)
        return f

    dense = lambda p, v, *rest: dense_crank_nicolson(p, v, DT, GRID.dx, case.steps, *rest)  # noqa
    for i in range(1, len(base)):  # the real inputs V, u, W
        jr = jacrev(per_sample(case.call, i))(base[i])
        jf = jacfwd(per_sample(case.call, i))(base[i])
        ref = jacrev(per_sample(dense, i))(base[i])
        torch.testing.assert_close(jf, jr, atol=1e-12, rtol=0)
        torch.testing.assert_close(jr, ref, atol=1e-10, rtol=0)
    # ψ0 through its real layout
    y = quflow.to_real(case.psi0)
    f = lambda y, fn: per_sample(fn, 0)(quflow.to_complex(y))  # noqa: E731
    torch.testing.assert_close(jacfwd(lambda y: f(y, case.call))(y),
                               jacrev(lambda y: f(y, dense))(y), atol=1e-10, rtol=0)


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.name)
def test_hessian_vector_products_match_dense_reference(case):
    """Double backward ⟨∇²f, v⟩ for every input against the dense reference's."""
    target = quflow.random_states(GRID, case.psi0.shape[0], seed=10)
    gen = torch.Generator().manual_seed(1)

    def hvps(f):
        xs = [t.detach().clone().requires_grad_() for t in case.inputs()]
        gs = torch.autograd.grad(f(*xs), xs, create_graph=True)
        vs = [torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(k))
              for k, x in enumerate(xs)]
        dot = sum((g.conj() * v).real.sum() for g, v in zip(gs, vs))
        return torch.autograd.grad(dot, xs)

    del gen
    for got, want in zip(hvps(_objective(case, target)), hvps(_dense_objective(case, target))):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_hessian_of_a_fidelity_objective_wrt_the_control():
    """torch.func.hessian against central differences of the (verified) gradient."""
    case = _cases()[2]
    target = quflow.random_states(GRID, 3, seed=4)
    p, v, u, w = case.inputs()

    def infidelity(u):
        out = quflow.crank_nicolson(p, v, dt=DT, dx=GRID.dx, control=u, control_shape=w)
        return 1 - (target.conj() * out).sum(-1).abs().pow(2).mean()

    hess = hessian(infidelity)(u)
    g = grad(infidelity)
    eps = 1e-6
    fd = torch.stack([(g(u + eps * e) - g(u - eps * e)) / (2 * eps)
                      for e in torch.eye(u.numel(), dtype=u.dtype)])
    torch.testing.assert_close(hess, fd, atol=1e-7, rtol=0)
    torch.testing.assert_close(hess, hess.T, atol=1e-12, rtol=0)
    # forward-over-reverse and reverse-over-reverse agree
    vec = torch.linspace(-1, 1, u.numel(), dtype=u.dtype)
    _, fwd_rev = jvp(g, (u,), (vec,))
    torch.testing.assert_close(fwd_rev, hess @ vec, atol=1e-12, rtol=0)


def test_second_order_memory_does_not_store_states():
    """The second-order formulas save ψ0, V, u, W and the cotangent, never the trajectory."""
    case = _cases()[3]
    sizes = {}
    for steps in (10, 400):
        u = torch.randn(2, steps, dtype=torch.float64, requires_grad=True)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(
                lambda t: saved.append(t.numel()) or t, lambda t: t):
            out = quflow.crank_nicolson(case.psi0, case.potential, dt=DT, dx=GRID.dx,
                                        control=u, control_shape=case.control_shape)
            (g,) = torch.autograd.grad(out.abs().pow(2).mul(GRID.x).sum(), u, create_graph=True)
            (h,) = torch.autograd.grad(g.pow(2).sum(), u)
        sizes[steps] = max(saved)
        assert h.shape == u.shape
    # the largest saved tensor is the control itself (2 × steps), not (2, steps+1, 6) states
    assert sizes[400] <= 2 * 400


def test_third_order_raises_a_clear_error():
    case = _cases()[0]
    v = case.potential.detach().clone().requires_grad_()
    out = case.call(case.psi0, v)
    (g,) = torch.autograd.grad(out.abs().pow(2).mul(GRID.x).sum(), v, create_graph=True)
    (h,) = torch.autograd.grad(g.pow(2).sum(), v, create_graph=True)
    with pytest.raises(RuntimeError, match="third derivatives are not implemented"):
        torch.autograd.grad(h.sum(), v)


def _fidelity_of_control(case, target, dense=False):
    p, v, _, w = case.inputs()

    def f(u):
        if dense:
            out = dense_crank_nicolson(p, v, DT, GRID.dx, case.steps, u, w)
        else:
            out = quflow.crank_nicolson(p, v, dt=DT, dx=GRID.dx, control=u, control_shape=w)
        return (target.conj() * out).sum(-1).abs().pow(2).sum()
    return f


HIGHER = {  # derivatives that are not implemented: each must raise, never return zeros
    "jacfwd(hessian)": lambda f: jacfwd(hessian(f)),
    "jacfwd(jacfwd(jacfwd))": lambda f: jacfwd(jacfwd(jacfwd(f))),
    "jacrev(hessian)": lambda f: jacrev(hessian(f)),
    "jacfwd(jacfwd)": lambda f: jacfwd(jacfwd(f)),
    "jacrev(jacfwd)": lambda f: jacrev(jacfwd(f)),
}


@pytest.mark.parametrize("transform", HIGHER)
def test_derivatives_of_forward_mode_and_third_order_raise(transform):
    """Forward mode over a bare custom operator drops its tangent; before the guard
    jacfwd(hessian(f)) returned ~1e-19 where the dense reference gives ~1e-3, and
    jacfwd(jacfwd(f)) a wrong Hessian. The dense reference shows the values are not zero."""
    case = _cases()[2]
    target = quflow.random_states(GRID, 3, seed=4)
    u = case.control.detach().clone()
    want = HIGHER[transform](_fidelity_of_control(case, target, dense=True))(u)
    assert want.abs().max() > 1e-4
    with pytest.raises(RuntimeError, match="third derivatives are not implemented"):
        HIGHER[transform](_fidelity_of_control(case, target))(u)


def test_forward_mode_over_double_backward_raises():
    import torch.autograd.forward_ad as fwAD

    case = _cases()[2]
    f = _fidelity_of_control(case, quflow.random_states(GRID, 3, seed=4))
    with fwAD.dual_level():
        u = fwAD.make_dual(case.control.detach().clone().requires_grad_(),
                           torch.ones_like(case.control))
        (g,) = torch.autograd.grad(f(u), u, create_graph=True)
        with pytest.raises(RuntimeError, match="third derivatives are not implemented"):
            torch.autograd.grad(g.sum(), u, create_graph=True)


def test_second_derivatives_that_are_implemented_match_dense():
    """hessian (forward over reverse), jacrev(jacrev), and jacfwd(jacfwd) in ψ0 alone (the
    map is linear in ψ0, so its inner tangent needs no second-order kernel)."""
    case = _cases()[2]
    target = quflow.random_states(GRID, 3, seed=4)
    u = case.control.detach().clone()
    want = hessian(_fidelity_of_control(case, target, dense=True))(u)
    for transform in (hessian, lambda f: jacrev(jacrev(f))):
        got = transform(_fidelity_of_control(case, target))(u)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    p, v, u, w = case.inputs()

    def in_psi0(x, dense=False):
        psi = torch.complex(x[..., :6], x[..., 6:])
        out = (dense_crank_nicolson(psi, v, DT, GRID.dx, case.steps, u, w) if dense else
               quflow.crank_nicolson(psi, v, dt=DT, dx=GRID.dx, control=u, control_shape=w))
        return (target.conj() * out).sum(-1).abs().pow(2).sum()

    x = torch.cat([p.real, p.imag], -1)
    torch.testing.assert_close(jacfwd(jacfwd(in_psi0))(x),
                               hessian(lambda x: in_psi0(x, dense=True))(x), atol=1e-12, rtol=0)


def test_forward_mode_in_float_matches_double():
    c64, c128 = _cases(torch.complex64)[3], _cases()[3]
    tangents = [torch.randn(t.shape, dtype=t.dtype, generator=torch.Generator().manual_seed(2))
                for t in c128.inputs()]
    _, t128 = jvp(c128.call, tuple(c128.inputs()), tuple(tangents))
    _, t64 = jvp(c64.call, tuple(c64.inputs()),
                 tuple(t.to(torch.complex64 if t.is_complex() else torch.float32)
                       for t in tangents))
    assert t64.dtype == torch.complex64
    torch.testing.assert_close(t64.to(torch.complex128), t128, atol=1e-4, rtol=0)


# ---------------------------------------------------------------- vmap

@pytest.mark.parametrize("which", ["psi0", "potential", "potential-rows1", "control", "shape"])
def test_vmap_matches_a_loop(which):
    case = _cases()[3]
    p, v, u, w = case.inputs()
    gen = torch.Generator().manual_seed(3)
    m = 4
    f = {
        "psi0": (lambda x: case.call(x, v, u, w), quflow.random_states(GRID, 8, seed=2)
                 .reshape(m, 2, 6)),
        "potential": (lambda x: case.call(p, x, u, w), torch.randn(m, 2, 6, dtype=torch.float64,
                                                                   generator=gen)),
        "potential-rows1": (lambda x: case.call(p, x, u, w),
                            torch.randn(m, 6, dtype=torch.float64, generator=gen)),
        "control": (lambda x: case.call(p, v, x, w), torch.randn(m, 2, 4, dtype=torch.float64,
                                                                 generator=gen)),
        "shape": (lambda x: case.call(p, v, u, x), torch.randn(m, 6, dtype=torch.float64,
                                                               generator=gen)),
    }[which]
    fn, xs = f
    torch.testing.assert_close(vmap(fn)(xs), torch.stack([fn(x) for x in xs]), atol=1e-13,
                               rtol=0)
    # a mapped dimension that is not the first one
    torch.testing.assert_close(vmap(fn, in_dims=1)(xs.movedim(0, 1)),
                               torch.stack([fn(x) for x in xs]), atol=1e-13, rtol=0)


def test_nested_vmap_of_jacrev_per_sample_jacobians():
    """vmap over systems of jacrev over controls: the Gauss–Newton building block."""
    target = quflow.random_states(GRID, 1, seed=6)[0]
    psi = quflow.random_states(GRID, 5, seed=7)
    u = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(8))

    def fidelity(p, uu):
        out = quflow.crank_nicolson(p, dt=DT, dx=GRID.dx, control=uu, control_shape=GRID.x)
        return (target.conj() * out).sum(-1).abs().pow(2)

    jac = vmap(lambda p, uu: jacrev(lambda x: fidelity(p, x))(uu))(psi, u)
    loop = torch.stack([torch.autograd.functional.jacobian(lambda uu: fidelity(p, uu), uu)
                        for p, uu in zip(psi, u)])
    torch.testing.assert_close(jac, loop, atol=1e-13, rtol=0)


# ---------------------------------------------------------------- the operators

def _op_args(case, keep):
    p, v, u, w = case.psi0, case.potential.reshape(-1, 6), case.control, case.control_shape
    if u is not None:
        u = u.reshape(-1, case.steps)
    return p, v, u, w, DT, GRID.dx, case.steps, keep, 1


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64], ids=["c128", "c64"])
@pytest.mark.parametrize("keep", [False, True], ids=["final", "trajectory"])
def test_opcheck_every_operator(dtype, keep):
    for case in _cases(dtype):
        p, v, u, w, *static = _op_args(case, keep)
        ad = [t.detach().clone().requires_grad_() if t is not None else None
              for t in (p, v, u, w)]
        torch.library.opcheck(ops.cn_forward.default, (*ad, *static))
        torch.library.opcheck(ops.cn_forward.default, (p, v, u, w, *static))
        out = ops.cn_forward(p, v, u, w, *static)
        need = [True, True, u is not None, u is not None]
        dt, dx, steps = static[:3]
        bw = (out, torch.randn_like(out), p, v, u, w, dt, dx, steps, need, 1)
        torch.library.opcheck(ops.cn_backward.default, bw)
        tan = (torch.randn_like(p), torch.randn_like(v),
               None if u is None else torch.randn_like(u),
               None if w is None else torch.randn_like(w))
        torch.library.opcheck(ops.cn_jvp.default, (p, v, u, w, *tan, dt, dx, steps, keep, 1))
        fin, tfin = (x[:, -1].contiguous() if keep else x
                     for x in ops.cn_jvp(p, v, u, w, *tan, dt, dx, steps, keep, 1))
        a2 = (fin, tfin, torch.randn_like(out), torch.randn_like(out), p, v, u, w, *tan[1:], dt,
              dx, steps, need + need, 1)
        torch.library.opcheck(ops.cn_adjoint2.default, a2)


def test_fake_kernels_give_shapes_without_computing():
    p, v, u, w, dt, dx, steps, _, threads = _op_args(_cases()[2], False)
    meta = [t.to("meta") for t in (p, v, u, w)]
    assert ops.cn_forward(*meta, dt, dx, steps, True, threads).shape == (3, steps + 1, 6)
    grads = ops.cn_backward(meta[0], meta[0], *meta, dt, dx, steps, [True, False, True, False],
                            threads)
    assert [g.shape for g in grads] == [(3, 6), (0,), (1, steps), (0,)]
    assert all(g.device.type == "meta" for g in grads)


# ---------------------------------------------------------------- torch.compile

def _training_step(adjoint, trajectory):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5))
    net = net.double()
    psi = quflow.random_states(GRID, 4, seed=1)
    target = quflow.random_states(GRID, 4, seed=2)
    feats = torch.randn(4, 6, dtype=torch.float64)

    def loss_fn(feats):
        u = net(feats)
        out = quflow.crank_nicolson(psi, feats.mean(0), dt=DT, dx=GRID.dx, control=u,
                                    control_shape=GRID.x, adjoint=adjoint,
                                    trajectory=trajectory)
        out = out[:, -1] if trajectory else out
        return 1 - (target.conj() * out).sum(-1).abs().pow(2).mean()

    return net, feats, loss_fn


@pytest.mark.parametrize("adjoint,trajectory",
                         [("reverse", False), ("store", False), ("reverse", True)])
def test_compiled_training_step_equals_eager(adjoint, trajectory):
    net, feats, loss_fn = _training_step(adjoint, trajectory)
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")

    def run(fn):
        net.zero_grad()
        loss = fn(feats)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in net.parameters()]

    (l0, g0), (l1, g1) = run(loss_fn), run(compiled)
    torch.testing.assert_close(l1, l0, atol=1e-14, rtol=0)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, atol=1e-14, rtol=0)


def test_compiled_graph_has_no_breaks():
    _, feats, loss_fn = _training_step("reverse", False)
    explained = torch._dynamo.explain(loss_fn)(feats)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_compiled_bad_input_raises_the_eager_error():
    psi = quflow.random_states(GRID, 2, seed=1)
    u = torch.ones(2, 3, dtype=torch.float64)
    u[1, 2] = float("nan")

    def f(u):
        return quflow.crank_nicolson(psi, dt=DT, dx=GRID.dx, control=u, control_shape=GRID.x)

    with pytest.raises(ValueError, match="control: contains NaN or Inf"):
        f(u)
    with pytest.raises(ValueError, match="control: contains NaN or Inf"):
        torch.compile(f, fullgraph=True, backend="aot_eager")(u)


@pytest.mark.parametrize("dynamic", [None, True], ids=["default", "dynamic"])
def test_compiled_with_python_float_dt_dx(dynamic):
    """Python-float dt and dx become symbols in the graph (dynamic=True, or on recompiling
    for a second value): before, math.isfinite on them broke the fullgraph compile."""
    psi = quflow.random_states(GRID, 2, seed=1)

    def f(u, dt, dx):
        out = quflow.crank_nicolson(psi, dt=dt, dx=dx, control=u, control_shape=GRID.x)
        return out.abs().pow(2).mul(GRID.x).sum()

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    u = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
    for dt, dx in [(0.2, GRID.dx), (0.1, GRID.dx), (0.1, 1.1 * GRID.dx), (0.05, 0.3)]:
        got, want = compiled(u, dt, dx), f(u, dt, dx)
        torch.testing.assert_close(got, want, atol=1e-14, rtol=0)
        torch.testing.assert_close(torch.autograd.grad(got, u)[0],
                                   torch.autograd.grad(want, u)[0], atol=1e-14, rtol=0)
    for dt, dx, name in [(-0.1, GRID.dx, "dt"), (0.1, float("inf"), "dx")]:
        with pytest.raises(ValueError, match=f"{name}: expected a finite number > 0"):
            compiled(u, dt, dx)


def test_bad_tangents_are_named():
    case = _cases()[2]
    p, v, u, w = case.inputs()
    bad = torch.zeros_like(u)
    bad[1] = float("inf")
    with pytest.raises(ValueError, match="tangent control: contains NaN or Inf"):
        jvp(lambda x: case.call(p, v, x, w), (u,), (bad,))


@pytest.mark.xfail(strict=True, reason="PyTorch 2.13: the reverse-over-forward derivative of "
                   "complex torch.linalg.solve is wrong; this is why the dense reference is "
                   "differentiated reverse-over-reverse above (strict: tells us when fixed)")
def test_upstream_complex_solve_reverse_over_forward():
    import torch.autograd.forward_ad as fwad
    gen = torch.Generator().manual_seed(0)
    a0 = torch.randn(3, 3, dtype=torch.complex128, generator=gen) + 3 * torch.eye(3)
    x = torch.randn(3, dtype=torch.complex128, generator=gen)
    b = torch.randn(3, dtype=torch.complex128, generator=gen)
    tv = torch.randn(3, dtype=torch.float64, generator=gen)

    def tangent(v, solve):
        with fwad.dual_level():
            a = a0 + 1j * torch.diag(fwad.make_dual(v, tv)).to(torch.complex128)
            return (b.conj() * fwad.unpack_dual(solve(a, x)).tangent).sum().real

    v = torch.randn(3, dtype=torch.float64, generator=gen, requires_grad=True)
    (with_inv,) = torch.autograd.grad(tangent(v, lambda a, x: torch.linalg.inv(a) @ x), v)
    (with_solve,) = torch.autograd.grad(tangent(v, torch.linalg.solve), v)
    torch.testing.assert_close(with_solve, with_inv, atol=1e-10, rtol=0)


@pytest.mark.parametrize("batch", [1, 4, 19], ids=lambda b: f"b{b}")
@pytest.mark.parametrize("control", [False, True], ids=["constH", "control"])
def test_kernels_of_every_block_width_match_dense(batch, control):
    """JVP and HVP at batches that reach single-state, one-register, two-register and
    partial blocks (the gradchecks above use small batches), against the dense reference."""
    gen = torch.Generator().manual_seed(batch)
    grid = quflow.Grid(10, 2.0)
    psi = quflow.random_states(grid, batch, generator=gen)
    v = torch.randn(batch if control else 1, 10, dtype=torch.float64, generator=gen)
    u = torch.randn(batch, 7, dtype=torch.float64, generator=gen) if control else None
    w = grid.x + 0.1 * torch.randn(10, dtype=torch.float64, generator=gen) if control else None
    inputs = [psi, v] + ([u, w] if control else [])
    tangents = [torch.randn(t.shape, dtype=t.dtype, generator=gen) for t in inputs]
    target = quflow.random_states(grid, batch, generator=gen)

    def ours(p, vv, uu=None, ww=None):
        if uu is None:
            return quflow.crank_nicolson(p, vv, dt=DT, dx=grid.dx, steps=7)
        return quflow.crank_nicolson(p, vv, dt=DT, dx=grid.dx, control=uu, control_shape=ww)

    def dense(p, vv, uu=None, ww=None):
        return dense_crank_nicolson(p, vv, DT, grid.dx, 7, uu, ww)

    _, t_ours = jvp(ours, tuple(inputs), tuple(tangents))
    _, t_dense = jvp(dense, tuple(inputs), tuple(tangents))
    torch.testing.assert_close(t_ours, t_dense, atol=1e-12, rtol=0)

    def hvp(fn):
        xs = [t.detach().clone().requires_grad_() for t in inputs]
        out = fn(*xs)
        f = (target.conj() * out).sum(-1).abs().pow(2).sum() + out.imag.mul(grid.x).sum()
        gs = torch.autograd.grad(f, xs, create_graph=True)
        dot = sum((g.conj() * t).real.sum() for g, t in zip(gs, tangents))
        return torch.autograd.grad(dot, xs)

    for a, b in zip(hvp(ours), hvp(dense)):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=0)


@pytest.mark.parametrize("gradient", ["standard", "modified", "l2"])
def test_compiled_step_with_fidelity_loss_equals_eager(gradient):
    """The paper's training step: network → control → crank_nicolson → fidelity_loss, in
    one graph (fullgraph=True), for each gradient flow."""
    net, feats, _ = _training_step("reverse", False)
    psi = quflow.random_states(GRID, 4, seed=1)
    target = quflow.random_states(GRID, 4, seed=2)

    def loss_fn(feats):
        out = quflow.crank_nicolson(psi, dt=DT, dx=GRID.dx, control=net(feats),
                                    control_shape=GRID.x)
        return quflow.fidelity_loss(out, target, gradient=gradient)

    def run(fn):
        net.zero_grad()
        loss = fn(feats)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in net.parameters()]

    explained = torch._dynamo.explain(loss_fn)(feats)
    assert explained.graph_break_count == 0, explained.break_reasons
    (l0, g0), (l1, g1) = run(loss_fn), run(torch.compile(loss_fn, fullgraph=True,
                                                         backend="aot_eager"))
    torch.testing.assert_close(l1, l0, atol=1e-13, rtol=0)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
