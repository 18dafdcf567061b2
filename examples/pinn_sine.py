"""Physics-informed hybrid network: solve u'(x) = cos x, u(0) = 0 on [0, 2π].

The exact solution is sin x. The model is Linear → π·tanh → quantum circuit
(data re-uploading, lightning.qubit) → Linear; the loss holds only the ODE
residual at collocation points and the initial condition, so every weight
gradient goes through du/dx (second-order differentiation of the circuit).

    python examples/pinn_sine.py            # ~5 s on one core

prints the loss and max |u − sin x| on 200 test points; docs/pinn.md states the budget.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

import quflow


class AngleScale(nn.Module):
    """``x ↦ scale·tanh(x)``: squashes features into rotation angles in (−scale, scale)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.tanh(x)


def build(n_qubits: int = 2, n_layers: int = 3, seed: int = 0) -> nn.Module:
    """``x (N, 1) → (N, 1)``: Linear(1, q) → π·tanh → data re-uploading circuit → Linear(q, 1)."""
    torch.manual_seed(seed)
    quantum = quflow.templates.data_reuploading(
        n_qubits, n_layers, init=lambda w: nn.init.normal_(w, std=0.5)
    )
    return nn.Sequential(
        nn.Linear(1, n_qubits),
        AngleScale(math.pi),
        quantum,
        nn.Linear(n_qubits, 1),
    ).double()


def train(steps: int = 400, points: int = 24, lr: float = 0.05, seed: int = 0, log_every: int = 50):
    """Train on the ODE residual; returns ``(model, max_error, seconds)``."""
    model = build(seed=seed)
    x = torch.linspace(0, 2 * math.pi, points, dtype=torch.float64).reshape(-1, 1)
    x0 = torch.zeros(1, 1, dtype=torch.float64)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    test = torch.linspace(0, 2 * math.pi, 200, dtype=torch.float64).reshape(-1, 1)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        _, ux = quflow.pinn.derivatives(model, x, order=1)
        loss = (ux - torch.cos(x)).pow(2).mean() + model(x0).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == 1):
            with torch.no_grad():
                err = (model(test) - torch.sin(test)).abs().max().item()
            print(f"step {step:4d}  loss {loss.item():.3e}  max|u - sin x| {err:.4f}", flush=True)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        err = (model(test) - torch.sin(test)).abs().max().item()
    return model, err, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--points", type=int, default=24)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    _, err, seconds = train(args.steps, args.points, args.lr, args.seed)
    print(f"max |u - sin x| on [0, 2π] = {err:.4f} after {args.steps} steps ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
