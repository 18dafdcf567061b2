"""Phase-invariant fidelity loss with a selectable gradient flow.

After Schnell & Thuerey, "A Gradient Flow Modification to Improve Learning from
Differentiable Quantum Simulators" (ICML 2023 workshop).
"""

from __future__ import annotations

import dataclasses
import inspect
import math

import torch
from torch import nn

from . import _checks

__all__ = ["FidelityLoss", "bures_loss", "fidelity_loss", "fubini_study_loss",
           "log_fidelity_loss", "to_complex", "to_real"]

GRADIENTS = ("standard", "modified", "l2")
REDUCTIONS = ("mean", "sum", "none")
LAYOUTS = ("amplitudes", "split")


def to_complex(y: torch.Tensor) -> torch.Tensor:
    """Real layout ``[Re ψ_1..Re ψ_n, Im ψ_1..Im ψ_n]`` → complex ``ψ``.

    Args:
        y: real float32/float64 tensor of shape ``(..., 2n)``.

    Returns:
        complex64/complex128 tensor of shape ``(..., n)``; differentiable.

    Example:
        >>> to_complex(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        tensor([1.+3.j, 2.+4.j])
    """
    y = _checks.tensor("y", y)
    if y.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"y: expected a real float32 or float64 tensor, got {y.dtype}")
    if y.ndim == 0 or y.shape[-1] % 2:
        raise ValueError(f"y: the last dimension must be even (2n: real parts, then imaginary "
                         f"parts), got shape {tuple(y.shape)}")
    return _split(y)


def _split(y: torch.Tensor) -> torch.Tensor:
    """``[Re ψ, Im ψ]`` of shape ``(..., 2n)`` → ``ψ`` (shape already checked)."""
    n = y.shape[-1] // 2
    return torch.complex(y[..., :n], y[..., n:])


def to_real(psi: torch.Tensor) -> torch.Tensor:
    """Complex ``ψ`` of shape ``(..., n)`` → real ``(..., 2n)`` laid out ``[Re ψ, Im ψ]``.

    The inverse of :func:`to_complex`; differentiable.

    Args:
        psi: complex64/complex128 tensor of shape ``(..., n)``.

    Returns:
        float32/float64 tensor of shape ``(..., 2n)``: ``[Re ψ_1..Re ψ_n, Im ψ_1..Im ψ_n]``.

    Example:
        >>> to_real(torch.tensor([1 + 3j, 2 + 4j]))
        tensor([1., 2., 3., 4.])
    """
    psi = _checks.tensor("psi", psi)
    if psi.dtype not in (torch.complex64, torch.complex128):
        raise TypeError(f"psi: expected a complex64 or complex128 tensor, got {psi.dtype}")
    if psi.ndim == 0:
        raise ValueError("psi: expected at least one dimension (..., n)")
    return torch.cat([psi.real, psi.imag], dim=-1)


# Per-sample factors for the tiny: torch divides a tensor by ``m`` as a product with
# ``1/m``, which overflows once ``m`` is subnormal (float64 below 2^-1022: 1e-310 gave
# NaN), so a sample whose largest modulus lies below 2^-k is first multiplied by 2^k:
# a power of two, hence exact, leaving ``m·2^k`` normal with a finite reciprocal
# (float64: k = 512, smallest 2^-1074 → 2^-562; float32: k = 64, 2^-149 → 2^-85).
_TINY_FACTOR = {torch.float32: 2.0 ** 64, torch.float64: 2.0 ** 512}


def _unit(x: torch.Tensor):
    """Per sample ``x/‖x‖`` with ``‖x‖ = m·r/f``, never squaring ``x`` itself: ``x`` is
    first multiplied by ``f`` (``2^k`` for a sample whose largest modulus is below
    ``2^-k``, see ``_TINY_FACTOR``; else 1) and divided by its largest modulus ``m``
    (``m`` taken after the factor: normal or 0; both detached, as ``x/‖x‖`` depends on
    neither), so ``r = ‖f·x/m‖ ∈ [1, √n]``. Returns ``(x̂, m, r, f)``, the last three of
    shape ``(..., 1)``; ``m = 0`` only for a zero sample."""
    m = x.detach().abs().amax(-1, keepdim=True)
    big = _TINY_FACTOR[m.dtype]
    f = torch.ones_like(m).masked_fill(m < 1 / big, big)  # (..., 1): 1 at every normal scale
    m = m * f  # exact: f is a power of two
    y = (x * f) / torch.where(m > 0, m, 1)
    r = torch.linalg.vector_norm(y, dim=-1, keepdim=True)
    return y / torch.where(r > 0, r, 1), m, r, f


# Norms ‖p‖ within which the direct formula 1 − (|⟨t,p⟩|/(‖p‖‖t‖))² is as accurate as
# the scaled one (_unit): ‖p‖² ∈ [2^(emin/2 + digits), 2^(emax/2 − 1)] keeps every sum of
# squares and products finite, normal and far above the underflow threshold (float:
# ‖p‖ ∈ [2^-19, 2^31], double: [2^-229, 2^255]). Outside it (and for NaN/Inf or a zero
# sample) the scaled path runs, after the checks that name the argument.
_DIRECT_NORMS = {torch.float32: (2.0 ** -19, 2.0 ** 31), torch.float64: (2.0 ** -229, 2.0 ** 255)}


@dataclasses.dataclass(frozen=True)
class _Settings:
    mode: str  # "standard" | "modified" | "l2": the backward
    checks: bool  # eager: validate values (NaN/Inf, zero norm) and try the direct formula


