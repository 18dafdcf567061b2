"""Quantum natural gradient for hybrid PyTorch models: :class:`QNG`."""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import torch
from torch import nn

from . import _checks
from .metric import APPROXIMATIONS, metric_tensor
from .quantum import QuantumLayer

__all__ = ["QNG"]

_MAX_FISHER_PARAMS = 4096


def _positive(name: str, value: Any, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'≥ 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _damped_solve(matrix: torch.Tensor, rhs: torch.Tensor, lam: float, what: str) -> torch.Tensor:
    """``(M + λI)⁻¹ b`` by Cholesky; least squares (minimum norm) with a warning if singular."""
    a = matrix + lam * torch.eye(matrix.shape[0], dtype=matrix.dtype)
    chol, info = torch.linalg.cholesky_ex(a)
    pivots = torch.diagonal(chol).abs()
    # condition number ≤ ~1e12: otherwise a round-off pivot would blow the step up
    if int(info) == 0 and bool(pivots.min() ** 2 > 1e-12 * pivots.max() ** 2):
        return torch.cholesky_solve(rhs[:, None], chol)[:, 0]
    warnings.warn(
        f"QNG: the {what} plus lam·I (lam={lam:g}) is singular or ill-conditioned; using the "
        "least-squares (minimum-norm) solution. Increase lam to regularise.",
        RuntimeWarning,
        stacklevel=3,
    )
    return torch.linalg.lstsq(a, rhs[:, None], driver="gelsd").solution[:, 0]


def _apply_update(params: list[torch.Tensor], delta: torch.Tensor, lr: float) -> None:
    """``p ← p − lr·δ_p`` for the parameters that require grad; ``delta`` is their flat concatenation."""
    offset = 0
    for p in params:
        n = p.numel()
        if p.requires_grad:
            p.sub_(lr * delta[offset : offset + n].view_as(p).to(p.dtype))
        offset += n


class QNG(torch.optim.Optimizer):
    r"""Quantum natural gradient for models containing :class:`quflow.QuantumLayer` s.

    Each quantum layer's weights take the step

        θ ← θ − lr · (g + λI)⁻¹ ∇_θ L,

    where ``∇_θ L`` is the full chain-rule gradient of the model's loss (whatever
    ``loss.backward()`` left in ``.grad``) and ``g`` is that layer's metric tensor
    (:func:`quflow.metric_tensor`, PennyLane's ``metric_tensor`` convention) at the inputs
    of the forward calls that this loss was computed from, with the circuit inputs
    excluded by construction (Stokes et al., "Quantum Natural Gradient", Quantum 4, 269
    (2020)). Every quantum layer gets its own metric.

    Which inputs: a forward call that builds a graph (gradients enabled) stores its
    inputs in that graph, and the backward pass that goes through it hands them to the
    layer. So the metric belongs to the loss being stepped; forward calls in between
    (validation under ``torch.no_grad()``, or with gradients but no backward) never
    change the update. If the layer was used in ``k`` calls ``c = 1 … k`` with inputs
    ``X_c`` of ``B_c`` rows each (``Sequential(q, q, q)``, or ``model(x)`` and
    ``model(x0)`` in one loss),

        g = Σ_c (1/B_c) Σ_b J_cbᵀ g(a_cb) J_cb,

    the sum over calls of each call's batch-averaged metric: per sample, the loss reads
    the product state ``⊗_c |ψ(x_cb; θ)⟩``, whose Fubini–Study metric is the sum of the
    factors' metrics; rows of one call are averaged (samples of the data, as for a
    single call). Gradient accumulation over several ``backward()`` calls before one
    ``step()`` therefore sums their metrics, like their gradients.

    Which backward passes register a call: any backward pass that reaches the call's
    outputs, once per call however often it is reached: ``loss.backward()``, and also
    ``torch.autograd.grad`` (so ``u = q(x)`` differentiated for ``du/dx`` and then
    ``loss.backward()`` count ``u``'s call once). Not registered: calls under
    ``torch.no_grad()``, calls whose outputs no backward reaches, and the probe passes
    of :func:`quflow.pinn.check_pointwise` (also run by ``pinn.derivatives``).
    Registered calls are cleared by :meth:`zero_grad` and by each step; a call
    evaluated at other weights than a newer one (the weights were updated in between,
    e.g. by another optimizer while this one exists) is dropped when the newer one
    registers, and at most 256 calls are kept per layer (a ``RuntimeWarning`` at the
    step says when some were dropped). The linear system
    is solved by Cholesky; if ``g + λI`` is singular (``lam=0`` on a rank-deficient
    metric, condition number above ~1e12) the minimum-norm least-squares solution is
    used with a ``RuntimeWarning``.

    Classical parameters (every other parameter with ``requires_grad``) are updated by
    a wrapped base optimizer, ``"adam"`` (default) or ``"sgd"``, or with
    ``classical="fisher"`` by a natural-gradient step with an empirical Fisher matrix
    estimated as an exponential moving average of mini-batch gradient outer products,
    ``F ← β F + (1 − β) g gᵀ``, ``θ ← θ − lr (F + λI)⁻¹ g`` (a gradient-covariance
    estimate as in TONGA, Le Roux et al. 2008; at most 4096 classical parameters).

    Param groups: one per quantum layer (``kind="quantum"``, keys ``lr``, ``lam``,
    ``approx``) and one for the classical parameters (``kind="classical"``, its ``lr`` is
    forwarded to the base optimizer, so LR schedulers work on both).

    Args:
        model: a module containing at least one QuantumLayer (or a QuantumLayer).
        lr: step size of the quantum layers (> 0).
        lam: damping λ ≥ 0 added to the metric's diagonal.
        approx: ``"full"``, ``"block-diag"`` or ``"diag"``.
        classical: ``"adam"``, ``"sgd"`` or ``"fisher"``.
        classical_lr: step size of the classical parameters (default ``lr``).
        classical_kwargs: extra arguments of the base optimizer (e.g. ``betas``).
        metric_every: recompute each metric every ``k`` steps and reuse it in between.
        max_samples: average each metric over at most this many inputs, evenly spaced
            rows of the batch (default: the whole batch).
        fisher_decay: β of the ``"fisher"`` moving average.

    Raises:
        ValueError: no QuantumLayer in the model, unknown ``approx``/``classical``,
            negative ``lr``/``lam``, bad ``metric_every``/``max_samples``.

    Example:
        >>> import pennylane as qml, torch, quflow
        >>> def circuit(weights):
        ...     qml.RX(weights[0], wires=0)
        ...     qml.RY(weights[1], wires=0)
        ...     return qml.expval(qml.PauliZ(0))
        >>> layer = quflow.QuantumLayer(circuit, {"weights": 2}, wires=1)
        >>> opt = quflow.QNG(layer, lr=0.1)
        >>> loss = layer(); opt.zero_grad(); loss.backward(); opt.step()
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.01,
        lam: float = 1e-3,
        approx: str = "full",
        *,
        classical: str = "adam",
        classical_lr: float | None = None,
        classical_kwargs: dict | None = None,
        metric_every: int = 1,
        max_samples: int | None = None,
        fisher_decay: float = 0.95,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        lr = _positive("lr", lr)
        lam = _positive("lam", lam, allow_zero=True)
        if approx not in APPROXIMATIONS:
            raise ValueError(f"approx must be one of {APPROXIMATIONS}, got {approx!r}")
        if classical not in ("adam", "sgd", "fisher"):
            raise ValueError(f"classical must be 'adam', 'sgd' or 'fisher', got {classical!r}")
        _checks.count("metric_every", metric_every, minimum=1)
        if max_samples is not None:
            _checks.count("max_samples", max_samples, minimum=1)
        if not 0 <= fisher_decay < 1:
            raise ValueError(f"fisher_decay must be in [0, 1), got {fisher_decay!r}")
        classical_lr = lr if classical_lr is None else _positive("classical_lr", classical_lr)

        layers = [m for m in model.modules() if isinstance(m, QuantumLayer)]
        if not layers:
            raise ValueError(
                "the model contains no quflow.QuantumLayer: QNG needs a circuit's metric; "
                "use torch.optim for purely classical models"
            )
        groups, quantum_ids = [], set()
        for index, layer in enumerate(layers):
            params = [getattr(layer, k) for k in layer.weight_shapes]
            quantum_ids.update(id(p) for p in params)
            groups.append(
                {"params": params, "lr": lr, "lam": lam, "approx": approx, "kind": "quantum", "layer": index}
            )
        classical_params = [p for p in model.parameters() if p.requires_grad and id(p) not in quantum_ids]
        if classical_params:
            if classical == "fisher" and sum(p.numel() for p in classical_params) > _MAX_FISHER_PARAMS:
                raise ValueError(
                    f"classical='fisher' keeps a dense Fisher matrix; the model has "
                    f"{sum(p.numel() for p in classical_params)} classical parameters "
                    f"(limit {_MAX_FISHER_PARAMS}); use 'adam' or 'sgd'"
                )
            groups.append(
                {"params": classical_params, "lr": classical_lr, "lam": lam, "approx": approx, "kind": "classical", "layer": -1}
            )
        super().__init__(groups, {"lr": lr, "lam": lam, "approx": approx})
        self._layers = layers
        for layer in layers:  # from now on their forward calls keep their inputs in the graph
            layer._trackers.add(self)
        self.classical = classical
        self.metric_every = metric_every
        self.max_samples = max_samples
        self.fisher_decay = fisher_decay
        self._base = None
        if classical_params and classical in ("adam", "sgd"):
            cls = torch.optim.Adam if classical == "adam" else torch.optim.SGD
            self._base = cls(classical_params, lr=classical_lr, **(classical_kwargs or {}))

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """The quantum layers' state (step counts, cached metrics) and the base optimizer's."""
        out = super().state_dict()
        if self._base is not None:
            out["base"] = self._base.state_dict()
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        """Inverse of :meth:`state_dict`."""
        state_dict = dict(state_dict)
        base = state_dict.pop("base", None)
        super().load_state_dict(state_dict)
        if self._base is not None and base is not None:
            self._base.load_state_dict(base)

    # ------------------------------------------------------------------ step

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients, and the forward calls registered for the next metric."""
        super().zero_grad(set_to_none)
        for layer in self._layers:
            layer._clear_stepped()

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One update. ``closure`` (optional) re-evaluates the model and calls backward.

        Returns:
            The closure's loss, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["kind"] == "quantum":
                self._quantum_step(group)
            elif self._base is not None:
                for base_group in self._base.param_groups:
                    base_group["lr"] = group["lr"]
                self._base.step()
            else:
                self._fisher_step(group)
        return loss

    def _quantum_step(self, group: dict) -> None:
        params = group["params"]
        layer = self._layers[group["layer"]]
        calls, dropped = layer._take_stepped()  # the forward calls whose graphs backward() went through
        if dropped:
            warnings.warn(
                f"QNG: {dropped + len(calls)} forward calls of a QuantumLayer were registered "
                f"since the last step; the metric uses the last {len(calls)} of them. Call "
                "QNG.zero_grad() at the start of each step.",
                RuntimeWarning,
                stacklevel=3,
            )
        if all(p.grad is None for p in params):
            return
        state = self.state[params[0]]
        state["step"] = state.get("step", 0) + 1
        grad = torch.cat(
            [(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1).to(torch.float64) for p in params]
        )
        metric = state.get("metric")
        if metric is not None:  # load_state_dict casts state to the parameters' dtype
            metric = metric.to(torch.float64)
        if metric is None or state.get("metric_age", 0) >= self.metric_every:
            if not calls:
                if layer._has_inputs:
                    raise RuntimeError(
                        "QNG.step: no backward pass went through this QuantumLayer since the last "
                        "step; run the model forward (with gradients on) and loss.backward() "
                        "before step(), or pass a closure"
                    )
                calls = [None]  # gradients set by hand: the circuit's one state
            with torch.enable_grad():
                metric = sum(
                    metric_tensor(layer, inputs, group["approx"], max_samples=self.max_samples)
                    for inputs in calls
                )
            state["metric"] = metric
            state["metric_age"] = 0
        state["metric_age"] += 1
        trainable = torch.cat([torch.full((p.numel(),), p.requires_grad) for p in params])
        idx = torch.nonzero(trainable).flatten()  # frozen weights keep their rows out of the solve
        if idx.numel():
            delta = torch.zeros_like(grad)
            delta[idx] = _damped_solve(metric[idx][:, idx], grad[idx], group["lam"], "metric tensor")
            _apply_update(params, delta, group["lr"])

    def _fisher_step(self, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        grad = torch.cat([p.grad.reshape(-1).to(torch.float64) for p in params])
        state = self.state[params[0]]
        fisher = state.get("fisher")
        fisher = None if fisher is None else fisher.to(torch.float64)
        outer = torch.outer(grad, grad)
        beta = self.fisher_decay
        fisher = outer if fisher is None or fisher.shape != outer.shape else beta * fisher + (1 - beta) * outer
        state["fisher"] = fisher
        delta = _damped_solve(fisher, grad, max(group["lam"], 1e-12), "empirical Fisher matrix")
        _apply_update(params, delta, group["lr"])
