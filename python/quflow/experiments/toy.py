"""The paper's toy experiment (§2.2–2.4, eqs. 3–5, Fig. 1): escaping the loss maximum.

The prediction is a unit vector ``v(θ) = (cos θ, sin θ)`` and the target ``w = (1, 0)``;
the quantum loss is ``L(θ) = 1 − |⟨v(θ), w⟩|² = sin² θ``. Plain gradient descent on the
angle, ``θ ← θ − η·G(θ)``, with each gradient flow of :func:`quflow.fidelity_loss` pulled
back through ``v(θ)`` (``G = ⟨g_v, ∂v/∂θ⟩`` for the flow's gradient ``g_v`` with respect to
``v``):

* standard  ``G = dL/dθ = sin 2θ``
* L2        ``G = d/dθ ½‖v(θ) − w‖² = sin θ``
* modified  ``G = (dL/dθ)/√(1 − L) = 2·sin θ·sign(cos θ)``

``v`` stays on the unit circle. Started at ``θ₀ = π/2 − δ`` (almost orthogonal to
``w``, next to the loss maximum), the standard gradient ``≈ 2δ`` nearly vanishes, so it
escapes slowly, and ever more slowly as ``δ → 0``; L2 and the modified gradient have size
``O(1)`` there and do not care how close the start is.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..fidelity import GRADIENTS, fidelity_loss
from . import _io
from ._plots import COLORS, pyplot

__all__ = ["OFFSETS", "run", "simulate"]

TARGET_LOSS = 1e-3
OFFSETS = (1e-2, 1e-4, 1e-6)  # δ: θ₀ = π/2 − δ
LR = 0.1
STEPS = {"quick": 300, "full": 1500}


def simulate(gradient: str, *, theta0: float = math.pi / 2 - 1e-2, lr: float = LR,
             steps: int = 300) -> dict:
    """Gradient descent on the angle ``θ`` of ``v(θ) = (cos θ, sin θ)`` towards ``w = (1, 0)``.

    Args:
        gradient: ``"standard"``, ``"l2"`` or ``"modified"`` (see :func:`quflow.fidelity_loss`).
        theta0: initial angle ``θ₀`` (radians).
        lr: step size ``η``.
        steps: number of gradient steps.

    Returns:
        ``{"loss": [L_0 … L_steps], "theta": [θ_0 … θ_steps], "steps_to_target": k or None}``
        where ``steps_to_target`` is the first step ``k`` with ``L_k < 1e-3``.

    Example:
        >>> r = simulate("modified", theta0=math.pi / 2 - 1e-2, steps=40)
        >>> r["steps_to_target"], round(r["theta"][1], 6)   # θ₁ = θ₀ − 2η·sin θ₀
        (19, 1.360806)
    """
    w = torch.tensor([1.0, 0.0], dtype=torch.complex128)
    theta = torch.tensor(float(theta0), dtype=torch.float64)
    losses, thetas, hit = [], [], None
    for k in range(steps + 1):
        theta_k = theta.clone().requires_grad_()
        v = torch.stack([torch.cos(theta_k), torch.sin(theta_k)]).to(torch.complex128)
        loss = fidelity_loss(v, w, gradient=gradient)
        losses.append(loss.item())
        thetas.append(theta.item())
        if hit is None and loss.item() < TARGET_LOSS:
            hit = k
        if k == steps:
            break
        (g,) = torch.autograd.grad(loss, theta_k)  # the flow's gradient pulled back to θ
        theta = theta - lr * g
    return {"loss": losses, "theta": thetas, "steps_to_target": hit}


def run(out: Path, *, quick: bool = True, lr: float = LR) -> dict:
    """Runs every gradient from every ``θ₀ = π/2 − δ``; writes ``toy.csv``, ``toy.json``
    and ``toy.png`` to ``out`` (atomically).

    Returns:
        ``{gradient: {"final_loss", "final_loss_std", "seeds", "steps_to_target",
        "steps_to_target_by_offset"}, "l2_at_2lr": {"lr", "steps_to_target_by_offset"}}``
        (``l2_at_2lr``: L2 at step size ``2η``, which takes the modified gradient's steps
        on θ): ``steps_to_target`` from ``δ = 1e-2`` and
        ``steps_to_target_by_offset`` = ``{"0.01": k, "0.0001": k, "1e-06": k}``;
        ``final_loss`` after the last step from ``δ = 1e-2``. The toy is deterministic:
        one run, standard deviation 0.
    """
    out = Path(out)
    steps = STEPS["quick" if quick else "full"]
    runs = {(g, d): simulate(g, theta0=math.pi / 2 - d, lr=lr, steps=steps)
            for g in GRADIENTS for d in OFFSETS}
    rows = [["gradient", "delta", "step", "loss", "theta"]]
    for (g, d), r in runs.items():
        rows += [[g, f"{d:g}", k, f"{loss:.10g}", f"{th:.12g}"]
                 for k, (loss, th) in enumerate(zip(r["loss"], r["theta"]))]
    _io.write_csv(out / "toy.csv", rows)
    first = OFFSETS[0]
    summary = {g: {"final_loss": runs[g, first]["loss"][-1], "final_loss_std": 0.0,
                   "seeds": [None], "steps_to_target": runs[g, first]["steps_to_target"],
                   "steps_to_target_by_offset": {f"{d:g}": runs[g, d]["steps_to_target"]
                                                 for d in OFFSETS}}
               for g in GRADIENTS}
    # On θ the modified gradient is exactly 2 × the L2 one (0 < θ < π/2), so L2 at twice
    # the step size takes the modified gradient's steps: its "fastest" is a step size.
    doubled = {d: simulate("l2", theta0=math.pi / 2 - d, lr=2 * lr, steps=steps)
               for d in OFFSETS}
    summary["l2_at_2lr"] = {"lr": 2 * lr, "steps_to_target_by_offset": {
        f"{d:g}": doubled[d]["steps_to_target"] for d in OFFSETS}}
    meta = {"lr": lr, "steps": steps, "target_loss": TARGET_LOSS, "offsets": list(OFFSETS),
            "parametrisation": "theta"}
    _io.write_json(out / "toy.json", {"config": meta, "results": summary})
    _plot(runs, out / "toy.png", meta)
    return summary


def _plot(runs: dict, path: Path, meta: dict) -> None:
    plt = pyplot()
    offsets = meta["offsets"]
    fig, axes = plt.subplots(1, len(offsets) + 1, figsize=(4 * (len(offsets) + 1), 3.8),
                             gridspec_kw={"width_ratios": [1] * len(offsets) + [0.9]})
    shown = max(r["steps_to_target"] or meta["steps"] for r in runs.values())
    shown = min(meta["steps"], int(shown * 1.3) + 5)
    for ax, d in zip(axes, offsets):
        for g in GRADIENTS:
            r = runs[g, d]
            hit = r["steps_to_target"]
            ax.semilogy(range(shown + 1), [max(v, 1e-16) for v in r["loss"][:shown + 1]],
                        color=COLORS[g], label=f"{g}: L<1e-3 at step {hit}")
        ax.axhline(meta["target_loss"], color="gray", lw=0.8, ls=":")
        ax.set_title(f"θ₀ = π/2 − {d:g}")
        ax.set_xlabel("gradient step")
        ax.set_ylim(1e-6, 2)
        ax.legend(fontsize=7, loc="lower left")
    axes[0].set_ylabel("quantum loss  L = sin² θ")
    ax = axes[-1]
    arc = torch.linspace(0, math.pi / 2, 200)
    ax.plot(torch.cos(arc), torch.sin(arc), color="lightgray", lw=1)
    d = offsets[0]
    for i, g in enumerate(GRADIENTS):
        th = torch.tensor(runs[g, d]["theta"][:(runs[g, d]["steps_to_target"] or 60) + 1])
        r = 1 - 0.04 * i  # radius offset so the three overlapping paths stay visible
        ax.plot(r * torch.cos(th), r * torch.sin(th), ".-", ms=4, lw=0.6, color=COLORS[g],
                label=f"{g} ({len(th) - 1} steps)")
    ax.plot([1], [0], "k*", ms=12, label="target w")
    ax.set_aspect("equal")
    ax.set_xlim(-0.05, 1.1)
    ax.set_ylim(-0.05, 1.1)
    ax.set_title(f"v(θ_k) until L < 1e-3 (δ = {d:g})", fontsize=10)
    ax.text(0.02, 0.02, "paths drawn at radii 1, 0.96, 0.92\nfor visibility; all lie on |v| = 1",
            fontsize=6, transform=ax.transAxes)
    ax.legend(fontsize=7, loc="center left")
    fig.suptitle(f"Toy (eqs. 3–5): gradient descent on θ, η = {meta['lr']}", fontsize=11)
    fig.tight_layout()
    _io.save_figure(fig, path)
    plt.close(fig)
