"""The paper's prediction experiment (§3.1): learn one Crank–Nicolson step.

Setup: a 1-D box, ``n = 20`` interior points, ``L = 2``, ``V = 0``, ``dt = 0.2``. Initial
states are random superpositions of the lowest 5 box eigenstates (i.i.d. complex Gaussian
coefficients, normalised; ``--states`` / ``--real-states`` change that). 100 training
trajectories of 100 steps give 10 000 (state, next state) pairs; 25 further trajectories
(2 500 pairs) are held out for validation. A fully connected network (40 → 64 → 64 → 40,
tanh, 9 384 parameters, float64) maps ``to_real(ψ_k)`` to a prediction of
``to_real(ψ_{k+1})``; Adam with learning rate 0.005 (the paper's), or plain SGD with 0.5;
mini-batch 200. Every run is evaluated with the quantum loss; the methods differ only in
the gradient they train with.
"""

from __future__ import annotations

from ..fidelity import to_real
from ..grid import Grid, random_states
from ..schrodinger import crank_nicolson
from . import _training

N, LENGTH, DT, STEPS = 20, 2.0, 0.2, 100
TRAIN_STATES, VAL_STATES, HIDDEN = 100, 25, 64
_GRID = Grid(N, LENGTH)


def make_data(seed: int = 2023, states: tuple = (1, 2, 3, 4, 5), real: bool = False,
              target: None = None):
    """(train, validation) pairs ``(x, y)``, each real ``(pairs, 40)`` in the to_real layout,
    from trajectories of superpositions of the box eigenstates ``states`` (1-based)."""
    psi0 = random_states(_GRID, TRAIN_STATES + VAL_STATES, seed=seed, modes=states, real=real)
    traj = crank_nicolson(psi0, dt=DT, dx=_GRID.dx, steps=STEPS, trajectory=True)  # (125, 101, 20)

    def pairs(t):
        return to_real(t[:, :-1]).reshape(-1, 2 * N), to_real(t[:, 1:]).reshape(-1, 2 * N)

    return pairs(traj[:TRAIN_STATES]), pairs(traj[TRAIN_STATES:])


def batch_loss(model, x, y, gradient, reduction="mean"):
    """The loss ``gradient`` (a flow or a sibling loss: :func:`_training.quantum_loss`) of
    the network's real ``(B, 40)`` outputs against ``y``, both in the to_real layout
    ``[Re ψ, Im ψ]``."""
    return _training.quantum_loss(model(x), y, gradient, reduction)


EXPERIMENT = _training.Experiment(
    "prediction", make_data, batch_loss, n=N, inputs=2 * N, outputs=2 * N, hidden=HIDDEN,
    lr={"adam": 0.005, "sgd": 0.5}, batch_size=200, epochs={"quick": 15, "full": 40},
    seeds={"quick": 3, "full": 8}, states=(1, 2, 3, 4, 5), real_states=False, target=None,
    probe=200, seconds_per_epoch=0.2,
    variants=(("modes20", {"states": tuple(range(1, 21))}), ("data2024", {"data_seed": 2024})))
