"""quflow's C++ kernels as PyTorch operators (``torch.ops.quflow.*``), and their derivatives.

Four operators wrap the core, each registered with :mod:`torch.library` (a CPU kernel, a
fake implementation for ``torch.compile``/meta tensors, and a batching rule for ``vmap``):

* ``cn_forward``   ψ0 ↦ ψ_T (or the trajectory)
* ``cn_backward``  the adjoint sweep: the cotangent of ψ_T ↦ the gradients of ψ0, V, u, W
* ``cn_jvp``       the forward sweep fused with its tangent: (ψ_T, δψ_T)
* ``cn_adjoint2``  the adjoint of the tangent-augmented sweep (second order)

``cn_forward`` and ``cn_backward`` carry ``torch.library.register_autograd`` formulas (the
second one made of ``cn_jvp`` and ``cn_adjoint2``), so the operators are differentiable
twice on their own, inside and outside compiled graphs. PyTorch has no forward-mode rule
for custom operators, so eager code goes through :class:`CrankNicolson`, an
``autograd.Function`` over the same operators that adds ``jvp`` and composes with every
``torch.func`` transform. A CUDA kernel would be added with
``torch.library.register_kernel("quflow::cn_forward", "cuda", ...)`` and so on, without
touching the Python API.

Notation (see ``cpp/include/quflow/crank_nicolson.hpp``): θ = (ψ0, V, u, W), F(θ) = ψ_T,
J = ∂F/∂θ (real-linear), PyTorch's complex convention for cotangents.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from torch.utils._python_dispatch import _get_current_dispatch_mode as _dispatch_mode

from . import _checks, _core

_Opt = Tensor | None


@dataclasses.dataclass(frozen=True)
class Config:
    """The static arguments of one propagation."""
    dt: float
    dx: float
    steps: int
    trajectory: bool  # return every state
    store: bool       # keep the forward states for backward (else rebuild them backwards)
    threads: int      # 0: torch.get_num_threads() when the kernel runs


def _threads(threads: int) -> int:
    """0 means torch's intra-op thread count at call time (read outside compiled graphs)."""
    return threads if threads > 0 else max(1, torch.get_num_threads())


def _plain_eager(args) -> bool:
    """True for a call that needs nothing of torch's dispatcher: no torch.func transform,
    no compilation or tracing mode, nothing to record for autograd, plain CPU tensors.
    Such calls run the kernels directly: the dispatcher's round trip through Python costs
    tens of µs per call, and it takes the GIL back in a destructor, which aborts the
    process when a daemon thread's call ends while Python exits."""
    if (torch._C._are_functorch_transforms_active() or torch.compiler.is_compiling()
            or _dispatch_mode() is not None or torch._C._is_torch_function_mode_enabled()):
        return False
    tensors = [a for a in args if isinstance(a, Tensor)]
    if torch.is_grad_enabled() and any(a.requires_grad for a in tensors):
        return False  # recorded for autograd (third derivatives raise there)
    return all(type(a) is Tensor and a.device.type == "cpu" and not _wrapped(a)
               for a in tensors)


def _wrapped(x: Tensor) -> bool:
    """A tensor that wraps another: vmap's (the legacy one too, used by gradcheck),
    torch.func's gradient wrapper, a functional tensor."""
    ft = torch._C._functorch
    return bool(ft.is_functorch_wrapped_tensor(x) or ft.is_legacy_batchedtensor(x)
                or ft.is_functionaltensor(x))


def _call(op, impl, *args):
    """op(*args) through the dispatcher, or impl(*args) directly for a plain eager call."""
    return impl(*args) if _plain_eager(args) else op(*args)


def _core_fn(name: str, dtype: torch.dtype):
    return getattr(_core, f"{name}_{'c128' if dtype == torch.complex128 else 'c64'}")


def _np(x: _Opt):
    return _checks.as_core_array(x)


def _t(x) -> Tensor:
    return torch.from_numpy(x)


def _empty(like: Tensor) -> Tensor:
    """The placeholder for a gradient that was not requested."""
    return like.new_empty(0, dtype=like.real.dtype if like.is_complex() else like.dtype)


# ---------------------------------------------------------------- the operators

