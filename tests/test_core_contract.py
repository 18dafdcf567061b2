"""The binding's own contract (quflow._core): it validates before any pointer reaches C++.

Arrays must be numpy arrays of the exact dtype and C order; no silent conversion or copy.
"""

from __future__ import annotations

import numpy as np
import pytest

from quflow import _core

B, N, T = 3, 5, 4


def args(**kw):
    a = dict(psi0=np.ones((B, N), np.complex128) / np.sqrt(N), potential=np.zeros((1, N)),
             control=None, control_shape=None, dt=0.1, dx=0.2, steps=T)
    a.update(kw)
    return a


def test_valid_call_works_for_both_precisions():
    out = _core.forward_c128(**args())
    assert out.shape == (B, N) and out.dtype == np.complex128
    out = _core.forward_c64(**args(psi0=np.ones((B, N), np.complex64),
                                   potential=np.zeros((1, N), np.float32)))
    assert out.dtype == np.complex64
    traj = _core.forward_c128(**args(), trajectory=True, threads=2)
    assert traj.shape == (B, T + 1, N)
    assert _core.kernel_isa() in ("avx2", "baseline")


@pytest.mark.parametrize("bad", [
    dict(psi0=np.ones((B, N), np.complex64)),                      # wrong dtype
    dict(psi0=np.ones((N, B), np.complex128).T),                   # Fortran order
    dict(psi0=np.ones((B, 2 * N), np.complex128)[:, ::2]),         # strided view
    dict(potential=np.zeros((1, N), np.float32)),                  # wrong dtype
    dict(psi0=[[1.0] * N] * B),                                    # a list
])
def test_wrong_dtype_or_layout_is_a_type_error(bad):
    with pytest.raises(TypeError):
        _core.forward_c128(**args(**bad))


@pytest.mark.parametrize("bad,msg", [
    (dict(psi0=np.ones(N, np.complex128)), "psi0: expected 2 dimensions"),
    (dict(potential=np.zeros((2, N))), "potential: expected shape"),
    (dict(potential=np.zeros((1, N + 1))), "potential: expected shape"),
    (dict(potential=np.full((1, N), np.nan)), "potential: contains NaN"),
    (dict(psi0=np.full((B, N), np.inf, np.complex128)), "psi0: contains NaN"),
    (dict(dt=0.0), "dt: expected a finite number > 0"),
    (dict(dt=float("nan")), "dt: expected"),
    (dict(dx=-1.0), "dx: expected"),
    (dict(steps=-1), "steps: expected >= 0"),
    (dict(threads=0), "threads: expected >= 1"),
    (dict(control=np.zeros((1, T))), "control and control_shape: give both"),
    (dict(control=np.zeros((1, T + 1)), control_shape=np.ones(N)), "control: expected shape"),
    (dict(control=np.zeros((2, T)), control_shape=np.ones(N)), "control: expected 1 or batch"),
    (dict(control=np.zeros((1, T)), control_shape=np.ones(N + 1)), "control_shape: expected"),
    (dict(psi0=np.ones((B, 0), np.complex128), potential=np.zeros((1, 0))), "n >= 1"),
    (dict(dt=1e300, psi0=np.ones((B, N), np.complex64), potential=np.zeros((1, N), np.float32)),
     "not representable"),
])
def test_structural_errors_are_value_errors(bad, msg):
    fn = _core.forward_c64 if bad.get("psi0", np.zeros(1, np.complex128)).dtype == np.complex64 \
        else _core.forward_c128
    with pytest.raises(ValueError, match=msg):
        fn(**args(**bad))


def test_backward_contract():
    a = args()
    out = _core.forward_c128(**a)
    g = np.ones_like(out)
    common = dict(potential=a["potential"], dt=0.1, dx=0.2, steps=T)
    gp, gv, gu, gw = _core.backward_c128(out, g, **common, need_potential=True)
    assert gp.shape == (B, N) and gv.shape == (1, N) and gu is None and gw is None
    with pytest.raises(ValueError, match="need_control: no control"):
        _core.backward_c128(out, g, **common, need_control=True)
    with pytest.raises(ValueError, match="grad_out: expected shape"):
        _core.backward_c128(out, np.ones((B, N + 1), np.complex128), **common)
    with pytest.raises(ValueError, match="states: expected shape"):
        _core.backward_c128(np.ones((B, T, N), np.complex128), g, **common)
    with pytest.raises(ValueError, match="grad_out: a trajectory cotangent"):
        _core.backward_c128(out, np.ones((B, T + 1, N), np.complex128), **common)
    with pytest.raises(TypeError):
        _core.backward_c128(out.astype(np.complex64), g, **common)


# ---------------------------------------------------------------- sizes and buffers (issue 12)

@pytest.mark.parametrize("steps", [2**63 - 1, 2**62, 2**61])
def test_trajectory_sizes_that_overflow_are_refused_before_allocating(steps):
    # (batch, steps+1, n) elements: steps + 1 and the byte count overflow a 64-bit size
    with pytest.raises(ValueError, match="steps: "):
        _core.forward_c128(**args(steps=steps), trajectory=True)


def test_backward_with_a_huge_step_count_is_refused():
    a = args()
    out = _core.forward_c128(**a, trajectory=True)
    with pytest.raises(ValueError, match="states: expected shape"):
        _core.backward_c128(out, np.ones_like(out), potential=a["potential"], dt=0.1, dx=0.2,
                            steps=2**63 - 1)


