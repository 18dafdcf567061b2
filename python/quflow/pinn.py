"""Physics-informed training: derivatives of a model at collocation points.

Collocation points form the *batch* dimension: ``x`` of shape ``(N, d)`` holds
``N`` points of dimension ``d`` and the model maps each row to its own output
``u(x_n)``. Then ``∂/∂x_n Σ_k u(x_k) = ∇u(x_n)`` row by row, so one
``torch.autograd.grad`` call gives every point's derivative. That identity holds
*only* if no output depends on another row's input. A model that mixes rows —
several points packed into one input vector, BatchNorm in training mode,
attention across the batch — makes each row of that gradient a sum of cross
terms, and the per-point derivatives silently mean nothing.
:func:`check_pointwise` detects this and :func:`derivatives` runs it.
"""

from __future__ import annotations

import weakref
from typing import Callable

import torch

from . import _checks

__all__ = ["MixingError", "check_pointwise", "derivatives"]


class MixingError(ValueError):
    """The model's output for one collocation point depends on other points."""


_checked: "weakref.WeakKeyDictionary[object, set]" = weakref.WeakKeyDictionary()


def _as_points(x: torch.Tensor) -> torch.Tensor:
    _checks.tensor("x", x)
    if not x.is_floating_point():
        raise TypeError(f"x must be a real floating tensor, got {x.dtype}")
    if x.ndim not in (1, 2) or x.shape[0] == 0:
        raise ValueError(f"x must have shape (N,) or (N, d) with N ≥ 1, got {tuple(x.shape)}")
    return x


def _scalar_outputs(u: torch.Tensor, n: int) -> torch.Tensor:
    if not isinstance(u, torch.Tensor) or u.shape[:1] != (n,) or u[0].numel() != 1:
        shape = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(
            f"the model returned {shape} for {n} collocation points; expected one scalar "
            f"per point, shape ({n},) or ({n}, 1)"
        )
    return u.reshape(n)


def check_pointwise(model: Callable, x: torch.Tensor, *, probes: int = 2, rtol: float = 1e-10) -> None:
    """Raise :class:`MixingError` if the model's output at one point depends on another.

    Evaluates ``model(x)`` and, for ``probes`` rows ``i`` (always the first and the
    last, the rest evenly spaced),
    the gradient ``∂u_i/∂x``: every row ``j ≠ i`` of it must vanish
    (``|∂u_i/∂x_j| ≤ rtol · max|∂u_i/∂x_i|``).

    Args:
        model: callable mapping ``(N, d)`` (or ``(N,)``) points to ``(N,)`` or ``(N, 1)``.
        x: collocation points, ``(N,)`` or ``(N, d)``.
        probes: rows to probe (each costs one backward pass over the batch).
        rtol: relative size of a cross derivative that counts as mixing.

    Raises:
        MixingError: with the offending pair of points and the usual causes.
        ValueError: if the output is not one scalar per point, or ``probes``/``rtol``
            are not positive.
    """
    x = _as_points(x)
    probes = _checks.count("probes", probes, minimum=1)
    rtol = _checks.positive_float("rtol", rtol)
    n = x.shape[0]
    if n < 2:
        return
    from .quantum import _no_registration

    xs = x.detach().clone().requires_grad_(True)
    # a probe, not a loss: a quflow.QNG must not count these forward calls in its metric
    with _no_registration():
        u = _scalar_outputs(model(xs), n)
    if not u.requires_grad:  # the outputs do not depend on x at all
        return
    step = max(1, (n - 1) // max(1, probes - 1))
    rows = sorted({0, n - 1, *range(0, n, step)[: max(probes - 1, 1)]})
    for i in rows:
        (g,) = torch.autograd.grad(u[i], xs, retain_graph=True, allow_unused=True)
        if g is None:
            continue
        g = g.reshape(n, -1).abs().amax(dim=1)
        own = float(g[i])
        cross = g.clone()
        cross[i] = 0
        j = int(cross.argmax())
        if float(cross[j]) > rtol * max(own, 1e-300):
            raise MixingError(
                f"the model's output for collocation point {i} depends on the input of point "
                f"{j} (|∂u_{i}/∂x_{j}| = {float(cross[j]):.3g}, |∂u_{i}/∂x_{i}| = {own:.3g}). "
                "Per-point derivatives from one autograd call would add these cross terms "
                "and be wrong. Usual causes: several points packed into one input vector "
                "(feed one point per row, shape (N, d)), BatchNorm in training mode, or "
                "layers that combine samples of a batch."
            )


def derivatives(
    model: Callable,
    x: torch.Tensor,
    order: int = 2,
    *,
    check: bool = True,
) -> tuple[torch.Tensor, ...]:
    r"""``u, ∂u/∂x, ∂²u/∂x²`` of a pointwise model at collocation points.

    All results keep their graph (``create_graph=True``), so a loss built from them
    trains the model's parameters; with :class:`quflow.QuantumLayer` the weight
    gradients of such losses are exact on lightning.qubit.

    Args:
        model: maps ``(N, d)`` points (or ``(N,)``) to ``(N,)`` or ``(N, 1)``.
        x: collocation points, ``(N,)`` or ``(N, d)``, real floating.
        order: highest derivative, 0, 1 or 2 (second derivatives are the diagonal
            ``∂²u/∂x_k²``, enough for a Laplacian).
        check: run :func:`check_pointwise` the first time a model is seen (per
            training mode). It costs two extra backward passes once.

    Returns:
        ``(u,)``, ``(u, u_x)`` or ``(u, u_x, u_xx)``; ``u`` has shape ``(N,)``,
        ``u_x`` and ``u_xx`` the shape of ``x``.

    Raises:
        MixingError: if ``check`` finds that outputs depend on other points.
        ValueError: bad ``order``, or outputs not one scalar per point.

    Example:
        >>> import torch
        >>> u, ux, uxx = derivatives(torch.sin, torch.linspace(0, 1, 5))
        >>> torch.allclose(ux, torch.cos(torch.linspace(0, 1, 5)))
        True
    """
    x = _as_points(x)
    if order not in (0, 1, 2):
        raise ValueError(f"order must be 0, 1 or 2, got {order!r}")
    if check:
        mode = bool(getattr(model, "training", False))
        try:
            seen = _checked.setdefault(model, set())
        except TypeError:  # not weak-referenceable: check every call
            seen = set()
        if mode not in seen:
            check_pointwise(model, x)
            seen.add(mode)
    if not x.requires_grad:
        x = x.detach().requires_grad_(True)
    u = _scalar_outputs(model(x), x.shape[0])

    def grad(y: torch.Tensor) -> torch.Tensor:
        if not y.requires_grad:  # y does not depend on x (e.g. a constant): zero
            return torch.zeros_like(x)
        (g,) = torch.autograd.grad(y.sum(), x, create_graph=True, allow_unused=True)
        return torch.zeros_like(x) if g is None else g

    out = [u]
    if order >= 1:
        ux = grad(u)
        out.append(ux)
    if order >= 2:
        flat = ux.reshape(x.shape[0], -1)
        cols = [grad(flat[:, k]).reshape(x.shape[0], -1)[:, k] for k in range(flat.shape[1])]
        out.append(torch.stack(cols, dim=1).reshape(x.shape))
    return tuple(out)