def _norm(x: torch.Tensor) -> torch.Tensor:
    """‖x‖ over the last axis of a complex ``x``, as the real norm of its ``(..., n, 2)``
    view (torch's complex norm kernel is ~8× slower at n = 20)."""
    return torch.linalg.vector_norm(torch.view_as_real(x.resolve_conj()), dim=(-2, -1))


def _phase(s: torch.Tensor) -> torch.Tensor:
    """φ = s/|s| as exp(i·atan2(Im s, Re s)): 1 where s = 0, no division (the modified
    gradient's phase, see _Fidelity)."""
    return torch.polar(torch.ones_like(s.real), torch.atan2(s.imag, s.real))


def _direct_terms(p: torch.Tensor, t: torch.Tensor):
    """``(⟨t,p⟩, ‖p‖, ‖t‖)`` over the last axis, or ``None`` if some norm lies outside
    ``_DIRECT_NORMS`` (NaN, Inf and zero samples included). One ``(2, ...)`` clamp and one
    comparison decide: O(batch) work, no extra pass over the states."""
    norms = torch.stack((_norm(p), _norm(t)))  # (2, ...)
    lo, hi = _DIRECT_NORMS[norms.dtype]
    if not torch.equal(norms.clamp(lo, hi), norms):  # NaN ≠ NaN: NaN/Inf fall through too
        return None
    return torch.linalg.vecdot(t, p), norms[0], norms[1]  # vecdot: Σ conj(t)·p


