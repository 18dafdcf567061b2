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


# ---------------------------------------------------------------- issue 12: edges and limits

@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.complex32])
def test_unsupported_precisions_are_type_errors(dtype):
    psi = torch.ones(3, N).to(dtype)
    with pytest.raises(TypeError, match="psi0: expected a float32, float64, complex64"):
        quflow.crank_nicolson(psi, dt=0.1, dx=0.2, steps=2)


@pytest.mark.filterwarnings("ignore::UserWarning")  # nested and CSR tensors are prototypes
@pytest.mark.parametrize("layout", [torch.strided, torch.jagged])
def test_nested_and_sparse_tensors_are_type_errors(layout):
    nested = torch.nested.nested_tensor([torch.ones(N, dtype=torch.complex128)] * 2,
                                        layout=layout)
    with pytest.raises(TypeError, match="psi0: expected a dense"):
        quflow.crank_nicolson(nested, dt=0.1, dx=0.2, steps=2)
    with pytest.raises(TypeError, match="potential: expected a dense"):
        call(potential=torch.zeros(N, **f64).to_sparse())
    with pytest.raises(TypeError, match="psi0: expected a dense"):
        quflow.crank_nicolson(torch.eye(N, dtype=torch.float64).to_sparse_csr(), dt=0.1, dx=0.2,
                              steps=2)


@pytest.mark.parametrize("control", [torch.zeros(0, **f64), torch.zeros(3, 0, **f64)])
def test_zero_length_control_is_a_value_error(control):
    with pytest.raises(ValueError, match="control: has no time steps"):
        call(steps=_DROP, control=control, control_shape=torch.ones(N, **f64))


@pytest.mark.parametrize("steps", [2**63 - 1, 2**63, 2**70])
def test_huge_step_counts_are_value_errors(steps):
    with pytest.raises(ValueError, match="steps: "):
        call(steps=steps, trajectory=True)
    with pytest.raises(ValueError, match="steps: "):
        call(steps=steps, adjoint="store")


# Each of these used to come back as a zero state or NaN (issue 12): the pivots of the
# tridiagonal solve overflow. They are outside the documented range and are refused.
EXTREME = [
    (torch.float64, dict(potential=torch.full((N,), 1e160, **f64)), "potential: "),
    (torch.float32, dict(potential=torch.full((N,), 1e30)), "potential: "),
    (torch.float32, dict(dx=1e-10), "dt, dx: "),
    (torch.float32, dict(dx=1e-12), "dt, dx: "),
    (torch.float32, dict(dt=1e20), "dt, dx: "),
    (torch.float64, dict(dx=1e-100), "dt, dx: "),
    (torch.float64, dict(dt=1e300), "dt, dx: "),
    (torch.float64, dict(steps=_DROP, control=torch.full((4,), 1e150, **f64),
                         control_shape=torch.full((N,), 1e10, **f64)), "control: "),
]


@pytest.mark.parametrize("real,changes,msg", EXTREME, ids=[str(c[1])[:40] for c in EXTREME])
def test_inputs_beyond_the_representable_range_are_value_errors(real, changes, msg):
    kw = good()
    kw.update(changes)
    kw = {k: v for k, v in kw.items() if v is not _DROP}
    kw["psi0"] = kw["psi0"].to(torch.complex128 if real == torch.float64 else torch.complex64)
    for key in ("potential", "control", "control_shape"):
        if key in kw:
            kw[key] = kw[key].to(real)
    with pytest.raises(ValueError, match=msg + ".*(limit|at most)"):
        quflow.crank_nicolson(**kw)


def test_unaligned_tensors_are_copied_not_refused():
    raw = torch.zeros(3 * N * 16 + 1, dtype=torch.uint8)
    psi = quflow.random_states(quflow.Grid(N), 3, seed=0)
    try:
        odd = torch.frombuffer(raw.numpy().data, dtype=torch.complex128, offset=1, count=3 * N)
    except (ValueError, RuntimeError):
        pytest.skip("this torch refuses unaligned buffers itself")
    odd = odd.reshape(3, N)
    odd.copy_(psi)
    out = quflow.crank_nicolson(odd, dt=0.1, dx=0.2, steps=4)
    torch.testing.assert_close(out, quflow.crank_nicolson(psi, dt=0.1, dx=0.2, steps=4),
                               atol=0, rtol=0)


@pytest.mark.parametrize("cdtype,scale", [(torch.complex64, 1e37), (torch.complex128, 1e307)])
def test_states_and_cotangents_too_large_for_a_step_are_value_errors(cdtype, scale):
    """A step forms (I − i·dt/2·H)ψ; for a state near the largest float it would overflow."""
    grid = quflow.Grid(N)
    psi = quflow.random_states(grid, 3, seed=0, dtype=cdtype)
    V = torch.zeros(N, dtype=psi.real.dtype, requires_grad=True)
    with pytest.raises(ValueError, match="psi0: a component of size .* exceeds .* rescale"):
        quflow.crank_nicolson(psi * scale, V, dt=0.1, dx=grid.dx, steps=4)
    out = quflow.crank_nicolson(psi, V, dt=0.1, dx=grid.dx, steps=4)
    with pytest.raises(ValueError, match="grad_out: a component of size .* exceeds"):
        torch.autograd.grad(out, V, torch.full_like(out, scale))
