"""The paper's toy experiment (§2.2–2.4, Fig. 1): escaping the loss maximum.

A prediction ``v = (x, y)`` starts at ``v(θ₀) = (cos θ₀, sin θ₀)`` with ``θ₀`` slightly below
``π/2``, almost orthogonal to the target ``w = (1, 0)``, and follows plain gradient descent
``v ← v − η·G`` on the quantum loss ``L = 1 − |⟨v, w⟩|²/(‖v‖²‖w‖²)`` with
``G`` ∈ {standard ``∇L``, L2 ``∇½‖v − w‖²``, modified ``∇L/√(1 − L)``}. Near ``θ = π/2``
the standard gradient ``∝ sin 2θ`` nearly vanishes, so it escapes the maximum slowly;
L2 and the modified gradient have ``O(1)`` size there.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import torch

from ..fidelity import GRADIENTS, fidelity_loss
from ._training import COLORS, pyplot

__all__ = ["run", "simulate"]

TARGET_LOSS = 1e-3


def simulate(gradient: str, *, theta0: float = math.pi / 2 - 0.01, lr: float = 0.1,
             steps: int = 300) -> dict:
    """Gradient descent on ``v ∈ R²`` (as the complex state ``(x, y)``) towards ``w = (1, 0)``.

    Args:
        gradient: ``"standard"``, ``"l2"`` or ``"modified"`` (see :func:`quflow.fidelity_loss`).
        theta0: initial angle of ``v`` (radians).
        lr: step size ``η``.
        steps: number of gradient steps.

    Returns:
        ``{"loss": [L_0 … L_steps], "xy": [[x_0, y_0], …], "steps_to_target": k or None}``
        where ``steps_to_target`` is the first step with ``L < 1e-3``.
    """
    w = torch.tensor([1.0, 0.0], dtype=torch.complex128)
    v = torch.tensor([math.cos(theta0), math.sin(theta0)], dtype=torch.float64)
    losses, xy, hit = [], [], None
    for k in range(steps + 1):
        v_c = v.to(torch.complex128).requires_grad_()
        loss = fidelity_loss(v_c, w, gradient=gradient)
        losses.append(loss.item())
        xy.append(v.tolist())
        if hit is None and loss.item() < TARGET_LOSS:
            hit = k
        if k == steps:
            break
        (g,) = torch.autograd.grad(loss, v_c)
        v = v - lr * g.real  # the state is real: only the real part of the gradient moves it
    return {"loss": losses, "xy": xy, "steps_to_target": hit}


def run(out: Path, *, quick: bool = True, theta0: float = math.pi / 2 - 0.01,
        lr: float = 0.1) -> dict:
    """Runs all three gradients, writes ``toy.csv``, ``toy.json`` and ``toy.png`` to ``out``.

    Returns:
        ``{gradient: {"final_loss", "final_loss_std", "seeds", "steps_to_target",
        "steps_to_target_by_offset"}}``: steps to ``L < 1e-3`` from ``θ₀``, and from
        ``θ₀ = π/2 − δ`` for ``δ ∈ {1e-2, 1e-4, 1e-6}``. The toy is deterministic: one run,
        standard deviation 0.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = 300 if quick else 1500
    runs = {g: simulate(g, theta0=theta0, lr=lr, steps=steps) for g in GRADIENTS}

    with open(out / "toy.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["gradient", "step", "loss", "x", "y"])
        for g, r in runs.items():
            for k, (loss, (x, y)) in enumerate(zip(r["loss"], r["xy"])):
                writer.writerow([g, k, f"{loss:.10g}", f"{x:.10g}", f"{y:.10g}"])
    # escape time vs how close θ₀ starts to the maximum at π/2
    offsets = (1e-2, 1e-4, 1e-6)
    sweep = {g: {f"{o:g}": simulate(g, theta0=math.pi / 2 - o, lr=lr, steps=steps)["steps_to_target"]
                 for o in offsets} for g in GRADIENTS}
    summary = {g: {"final_loss": r["loss"][-1], "final_loss_std": 0.0, "seeds": [None],
                   "steps_to_target": r["steps_to_target"],
                   "steps_to_target_by_offset": sweep[g]} for g, r in runs.items()}
    meta = {"theta0": theta0, "lr": lr, "steps": steps, "target_loss": TARGET_LOSS,
            "offsets": list(offsets)}
    with open(out / "toy.json", "w") as f:
        json.dump({"config": meta, "results": summary}, f, indent=2)
    _plot(runs, out / "toy.png", meta)
    return summary


def _plot(runs: dict, path: Path, meta: dict) -> None:
    plt = pyplot()
    fig, (ax_l, ax_xy) = plt.subplots(1, 2, figsize=(10, 4.2))
    for g, r in runs.items():
        label = f"{g} (L<1e-3 at step {r['steps_to_target']})"
        ax_l.semilogy([max(v, 1e-16) for v in r["loss"]], color=COLORS[g], label=label)
        xy = torch.tensor(r["xy"])
        ax_xy.plot(xy[:, 0], xy[:, 1], ".-", ms=3, color=COLORS[g], label=g)
    ax_l.axhline(meta["target_loss"], color="gray", lw=0.8, ls=":")
    ax_l.set_xlabel("gradient step")
    ax_l.set_ylabel("quantum loss  1 − |⟨v,w⟩|²")
    ax_l.set_title(f"loss (η = {meta['lr']}, θ₀ = π/2 − {math.pi / 2 - meta['theta0']:.3g})")
    ax_l.legend(fontsize=8)
    circle = torch.linspace(0, math.pi / 2, 100)
    ax_xy.plot(torch.cos(circle), torch.sin(circle), color="lightgray", lw=1)
    ax_xy.plot([1], [0], "k*", ms=12, label="target w")
    ax_xy.set_aspect("equal")
    ax_xy.set_xlabel("x")
    ax_xy.set_ylabel("y")
    ax_xy.set_title("trajectories of v = (x, y)")
    ax_xy.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
