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

from ..fidelity import fidelity_loss, to_real
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


EXPERIMENT = _training.Experiment("prediction", make_data, batch_loss, inputs=2 * N,
                                  outputs=2 * N, hidden=HIDDEN, lr=LR, batch_size=BATCH,
                                  epochs=EPOCHS, modes=MODES)
run = EXPERIMENT.run
check = EXPERIMENT.check