def _cn_forward_impl(psi0: Tensor, potential: Tensor, control: _Opt, control_shape: _Opt, dt: float,
                     dx: float, steps: int, trajectory: bool, threads: int) -> Tensor:
    """ψ0 (B, n) → ψ_T (B, n), or (B, steps+1, n) when ``trajectory``."""
    return _t(_core_fn("forward", psi0.dtype)(_np(psi0), _np(potential), _np(control),
                                               _np(control_shape), dt, dx, steps, trajectory,
                                               _threads(threads)))


cn_forward = torch.library.custom_op("quflow::cn_forward", mutates_args=(),
                                      device_types="cpu")(_cn_forward_impl)


@cn_forward.register_fake
def _(psi0, potential, control, control_shape, dt, dx, steps, trajectory, threads):
    b, n = psi0.shape
    return psi0.new_empty((b, steps + 1, n) if trajectory else (b, n))


def _cn_backward_impl(states: Tensor, grad: Tensor, psi0: Tensor, potential: Tensor, control: _Opt,
                      control_shape: _Opt, dt: float, dx: float, steps: int, need: Sequence[bool],
                      threads: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Jᵀ·grad: the gradients of ψ0, V, u, W (empty where ``need`` is false).

    ``states``: ψ_T (B, n), or the stored trajectory (B, steps+1, n); ``grad`` the cotangent
    of ψ_T (B, n) or of the trajectory. ``psi0`` is not read: it is an input so that the
    gradients can be differentiated with respect to it (see the second order below).
    """
    out = _core_fn("backward", states.dtype)(
        _np(states), _np(grad), _np(potential), _np(control), _np(control_shape), dt, dx, steps,
        need_psi0=need[0], need_potential=need[1], need_control=need[2],
        need_control_shape=need[3], threads=_threads(threads))
    return tuple(_empty(x) if g is None else _t(g)
                 for g, x in zip(out, (psi0, potential, potential, potential)))


def _grad_shapes(psi0, potential, control, control_shape, need):
    like = (psi0, potential, control, control_shape)
    return tuple(x.new_empty(x.shape) if want else _empty(psi0 if x is None else x)
                 for x, want in zip(like, need))


cn_backward = torch.library.custom_op("quflow::cn_backward", mutates_args=(),
                                       device_types="cpu")(_cn_backward_impl)


@cn_backward.register_fake
def _(states, grad, psi0, potential, control, control_shape, dt, dx, steps, need, threads):
    return _grad_shapes(psi0, potential, control, control_shape, need)


def _cn_jvp_impl(psi0: Tensor, potential: Tensor, control: _Opt, control_shape: _Opt, tpsi0: _Opt,
                 tpotential: _Opt, tcontrol: _Opt, tcontrol_shape: _Opt, dt: float, dx: float,
                 steps: int, trajectory: bool, threads: int) -> tuple[Tensor, Tensor]:
    """(ψ_T, J·δθ) for the direction δθ = (tpsi0, tpotential, tcontrol, tcontrol_shape)."""
    out, tout = _core_fn("jvp", psi0.dtype)(
        _np(psi0), _np(potential), _np(control), _np(control_shape), _np(tpsi0),
        _np(tpotential), _np(tcontrol), _np(tcontrol_shape), dt, dx, steps, trajectory,
        _threads(threads))
    return _t(out), _t(tout)


cn_jvp = torch.library.custom_op("quflow::cn_jvp", mutates_args=(),
                                  device_types="cpu")(_cn_jvp_impl)


@cn_jvp.register_fake
def _(psi0, potential, control, control_shape, tpsi0, tpotential, tcontrol, tcontrol_shape, dt,
      dx, steps, trajectory, threads):
    b, n = psi0.shape
    shape = (b, steps + 1, n) if trajectory else (b, n)
    return psi0.new_empty(shape), psi0.new_empty(shape)


def _cn_adjoint2_impl(states: Tensor, tstates: Tensor, grad: _Opt, tgrad: Tensor, psi0: Tensor,
                      potential: Tensor, control: _Opt, control_shape: _Opt, tpotential: _Opt,
                      tcontrol: _Opt, tcontrol_shape: _Opt, dt: float, dx: float, steps: int,
                      need: Sequence[bool], threads: int) -> list[Tensor]:
    """∇ of Re⟨grad, ψ⟩ + Re⟨tgrad, J·δθ⟩ wrt θ = (ψ0, V, u, W) and wrt δθ (8 tensors, empty
    where ``need`` is false). ``states``/``tstates``: the final ψ_T and J·δθ (B, n);
    ``grad``/``tgrad``: (B, n), or (B, steps+1, n) for trajectories; ``grad`` None is zero."""
    out = _core_fn("adjoint2", states.dtype)(
        _np(states), _np(tstates), _np(grad), _np(tgrad), _np(potential), _np(control),
        _np(control_shape), _np(tpotential), _np(tcontrol), _np(tcontrol_shape), dt, dx, steps,
        list(need), _threads(threads))
    like = (psi0, potential, potential, potential) * 2
    return [_empty(x) if g is None else _t(g) for g, x in zip(out, like)]


cn_adjoint2 = torch.library.custom_op("quflow::cn_adjoint2", mutates_args=(),
                                       device_types="cpu")(_cn_adjoint2_impl)


@cn_adjoint2.register_fake
def _(states, tstates, grad, tgrad, psi0, potential, control, control_shape, tpotential,
      tcontrol, tcontrol_shape, dt, dx, steps, need, threads):
    return list(_grad_shapes(psi0, potential, control, control_shape, need[:4])
                + _grad_shapes(psi0, potential, control, control_shape, need[4:]))


def _forward(*args):
    return _call(torch.ops.quflow.cn_forward, _cn_forward_impl, *args)


def _backward(*args):
    return _call(torch.ops.quflow.cn_backward, _cn_backward_impl, *args)


def _jvp(*args):
    return _call(torch.ops.quflow.cn_jvp, _cn_jvp_impl, *args)


def _adjoint2(*args):
    return _call(torch.ops.quflow.cn_adjoint2, _cn_adjoint2_impl, *args)


# ---------------------------------------------------------------- derivative formulas

def _none_if_empty(x: Tensor | None) -> Tensor | None:
    return None if x is None or x.numel() == 0 and x.ndim == 1 else x


def _final(x: Tensor, trajectory: bool) -> Tensor:
    return x[:, -1].contiguous() if trajectory else x


def second_order(psi0, potential, control, control_shape, grad, cot, cfg: Config, need,
                 extra=None, guarded: bool = False):
    """The derivatives of G(θ, g) = Jᵀ·g, from one cn_jvp and one cn_adjoint2.

    With c = ``cot`` (the cotangents of G's four outputs, or the tangents of θ in forward
    mode; None is zero) and a = ``extra`` (None is zero):

    * ∇_θ [Re⟨g, J(θ)·c⟩ + Re⟨a, F(θ)⟩]   (``need`` selects θ's four parts), and
    * J·c                                  (the cotangent of g, a tangent trajectory when
                                            ``cfg.trajectory``).

    Both are what double backward needs (a = 0), and the first with a = δg is G's JVP.
    ``guarded``: the kernels run through :class:`_Last` (the eager formulas), so that any
    further derivative of these values raises instead of being dropped.
    """
    jvp, adjoint2 = (_last_jvp, _last_adjoint2) if guarded else (_jvp, _adjoint2)
    tpsi0, tpot, tctl, tshape = (_none_if_empty(x) for x in cot)
    if tpsi0 is not None:
        tpsi0 = tpsi0.to(psi0.dtype)
    out, tout = jvp(psi0, potential, control, control_shape, tpsi0, tpot, tctl, tshape,
                    cfg.dt, cfg.dx, cfg.steps, cfg.trajectory, cfg.threads)
    grads = adjoint2(
        _final(out, cfg.trajectory), _final(tout, cfg.trajectory), extra, grad, psi0,
        potential, control, control_shape, tpot, tctl, tshape, cfg.dt, cfg.dx, cfg.steps,
        list(need) + [False] * 4, cfg.threads)
    return grads[:4], tout


def _maybe(x: Tensor | None, want: bool) -> Tensor | None:
    return _none_if_empty(x) if want else None


# torch.library.register_autograd: the operators differentiate twice on their own (also in
# compiled graphs); G = cn_backward's registered derivative is second_order with a = 0.

def _forward_setup(ctx, inputs, output):
    psi0, potential, control, control_shape, dt, dx, steps, trajectory, threads = inputs
    ctx.cfg = Config(dt, dx, steps, trajectory, False, threads)
    ctx.save_for_backward(psi0, potential, control, control_shape, output)


def _forward_backward(ctx, grad):
    psi0, potential, control, control_shape, out = ctx.saved_tensors
    need = list(ctx.needs_input_grad[:4])
    grads = _backward(out, grad, psi0, potential, control, control_shape, ctx.cfg.dt,
                      ctx.cfg.dx, ctx.cfg.steps, need, ctx.cfg.threads)
    return (*(_maybe(g, w) for g, w in zip(grads, need)), None, None, None, None, None)


cn_forward.register_autograd(_forward_backward, setup_context=_forward_setup)


def _backward_setup(ctx, inputs, output):
    states, grad, psi0, potential, control, control_shape, dt, dx, steps, need, threads = inputs
    ctx.cfg = Config(dt, dx, steps, states.ndim == 3 and grad.ndim == 3, False, threads)
    ctx.save_for_backward(psi0, potential, control, control_shape, grad)


def _backward_backward(ctx, *cot):
    psi0, potential, control, control_shape, grad = ctx.saved_tensors
    need = list(ctx.needs_input_grad[2:6])
    grads, tout = second_order(psi0, potential, control, control_shape, grad, cot, ctx.cfg,
                               need)
    g_grad = tout if ctx.needs_input_grad[1] else None
    return (None, g_grad, *(_maybe(g, w) for g, w in zip(grads, need)),
            None, None, None, None, None)


cn_backward.register_autograd(_backward_backward, setup_context=_backward_setup)


_NOT_IMPLEMENTED = (
    "quflow: crank_nicolson has first derivatives in both modes and second derivatives "
    "as reverse over reverse (double backward, create_graph=True) or forward over reverse "
    "(torch.func.hessian, jacfwd(jacrev(f)), Hessian–vector products); derivatives of a "
    "forward-mode derivative (jacfwd(jacfwd(f)), jacrev(jacfwd(f))) and third derivatives "
    "are not implemented")


def _third_order(ctx, *grads):
    raise RuntimeError(_NOT_IMPLEMENTED)


for _op in (cn_jvp, cn_adjoint2):
    _op.register_autograd(_third_order, setup_context=lambda ctx, inputs, output: None)

_LAST_KERNELS = (_forward, _jvp, _adjoint2)


class _Last(torch.autograd.Function):
    """A kernel call inside an eager derivative formula (a JVP, a second-order term): the
    value is exact, and differentiating it once more, in either mode, raises.

    PyTorch's custom operators have no forward-mode rule: a forward-mode transform over a
    bare operator call would drop its tangent and return zeros silently (a JVP of a JVP, a
    third derivative). Reverse mode over the bare operators already raises (see
    ``_third_order``); this makes forward mode do the same."""

    generate_vmap_rule = True

    @staticmethod
    def forward(kernel: int, *args):
        if kernel == 2:  # the flags, unpacked (see _last_adjoint2)
            *head, need, threads = args
            args = (*head, _unmask(need, 8), threads)
        out = _LAST_KERNELS[kernel](*args)
        return tuple(out) if isinstance(out, list) else out

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_NOT_IMPLEMENTED)

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(_NOT_IMPLEMENTED)


def _last_forward(*args):
    return _Last.apply(0, *args)


def _last_jvp(*args):
    return _Last.apply(1, *args)


def _last_adjoint2(*args):
    # ``need`` (a list) as flags in one int: functorch would take a list for inputs
    *head, need, threads = args
    return list(_Last.apply(2, *head, _mask(need), threads))


# The eager path: autograd.Functions over the same operators, with forward mode and the
# torch.func transforms (vmap through the operators' batching rules).

class CrankNicolson(torch.autograd.Function):
    """(ψ0, V, u, W) → (result, states): ``result`` the public output, ``states`` what
    backward reads (the trajectory in store mode, else an empty placeholder).

    Inputs are validated, contiguous, of one precision, with ψ0 of the full batch."""

    generate_vmap_rule = True

    @staticmethod
    def forward(psi0, potential, control, control_shape, cfg: Config):
        keep = cfg.trajectory or cfg.store
        out = _forward(psi0, potential, control, control_shape, cfg.dt, cfg.dx, cfg.steps,
                       keep, cfg.threads)
        if cfg.trajectory or not keep:
            return out, out.new_empty(0)
        return out[:, -1].clone(), out

    @staticmethod
    def setup_context(ctx, inputs, output):
        psi0, potential, control, control_shape, cfg = inputs
        result, states = output
        ctx.cfg = cfg
        ctx.mark_non_differentiable(states)
        ctx.set_materialize_grads(False)
        kept = states if (cfg.store and not cfg.trajectory) else result
        ctx.save_for_backward(psi0, potential, control, control_shape, kept)
        ctx.save_for_forward(psi0, potential, control, control_shape)

    @staticmethod
    def backward(ctx, grad, _grad_states):
        if grad is None:  # the result was not used: no gradient flows
            return None, None, None, None, None
        psi0, potential, control, control_shape, kept = ctx.saved_tensors
        need = tuple(ctx.needs_input_grad[:4])
        grads = Backward.apply(psi0, potential, control, control_shape, grad, kept, ctx.cfg,
                               _mask(need))
        return (*(_maybe(g, w) for g, w in zip(grads, need)), None)

    @staticmethod
    def jvp(ctx, tpsi0, tpotential, tcontrol, tcontrol_shape, _cfg):
        psi0, potential, control, control_shape = ctx.saved_tensors
        cfg = ctx.cfg
        if tpsi0 is not None:
            tpsi0 = tpsi0.to(psi0.dtype)
        if tpotential is None and tcontrol is None and tcontrol_shape is None:
            if tpsi0 is None:
                return None, None
            # linear in ψ0: the tangent is the propagation of δψ0 itself (one forward)
            return _last_forward(tpsi0, potential, control, control_shape, cfg.dt, cfg.dx,
                                 cfg.steps, cfg.trajectory, cfg.threads), None
        _, tout = _last_jvp(psi0, potential, control, control_shape, tpsi0, tpotential,
                            tcontrol, tcontrol_shape, cfg.dt, cfg.dx, cfg.steps,
                            cfg.trajectory, cfg.threads)
        return tout, None


def _mask(need) -> int:
    """Flags as one int: functorch treats a tuple argument as a pytree of inputs."""
    return sum(1 << i for i, w in enumerate(need) if w)


def _unmask(mask: int, count: int = 4) -> list[bool]:
    return [bool(mask >> i & 1) for i in range(count)]


class Backward(torch.autograd.Function):
    """G(θ, g) = Jᵀ·g as a function of (ψ0, V, u, W, g), differentiable in both modes;
    ``kept`` (ψ_T or the stored states) only saves recomputing F(θ)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(psi0, potential, control, control_shape, grad, kept, cfg: Config, need: int):
        need = _unmask(need)
        return _backward(kept, grad, psi0, potential, control, control_shape, cfg.dt, cfg.dx,
                         cfg.steps, list(need), cfg.threads)

    @staticmethod
    def setup_context(ctx, inputs, output):
        psi0, potential, control, control_shape, grad, kept, cfg, need = inputs
        need = _unmask(need)
        ctx.cfg = cfg
        ctx.need = need
        ctx.mark_non_differentiable(*(g for g, w in zip(output, need) if not w))
        ctx.save_for_backward(psi0, potential, control, control_shape, grad)
        ctx.save_for_forward(psi0, potential, control, control_shape, grad)

    @staticmethod
    def backward(ctx, *cot):
        psi0, potential, control, control_shape, grad = ctx.saved_tensors
        need = list(ctx.needs_input_grad[:4])
        grads, tout = second_order(psi0, potential, control, control_shape, grad, cot, ctx.cfg,
                                   need, guarded=True)
        g_grad = tout if ctx.needs_input_grad[4] else None
        return (*(_maybe(g, w) for g, w in zip(grads, need)), g_grad, None, None, None)

    @staticmethod
    def jvp(ctx, tpsi0, tpotential, tcontrol, tcontrol_shape, tgrad, _kept, _cfg, _need):
        psi0, potential, control, control_shape, grad = ctx.saved_tensors
        extra = None if tgrad is None else tgrad.to(grad.dtype)
        grads, _ = second_order(psi0, potential, control, control_shape, grad,
                                (tpsi0, tpotential, tcontrol, tcontrol_shape), ctx.cfg,
                                ctx.need, extra, guarded=True)
        return tuple(g if w else None for g, w in zip(grads, ctx.need))


# ---------------------------------------------------------------- batching rules (vmap)
# A mapped dimension of size M is folded into the operators' own batch: inputs of B rows
# become M·B rows, outputs are unfolded again. Inputs are of three kinds: "b" rows = the
# batch B; "r" rows ∈ {1, B} (V, u and their tangents), whose gradients are summed back
# over B where the input had one row; "s" shared by the batch (W and its tangent), which
# the kernels cannot take per row: a mapped W, or a gradient of W wanted, is computed one
# mapped slice at a time.

def _loop(op, size, args, in_dims):
    outs = [op(*(a.select(d, m) if isinstance(a, Tensor) and d is not None else a
                 for a, d in zip(args, in_dims)))
            for m in range(size)]
    if isinstance(outs[0], Tensor):
        return torch.stack(outs), 0
    cols = [list(col) for col in zip(*outs)]
    empty = [col[0].numel() == 0 and col[0].ndim == 1 for col in cols]
    stacked = [col[0] if e else torch.stack(col) for col, e in zip(cols, empty)]
    dims = [None if e else 0 for e in empty]
    if isinstance(outs[0], tuple):
        return tuple(stacked), tuple(dims)
    return stacked, dims


def _register_vmap(op, kinds: str, outputs: Sequence[tuple[str, int | None]],
                   need_arg: int | None = None):
    """``outputs``: per output, its kind and (for a gradient) the index of its input, or,
    for the tangent gradients of cn_adjoint2, a pair (tangent input, primal input)."""
    count = len(kinds)

    def rule(info, in_dims, *args):
        size = info.batch_size
        tensors, dims = args[:count], in_dims[:count]
        need = args[need_arg] if need_arg is not None else [False] * len(outputs)
        shared_grad = any(w and kind == "s" for (kind, _), w in zip(outputs, need))
        if shared_grad or any(d is not None for k, d, in zip(kinds, dims) if k == "s"):
            return _loop(op, size, args, in_dims)
        batch = next(t.shape[0 if d is None else 1] for t, d, k in zip(tensors, dims, kinds)
                     if k == "b" and t is not None)
        wanted = {src for (kind, src), w in zip(outputs, need) if w and src is not None}
        wanted |= {s for src in list(wanted) if isinstance(src, tuple) for s in src}
        folded = []
        for i, (t, d, k) in enumerate(zip(tensors, dims, kinds)):
            if t is None or k == "s":
                folded.append(t)
                continue
            t = t.movedim(d, 0) if d is not None else t.expand(size, *t.shape)
            if k == "r" and t.shape[1] == 1 and d is None and i not in wanted:
                folded.append(t[0])  # one row shared by every mapped slice, as it was
                continue
            t = t.expand(size, batch, *t.shape[2:])
            folded.append(t.reshape(size * batch, *t.shape[2:]).contiguous())
        out = op(*folded, *args[count:])
        single = isinstance(out, Tensor)
        results, out_dims = [], []
        for x, (kind, src), w in zip([out] if single else out, outputs, need if not single
                                     else [True]):
            if x.numel() == 0 and x.ndim == 1:  # a gradient that was not requested
                results.append(x)
                out_dims.append(None)
                continue
            x = x.reshape(size, batch, *x.shape[1:])
            if kind == "r":
                if isinstance(src, tuple):  # rows of the tangent's input, else the primal's
                    src = src[0] if tensors[src[0]] is not None else src[1]
                t, d = tensors[src], dims[src]
                if t.shape[0 if d is None else 1] == 1:
                    x = x.sum(1, keepdim=True)
            results.append(x)
            out_dims.append(0)
        if single:
            return results[0], 0
        if isinstance(out, tuple):
            return tuple(results), tuple(out_dims)
        return results, out_dims

    torch.library.register_vmap(op, rule)


_register_vmap(cn_forward, "brrs", [("b", None)])
_register_vmap(cn_backward, "bbbrrs", [("b", 2), ("r", 3), ("r", 4), ("s", 5)], need_arg=9)
_register_vmap(cn_jvp, "brrsbrrs", [("b", None), ("b", None)])
_register_vmap(cn_adjoint2, "bbbbbrrsrrs",
               [("b", 4), ("r", 5), ("r", 6), ("s", 7),
                ("b", 4), ("r", (8, 5)), ("r", (9, 6)), ("s", 10)], need_arg=14)