def _direct_value(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor | None:
    """``1 − (|⟨t,p⟩|/(‖p‖‖t‖))²`` in five ops, or ``None`` outside ``_DIRECT_NORMS``."""
    terms = _direct_terms(p, t)
    if terms is None:
        return None
    s, np_, nt = terms
    return (s.abs() / (np_ * nt)).square_().neg_().add_(1)  # = 1 − (…)² exactly


def _direct_gradients(p: torch.Tensor, t: torch.Tensor, g: torch.Tensor, mode: str,
                      need_p: bool, need_t: bool):
    """The standard and modified gradients of :class:`_Fidelity` with the norms divided
    out per sample instead of forming the unit vectors, or ``None`` outside
    ``_DIRECT_NORMS`` (then :func:`_unit` runs). With s = ⟨t,p⟩, a = ‖p‖, b = ‖t‖ and
    ŝ = s/(ab), every term is a per-sample coefficient times ``p`` or ``t``:
      standard  ∂p = −2g (ŝ/(ab)·t − |ŝ|²/a²·p),  ∂t = −2g (ŝ̄/(ab)·p − |ŝ|²/b²·t)
      modified  ∂p = −2g φ/(ab) (t − s̄/a²·p),     ∂t = −2g φ̄/(ab) (p − s/b²·t)
    Inside the range every coefficient and product stays finite and normal (the bounds'
    derivation above), so these agree with the unit-vector forms to round-off
    (tests/test_fidelity.py) at about a quarter of their cost (755 vs 158 µs at batch
    200, n = 20): the three sums, then two products and a difference per gradient."""
    terms = _direct_terms(p, t)
    if terms is None:
        return None
    s, a, b = (x[..., None] for x in terms)
    ab = a * b
    if mode == "standard":
        s_hat = s / ab
        k = -2 * g
        c = k * s_hat / ab  # coefficient of t in ∂p (conj: of p in ∂t)
        s2 = k * s_hat.abs().square()
        gp = c * t - (s2 / a.square()) * p if need_p else None
        gt = c.conj() * p - (s2 / b.square()) * t if need_t else None
        return gp, gt
    phase = _phase(s)
    c = (-2 * g / ab) * phase
    gp = c * t - (c * (s.conj() / a.square())) * p if need_p else None
    gt = c.conj() * p - (c.conj() * (s / b.square())) * t if need_t else None
    return gp, gt


def _scaled_value(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``1 − |⟨t̂, p̂⟩|²`` on the unit vectors of :func:`_unit`: right at any finite scale."""
    p_hat = _unit(p)[0]
    t_hat = _unit(t)[0]
    return 1 - (t_hat.conj() * p_hat).sum(-1).abs().square()


def _check_values(p: torch.Tensor, t: torch.Tensor) -> None:
    """The data-dependent checks, each naming its argument (eager only, and only once the
    direct formula has refused the batch)."""
    _checks.finite("pred", p)
    _checks.finite("target", t)
    for name, x in (("pred", p), ("target", t)):
        if bool((x.abs().amax(-1) == 0).any()):
            raise ValueError(f"{name}: a sample has zero norm; the fidelity is undefined")


class _Fidelity(torch.autograd.Function):
    """Per-sample L_i = 1 − |⟨t̂_i, p̂_i⟩|² with a mode-dependent backward.

    p, t: complex (..., n) of one shape and dtype. Returns L: real (...).
    The value: in eager mode the direct formula 1 − (|⟨t,p⟩|/(‖p‖‖t‖))² where every norm
    lies in _DIRECT_NORMS (the same value to round-off, at the cost of the plain torch
    expression), otherwise, and always inside torch.compile (no data-dependent branch), on
    the unit vectors p̂ = p/‖p‖, t̂ = t/‖t‖ (see _unit), right for any finite non-zero
    scale of p and t. The gradients take the same two paths (_direct_gradients: the
    norms divided out per sample, in eager mode inside _DIRECT_NORMS; the unit vectors
    otherwise). With
    ŝ = ⟨t̂, p̂⟩ and g = ∂(loss)/∂L_i:
      standard  ∂p = −2g (ŝ·t̂ − |ŝ|²·p̂)/‖p‖,      ∂t = −2g (ŝ̄·p̂ − |ŝ|²·t̂)/‖t‖
      modified  ∂p = −2g φ (t̂ − ŝ̄·p̂)/‖p‖,        ∂t = −2g φ̄ (p̂ − ŝ·t̂)/‖t‖,
                φ = ŝ/|ŝ| = exp(i·atan2(Im ŝ, Re ŝ)), so φ = 1 where ŝ = 0 (and no division
                by a subnormal |ŝ|); = standard/√(1 − L_i) wherever ŝ ≠ 0
      l2        ∂p = g (p − t),                     ∂t = g (t − p)
    (PyTorch's convention: ∂ = ∂/∂Re + i·∂/∂Im.) These are the unnormalised formulas
    (s = ⟨t, p⟩, a = ‖p‖², b = ‖t‖²: ∂p = −2g (s·a·t − |s|²·p)/(a²b), …) with the norms
    divided out. The backward is written in torch ops, so "standard" is differentiable again.
    """

    @staticmethod
    def forward(p, t, settings):
        if settings.checks:
            value = _direct_value(p, t)
            if value is not None:
                return value
            _check_values(p, t)
        return _scaled_value(p, t)

    @staticmethod
    def setup_context(ctx, inputs, output):
        p, t, settings = inputs
        ctx.mode = settings.mode
        ctx.checks = settings.checks
        ctx.save_for_backward(p, t)

    @staticmethod
    def backward(ctx, g):
        p, t = ctx.saved_tensors
        need_p, need_t = ctx.needs_input_grad[:2]
        g = g[..., None]
        if ctx.mode == "l2":
            d = p - t
            return (g * d if need_p else None), (-g * d if need_t else None), None
        if ctx.checks:
            direct = _direct_gradients(p, t, g, ctx.mode, need_p, need_t)
            if direct is not None:
                return (*direct, None)
        # ‖p‖ = mp·rp/fp (see _unit): dividing by mp·rp and then multiplying by fp keeps
        # every intermediate finite; only a gradient beyond the dtype's range (‖p‖ near
        # the subnormals, a large g) overflows, to ±inf like any float product.
        p_hat, mp, rp, fp = _unit(p)
        t_hat, mt, rt, ft = _unit(t)
        s = (t_hat.conj() * p_hat).sum(-1, keepdim=True)
        if ctx.mode == "standard":
            s2 = s.abs().square()
            gp = -2 * g * (s * t_hat - s2 * p_hat) / mp / rp * fp if need_p else None
            gt = -2 * g * (s.conj() * p_hat - s2 * t_hat) / mt / rt * ft if need_t else None
            return gp, gt, None
        phase = _phase(s)
        gp = -2 * g * phase * (t_hat - s.conj() * p_hat) / mp / rp * fp if need_p else None
        gt = -2 * g * phase.conj() * (p_hat - s * t_hat) / mt / rt * ft if need_t else None
        return gp, gt, None


_SETTINGS = {(m, c): _Settings(m, c) for m in GRADIENTS for c in (False, True)}


# Function.apply binds default arguments through inspect.signature(forward) on every call
# (~40 µs, a third of the loss's forward at batch 200); inspect returns a function's
# __signature__ first, so it is computed once here.
_Fidelity.forward.__signature__ = inspect.signature(_Fidelity.forward)


def _check_options(gradient: str, reduction: str, layout: str) -> None:
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient: expected one of {GRADIENTS}, got {gradient!r}")
    _check_reduction_and_layout(reduction, layout)


def _check_reduction_and_layout(reduction: str, layout: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")


def _as_state(name: str, x: object, layout: str) -> torch.Tensor:
    """``x`` as a complex state ``(..., n)``: a complex tensor as is; a real one promoted
    (``layout="amplitudes"``: ``ψ_j = x_j``) or read as ``[Re ψ, Im ψ]`` (``"split"``)."""
    x = _checks.tensor(name, x)
    if x.dtype not in (torch.complex64, torch.complex128, torch.float32, torch.float64):
        raise TypeError(f"{name}: expected a complex64/complex128 or a real float32/float64 "
                        f"tensor, got {x.dtype}")
    if x.ndim == 0:
        raise ValueError(f"{name}: expected shape (..., n), got a 0-d tensor")
    if x.is_complex():
        out = x
    elif layout == "split":
        if x.shape[-1] % 2:
            raise ValueError(f"{name}: with layout='split' a real {name} must have an even "
                             f"last dimension 2n ([Re ψ, Im ψ]), got shape {tuple(x.shape)}")
        out = _split(x)
    else:  # a real wavefunction; the complex copy's backward takes the real part
        out = x.to(_checks.complex_of(x.dtype))
    if out.shape[-1] < 1:
        raise ValueError(f"{name}: the state has no components (n = 0)")
    return out


def _broadcast(a: torch.Size, b: torch.Size) -> tuple[int, ...] | None:
    """NumPy broadcasting of two batch shapes (metadata only); ``None`` if they clash."""
    if a == b:
        return tuple(a)
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x != y and x != 1 and y != 1:
            return None
        out.append(y if x == 1 else x)
    return tuple(reversed(out))


def fidelity_loss(pred: torch.Tensor, target: torch.Tensor, *, gradient: str = "modified",
                  reduction: str = "mean", layout: str = "amplitudes") -> torch.Tensor:
    r"""Quantum (infidelity) loss ``L = 1 − |⟨p, t⟩|²`` with a selectable gradient flow.

    Per sample ``i``, ``L_i = 1 − |⟨p_i, t_i⟩|² / (‖p_i‖²·‖t_i‖²)`` with
    ``⟨a, b⟩ = Σ_j conj(a_j)·b_j``; unnormalised network outputs are therefore fine, and
    ``L_i`` is invariant under global phases ``p_i → e^{iα} p_i``. The value never depends
    on ``gradient``: runs are always evaluated with the quantum loss. Only the backward
    pass differs (Schnell & Thuerey 2023):

    * ``"standard"``: the exact gradient of ``L_i``. It vanishes as ``⟨p_i, t_i⟩ → 0``
      although ``L_i → 1``, so badly predicted samples barely train.
    * ``"modified"`` (the paper's eq. 6): ``G_M = ∇L_i / √(1 − L_i)`` per sample.
      Equivalently ``G_M = −2·∇√F_i`` with ``F_i = 1 − L_i``; its size stays ``O(1)`` as
      the overlap vanishes. At an exactly vanishing overlap the overlap's phase
      ``⟨t_i,p_i⟩/|⟨t_i,p_i⟩|`` is taken as ``1`` (the limit along a real positive
      overlap): ``∂p = −2·t/(‖p‖‖t‖)``, which points ``p`` towards ``t``. Finite always.
    * ``"l2"`` (the paper's eq. 5): the gradient of ``½‖p_i − t_i‖²`` per sample, for
      the inputs as given. Not phase invariant; for comparison.

    Each mode's per-sample gradient is weighted by the reduction (``1/B`` for ``"mean"``,
    ``1`` for ``"sum"``, the incoming gradient for ``"none"``).

    Inputs: ``pred`` and ``target`` are each complex ``(..., n)`` or real. With
    ``layout="amplitudes"`` (the default) the last axis holds the ``n`` amplitudes
    ``ψ_1..ψ_n``, so a real ``(..., n)`` tensor is a real wavefunction (e.g. box
    eigenstates from :meth:`quflow.Grid.eigenstates` with ``dtype=torch.float64``); it is
    promoted to complex, and its gradient is the real part of the complex one, i.e.
    ``∂L/∂x`` of the real ``x``. With ``layout="split"`` a real tensor is ``(..., 2n)`` in
    the :func:`to_real` layout ``[Re ψ_1..Re ψ_n, Im ψ_1..Im ψ_n]`` (the real outputs of a
    network), read through :func:`to_complex`; complex tensors are taken as they are in
    both layouts. A real and a complex input may be mixed: both are promoted to the
    complex dtype of the higher precision. *Behaviour change* (see the changelog): before, every
    real tensor was read in the split layout, so two orthogonal real eigenstates gave a
    wrong loss (0.180 for ``φ₁, φ₂`` at ``n = 20``) without an error; ``layout="split"``
    is exactly that former behaviour.

    Scale: the value is right for any finite non-zero scale of ``p`` and ``t``, subnormal
    states included (a sample whose largest modulus lies below ``2^-512`` in double,
    ``2^-64`` in float, is first multiplied by that power of two, exactly). The value is
    scale invariant, ``L(c·p, t) = L(p, t)``, and the gradient scales inversely,
    ``∇_p L(c·p, t) = ∇_p L(p, t)/c``; near the subnormals (``‖p‖ ≲ 1e-308`` in double,
    ``1e-38`` in float) components of that gradient beyond the dtype's range overflow to
    ``±inf``, as any product would, never to NaN. The ``"l2"`` gradient ``p − t`` does
    not scale.

    Cost: the value is the direct ``1 − (|⟨t,p⟩|/(‖p‖‖t‖))²`` wherever every norm lies in
    a range that keeps it as accurate as the scaled computation (double: ``2^-229`` to
    ``2^255``; float: ``2^-19`` to ``2^31``), checked on the ``B`` norms alone: NaN, Inf
    and zero samples fall outside it too, and only then are the inputs searched, so that
    the error names the argument. Otherwise the value is computed on the unit vectors
    ``p/‖p‖``, ``t/‖t‖``. The standard and modified gradients take the same two paths:
    per-sample coefficients times ``p`` and ``t`` inside the range (about a quarter of
    the cost of forming the unit vectors), the unit vectors outside it; the two agree to
    round-off. Under :func:`torch.compile` (``fullgraph=True`` works, backward included)
    the value and the gradients are always the scaled ones and the data-dependent checks
    (NaN/Inf, zero norm) are skipped, since raising on data would break the graph: a NaN
    input gives a NaN loss, a zero sample a loss of 1. Shapes, dtypes and options are
    checked in both modes.

    Args:
        pred: prediction ``p``: complex64/complex128 ``(..., n)``; real float32/float64
            ``(..., n)`` (a real wavefunction) with ``layout="amplitudes"``, or real
            ``(..., 2n)`` ``[Re ψ, Im ψ]`` with ``layout="split"``.
        target: target ``t``, same conventions and the same ``n``; broadcast against
            ``pred`` over the leading (batch) dimensions, e.g. one target ``(n,)`` for a
            batch ``(B, n)``.
        gradient: ``"modified"`` (default), ``"standard"`` or ``"l2"``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        layout: how a *real* ``pred`` or ``target`` is read: ``"amplitudes"`` (default;
            real amplitudes ``ψ_j = x_j``) or ``"split"`` (``[Re ψ, Im ψ]``, as
            :func:`to_real` writes it).

    Returns:
        Real tensor: a scalar, or the per-sample losses of the broadcast batch shape for
        ``reduction="none"``; dtype float32/float64 following the inputs' precision
        (float64 if either input is double).

    Raises:
        TypeError: non-tensors, integer or half-precision tensors.
        ValueError: an odd real last dimension with ``layout="split"``, ``n`` that
            differs between ``pred`` and ``target`` (named: ``target``), shapes that do
            not broadcast, NaN/Inf or a zero-norm sample (eager mode), an unknown
            ``gradient``, ``reduction`` or ``layout``.

    Notes:
        The modified flow is the ordinary gradient of another loss. With
        ``F = 1 − L = |⟨t̂, p̂⟩|²`` (``p̂ = p/‖p‖``, ``t̂ = t/‖t‖``), the chain rule gives,
        per sample::

            ∇[2(1 − √F)] = −∇F/√F = ∇L/√(1 − L) = G_M,

        and for unit states ``2(1 − √F) = min_θ ‖p̂ − e^{iθ} t̂‖²`` (attained at
        ``e^{iθ} = ⟨t̂,p̂⟩/|⟨t̂,p̂⟩|``): the phase-optimal L2 distance, i.e. the squared
        Bures distance of the two pure states. So ``"modified"`` trains on a different
        loss, twice :func:`bures_loss`, while reporting ``1 − F``. Because the loss
        normalises its inputs, this holds exactly for any finite non-zero ``p`` and ``t``
        with ``F`` that of the normalised states: ``G_M`` is the gradient of
        ``2(1 − √F(p/‖p‖, t/‖t‖))`` through the normalisation, so
        ``G_M(c·p, t) = G_M(p, t)/c`` and ``Re⟨p, G_M⟩ = 0``. It is *not* the gradient of
        the raw distance ``D = min_θ ‖p − e^{iθ} t‖² = ‖p‖² + ‖t‖² − 2|⟨t,p⟩|``: even at
        unit ``p``, ``t`` (where ``D = 2(1 − √F)``), ``∇_p D = G_M + D·p`` and
        ``∇_t D = G_M,t + D·t``, of which ``G_M`` is the part tangent to the unit sphere;
        off it the two flows differ altogether. At ``⟨t,p⟩ = 0`` both sides use the phase
        1 (see ``"modified"`` above). Under SGD, ``"modified"`` at learning rate ``η``
        takes the steps of :func:`bures_loss` at ``2η``. The siblings, each with its plain
        gradient: :func:`bures_loss` (``1 − √F``, ``∇ = ½·G_M``),
        :func:`log_fidelity_loss` (``−log F``, ``∇ = G_M/√F``) and
        :func:`fubini_study_loss` (``arccos √F``, ``∇ = G_M/(2√(1 − F))``).

    Example:
        >>> p = torch.tensor([[1.0 + 0j, 0.0], [1.0, 1.0]], requires_grad=True)
        >>> t = torch.tensor([0.0 + 0j, 1.0])
        >>> loss = fidelity_loss(p, t, gradient="modified", reduction="none")
        >>> loss.detach()
        tensor([1.0000, 0.5000])
        >>> loss.sum().backward()
        >>> p.grad[0] + 0   # orthogonal, yet a finite pull towards t (+ 0: no "-0.")
        tensor([ 0.+0.j, -2.+0.j])

        Real wavefunctions, and a network's real ``[Re ψ, Im ψ]`` outputs:

        >>> import quflow
        >>> phi = quflow.Grid(n=20, length=2.0).eigenstates(2, dtype=torch.float64)
        >>> fidelity_loss(phi[0], phi[1]).item()   # orthogonal real states
        1.0
        >>> y = to_real(torch.tensor([[1 + 1j, 0], [0, 1j]]))   # (2, 4)
        >>> fidelity_loss(y, to_real(torch.tensor([1 + 0j, 0])), layout="split",
        ...               reduction="none")
        tensor([0., 1.])
    """
    _check_options(gradient, reduction, layout)
    p, t = _pair(pred, target, reduction, layout)
    settings = _SETTINGS[gradient, not torch.compiler.is_compiling()]
    if torch.is_grad_enabled() and (p.requires_grad or t.requires_grad):
        losses = _Fidelity.apply(p, t, settings)
    else:  # nothing to differentiate: the value without autograd.Function's overhead
        losses = _Fidelity.forward(p, t, settings)
    return _reduce(losses, reduction)


def _pair(pred: object, target: object, reduction: str, layout: str):
    """``pred`` and ``target`` as complex states of one dtype, expanded to the broadcast
    shape ``(*batch, n)``; every structural check, each naming its argument."""
    p = _as_state("pred", pred, layout)
    t = _as_state("target", target, layout)
    if p.shape[-1] != t.shape[-1]:
        n_p, n_t = p.shape[-1], t.shape[-1]
        hint = ""
        if layout == "amplitudes" and (n_p == 2 * n_t or n_t == 2 * n_p):
            hint = ("; a real tensor in the to_real layout [Re ψ, Im ψ] needs "
                    "layout='split' (or quflow.to_complex)")
        raise ValueError(f"target: the state has n = {n_t} components but pred has "
                         f"n = {n_p}{hint}")
    batch = _broadcast(p.shape[:-1], t.shape[:-1])
    if batch is None:
        raise ValueError(f"pred and target: batch shapes {tuple(p.shape[:-1])} and "
                         f"{tuple(t.shape[:-1])} do not broadcast")
    if reduction == "mean" and math.prod(batch) == 0:
        raise ValueError(f"pred: the batch is empty (batch shape {tuple(batch)}); the mean "
                         f"over no samples is undefined (reduction='sum' gives 0)")
    dtype = torch.promote_types(p.dtype, t.dtype)
    shape = (*batch, p.shape[-1])
    return p.to(dtype).expand(shape), t.to(dtype).expand(shape)


def _reduce(losses: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses


class FidelityLoss(nn.Module):
    """``nn.Module`` form of :func:`fidelity_loss`.

    Args:
        gradient: ``"modified"`` (default), ``"standard"`` or ``"l2"``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        layout: how a real input is read: ``"amplitudes"`` (default: a real wavefunction
            ``(..., n)``) or ``"split"`` (``(..., 2n)``, ``[Re ψ, Im ψ]``).

    Example:
        >>> crit = FidelityLoss(gradient="standard")
        >>> crit(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))   # real, orthogonal
        tensor(1.)
        >>> FidelityLoss(layout="split")(torch.tensor([1.0, 0.0, 0.0, 0.0]),
        ...                              torch.tensor([0.0, 0.0, 1.0, 0.0]))   # 1 vs i
        tensor(0.)
    """

    def __init__(self, gradient: str = "modified", reduction: str = "mean",
                 layout: str = "amplitudes") -> None:
        super().__init__()
        _check_options(gradient, reduction, layout)
        self.gradient = gradient
        self.reduction = reduction
        self.layout = layout

    def __setstate__(self, state: dict) -> None:
        # a module pickled whole before ``layout`` existed read real tensors as [Re, Im]
        state.setdefault("layout", "split")
        super().__setstate__(state)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return fidelity_loss(pred, target, gradient=self.gradient, reduction=self.reduction,
                             layout=self.layout)

    def extra_repr(self) -> str:
        return f"gradient={self.gradient!r}, reduction={self.reduction!r}, layout={self.layout!r}"


# ---------------------------------------------------------------- the loss family

def _overlap(p: torch.Tensor, t: torch.Tensor):
    """Per sample ``c = |⟨t̂, p̂⟩| = √F`` and ``r = p̂ − ⟨t̂, p̂⟩·t̂`` (``p̂``'s component
    orthogonal to ``t̂``, ``‖r‖² = 1 − F``), on the unit vectors of :func:`_unit`, in plain
    differentiable torch ops. ``c``: real ``(...)``; ``r``: complex ``(..., n)``.

    ``|s|`` is a cone at ``s = 0`` (no gradient there; torch's ``sgn(0) = 0`` would give
    none): at ``s = 0`` exactly ``c`` is taken as ``Re s``, whose gradient is the limit
    along a real positive overlap, the phase-1 convention of the modified gradient
    (``_phase``). ``‖r‖ = sin θ = √(1 − F)`` without the cancellation of ``1 − c²``: its
    error is a few ε in absolute terms, where ``√(1 − c²)`` from ``c`` carries ``√ε``."""
    p_hat = _unit(p)[0]
    t_hat = _unit(t)[0]
    s = torch.linalg.vecdot(t_hat, p_hat)  # Σ conj(t̂)·p̂, (...)
    c = torch.where(s == 0, s.real, s.abs())
    return c, p_hat - s[..., None] * t_hat


# Each kind: per-sample value from (c, r); two branches, each used where it is well
# conditioned (c ≤ 1/2: from c; c > 1/2: from ‖r‖), the unused branch's input made safe so
# that its gradient is 0 and never 0·∞ = NaN.

def _bures(c: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """1 − c, written as (1 − c²)/(1 + c) = ‖r‖²/(1 + c) where c > 1/2."""
    near = c > 0.5
    return torch.where(near, _norm(r).square() / (1 + c), 1 - c)


def _log_fidelity(c: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """−log F = −2 log c; −log1p(−‖r‖²) where c² > 1/2; below c_min = √eps (F < eps) the
    tangent of −2 log c at c_min: −log eps + 2 − 2c/c_min (finite, C¹ at c_min)."""
    eps = torch.finfo(c.dtype).eps
    c_min = math.sqrt(eps)
    near = c > math.sqrt(0.5)
    q = torch.where(near, _norm(r).square(), 0)
    far = torch.where(c >= c_min, -2 * torch.log(c.clamp_min(c_min)),
                      (2 - math.log(eps)) - (2 / c_min) * c)
    return torch.where(near, -torch.log1p(-q), far)


def _fubini_study(c: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """θ = arccos c for c ≤ 1/2 (|dθ/dc| ≤ 2/√3); atan2(‖r‖, c) = atan2(sin θ, cos θ) for
    c > 1/2, where arccos loses half the digits and has an infinite derivative at c = 1."""
    near = c > 0.5
    return torch.where(near, torch.atan2(_norm(r), torch.where(near, c, 1)),
                       torch.acos(c.clamp_max(0.5)))


_KINDS = {"bures": _bures, "log": _log_fidelity, "fubini_study": _fubini_study}


def _family(kind: str, pred: object, target: object, reduction: str,
            layout: str) -> torch.Tensor:
    _check_reduction_and_layout(reduction, layout)
    p, t = _pair(pred, target, reduction, layout)
    if not torch.compiler.is_compiling():  # data-dependent: eager only, as fidelity_loss
        _check_values(p, t)
    c, r = _overlap(p, t)
    return _reduce(_KINDS[kind](c, r), reduction)


def bures_loss(pred: torch.Tensor, target: torch.Tensor, *, reduction: str = "mean",
               layout: str = "amplitudes") -> torch.Tensor:
    r"""Bures loss ``1 − √F``: half the squared Bures distance of two pure states.

    Per sample ``i``, with ``F_i = |⟨p_i, t_i⟩|² / (‖p_i‖²·‖t_i‖²)`` the fidelity of
    :func:`fidelity_loss`::

        B_i = 1 − √F_i = ½·min_θ ‖p̂_i − e^{iθ} t̂_i‖²,   p̂ = p/‖p‖, t̂ = t/‖t‖,

    i.e. half the phase-optimal L2 distance of the normalised states (the squared Bures
    distance ``2(1 − √F)`` of pure states, halved). Its ordinary gradient is *half* the
    modified gradient flow of Schnell & Thuerey (2023), per sample and at any scale::

        ∇B_i = −∇F_i / (2√F_i) = ½ · ∇L_i / √(1 − L_i),   L_i = 1 − F_i,

    so plain SGD on ``bures_loss`` at learning rate ``2η`` takes the same steps as
    ``fidelity_loss(gradient="modified")`` at ``η``, and Adam (invariant to a constant
    gradient scale, up to its ``ε``) the same steps at the same rate; only the reported
    value differs (``1 − √F`` against ``1 − F``).

    Singularities. ``F → 1``: smooth (``∇B → 0``); for ``√F > 1/2`` the value is computed
    as ``(1 − F)/(1 + √F)`` with ``1 − F = ‖p̂ − ⟨t̂,p̂⟩ t̂‖²`` (``p̂``'s component
    orthogonal to ``t̂``): a relative error of about ``ε/√B`` (``ε`` the dtype's machine
    epsilon), where ``1 − √F`` formed from ``√F`` has an absolute error ``ε`` and cannot
    resolve ``B`` below it. ``F = 0`` (orthogonal states): ``√F`` is a cone in the overlap
    ``⟨t̂, p̂⟩`` and has no gradient there; the gradient returned is its limit along a real
    positive overlap, ``∂p = −t̂/‖p‖``, ``∂t = −p̂/‖t‖`` (finite, towards the other state;
    the modified gradient's convention, so ``∇B = ½·G_M`` holds at ``F = 0`` too).
    ``0 ≤ B ≤ 1`` always.

    Inputs are read as by :func:`fidelity_loss` (the same layouts, broadcasting, promotion
    and error messages); the value is right at any finite non-zero scale of ``p`` and
    ``t``. The gradient is plain autograd (differentiable again wherever ``F > 0``).

    Args:
        pred: prediction ``p``: complex64/complex128 ``(..., n)``; real float32/float64
            ``(..., n)`` with ``layout="amplitudes"``, or ``(..., 2n)`` ``[Re ψ, Im ψ]``
            with ``layout="split"``.
        target: target ``t``, same conventions and ``n``; broadcast against ``pred``
            over the leading (batch) dimensions.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        layout: how a real input is read: ``"amplitudes"`` (default) or ``"split"``.

    Returns:
        Real tensor (float32/float64 following the inputs' precision): a scalar, or the
        per-sample losses of the broadcast batch shape for ``reduction="none"``.

    Raises:
        TypeError: non-tensors, integer or half-precision tensors.
        ValueError: as :func:`fidelity_loss`: shapes, NaN/Inf or a zero-norm sample (eager
            mode), an unknown ``reduction`` or ``layout``.

    References:
        Schnell & Thuerey, "A Gradient Flow Modification to Improve Learning from
        Differentiable Quantum Simulators", ICML 2023 workshop (the modified flow);
        Bengtsson & Życzkowski, "Geometry of Quantum States" (the Bures distance).

    Example:
        >>> t = torch.tensor([1.0, 0.0], dtype=torch.float64)
        >>> p = torch.tensor([[1.0, 1.0], [0.0, 2.0]], dtype=torch.float64, requires_grad=True)
        >>> loss = bures_loss(p, t, reduction="none")
        >>> loss.detach()   # 1 − cos(π/4), 1
        tensor([0.2929, 1.0000], dtype=torch.float64)
        >>> loss.sum().backward()
        >>> p_m = p.detach().clone().requires_grad_()
        >>> fidelity_loss(p_m, t, gradient="modified", reduction="sum").backward()
        >>> torch.allclose(p.grad, p_m.grad / 2, rtol=1e-14, atol=1e-15)   # ∇B = ½·G_M
        True
    """
    return _family("bures", pred, target, reduction, layout)


def log_fidelity_loss(pred: torch.Tensor, target: torch.Tensor, *, reduction: str = "mean",
                      layout: str = "amplitudes") -> torch.Tensor:
    r"""Log-fidelity loss ``−log F``.

    Per sample ``i``, with ``F_i = |⟨p_i, t_i⟩|² / (‖p_i‖²·‖t_i‖²)`` the fidelity of
    :func:`fidelity_loss`, ``ℓ_i = −log F_i`` (the negative log-likelihood of measuring
    ``t_i`` in state ``p_i``). Its gradient, in terms of ``L_i = 1 − F_i`` and the modified
    flow ``G_M = ∇L_i/√(1 − L_i)`` of Schnell & Thuerey (2023)::

        ∇ℓ_i = −∇F_i / F_i = ∇L_i / F_i = G_M / √F_i,

    which weights badly predicted samples even more than the modified flow does, and
    grows without bound as ``F_i → 0``.

    Singularities. ``F → 1``: smooth (``∇ℓ → 0``); for ``F > 1/2`` computed as
    ``−log1p(−(1 − F))`` with ``1 − F = ‖p̂ − ⟨t̂,p̂⟩ t̂‖²`` (``p̂``'s component orthogonal
    to ``t̂``; a relative error of about ``ε/√ℓ``, not ``ε/ℓ``). ``F → 0``: ``−log F → +∞``,
    so the loss is *continued* below ``F_min = ε`` (the dtype's machine epsilon, ``2.2e-16``
    in double, ``1.2e-7`` in float, about where ``1 − F`` rounds to 1) by its tangent in
    ``√F``::

        ℓ = −log ε + 2·(1 − √F/√ε)        for F < ε,

    continuous with a continuous gradient at ``F = ε``. The value is therefore at most
    ``2 − log ε`` (``38.04`` in double, ``17.94`` in float, at ``F = 0``) and the gradient at
    most ``2/(√ε·‖p‖)`` in norm (``1.3e8/‖p‖`` in double, ``5.8e3/‖p‖`` in float); at
    ``F = 0`` exactly it is ``∂p = −2t̂/(√ε‖p‖)`` (towards ``t``, the phase-1 convention of
    the modified gradient). Above ``F_min`` value and gradient are those of ``−log F``.
    ``ℓ ≥ 0`` always.

    Inputs are read as by :func:`fidelity_loss` (the same layouts, broadcasting, promotion
    and error messages); the value is right at any finite non-zero scale of ``p`` and
    ``t``. The gradient is plain autograd.

    Args:
        pred: prediction ``p``: complex64/complex128 ``(..., n)``; real float32/float64
            ``(..., n)`` with ``layout="amplitudes"``, or ``(..., 2n)`` ``[Re ψ, Im ψ]``
            with ``layout="split"``.
        target: target ``t``, same conventions and ``n``; broadcast against ``pred``
            over the leading (batch) dimensions.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        layout: how a real input is read: ``"amplitudes"`` (default) or ``"split"``.

    Returns:
        Real tensor (float32/float64 following the inputs' precision): a scalar, or the
        per-sample losses of the broadcast batch shape for ``reduction="none"``.

    Raises:
        TypeError: non-tensors, integer or half-precision tensors.
        ValueError: as :func:`fidelity_loss`: shapes, NaN/Inf or a zero-norm sample (eager
            mode), an unknown ``reduction`` or ``layout``.

    References:
        Schnell & Thuerey, "A Gradient Flow Modification to Improve Learning from
        Differentiable Quantum Simulators", ICML 2023 workshop (the modified flow).

    Example:
        >>> t = torch.tensor([1.0, 0.0], dtype=torch.float64)
        >>> p = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> log_fidelity_loss(p, t, reduction="none")   # log 2, 0, the cap 2 − log ε
        tensor([ 0.6931,  0.0000, 38.0437], dtype=torch.float64)
    """
    return _family("log", pred, target, reduction, layout)


def fubini_study_loss(pred: torch.Tensor, target: torch.Tensor, *, reduction: str = "mean",
                      layout: str = "amplitudes") -> torch.Tensor:
    r"""Fubini–Study loss: the angle ``θ = arccos √F`` between two pure states.

    Per sample ``i``, with ``F_i = |⟨p_i, t_i⟩|² / (‖p_i‖²·‖t_i‖²)`` the fidelity of
    :func:`fidelity_loss`, ``θ_i = arccos √F_i ∈ [0, π/2]``: the geodesic distance of the
    rays of ``p_i`` and ``t_i`` in the Fubini–Study metric (the Bures angle). In terms of
    ``L_i = 1 − F_i`` and the modified flow ``G_M = ∇L_i/√(1 − L_i)`` of Schnell & Thuerey
    (2023)::

        ∇θ_i = −∇√F_i / √(1 − F_i) = G_M / (2 sin θ_i),

    and, θ being a distance, ``‖∇_p θ_i‖ = 1/‖p_i‖`` at every ``0 < θ_i ≤ π/2``: the step
    does not shrink as ``p`` approaches ``t`` (as for an L1 loss).

    Singularities. ``F → 1``: ``d arccos(c)/dc = −1/√(1 − c²)`` is infinite at ``c = 1``
    and ``arccos`` keeps only half the digits there (an error ``√ε`` at ``θ ≈ 0``), so for
    ``√F > 1/2`` the angle is computed as ``atan2(sin θ, cos θ)`` with
    ``sin θ = ‖p̂ − ⟨t̂,p̂⟩ t̂‖``: an error of a few ``ε`` in ``θ`` everywhere, and the
    gradient is finite. At ``θ = 0`` (a cone, like ``|x|``: no gradient exists) it is ``0``
    where that orthogonal component is exactly zero, otherwise a vector of norm at most
    ``1/‖p‖`` in the direction of its round-off (use :func:`bures_loss` for a gradient
    that vanishes at the target). ``F = 0``: ``√F`` is a cone in the overlap; the gradient
    returned is the limit along a real positive overlap, ``∂p = −t̂/‖p‖``, ``∂t = −p̂/‖t‖``
    (towards the other state, the modified gradient's convention). The value and gradient
    are finite everywhere; ``0 ≤ θ ≤ π/2``.

    Inputs are read as by :func:`fidelity_loss` (the same layouts, broadcasting, promotion
    and error messages); the value is right at any finite non-zero scale of ``p`` and
    ``t``. The gradient is plain autograd.

    Args:
        pred: prediction ``p``: complex64/complex128 ``(..., n)``; real float32/float64
            ``(..., n)`` with ``layout="amplitudes"``, or ``(..., 2n)`` ``[Re ψ, Im ψ]``
            with ``layout="split"``.
        target: target ``t``, same conventions and ``n``; broadcast against ``pred``
            over the leading (batch) dimensions.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        layout: how a real input is read: ``"amplitudes"`` (default) or ``"split"``.

    Returns:
        Real tensor (float32/float64 following the inputs' precision), in radians: a
        scalar, or the per-sample losses of the broadcast batch shape for
        ``reduction="none"``.

    Raises:
        TypeError: non-tensors, integer or half-precision tensors.
        ValueError: as :func:`fidelity_loss`: shapes, NaN/Inf or a zero-norm sample (eager
            mode), an unknown ``reduction`` or ``layout``.

    References:
        Schnell & Thuerey, "A Gradient Flow Modification to Improve Learning from
        Differentiable Quantum Simulators", ICML 2023 workshop (the modified flow);
        Bengtsson & Życzkowski, "Geometry of Quantum States" (the Fubini–Study metric).

    Example:
        >>> t = torch.tensor([1.0 + 0j, 0.0])
        >>> p = torch.tensor([[1.0 + 0j, 1.0], [0.0, 1j], [2j, 0.0]])
        >>> fubini_study_loss(p, t, reduction="none") / math.pi   # 1/4, 1/2, 0 (of π)
        tensor([0.2500, 0.5000, 0.0000])
    """
    return _family("fubini_study", pred, target, reduction, layout)