def _unaligned(shape, dtype):
    """A C-contiguous array of `dtype` whose data pointer is 1 byte off alignment."""
    dtype = np.dtype(dtype)
    raw = np.zeros(int(np.prod(shape)) * dtype.itemsize + 1, np.uint8)
    out = raw[1:].view(dtype).reshape(shape)
    assert not out.flags.aligned and out.flags.c_contiguous
    return out


@pytest.mark.parametrize("name", ["psi0", "potential", "control", "control_shape"])
def test_unaligned_arrays_are_refused(name):
    good = dict(psi0=np.ones((B, N), np.complex128) / np.sqrt(N), potential=np.zeros((1, N)),
                control=np.zeros((1, T)), control_shape=np.ones(N))
    bad = _unaligned(good[name].shape, good[name].dtype)
    bad[...] = good[name]
    good[name] = bad
    with pytest.raises(TypeError, match=f"{name}: expected an aligned array"):
        _core.forward_c128(**args(**good))


def test_unaligned_backward_arrays_are_refused():
    a = args()
    out = _core.forward_c128(**a)
    bad = _unaligned(out.shape, out.dtype)
    bad[...] = out
    common = dict(potential=a["potential"], dt=0.1, dx=0.2, steps=T)
    with pytest.raises(TypeError, match="states: expected an aligned array"):
        _core.backward_c128(bad, np.ones_like(out), **common)
    with pytest.raises(TypeError, match="grad_out: expected an aligned array"):
        _core.backward_c128(out, bad, **common)


@pytest.mark.parametrize("dtype,bad", [
    (np.complex128, dict(potential=np.full((1, N), 1e160))),
    (np.complex128, dict(dx=1e-100)),
    (np.complex128, dict(dt=1e300)),
    (np.complex64, dict(potential=np.full((1, N), 1e30, np.float32))),
    (np.complex64, dict(dx=1e-10)),
    (np.complex64, dict(dt=1e20)),
])
def test_inputs_beyond_the_representable_range_are_refused_by_the_core(dtype, bad):
    real = np.float64 if dtype == np.complex128 else np.float32
    kw = args(psi0=np.ones((B, N), dtype), potential=np.zeros((1, N), real))
    kw.update(bad)
    fn = _core.forward_c128 if dtype == np.complex128 else _core.forward_c64
    with pytest.raises(ValueError, match="overflow"):
        fn(**kw)


def _tangent_args(**kw):
    a = args(control=np.zeros((1, T)), control_shape=np.ones(N))
    a.update(tpsi0=np.ones((B, N), np.complex128), tpotential=np.zeros((1, N)),
             tcontrol=np.zeros((B, T)), tcontrol_shape=np.zeros(N))
    a.update(kw)
    return a


@pytest.mark.parametrize("bad,exc,msg", [
    (dict(tpsi0=np.ones((B, N), np.complex64)), TypeError, None),
    (dict(tpotential=np.zeros((1, 2 * N))[:, ::2]), TypeError, None),
    (dict(tpsi0=np.ones((B, N + 1), np.complex128)), ValueError, "tangent psi0: expected"),
    (dict(tpotential=np.zeros((2, N))), ValueError, "tangent potential: expected shape"),
    (dict(tcontrol=np.zeros((B, T + 1))), ValueError, "tangent control: expected shape"),
    (dict(tcontrol_shape=np.zeros(N - 1)), ValueError, "tangent control_shape: expected"),
    (dict(tcontrol=np.full((1, T), np.nan)), ValueError, "tangent control: contains NaN"),
    (dict(control=None, control_shape=None), ValueError, "tangent control: given without"),
])
def test_forward_mode_contract(bad, exc, msg):
    assert [x.shape for x in _core.jvp_c128(**_tangent_args())] == [(B, N)] * 2
    with pytest.raises(exc, match=msg):
        _core.jvp_c128(**_tangent_args(**bad))


def test_second_order_contract():
    a = _tangent_args()
    psi, tpsi = _core.jvp_c128(**a)
    kw = dict(potential=a["potential"], control=a["control"], control_shape=a["control_shape"],
              tpotential=a["tpotential"], tcontrol=a["tcontrol"],
              tcontrol_shape=a["tcontrol_shape"], dt=0.1, dx=0.2, steps=T)
    out = _core.adjoint2_c128(psi, tpsi, None, tpsi, need=[True] * 8, **kw)
    assert [None if g is None else g.shape for g in out] == \
        [(B, N), (1, N), (1, T), (N,), (B, N), (1, N), (B, T), (N,)]
    with pytest.raises(ValueError, match="need: expected 8 flags"):
        _core.adjoint2_c128(psi, tpsi, None, tpsi, need=[True] * 4, **kw)
    with pytest.raises(ValueError, match="grad_out: expected shape"):
        _core.adjoint2_c128(psi, tpsi, np.ones((B, T + 1, N), np.complex128), tpsi,
                            need=[True] * 8, **kw)
    with pytest.raises(ValueError, match="tangent states: expected shape"):
        _core.adjoint2_c128(psi, tpsi[:1].copy(), None, tpsi, need=[True] * 8, **kw)
    with pytest.raises(ValueError, match="tangent grad_out: a component of size inf"):
        _core.adjoint2_c128(psi, tpsi, None, np.full((B, N), np.inf, np.complex128),
                            need=[True] * 8, **kw)
    with pytest.raises(TypeError):
        _core.adjoint2_c128(psi, tpsi.astype(np.complex64), None, tpsi, need=[True] * 8, **kw)
