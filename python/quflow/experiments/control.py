"""The paper's control experiment (§3.2): steer states to a target through the simulator.

Setup: the box of the prediction experiment (``n = 20``, ``L = 2``, ``V = 0``,
``dt = 0.2``) with a dipole control ``u(t)·x``, the system of the authors' public code
(tum-pbs/half-inverse-gradients ``Quantum_dipole``, tum-pbs/StableBPTT
``QuantumControl``). Default states, after ``Quantum_dipole``: initial states are real
superpositions ``c₂φ₂ + c₃φ₃`` (i.i.d. Gaussian ``c``, normalised) and the target is the
ground state ``φ₁``, orthogonal to every initial state, so every run starts at the loss
maximum ``L = 1`` (``Quantum_dipole`` steers ``φ₁`` to such mixes; with a real
Hamiltonian this is the same task run backwards in time). ``--states 1,2 --target 3``
(complex) is StableBPTT's variant. 100 training initial states, 25 held out. A fully
connected network (40 → 64 → 64 → 50, tanh, 10 034 parameters, float64) maps
``to_real(ψ_0)`` to a control signal ``u`` of 50 steps; the loss is the quantum loss
between the simulated final state (gradients flow back through the 50 simulator steps of
:func:`quflow.crank_nicolson`) and the target. Adam with learning rate 0.005 (the
paper's) or plain SGD with 1.0; mini-batch 10.
"""

from __future__ import annotations

from ..fidelity import to_complex, to_real
from ..grid import Grid, random_states
from ..schrodinger import crank_nicolson
from . import _training

N, LENGTH, DT, STEPS = 20, 2.0, 0.2, 50
TRAIN_STATES, VAL_STATES, HIDDEN = 100, 25, 64
_GRID = Grid(N, LENGTH)


def make_data(seed: int = 2024, states: tuple = (2, 3), real: bool = True, target: int = 1):
    """(train, validation): ``x`` = to_real(ψ_0) ``(states, 40)``, ``y`` = to_real(φ_target)
    per state; initial states superpose the box eigenstates ``states`` (1-based)."""
    psi0 = random_states(_GRID, TRAIN_STATES + VAL_STATES, seed=seed, modes=states, real=real)
    goal = _GRID.eigenstates(target, dtype=psi0.dtype)[target - 1].expand_as(psi0)
    x, y = to_real(psi0), to_real(goal)
    return (x[:TRAIN_STATES], y[:TRAIN_STATES]), (x[TRAIN_STATES:], y[TRAIN_STATES:])


def batch_loss(model, x, y, gradient, reduction="mean"):
    u = model(x)  # (B, 50)
    psi_T = crank_nicolson(to_complex(x), dt=DT, dx=_GRID.dx, control=u, control_shape=_GRID.x)
    # psi_T complex (B, 20); y real (B, 40) in the to_real layout
    return _training.quantum_loss(psi_T, y, gradient, reduction)


EXPERIMENT = _training.Experiment(
    "control", make_data, batch_loss, n=N, inputs=2 * N, outputs=STEPS, hidden=HIDDEN,
    lr={"adam": 0.005, "sgd": 1.0}, batch_size=10, epochs={"quick": 40, "full": 150},
    seeds={"quick": 3, "full": 8}, states=(2, 3), real_states=True, target=1, probe=100,
    seconds_per_epoch=0.04, extra=(("steps", STEPS),),
    variants=(("stablebptt", {"states": (1, 2), "real_states": False, "target": 3}),
              ("data2025", {"data_seed": 2025})))
