"""The paper's prediction experiment (§3.1): learn one Crank–Nicolson step.

Setup: a 1-D box, ``n = 20`` interior points, ``L = 2``, ``V = 0``, ``dt = 0.2``. Initial
states are random superpositions of the lowest 5 box eigenstates (complex Gaussian
coefficients, normalised; :func:`quflow.random_states`). 100 training trajectories of 100
steps give 10 000 (state, next state) pairs; 25 further trajectories (2 500 pairs) are held
out for validation. A fully connected network (40 → 64 → 64 → 40, tanh, 9 384 parameters,
float64) maps ``to_real(ψ_k)`` to a prediction of ``to_real(ψ_{k+1})``; Adam, learning
rate 0.005, mini-batch 200. Every run is evaluated with the quantum loss; the methods
differ only in the gradient they train with.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..fidelity import GRADIENTS, fidelity_loss, to_real
from ..grid import Grid, random_states
from ..schrodinger import crank_nicolson
from . import _training

N, LENGTH, DT, STEPS, MODES = 20, 2.0, 0.2, 100, 5
TRAIN_STATES, VAL_STATES, HIDDEN = 100, 25, 64
LR, BATCH = 0.005, 200
EPOCHS = {"quick": 15, "full": 150}


def make_data(seed: int = 2023, modes: int = MODES):
    """(train, validation) pairs ``(x, y)``, each real ``(pairs, 40)`` in the to_real layout;
    initial states mix the lowest ``modes`` box eigenstates."""
    grid = Grid(N, LENGTH)
    psi0 = random_states(grid, TRAIN_STATES + VAL_STATES, seed=seed, modes=modes)
    traj = crank_nicolson(psi0, dt=DT, dx=grid.dx, steps=STEPS, trajectory=True)  # (125, 101, 20)

    def pairs(t):
        return to_real(t[:, :-1]).reshape(-1, 2 * N), to_real(t[:, 1:]).reshape(-1, 2 * N)

    return pairs(traj[:TRAIN_STATES]), pairs(traj[TRAIN_STATES:])


def batch_loss(model, x, y, gradient):
    return fidelity_loss(model(x), y, gradient=gradient)


def _suite(out, quick, seeds, epochs, resume, progress, check_only=False, optimizer="adam",
           lr=None, modes=None):
    epochs = epochs or EPOCHS["quick" if quick else "full"]
    modes = modes or MODES
    train_set, val_set = make_data(modes=modes)
    return _training.run_suite(
        "prediction", Path(out), methods=GRADIENTS, seeds=seeds, epochs=epochs, lr=lr or LR,
        batch_size=BATCH, extra=(("hidden", HIDDEN), ("modes", modes)),
        make_model=lambda: _training.mlp(2 * N, 2 * N, HIDDEN), batch_loss=batch_loss,
        train_set=train_set, val_set=val_set, resume=resume, progress=progress,
        check_only=check_only, optimizer=optimizer)


def run(out: Path, *, quick: bool = True, seeds: int = 3, epochs: int | None = None,
        resume: bool = False, progress: bool = True, optimizer: str = "adam",
        lr: float | None = None, modes: int | None = None) -> dict:
    """All three gradient methods × ``seeds`` runs; writes CSV, PNG and checkpoints to ``out``.

    Returns ``{method: {"final_loss", "final_loss_std", "seeds", "final_loss_per_seed",
    "final_train_loss", "epochs"}}``: validation quantum loss after the last epoch, mean
    and population standard deviation over seeds. ``optimizer``/``lr`` override the
    paper's Adam and learning rate (for comparisons, e.g. plain SGD); ``modes`` changes
    the initial-state distribution (lowest ``modes`` of the 20 box eigenstates; default 5).
    """
    return _suite(out, quick, seeds, epochs, resume, progress, optimizer=optimizer, lr=lr,
                  modes=modes)


def check_resume(out: Path, *, quick: bool = True, seeds: int = 3, epochs: int | None = None,
                 optimizer: str = "adam", lr: float | None = None,
                 modes: int | None = None) -> None:
    """Raises ``_training.ConfigMismatch`` if ``out`` holds checkpoints of another setup."""
    _suite(out, quick, seeds, epochs, True, False, check_only=True, optimizer=optimizer, lr=lr,
           modes=modes)
