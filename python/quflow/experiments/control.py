"""The paper's control experiment (§3.2): steer states to a target through the simulator.

Setup: the box of the prediction experiment (``n = 20``, ``L = 2``, ``V = 0``,
``dt = 0.2``) with a dipole control ``u(t)·x``. 100 training initial states (random
superpositions of the lowest 5 box eigenstates) and 25 held out; the target is the ground
state ``φ_1``. A fully connected network (40 → 64 → 64 → 50, tanh, 10 034 parameters,
float64) maps ``to_real(ψ_0)`` to a control signal ``u`` of 50 steps; the loss is the
quantum loss between the simulated final state (gradients flow back through the 50
simulator steps of :func:`quflow.crank_nicolson`) and the target. Adam, learning rate
0.005, mini-batch 10.
"""

from __future__ import annotations

from ..fidelity import fidelity_loss, to_complex, to_real
from ..grid import Grid, random_states
from ..schrodinger import crank_nicolson
from . import _training

N, LENGTH, DT, STEPS, MODES = 20, 2.0, 0.2, 50, 5
TRAIN_STATES, VAL_STATES, HIDDEN = 100, 25, 64
LR, BATCH = 0.005, 10
EPOCHS = {"quick": 15, "full": 150}
_GRID = Grid(N, LENGTH)


def make_data(seed: int = 2024, modes: int = MODES):
    """(train, validation): ``x`` = to_real(ψ_0) ``(states, 40)``, ``y`` = the target per
    state; initial states mix the lowest ``modes`` box eigenstates."""
    psi0 = random_states(_GRID, TRAIN_STATES + VAL_STATES, seed=seed, modes=modes)
    target = _GRID.eigenstates(1)[0].expand_as(psi0)
    x, y = to_real(psi0), to_real(target)
    return (x[:TRAIN_STATES], y[:TRAIN_STATES]), (x[TRAIN_STATES:], y[TRAIN_STATES:])


def batch_loss(model, x, y, gradient):
    u = model(x)  # (B, 50)
    psi_T = crank_nicolson(to_complex(x), dt=DT, dx=_GRID.dx, control=u, control_shape=_GRID.x)
    return fidelity_loss(psi_T, y, gradient=gradient)


EXPERIMENT = _training.Experiment("control", make_data, batch_loss, inputs=2 * N,
                                  outputs=STEPS, hidden=HIDDEN, lr=LR, batch_size=BATCH,
                                  epochs=EPOCHS, modes=MODES, extra=(("steps", STEPS),))
run = EXPERIMENT.run
check = EXPERIMENT.check
