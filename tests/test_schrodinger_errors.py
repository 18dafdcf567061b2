"""Bad input to quflow.crank_nicolson: a clear TypeError/ValueError naming the argument."""

from __future__ import annotations

import pytest
import torch

import quflow

N = 6


def good():
    return dict(psi0=quflow.random_states(quflow.Grid(N), 3, seed=0),
                potential=torch.zeros(N, dtype=torch.float64), dt=0.1, dx=0.2, steps=4)


def call(**changes):
    kw = good()
    kw.update(changes)
    for key in [k for k, v in changes.items() if v is _DROP]:
        del kw[key]
    return quflow.crank_nicolson(**kw)


_DROP = object()
f64 = dict(dtype=torch.float64)

CASES = [
    # (changes, exception, message fragment)
    (dict(psi0=[[1.0] * N]), TypeError, "psi0: expected a torch.Tensor"),
    (dict(psi0=torch.ones(3, N, dtype=torch.int64)), TypeError, "psi0: expected a float32"),
    (dict(psi0=torch.ones(2, 3, N, dtype=torch.complex128)), ValueError, "psi0: expected shape"),
    (dict(psi0=torch.ones(3, 0, dtype=torch.complex128)), ValueError, "psi0: the grid"),
    (dict(psi0=torch.ones(0, N, dtype=torch.complex128)), ValueError, "psi0: the batch is empty"),
    (dict(psi0=torch.full((3, N), float("nan"), dtype=torch.complex128)), ValueError, "psi0: contains NaN"),
    (dict(potential=torch.zeros(N + 1, **f64)), ValueError, "potential: has 7 grid points, psi0 has 6"),
    (dict(potential=torch.zeros(N, dtype=torch.float32)), TypeError, "potential: expected a real torch.float64"),
    (dict(potential=torch.zeros(N, dtype=torch.complex128)), TypeError, "potential: expected a real"),
    (dict(potential=torch.zeros(N, dtype=torch.int32)), TypeError, "potential: expected a real"),
    (dict(potential=torch.zeros(2, 2, N, **f64)), ValueError, "potential: expected a 1-D or 2-D"),
    (dict(potential=torch.zeros(4, N, **f64)), ValueError, "psi0 has 3, potential has 4 rows"),
    (dict(potential=torch.tensor([float("inf")] * N, **f64)), ValueError, "potential: contains NaN or Inf"),
    (dict(dt=0.0), ValueError, "dt: expected a finite number > 0"),
    (dict(dt=-0.1), ValueError, "dt: expected a finite number > 0"),
    (dict(dt=float("nan")), ValueError, "dt: expected a finite number > 0"),
    (dict(dt="0.1"), TypeError, "dt: expected a real number"),
    (dict(dt=True), TypeError, "dt: expected a real number"),
    (dict(dt=torch.tensor(0.1, requires_grad=True)), TypeError, "gradients with respect to dt"),
    (dict(dx=0), ValueError, "dx: expected a finite number > 0"),
    (dict(dx=float("inf")), ValueError, "dx: expected a finite number > 0"),
    (dict(steps=_DROP), ValueError, "steps: required"),
    (dict(steps=-1), ValueError, "steps: expected an int >= 0"),
    (dict(steps=2.5), TypeError, "steps: expected an int"),
    (dict(adjoint="checkpoint"), ValueError, "adjoint: expected one of"),
    (dict(trajectory="yes"), TypeError, "trajectory: expected a bool"),
    (dict(control_shape=torch.ones(N, **f64)), ValueError, "control_shape: given without control"),
    (dict(steps=_DROP, control=torch.zeros(4, **f64)), ValueError, "control_shape: required"),
    (dict(steps=_DROP, control=torch.zeros(4, **f64), control_shape=torch.ones(N + 2, **f64)),
     ValueError, "control_shape: has 8 grid points, psi0 has 6"),
    (dict(steps=_DROP, control=torch.zeros(5, 4, **f64), control_shape=torch.ones(N, **f64)),
     ValueError, "batch sizes do not match: psi0 has 3, control has 5 rows"),
    (dict(steps=7, control=torch.zeros(4, **f64), control_shape=torch.ones(N, **f64)),
     ValueError, "steps: 7 differs from the control's length 4"),
    (dict(steps=_DROP, control=torch.zeros(3, 4, dtype=torch.float32), control_shape=torch.ones(N, **f64)),
     TypeError, "control: expected a real torch.float64"),
    (dict(steps=_DROP, control=torch.tensor([0.0, float("nan")], **f64), control_shape=torch.ones(N, **f64)),
     ValueError, "control: contains NaN"),
    (dict(steps=_DROP, control=torch.zeros(4, **f64), control_shape=torch.ones(1, N, **f64)),
     ValueError, "control_shape: expected a 1-D"),
]


@pytest.mark.parametrize("changes,exc,msg", CASES, ids=[c[2][:40] for c in CASES])
def test_bad_input_raises_clear_error(changes, exc, msg):
    with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)")):
        call(**changes)


def test_meta_device_is_refused():
    psi = torch.zeros(3, N, dtype=torch.complex128, device="meta")
    with pytest.raises(ValueError, match="psi0: quflow's simulator runs on the CPU"):
        quflow.crank_nicolson(psi, dt=0.1, dx=0.1, steps=1)


def test_bad_input_leaves_inputs_untouched():
    kw = good()
    before = kw["psi0"].clone()
    with pytest.raises(ValueError):
        quflow.crank_nicolson(kw["psi0"], torch.zeros(N + 1, **f64), dt=0.1, dx=0.2, steps=2)
    assert torch.equal(kw["psi0"], before)
