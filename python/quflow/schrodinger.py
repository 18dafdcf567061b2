"""Differentiable Crank–Nicolson propagation of the 1-D Schrödinger equation."""

from __future__ import annotations

import torch

from . import _checks, _ops

__all__ = ["crank_nicolson"]

_ADJOINT_MODES = ("reverse", "store")
_MAX_STEPS = 2**63 - 2  # steps + 1 states must still be counted in 64 bits


def crank_nicolson(
    psi0: torch.Tensor,
    potential: torch.Tensor | None = None,
    *,
    dt: float,
    dx: float,
    steps: int | None = None,
    control: torch.Tensor | None = None,
    control_shape: torch.Tensor | None = None,
    trajectory: bool = False,
    adjoint: str = "reverse",
) -> torch.Tensor:
    r"""Propagate ``ψ`` with Crank–Nicolson under ``i ∂t ψ = (−∂x² + V(x) + u(t)·W(x)) ψ``.

    On ``n`` interior points of a Dirichlet box (``dx = L/(n+1)``, see :class:`quflow.Grid`),
    with ``H_k = −(1/dx²)·tridiag(1, −2, 1) + diag(V + u_k·W)``, each step solves

    ``(I + i·dt/2·H_k) ψ_{k+1} = (I − i·dt/2·H_k) ψ_k``,   ``k = 0 … steps−1``,

    where ``u_k`` is the control value of step ``k`` (piecewise constant). The step is a
    Cayley transform of a real symmetric ``H_k``, hence unitary: ``‖ψ‖`` is conserved to
    round-off for every ``dt`` in the valid range below (the scheme is unconditionally
    stable, but its phase error grows with ``dt·E``).

    Valid range: with ``h = dt/2``, ``e = 1/dx²`` and ``d = 2e + V + u·W`` (the diagonal
    of ``H_k``): ``h·e ≤ 2^58 ≈ 2.9e17`` in float (complex64) and ``2^506 ≈ 2.6e152`` in
    double (complex128); ``h·max|d| ≲ 2^60·max(1, h·e)`` (float) or
    ``2^508·max(1, h·e)`` (double); and ``2e + max|V| + max|u|·max|W|`` at most the largest
    float / 256. E.g. ``dt = 0.2`` needs ``dx ≳ 6e-10`` in float and ``dx ≳ 2e-77`` in
    double. Beyond it the tridiagonal pivots would overflow (they are formed scaled by a
    power of two when ``h·e`` is large), so a ``ValueError`` names the argument and the
    limit. The elimination does not pivot: where ``V`` cancels ``2e`` next to points with
    ``h·|V| ≫ 1``, round-off grows with ``h·e`` (norm drift up to ``O(1)`` for such
    adversarial potentials at ``h·e ≳ 1e6`` in float, ``≳ 1e14`` in double). States
    (and, in backward, cotangents) must leave ``(I − i·h·H)ψ`` finite: components up to
    ``max_float / (16·√n·(1 + h·max|d| + 2h·e))`` (``~8e34`` in float for ``n = 20``,
    ``dt = 0.2``, ``dx = 0.1``); the map is linear, so rescale larger ones.

    The op is differentiable with respect to ``psi0``, ``potential``, ``control`` and
    ``control_shape`` (whichever require grad), in PyTorch's complex convention, through
    hand-written derivatives in C++ (no autograd tape over the steps):

    * reverse mode: the adjoint sweep (``.backward()``, ``torch.autograd.grad``);
    * forward mode: the step fused with its tangent,
      ``(I + i·dt/2·H_k) δψ_{k+1} = (I − i·dt/2·H_k) δψ_k − i·dt/2·δH_k (ψ_k + ψ_{k+1})``,
      ``δH_k = diag(δV + δu_k·W + u_k·δW)``, solved with the step's own factorisation
      (``torch.func.jvp``, ``jacfwd``, ``torch.autograd.forward_ad``);
    * second order: the backward is itself differentiable (double backward,
      ``create_graph=True``, Hessian–vector products, ``torch.func.hessian``), through the
      adjoint of the tangent-augmented step; it rebuilds the states backwards from ψ_T, so
      its memory does not grow with ``steps`` (in either ``adjoint`` mode). Third
      derivatives are not implemented and raise.

    It composes with ``torch.func`` (``vmap``, ``grad``, ``jacrev``, ``jacfwd``, ``jvp``,
    ``hessian``; mapped dimensions are folded into the kernels' batch, except a mapped
    ``control_shape`` or its gradient, computed one mapped slice at a time) and with
    ``torch.compile(fullgraph=True)``: the kernels are registered operators
    (``torch.ops.quflow.cn_forward``, ``cn_backward``, ``cn_jvp``, ``cn_adjoint2``) with
    fake implementations and derivative formulas, checked by ``torch.library.opcheck``.
    Inside compiled graphs the NaN/Inf and range checks run in the kernels, at run time,
    and raise the same ``ValueError`` as in eager mode.

    Args:
        psi0: initial states, ``(batch, n)`` or ``(n,)``, complex64 or complex128; real
            float32/float64 input is promoted to the matching complex dtype. Its precision
            sets the precision of the whole computation.
        potential: ``V``, real ``(n,)`` shared by the batch or ``(batch, n)``, in the real
            dtype of ``psi0``. ``None`` means ``V = 0``.
        dt: time step, a number ``> 0``.
        dx: grid spacing, a number ``> 0`` (``Grid.dx``).
        steps: number of steps ``>= 0``. Required without ``control``; with ``control`` it
            defaults to (and must equal) the control's length ``T``.
        control: ``u``, real ``(T,)`` shared by the batch or ``(batch, T)``.
        control_shape: ``W``, real ``(n,)``; required with ``control`` (for a dipole
            coupling pass ``grid.x``).
        trajectory: if ``True`` return every state ``ψ_0 … ψ_steps``.
        adjoint: how backward obtains the intermediate states. ``"reverse"`` (default)
            rebuilds them backwards by inverting each step, so backprop memory does not
            grow with ``steps``; ``"store"`` keeps the forward states (``steps+1`` states
            per sample, held once) and avoids the rebuild. Both give the same gradients
            up to round-off. With ``trajectory=True`` the returned states are used.

    Returns:
        ``(batch, n)`` final states, or ``(batch, steps+1, n)`` with ``trajectory=True``;
        without a batch dimension when no input has one. Same complex dtype as ``psi0``
        (after promotion).

    Raises:
        TypeError: a non-tensor, an integer, half, bfloat16 or complex32 tensor, a complex
            potential/control, mixed precision, or a sparse or nested tensor.
        ValueError: wrong shapes, grid sizes that differ, a batch that does not match,
            NaN/Inf, ``dt <= 0``, ``dx <= 0``, a missing, negative or too large step
            count, a control of length 0, inputs outside the valid range above, a tensor
            that is not on the CPU, or an unknown ``adjoint``.
        RuntimeError: worker threads could not be started (the started ones are joined).
        KeyboardInterrupt: Ctrl-C during a long call: the C++ loop checks for pending
            signals every ~2 ms (calls above ~2M point-steps) and stops; inputs are
            untouched and no result is returned.

    Notes:
        Batches are split into blocks of SIMD lanes and spread over
        ``torch.get_num_threads()`` threads with the GIL released; in a build with OpenMP
        (``quflow._core.thread_runtime() == "openmp"``, the default) those are torch's own
        OpenMP threads, so quflow and torch take turns on the cores instead of competing
        for them (forked children and explicit counts above torch's use quflow's own
        pool). Results depend on the thread count only. With no control and a
        single shared potential the tridiagonal factorisation is computed once for all
        states and steps. Used by the prediction and control experiments of Schnell &
        Thuerey, "A Gradient Flow Modification to Improve Learning from Differentiable
        Quantum Simulators" (ICML 2023 workshop).

    Example:
        >>> import torch, quflow
        >>> grid = quflow.Grid(n=20, length=2.0)
        >>> psi0 = quflow.random_states(grid, batch=4, seed=0)
        >>> u = torch.zeros(4, 50, dtype=torch.float64, requires_grad=True)
        >>> psi_T = quflow.crank_nicolson(psi0, dt=0.2, dx=grid.dx, control=u,
        ...                               control_shape=grid.x)
        >>> psi_T.shape, psi_T.dtype
        (torch.Size([4, 20]), torch.complex128)
        >>> torch.allclose(psi_T.abs().pow(2).sum(-1), torch.ones(4, dtype=torch.float64))
        True
    """
    psi0 = _checks.tensor("psi0", psi0)
    real = _checks.real_dtype_of("psi0", psi0)
    cdtype = _checks.complex_of(real)
    if psi0.ndim not in (1, 2):
        raise ValueError(f"psi0: expected shape (n,) or (batch, n), got {tuple(psi0.shape)}")
    n = psi0.shape[-1]
    if n < 1:
        raise ValueError("psi0: the grid must have n >= 1 points")
    dt = _checks.positive_float("dt", dt)
    dx = _checks.positive_float("dx", dx)
    if adjoint not in _ADJOINT_MODES:
        raise ValueError(f"adjoint: expected one of {_ADJOINT_MODES}, got {adjoint!r}")
    if not isinstance(trajectory, bool):
        raise TypeError(f"trajectory: expected a bool, got {type(trajectory).__name__}")

    if potential is None:
        potential = torch.zeros(n, dtype=real)
    potential = _checks.real_tensor("potential", potential, real, (1, 2))
    if potential.shape[-1] != n:
        raise ValueError(f"potential: has {potential.shape[-1]} grid points, psi0 has {n}")

    if control is None:
        if control_shape is not None:
            raise ValueError("control_shape: given without control; pass control=u as well")
        if steps is None:
            raise ValueError("steps: required when no control is given")
        steps = _checks.count("steps", steps)
        if steps > _MAX_STEPS:
            raise ValueError(f"steps: expected at most {_MAX_STEPS} (a 64-bit count), got {steps}")
    else:
        control = _checks.real_tensor("control", control, real, (1, 2))
        if control_shape is None:
            raise ValueError("control_shape: required with control (e.g. grid.x for u(t)·x)")
        control_shape = _checks.real_tensor("control_shape", control_shape, real, (1,))
        if control_shape.shape[0] != n:
            raise ValueError(f"control_shape: has {control_shape.shape[0]} grid points, "
                             f"psi0 has {n}")
        length = control.shape[-1]
        if length == 0:
            raise ValueError(f"control: has no time steps (shape {tuple(control.shape)}); "
                             f"for no propagation pass steps=0 without a control")
        if steps is not None and _checks.count("steps", steps) != length:
            raise ValueError(f"steps: {steps} differs from the control's length {length}")
        steps = length

    # batch: every batched input has `batch` rows or 1 row
    rows = {"psi0": psi0, "potential": potential, "control": control}
    sizes = {k: v.shape[0] for k, v in rows.items() if v is not None and v.ndim == 2}
    batched = bool(sizes)
    batch = max(sizes.values()) if sizes else 1
    if any(size not in (1, batch) for size in sizes.values()):
        detail = ", ".join(f"{k} has {s}" for k, s in sizes.items())
        raise ValueError(f"batch sizes do not match: {detail} rows (each must equal the "
                         f"batch size or be 1)")
    if batch < 1:
        raise ValueError("psi0: the batch is empty (batch size 0)")

    # rows of 1 broadcast: psi0 through autograd's expand, potential/control in the core
    psi0 = psi0.to(cdtype).reshape(-1, n).expand(batch, n)
    potential = potential.reshape(-1, n)
    if control is not None:
        control = control.reshape(-1, steps)

    # NaN/Inf in psi0, potential, control or control_shape: the binding scans each array
    # once in C++ and raises ValueError("<name>: contains NaN or Inf") before computing.
    cfg = _ops.Config(dt=dt, dx=dx, steps=steps, trajectory=trajectory,
                      store=adjoint == "store", threads=0)
    psi0, potential = psi0.contiguous(), potential.contiguous()
    if control is not None:
        control = control.contiguous()
    if torch.compiler.is_compiling():
        # the operator with its registered derivatives: no forward mode, no graph break
        keep = trajectory or cfg.store
        result = torch.ops.quflow.cn_forward(psi0, potential, control, control_shape, dt, dx,
                                             steps, keep, cfg.threads)
        if keep and not trajectory:
            result = result[:, -1]
    else:
        result, _ = _ops.CrankNicolson.apply(psi0, potential, control, control_shape, cfg)
    return result if batched else result[0]
