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
