"""quflow.fidelity_loss / FidelityLoss / to_complex / to_real, and the loss family
bures_loss / log_fidelity_loss / fubini_study_loss.

Oracles: gradcheck of the "standard" mode (an exact gradient of the value); plain-autograd
references for each mode's formula (tests/README.md, "Fidelity loss"); phase invariance.
The family: gradcheck, the textbook formulas on a dense F, the identity G_M = ∇[2(1 − √F)]
and closed forms at F = 0, near and at F = 1.
"""

from __future__ import annotations

import math

import pytest
import torch

import quflow

TOL = {torch.complex128: 1e-12, torch.complex64: 1e-5}


def _states(shape, dtype=torch.complex128, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(*shape, 2, dtype=torch.float64, generator=gen)
    return (scale * torch.view_as_complex(z)).to(dtype)


def _value_reference(p, t):
    """1 − |⟨t,p⟩|²/(‖p‖²‖t‖²) written directly in torch (differentiable by autograd)."""
    s = (t.conj() * p).sum(-1)
    return 1 - s.abs() ** 2 / (p.abs().pow(2).sum(-1) * t.abs().pow(2).sum(-1))


def _grads(p, t, gradient, reduction="mean"):
    p = p.detach().clone().requires_grad_()
    t = t.detach().clone().requires_grad_()
    loss = quflow.fidelity_loss(p, t, gradient=gradient, reduction=reduction)
    (loss if loss.ndim == 0 else loss.sum()).backward()
    return loss.detach(), p.grad, t.grad


# ---------------------------------------------------------------- values

@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
@pytest.mark.parametrize("gradient", ["standard", "modified", "l2"])
def test_value_is_the_quantum_loss_in_every_mode(dtype, gradient):
    p, t = _states((7, 5), dtype, 1, scale=3.0), _states((7, 5), dtype, 2)  # unnormalised
    ref = _value_reference(p.to(torch.complex128), t.to(torch.complex128))
    out = quflow.fidelity_loss(p, t, gradient=gradient, reduction="none")
    assert out.dtype == (torch.float64 if dtype == torch.complex128 else torch.float32)
    torch.testing.assert_close(out.double(), ref, atol=TOL[dtype], rtol=0)
    torch.testing.assert_close(quflow.fidelity_loss(p, t, gradient=gradient).double(), ref.mean(),
                               atol=TOL[dtype], rtol=0)
    torch.testing.assert_close(quflow.fidelity_loss(p, t, gradient=gradient, reduction="sum").double(),
                               ref.sum(), atol=10 * TOL[dtype], rtol=0)


def test_known_values_and_phase_invariance():
    t = torch.tensor([1.0 + 0j, 0.0])
    assert quflow.fidelity_loss(torch.tensor([0.0 + 0j, 2.0]), t).item() == 1.0
    assert quflow.fidelity_loss(torch.tensor([3.0 + 0j, 0.0]), t).item() == 0.0
    p, t = _states((9, 6), seed=3), _states((9, 6), seed=4)
    alpha = torch.rand(9, 1, dtype=torch.float64) * 2 * math.pi
    base = quflow.fidelity_loss(p, t, reduction="none")
    torch.testing.assert_close(quflow.fidelity_loss(p * torch.exp(1j * alpha), t, reduction="none"),
                               base, atol=1e-13, rtol=0)
    torch.testing.assert_close(quflow.fidelity_loss(p, t * torch.exp(-2j * alpha), reduction="none"),
                               base, atol=1e-13, rtol=0)


def test_split_layout_inputs_equal_complex_inputs():
    p, t = _states((4, 3), seed=5), _states((4, 3), seed=6)
    for mode in ("standard", "modified", "l2"):
        yp = quflow.to_real(p).requires_grad_()
        loss_real = quflow.fidelity_loss(yp, quflow.to_real(t), gradient=mode, layout="split")
        loss_real.backward()
        loss_c, gp, _ = _grads(p, t, mode)
        torch.testing.assert_close(loss_real.detach(), loss_c, atol=1e-14, rtol=0)
        torch.testing.assert_close(yp.grad, quflow.to_real(gp), atol=1e-14, rtol=0)
    # mixed: real pred in the split layout, complex target
    torch.testing.assert_close(quflow.fidelity_loss(quflow.to_real(p), t, layout="split"),
                               quflow.fidelity_loss(p, t), atol=1e-14, rtol=0)


def test_to_real_and_to_complex_are_inverse():
    psi = _states((2, 3, 5), seed=7)
    y = quflow.to_real(psi)
    assert y.shape == (2, 3, 10) and y.dtype == torch.float64
    assert torch.equal(y[..., :5], psi.real) and torch.equal(y[..., 5:], psi.imag)
    assert torch.equal(quflow.to_complex(y), psi)
    assert quflow.to_complex(y.float()).dtype == torch.complex64


def test_target_broadcasts_over_the_batch():
    p, t = _states((6, 4), seed=8), _states((4,), seed=9)
    out = quflow.fidelity_loss(p, t, reduction="none")
    torch.testing.assert_close(out, _value_reference(p, t.expand(6, 4)), atol=1e-14, rtol=0)
    _, _, gt = _grads(p, t, "standard")
    assert gt.shape == (4,)


# ---------------------------------------------------------------- gradients

@pytest.mark.parametrize("path", ["direct", "scaled"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_standard_gradient_passes_gradcheck(reduction, path, monkeypatch):
    """Both backward paths (the direct formulas inside _DIRECT_NORMS, the unit vectors
    outside it: forced here by refusing the direct terms), first and second order."""
    if path == "scaled":
        from quflow import fidelity
        monkeypatch.setattr(fidelity, "_direct_terms", lambda p, t: None)
    p = _states((3, 4), seed=10).requires_grad_()
    t = _states((3, 4), seed=11).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: quflow.fidelity_loss(a, b, gradient="standard", reduction=reduction), (p, t))
    assert torch.autograd.gradgradcheck(
        lambda a, b: quflow.fidelity_loss(a, b, gradient="standard", reduction=reduction), (p, t))


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
def test_standard_gradient_equals_autograd_of_the_value(dtype):
    p, t = _states((5, 6), dtype, 12, scale=2.0), _states((5, 6), dtype, 13)
    _, gp, gt = _grads(p, t, "standard")
    p2, t2 = p.clone().requires_grad_(), t.clone().requires_grad_()
    _value_reference(p2, t2).mean().backward()
    torch.testing.assert_close(gp, p2.grad, atol=TOL[dtype], rtol=0)
    torch.testing.assert_close(gt, t2.grad, atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_modified_gradient_is_standard_over_sqrt_fidelity(dtype, reduction):
    p, t = _states((8, 5), dtype, 14, scale=1.5), _states((8, 5), dtype, 15)
    loss_i = quflow.fidelity_loss(p, t, reduction="none")
    _, gp_s, gt_s = _grads(p, t, "standard", reduction)
    _, gp_m, gt_m = _grads(p, t, "modified", reduction)
    scale = (1 / torch.sqrt(1 - loss_i))[:, None]
    rtol = 1e-12 if dtype == torch.complex128 else 1e-4
    torch.testing.assert_close(gp_m, gp_s * scale, rtol=rtol, atol=rtol * gp_s.abs().max().item())
    torch.testing.assert_close(gt_m, gt_s * scale, rtol=rtol, atol=rtol * gt_s.abs().max().item())


def test_l2_gradient_is_the_gradient_of_half_squared_distance():
    p, t = _states((4, 3), seed=16), _states((4, 3), seed=17)
    _, gp, gt = _grads(p, t, "l2", "sum")
    torch.testing.assert_close(gp, p - t, atol=1e-15, rtol=0)
    torch.testing.assert_close(gt, t - p, atol=1e-15, rtol=0)
    _, gp_mean, _ = _grads(p, t, "l2", "mean")
    torch.testing.assert_close(gp_mean, (p - t) / 4, atol=1e-15, rtol=0)


def test_phase_covariance_of_standard_and_modified_and_non_invariance_of_l2():
    p, t = _states((5, 4), seed=18), _states((5, 4), seed=19)
    phase = torch.exp(1j * torch.rand(5, 1, dtype=torch.float64) * 6.28)
    for mode in ("standard", "modified"):
        _, gp, _ = _grads(p, t, mode)
        _, gp_rot, _ = _grads(p * phase, t, mode)
        torch.testing.assert_close(gp_rot, gp * phase, atol=1e-14, rtol=0)  # ∇ rotates with p
    _, gp, _ = _grads(p, t, "l2")
    _, gp_rot, _ = _grads(p * phase, t, "l2")
    assert (gp_rot - gp * phase).abs().max() > 1e-3  # documented: l2 is not phase invariant


def test_orthogonal_and_near_orthogonal_inputs():
    t = torch.tensor([[1.0 + 0j, 0.0, 0.0]])
    p = torch.tensor([[0.0 + 0j, 1.0, 0.0]])
    loss, gp_s, gt_s = _grads(p, t, "standard")
    assert loss.item() == 1.0 and gp_s.abs().max() == 0 and gt_s.abs().max() == 0  # vanishes
    _, gp_m, gt_m = _grads(p, t, "modified")
    assert torch.isfinite(gp_m).all() and torch.isfinite(gt_m).all()
    torch.testing.assert_close(gp_m, -2 * t, atol=0, rtol=0)   # documented limit: towards t
    torch.testing.assert_close(gt_m, -2 * p, atol=0, rtol=0)
    for eps in (1e-3, 1e-8, 1e-14):
        near = torch.tensor([[eps + 0j, 1.0, 0.0]])
        _, gs, _ = _grads(near, t, "standard")
        _, gm, _ = _grads(near, t, "modified")
        assert gs.abs().max() < 3 * eps                         # standard vanishes with eps
        assert 1.5 < gm.abs().max() < 2.5                       # modified stays O(1)


def test_fidelity_loss_module():
    crit = quflow.FidelityLoss(gradient="l2", reduction="sum")
    p, t = _states((3, 2), seed=20), _states((3, 2), seed=21)
    assert torch.equal(crit(p, t), quflow.fidelity_loss(p, t, gradient="l2", reduction="sum"))
    assert "gradient='l2'" in repr(crit) and "layout='amplitudes'" in repr(crit)
    split = quflow.FidelityLoss(layout="split")
    y, z = quflow.to_real(p), quflow.to_real(t)
    assert torch.equal(split(y, z), quflow.fidelity_loss(y, z, layout="split"))


# ---------------------------------------------------------------- real wavefunctions (issue 23)

REAL_TOL = {torch.float64: 1e-13, torch.float32: 1e-5}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_real_eigenstates_are_real_wavefunctions(dtype):
    """Box eigenstates are orthonormal: L(φ_i, φ_j) = 1 − δ_ij. The former default read a
    real (n,) tensor as [Re ψ, Im ψ] of n/2 components and gave 0.180 for φ₁, φ₂."""
    phi = quflow.Grid(n=20, length=2.0).eigenstates(3, dtype=dtype)  # (3, 20) real
    assert phi.dtype == dtype
    out = quflow.fidelity_loss(phi[:, None, :], phi[None, :, :], reduction="none")
    assert out.shape == (3, 3) and out.dtype == dtype
    torch.testing.assert_close(out, 1 - torch.eye(3, dtype=dtype), atol=REAL_TOL[dtype], rtol=0)
    assert abs(quflow.fidelity_loss(phi[0], phi[1]).item() - 1) < REAL_TOL[dtype]
    assert abs(quflow.FidelityLoss()(phi[2], phi[2]).item()) < REAL_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("gradient", ["standard", "modified", "l2"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("path", ["direct", "scaled"])
def test_real_inputs_equal_their_complex_promotion(dtype, gradient, reduction, path, monkeypatch):
    """A real (B, n) pred/target is the complex state with zero imaginary part: the same
    losses, and gradients equal to the real part of the complex gradients, in every mode,
    reduction and both backward paths (the scaled one forced by refusing the direct terms).
    n = 6 is even, so the former default silently read it as 3 complex components."""
    if path == "scaled":
        from quflow import fidelity
        monkeypatch.setattr(fidelity, "_direct_terms", lambda p, t: None)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    p, t = _states((5, 6), cdtype, 60, scale=2.0).real, _states((5, 6), cdtype, 61).real
    loss_r, gp_r, gt_r = _grads(p, t, gradient, reduction)
    loss_c, gp_c, gt_c = _grads(p.to(cdtype), t.to(cdtype), gradient, reduction)
    assert loss_r.dtype == dtype and gp_r.dtype == dtype and gt_r.dtype == dtype
    tol = REAL_TOL[dtype]
    torch.testing.assert_close(loss_r, loss_c, atol=tol, rtol=0)
    torch.testing.assert_close(gp_r, gp_c.real, atol=tol, rtol=0)
    torch.testing.assert_close(gt_r, gt_c.real, atol=tol, rtol=0)
    assert gp_c.imag.abs().max() <= tol  # real states: the complex gradient is real too
    if gradient == "standard":  # and it is the real gradient of the dense formula
        p2, t2 = p.clone().requires_grad_(), t.clone().requires_grad_()
        ref = _value_reference(p2, t2)
        {"mean": ref.mean, "sum": ref.sum, "none": ref.sum}[reduction]().backward()
        torch.testing.assert_close(gp_r, p2.grad, atol=tol, rtol=0)
        torch.testing.assert_close(gt_r, t2.grad, atol=tol, rtol=0)


@pytest.mark.parametrize("path", ["direct", "scaled"])
def test_real_input_gradients_pass_gradcheck(path, monkeypatch):
    """The standard gradient is exact for real amplitudes, for real and mixed real/complex
    inputs, first and second order, on both backward paths; double precision."""
    if path == "scaled":
        from quflow import fidelity
        monkeypatch.setattr(fidelity, "_direct_terms", lambda p, t: None)
    p = _states((3, 4), seed=62).real.clone().requires_grad_()
    t = _states((3, 4), seed=63).real.clone().requires_grad_()
    tc = _states((4,), seed=64).requires_grad_()  # complex, broadcast over the batch
    for reduction in ("mean", "none"):
        def f(a, b):
            return quflow.fidelity_loss(a, b, gradient="standard", reduction=reduction)
        for inputs in ((p, t), (p, tc), (tc, p)):
            assert torch.autograd.gradcheck(f, inputs)
            assert torch.autograd.gradgradcheck(f, inputs)


def test_real_input_under_torch_func_grad():
    """torch.func.grad through a real pred equals the eager gradient."""
    p, t = _states((4, 5), seed=65).real, _states((4, 5), seed=66)
    for mode in ("standard", "modified", "l2"):
        got = torch.func.grad(lambda a: quflow.fidelity_loss(a, t, gradient=mode))(p)
        _, want, _ = _grads(p, t, mode)
        torch.testing.assert_close(got, want, atol=1e-14, rtol=0)


@pytest.mark.parametrize("pred_dtype,target_dtype,out_dtype", [
    (torch.float32, torch.complex128, torch.float64),
    (torch.float64, torch.complex64, torch.float64),
    (torch.complex64, torch.float32, torch.float32),
    (torch.float32, torch.float64, torch.float64),
])
def test_mixed_real_and_complex_inputs_are_promoted(pred_dtype, target_dtype, out_dtype):
    """One real and one complex (or two precisions): both promoted to the complex dtype of
    the higher precision; each gradient comes back in its input's dtype. n = 6."""
    p = _states((3, 6), seed=67)
    t = _states((3, 6), seed=68)
    p = (p.real if not pred_dtype.is_complex else p).to(pred_dtype)
    t = (t.real if not target_dtype.is_complex else t).to(target_dtype)
    loss, gp, gt = _grads(p, t, "standard", "none")
    assert loss.dtype == out_dtype and gp.dtype == pred_dtype and gt.dtype == target_dtype
    ref = _value_reference(p.to(torch.complex128), t.to(torch.complex128))
    tol = REAL_TOL[out_dtype] if p.real.dtype == t.real.dtype else REAL_TOL[torch.float32]
    torch.testing.assert_close(loss.double(), ref, atol=tol, rtol=0)


def _split_reference(y):
    """[Re ψ, Im ψ] (..., 2n) → complex ψ, written out independently of quflow."""
    n = y.shape[-1] // 2
    return y[..., :n] + 1j * y[..., n:]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("gradient", ["standard", "modified", "l2"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_split_layout_is_the_former_default(dtype, gradient, reduction):
    """layout="split" reads a real (B, 2n) tensor as [Re ψ, Im ψ], as every real input was
    read before: values and real gradients against the dense formula on the hand-split
    states (standard: its autograd; modified: standard/√(1 − L_i), the paper's eq. 6;
    l2: ∂ of ½‖y_p − y_t‖² = y_p − y_t), each weighted by the reduction."""
    gen = torch.Generator().manual_seed(69)
    yp = (3 * torch.randn(5, 8, generator=gen, dtype=torch.float64)).to(dtype)
    yt = torch.randn(5, 8, generator=gen, dtype=torch.float64).to(dtype)
    p, t = yp.clone().requires_grad_(), yt.clone().requires_grad_()
    loss = quflow.fidelity_loss(p, t, gradient=gradient, reduction=reduction, layout="split")
    (loss if loss.ndim == 0 else loss.sum()).backward()
    rp, rt = yp.double().requires_grad_(), yt.double().requires_grad_()
    per_sample = _value_reference(_split_reference(rp), _split_reference(rt))  # (5,)
    weight = 1 / 5 if reduction == "mean" else 1.0
    (weight * per_sample.sum()).backward()
    want = {"mean": per_sample.mean(), "sum": per_sample.sum(), "none": per_sample}[reduction]
    tol = REAL_TOL[dtype]
    assert loss.dtype == dtype and p.grad.dtype == dtype
    torch.testing.assert_close(loss.detach().double(), want.detach(), atol=tol, rtol=0)
    if gradient == "standard":
        want_p, want_t = rp.grad, rt.grad
    elif gradient == "modified":
        k = 1 / torch.sqrt(1 - per_sample.detach())[:, None]
        want_p, want_t = rp.grad * k, rt.grad * k
    else:
        want_p, want_t = weight * (yp - yt).double(), weight * (yt - yp).double()
    scale = max(want_p.abs().max().item(), want_t.abs().max().item())
    torch.testing.assert_close(p.grad.double(), want_p, atol=tol * scale, rtol=0)
    torch.testing.assert_close(t.grad.double(), want_t, atol=tol * scale, rtol=0)


def test_module_docstring_examples_run():
    import doctest
    from quflow import fidelity
    result = doctest.testmod(fidelity)
    assert result.attempted >= 10 and result.failed == 0


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("call,exc,msg", [
    (lambda: quflow.fidelity_loss([1.0, 0.0], torch.ones(2)), TypeError, "pred: expected a torch.Tensor"),
    (lambda: quflow.fidelity_loss(torch.ones(2, dtype=torch.int64), torch.ones(2)), TypeError, "pred: expected a complex"),
    (lambda: quflow.fidelity_loss(torch.ones(3), torch.ones(4), layout="split"), ValueError,
     r"pred: with layout='split' a real pred must have an even last dimension 2n .* shape \(3,\)"),
    (lambda: quflow.fidelity_loss(torch.ones(4), torch.ones(2, 5), layout="split"), ValueError,
     r"target: with layout='split' a real target must have an even"),
    (lambda: quflow.fidelity_loss(torch.ones(4), torch.ones(3, dtype=torch.complex128), layout="split"),
     ValueError, "target: the state has n = 3 components but pred has n = 2$"),
    (lambda: quflow.fidelity_loss(torch.ones(4), torch.ones(3)), ValueError,
     "target: the state has n = 3 components but pred has n = 4$"),
    (lambda: quflow.fidelity_loss(torch.ones(2, dtype=torch.complex128), torch.ones(4)), ValueError,
     r"target: the state has n = 4 components but pred has n = 2; a real tensor in the "
     r"to_real layout \[Re ψ, Im ψ\] needs layout='split'"),
    (lambda: quflow.fidelity_loss(torch.ones(2), torch.ones(2), layout="real"), ValueError,
     r"layout: expected one of \('amplitudes', 'split'\), got 'real'"),
    (lambda: quflow.FidelityLoss(layout="Split"), ValueError, "layout: expected one of"),
    (lambda: quflow.fidelity_loss(torch.tensor(1.0), torch.ones(2)), ValueError, "pred: expected shape"),
    (lambda: quflow.fidelity_loss(torch.ones(3, 4), torch.ones(2, 4)), ValueError, "do not broadcast"),
    (lambda: quflow.fidelity_loss(torch.tensor([1.0, float("nan")]), torch.ones(2)), ValueError, "pred: contains NaN"),
    (lambda: quflow.fidelity_loss(torch.ones(2), torch.tensor([float("inf"), 0.0])), ValueError, "target: contains NaN"),
    (lambda: quflow.fidelity_loss(torch.zeros(2), torch.ones(2)), ValueError, "pred: a sample has zero norm"),
    (lambda: quflow.fidelity_loss(torch.ones(2), torch.ones(2), gradient="natural"), ValueError, "gradient: expected one of"),
    (lambda: quflow.fidelity_loss(torch.ones(2), torch.ones(2), reduction="max"), ValueError, "reduction: expected one of"),
    (lambda: quflow.FidelityLoss(gradient="x"), ValueError, "gradient: expected one of"),
    (lambda: quflow.to_complex(torch.ones(3)), ValueError, "y: the last dimension must be even"),
    (lambda: quflow.to_complex(torch.ones(2, dtype=torch.complex64)), TypeError, "y: expected a real"),
    (lambda: quflow.to_real(torch.ones(2)), TypeError, "psi: expected a complex"),
])
def test_bad_input(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


# ---------------------------------------------------------------- extreme scales (issue 12)

SCALES = {torch.complex64: [1e-30, 1e-11, 1e-6, 1e10, 1e30],
          torch.complex128: [1e-300, 1e-150, 1e-80, 1e80, 1e150, 1e300]}


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
@pytest.mark.parametrize("gradient", ["standard", "modified"])
def test_value_and_gradients_are_right_at_any_finite_scale(dtype, gradient):
    """L(c·p, t) = L(p, t) and ∇_p L(c·p, t) = ∇_p L(p, t)/c for every c where c·p is finite."""
    p, t = _states((4, 5), dtype, 30), _states((4, 5), dtype, 31)
    loss0, gp0, gt0 = _grads(p, t, gradient)
    rtol = 1e-12 if dtype == torch.complex128 else 2e-5
    for c in SCALES[dtype]:
        for which in ("pred", "target"):
            pc, tc = (p * c, t) if which == "pred" else (p, t * c)
            loss, gp, gt = _grads(pc, tc, gradient)
            torch.testing.assert_close(loss, loss0, rtol=0, atol=rtol, msg=f"{which} × {c}")
            want_p, want_t = (gp0 / c, gt0) if which == "pred" else (gp0, gt0 / c)
            for got, want in ((gp, want_p), (gt, want_t)):
                assert torch.isfinite(got).all(), f"{which} × {c}"
                err = ((got - want).abs().max() / want.abs().max()).item()
                assert err < 10 * rtol, f"{which} × {c}: relative error {err:.2e}"


def test_tiny_but_non_zero_float_states_are_accepted():
    p = torch.tensor([[1e-23 + 0j, 2e-23]], dtype=torch.complex64)
    t = torch.tensor([[1.0 + 0j, 0.0]], dtype=torch.complex64)
    assert quflow.fidelity_loss(p, t).item() == pytest.approx(0.8, abs=1e-6)


@pytest.mark.parametrize("dtype,tiny", [(torch.complex128, 1e-310), (torch.complex64, 1e-40)])
def test_modified_gradient_is_finite_at_a_subnormal_overlap(dtype, tiny):
    t = torch.tensor([[1.0 + 0j, 0.0]], dtype=dtype)
    p = torch.tensor([[tiny + 0j, 1.0]], dtype=dtype)
    _, gp, gt = _grads(p, t, "modified")
    assert torch.isfinite(gp).all() and torch.isfinite(gt).all()
    torch.testing.assert_close(gp, -2 * t, atol=1e-6, rtol=0)  # the documented phase-1 limit


# ---------------------------------------------------------------- subnormal states (issue 23)

SUBNORMAL = {torch.complex128: (1e-310, 1030), torch.complex64: (1e-40, 133)}  # (c, k): c·2^k ≈ 1
SUBNORMAL_TOL = {torch.complex128: 1e-14, torch.complex64: 2e-6}  # vs the exact rescaling
# vs the normal-scale state: c·p rounds each component to the subnormal grid (spacing
# 2^-1074 / 2^-149, i.e. 2.5e-14 / 1.4e-5 of c), so the state itself moves by that much
ROUNDED_TOL = {torch.complex128: 2e-13, torch.complex64: 1e-4}


def _times_pow2(x, k):
    """x·2^k exactly (powers of two), in steps that stay within float32's range."""
    while k:
        step = max(-60, min(60, k))
        x, k = x * 2.0 ** step, k - step
    return x


def _weighted_grads(p, t, gradient, reduction, weight):
    """(loss, ∂p, ∂t) of weight·Σ loss (the loss itself for mean/sum): upstream gradients
    of size `weight`, so that a gradient ~1/scale stays inside the dtype's range."""
    p = p.detach().clone().requires_grad_()
    t = t.detach().clone().requires_grad_()
    loss = quflow.fidelity_loss(p, t, gradient=gradient, reduction=reduction)
    g = weight * torch.arange(1, loss.numel() + 1, dtype=loss.dtype).reshape(loss.shape)
    loss.backward(g)
    return loss.detach(), p.grad, t.grad


def _relative_error(got, want):
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
@pytest.mark.parametrize("gradient", ["standard", "modified", "l2"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("which", ["pred", "target", "both"])
def test_all_subnormal_states_equal_the_rescaled_state(dtype, gradient, reduction, which):
    """States whose every component is subnormal (1e-310 in double, 1e-40 in float: NaN
    loss and gradient before). The oracle is the same state multiplied by an exact power
    of two 2^k into the normal range: L is scale invariant, so L(x) = L(2^k·x) and
    ∇L(x) = 2^k·∇L(2^k·x) for standard/modified (l2: ∂p = g·(p − t) as given); both are
    also compared with the unrounded normal-scale state (ROUNDED_TOL). The upstream
    gradient is 2^-64 (times 1..B for "none"; l2: 1), as ∇ ~ 1/1e-310 overflows double
    otherwise (test_unweighted_gradient_at_a_subnormal_scale_has_no_nan)."""
    c, k = SUBNORMAL[dtype]
    p0, t0 = _states((4, 5), dtype, 70), _states((4, 5), dtype, 71)
    tiny = torch.finfo(p0.real.dtype).tiny
    p = p0 * c if which in ("pred", "both") else p0
    t = t0 * c if which in ("target", "both") else t0
    assert (p.abs() < tiny).all() == (which != "target")  # every component subnormal
    assert (t.abs() < tiny).all() == (which != "pred")
    pr = _times_pow2(p, k) if which != "target" else p  # the exact rescaled states
    tr = _times_pow2(t, k) if which != "pred" else t
    w = 1.0 if gradient == "l2" else 2.0 ** -64  # l2's ∂ = g·(p − t) does not grow
    loss, gp, gt = _weighted_grads(p, t, gradient, reduction, w)
    loss_r, gp_r, gt_r = _weighted_grads(pr, tr, gradient, reduction, w)
    loss_0 = quflow.fidelity_loss(p0, t0, reduction=reduction)
    assert torch.isfinite(loss).all() and torch.isfinite(gp).all() and torch.isfinite(gt).all()
    torch.testing.assert_close(loss, loss_r, atol=SUBNORMAL_TOL[dtype], rtol=0)
    torch.testing.assert_close(loss, loss_0, atol=ROUNDED_TOL[dtype], rtol=0)
    if gradient == "l2":
        g = {"mean": w / 4, "sum": w, "none": w * torch.arange(1, 5, dtype=loss.dtype)[:, None]}
        g = g[reduction]  # the per-sample upstream gradient
        want_p, want_t = g * (p - t), g * (t - p)
        assert _relative_error(gp, want_p) < SUBNORMAL_TOL[dtype]
        assert _relative_error(gt, want_t) < SUBNORMAL_TOL[dtype]
        return
    want_p = _times_pow2(gp_r, k) if which != "target" else gp_r
    want_t = _times_pow2(gt_r, k) if which != "pred" else gt_r
    assert _relative_error(gp, want_p) < SUBNORMAL_TOL[dtype]
    assert _relative_error(gt, want_t) < SUBNORMAL_TOL[dtype]
    _, gp_0, gt_0 = _weighted_grads(p0, t0, gradient, reduction, w)  # unrounded, normal scale
    c_k = math.ldexp(c, k)  # c·2^k ≈ 1 (1/c itself overflows double)
    want_p = _times_pow2(gp_0, k) / c_k if which != "target" else gp_0
    want_t = _times_pow2(gt_0, k) / c_k if which != "pred" else gt_0
    assert _relative_error(gp, want_p) < ROUNDED_TOL[dtype]
    assert _relative_error(gt, want_t) < ROUNDED_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
@pytest.mark.parametrize("gradient", ["standard", "modified"])
def test_unweighted_gradient_at_a_subnormal_scale_has_no_nan(dtype, gradient):
    """Documented: ∇_p ~ 1/‖p‖ exceeds the dtype's range for ‖p‖ ~ 1e-310 (1e-40): those
    components overflow to ±inf, never NaN; the loss and ∂t stay right."""
    c, k = SUBNORMAL[dtype]
    p0, t = _states((4, 5), dtype, 72), _states((4, 5), dtype, 73)
    loss, gp, gt = _grads(p0 * c, t, gradient)
    loss_r, _, gt_r = _grads(_times_pow2(p0 * c, k), t, gradient)
    torch.testing.assert_close(loss, loss_r, atol=SUBNORMAL_TOL[dtype], rtol=0)
    assert not torch.isnan(torch.view_as_real(gp)).any()
    assert _relative_error(gt, gt_r) < SUBNORMAL_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_subnormal_real_states(dtype):
    """The same for real amplitudes: L(c·φ_1, φ_1) = 0 and L(c·φ_1, φ_2) = 1."""
    c = 1e-310 if dtype == torch.float64 else 1e-40
    phi = quflow.Grid(n=20, length=2.0).eigenstates(2, dtype=dtype)
    out = quflow.fidelity_loss(phi[0] * c, phi, reduction="none")
    torch.testing.assert_close(out, torch.tensor([0.0, 1.0], dtype=dtype),
                               atol=ROUNDED_TOL[torch.complex128 if dtype == torch.float64
                                                else torch.complex64], rtol=0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch(reduction):
    p, t = torch.zeros(0, 3, dtype=torch.complex128), torch.ones(3, dtype=torch.complex128)
    if reduction == "mean":
        with pytest.raises(ValueError, match="pred: the batch is empty"):
            quflow.fidelity_loss(p, t, reduction=reduction)
    else:
        out = quflow.fidelity_loss(p, t, reduction=reduction)
        assert out.shape == ((0,) if reduction == "none" else ()) and torch.isfinite(out).all()


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.complex32])
def test_unsupported_precisions_are_type_errors(dtype):
    with pytest.raises(TypeError, match="pred: expected"):
        quflow.fidelity_loss(torch.ones(2, 4).to(dtype), torch.ones(4))
    with pytest.raises(TypeError, match="target: expected"):
        quflow.fidelity_loss(torch.ones(4), torch.ones(2, 4).to(dtype))


@pytest.mark.filterwarnings("ignore::UserWarning")  # nested tensors are a prototype
def test_nested_tensors_are_type_errors():
    nested = torch.nested.nested_tensor([torch.ones(4), torch.ones(4)])
    with pytest.raises(TypeError, match="pred: expected a dense"):
        quflow.fidelity_loss(nested, torch.ones(4))


# ---------------------------------------------------------------- the direct formula (issue 14)

@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
def test_direct_and_scaled_values_agree_across_the_direct_range(dtype):
    """Eager mode computes 1 − (|⟨t,p⟩|/(‖p‖‖t‖))² directly where every norm lies in
    _DIRECT_NORMS and on the unit vectors elsewhere: the same value to round-off on both
    sides of each bound."""
    from quflow import fidelity
    lo, hi = fidelity._DIRECT_NORMS[torch.float32 if dtype == torch.complex64 else torch.float64]
    p, t = _states((6, 5), dtype, 40), _states((6, 5), dtype, 41)
    p, t = p / p.abs().pow(2).sum(-1, keepdim=True).sqrt(), t / t.abs().pow(2).sum(-1, keepdim=True).sqrt()
    ref = fidelity._scaled_value(p, t)
    tol = 1e-15 if dtype == torch.complex128 else 1e-6
    for c in (lo / 2, lo * 2, 1.0, hi / 2, hi * 2):
        for pc, tc in ((p * c, t), (p, t * c), (p * c, t * c)):
            direct = fidelity._direct_value(pc, tc)
            assert (direct is None) == (c in (lo / 2, hi * 2)), c
            out = quflow.fidelity_loss(pc, tc, reduction="none")
            torch.testing.assert_close(out, ref, atol=tol, rtol=0, msg=f"scale {c}")


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
@pytest.mark.parametrize("gradient", ["standard", "modified"])
def test_direct_and_scaled_gradients_agree_across_the_direct_range(dtype, gradient):
    """The backward's direct formulas (per-sample coefficients, inside _DIRECT_NORMS) and
    its unit-vector formulas (outside) give the same gradients to round-off, on either side
    of each bound, for ∂p and ∂t alone and together; tolerances relative to the largest
    component: 1e-14 (double), 1e-5 (float)."""
    from quflow import fidelity
    lo, hi = fidelity._DIRECT_NORMS[torch.float32 if dtype == torch.complex64 else torch.float64]
    p, t = _states((6, 5), dtype, 44), _states((6, 5), dtype, 45)
    p, t = p / p.abs().pow(2).sum(-1, keepdim=True).sqrt(), t / t.abs().pow(2).sum(-1, keepdim=True).sqrt()
    g = _states((6,), torch.complex128, 46).real.to(p.real.dtype)[..., None]
    tol = 1e-14 if dtype == torch.complex128 else 1e-5

    class Ctx:  # what autograd hands _Fidelity.backward
        mode, checks = gradient, False

    def scaled(pc, tc, need):
        Ctx.saved_tensors, Ctx.needs_input_grad = (pc, tc), need
        return fidelity._Fidelity.backward(Ctx, g[..., 0])[:2]

    for c in (lo / 2, lo * 2, 1.0, hi / 2, hi * 2):
        for pc, tc in ((p * c, t), (p, t * c), (p * c, t * c)):
            for need in ((True, False), (False, True), (True, True)):
                direct = fidelity._direct_gradients(pc, tc, g, gradient, *need)
                assert (direct is None) == (c in (lo / 2, hi * 2)), c
                if direct is None:
                    continue
                for got, want, needed in zip(direct, scaled(pc, tc, need), need):
                    assert (got is None) == (want is None) == (not needed)
                    if needed:
                        err = ((got - want).abs().max() / want.abs().max()).item()
                        assert err < tol, f"scale {c}, {need}: relative error {err:.1e}"


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("bad,which,msg", [
    (float("nan"), "pred", "pred: contains NaN"), (float("inf"), "pred", "pred: contains NaN"),
    (float("-inf"), "target", "target: contains NaN"), (float("nan"), "target", "target: contains NaN"),
    (0.0, "pred", "pred: a sample has zero norm"), (0.0, "target", "target: a sample has zero norm"),
])
def test_bad_values_in_one_sample_of_a_batch_are_named(bad, which, msg, requires_grad):
    """The direct formula checks only its norms (O(batch)); when it refuses, the slow checks
    find and name the argument, as before."""
    p, t = _states((5, 4), seed=42), _states((5, 4), seed=43)
    x = p if which == "pred" else t
    x[3] = 0.0 if bad == 0.0 else x[3]
    x[3, 1] = complex(bad, 0.0) if bad != 0.0 else 0.0
    with pytest.raises(ValueError, match=msg):
        quflow.fidelity_loss(p.requires_grad_(requires_grad), t)
    with pytest.raises(ValueError, match=msg):  # the split layout too
        quflow.fidelity_loss(quflow.to_real(p.detach()), quflow.to_real(t), layout="split")
    with pytest.raises(ValueError, match=msg):  # and real amplitudes
        quflow.fidelity_loss(p.detach().real, t.real)


# ---------------------------------------------------------------- torch.compile (issue 13)

COMPILE_TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def _compile_case(dtype, gradient, reduction, layout="split"):
    """A small network feeding fidelity_loss; returns (loss function, inputs, params).
    Its real outputs (6, 8) are 4 complex components ([Re ψ, Im ψ]) with layout="split",
    8 real amplitudes with layout="amplitudes"."""
    gen = torch.Generator().manual_seed(50)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
    with torch.no_grad():
        for w in model.parameters():
            w.copy_(torch.randn(w.shape, generator=gen) * 0.5)
    model = model.to(dtype)
    x = torch.randn(6, 8, generator=gen).to(dtype)
    y = torch.randn(6, 8, generator=gen).to(dtype)

    def loss(x, y):
        out = quflow.fidelity_loss(model(x), y, gradient=gradient, reduction=reduction,
                                   layout=layout)
        return out if out.ndim == 0 else (out * torch.arange(1, 7, dtype=dtype)).sum()
    return loss, (x, y), list(model.parameters())


def _value_and_grads(fn, inputs, params):
    value = fn(*inputs)
    return value.detach(), torch.autograd.grad(value, params)


def _compiled_equals_eager(dtype, gradient, reduction, layout):
    torch._dynamo.reset()
    loss, inputs, params = _compile_case(dtype, gradient, reduction, layout)
    eager = _value_and_grads(loss, inputs, params)
    compiled = _value_and_grads(torch.compile(loss, fullgraph=True, backend="aot_eager"),
                                inputs, params)
    torch.testing.assert_close(compiled, eager, atol=COMPILE_TOL[dtype], rtol=COMPILE_TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("gradient", ["standard", "modified", "l2"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_compiled_fullgraph_forward_and_backward_equal_eager(dtype, gradient, reduction):
    """torch.compile(fullgraph=True) traces fidelity_loss without a graph break (a break
    would raise) and AOTAutograd traces its custom backward; values and parameter gradients
    equal eager mode to COMPILE_TOL (eager uses the direct formula, compiled the scaled one).
    The network's real outputs in the split layout."""
    _compiled_equals_eager(dtype, gradient, reduction, "split")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("gradient", ["standard", "modified", "l2"])
def test_compiled_real_amplitudes_equal_eager(dtype, gradient):
    """The same for real outputs read as real amplitudes (promoted to complex in the graph)."""
    _compiled_equals_eager(dtype, gradient, "none", "amplitudes")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Torchinductor does not support code generation for complex")
@pytest.mark.parametrize("gradient", ["standard", "modified", "l2"])
def test_inductor_compiled_training_step_equals_eager(gradient):
    """The default backend (inductor), fullgraph, one dtype: forward + backward as in a
    training step, then the same again with the recompiled graph (second call)."""
    torch._dynamo.reset()
    loss, inputs, params = _compile_case(torch.float64, gradient, "mean")
    eager = _value_and_grads(loss, inputs, params)
    compiled_loss = torch.compile(loss, fullgraph=True)
    for _ in range(2):
        compiled = _value_and_grads(compiled_loss, inputs, params)
        torch.testing.assert_close(compiled, eager, atol=1e-12, rtol=1e-12)


def test_dynamo_explain_finds_no_graph_break():
    torch._dynamo.reset()
    p, t = _states((4, 3), seed=51), _states((3,), seed=52)
    for gradient in ("standard", "modified", "l2"):
        explanation = torch._dynamo.explain(
            lambda a, b: quflow.FidelityLoss(gradient=gradient)(a, b))(p, t)
        assert explanation.graph_break_count == 0 and explanation.graph_count == 1


def test_compiled_loss_skips_the_value_checks():
    """Documented: inside torch.compile the data-dependent checks are skipped (a graph break
    otherwise); NaN input gives a NaN loss instead of the eager error."""
    torch._dynamo.reset()
    p = torch.tensor([[1.0 + 0j, float("nan")]])
    t = torch.tensor([1.0 + 0j, 0.0])
    with pytest.raises(ValueError, match="pred: contains NaN"):
        quflow.fidelity_loss(p, t)
    out = torch.compile(quflow.fidelity_loss, fullgraph=True, backend="aot_eager")(p, t)
    assert torch.isnan(out)


def test_a_module_pickled_before_layout_keeps_the_split_reading():
    """A FidelityLoss saved whole before ``layout`` existed read real tensors as [Re, Im];
    loading it keeps that reading instead of failing on the missing attribute."""
    import pickle

    module = quflow.FidelityLoss(gradient="standard")
    del module.__dict__["layout"]  # what an older pickle holds
    loaded = pickle.loads(pickle.dumps(module))
    assert loaded.layout == "split"
    y = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)  # ψ = (1, i)/… in split
    assert loaded(y, y).item() == pytest.approx(0.0, abs=1e-15)


# ---------------------------------------------------------------- the loss family (issue 24)
#
# With p̂ = p/‖p‖, t̂ = t/‖t‖, s = ⟨t̂, p̂⟩ and F = |s|²: bures_loss = 1 − √F,
# log_fidelity_loss = −log F, fubini_study_loss = arccos √F; G_M = ∇(1 − F)/√F is the
# "modified" gradient of fidelity_loss. The identities tested: ∇(1 − √F) = ½·G_M (so
# G_M = ∇[2(1 − √F)]), ∇(−log F) = G_M/√F, ∇ arccos √F = G_M/(2√(1 − F)).
# Tolerances: complex128 1e-12 (values, gradients relative to their largest component);
# complex64 against the complex128 reference: values 1e-5·max(1, |value|), gradients
# 1e-5 relative (measured: ≤ 5e-6 on random states of n = 8).

FAMILY = {"bures": quflow.bures_loss, "log": quflow.log_fidelity_loss,
          "fubini_study": quflow.fubini_study_loss}
FAMILY_TOL = {torch.complex128: 1e-12, torch.complex64: 1e-5}
EPS = {torch.float64: torch.finfo(torch.float64).eps, torch.float32: torch.finfo(torch.float32).eps}


def _dense_fidelity(p, t):
    """F = |Σ conj(t)·p|²/(Σ|p|²·Σ|t|²) written directly (complex (..., n) → real (...))."""
    s = (t.conj() * p).sum(-1)
    return s.abs() ** 2 / ((p.abs() ** 2).sum(-1) * (t.abs() ** 2).sum(-1))


def _dense_family(kind, p, t):
    """The textbook formulas on the dense F, differentiated by autograd (0 < F < 1)."""
    f = _dense_fidelity(p, t)
    return {"bures": lambda: 1 - torch.sqrt(f), "log": lambda: -torch.log(f),
            "fubini_study": lambda: torch.acos(torch.sqrt(f))}[kind]()


def _family_grads(fn, p, t, reduction="sum", **kwargs):
    p = p.detach().clone().requires_grad_()
    t = t.detach().clone().requires_grad_()
    loss = fn(p, t, reduction=reduction, **kwargs)
    (loss if loss.ndim == 0 else loss.sum()).backward()
    return loss.detach(), p.grad, t.grad


def _max_relative(got, want):
    return ((got - want).abs().max() / want.abs().max()).item()


def _modified(p, t, reduction="sum"):
    return _family_grads(lambda a, b, reduction: quflow.fidelity_loss(
        a, b, gradient="modified", reduction=reduction), p, t, reduction)


@pytest.mark.parametrize("kind", list(FAMILY))
@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
def test_family_values_and_gradients_equal_the_dense_formulas(kind, dtype):
    """Each loss against its textbook formula on the dense F (complex128, autograd):
    per-sample values, the mean and the sum, and both gradients; unnormalised states."""
    p, t = _states((9, 8), dtype, 80, scale=2.5), _states((9, 8), dtype, 81)
    rp = p.to(torch.complex128).requires_grad_()
    rt = t.to(torch.complex128).requires_grad_()
    ref = _dense_family(kind, rp, rt)
    ref.sum().backward()
    loss, gp, gt = _family_grads(FAMILY[kind], p, t, "none")
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    assert loss.dtype == real and gp.dtype == dtype and gt.dtype == dtype
    tol = FAMILY_TOL[dtype]
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=tol, atol=tol)
    for red, want in (("mean", ref.mean()), ("sum", ref.sum())):
        got = FAMILY[kind](p, t, reduction=red)
        assert got.shape == () and got.dtype == real
        torch.testing.assert_close(got.double(), want.detach(), rtol=tol, atol=tol)
    assert _max_relative(gp.to(torch.complex128), rp.grad) < tol
    assert _max_relative(gt.to(torch.complex128), rt.grad) < tol


@pytest.mark.parametrize("kind", list(FAMILY))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_family_passes_gradcheck(kind, reduction):
    """First and second order, complex128, a target broadcast over the batch; and real
    amplitudes mixed with a complex state."""
    def f(a, b):
        return FAMILY[kind](a, b, reduction=reduction)
    p = _states((3, 4), seed=82, scale=1.7).requires_grad_()
    t = _states((4,), seed=83).requires_grad_()
    assert torch.autograd.gradcheck(f, (p, t))
    assert torch.autograd.gradgradcheck(f, (p, t))
    pr = _states((3, 4), seed=84).real.clone().requires_grad_()
    assert torch.autograd.gradcheck(f, (pr, t))


# ---------------------------------------------------------------- the identity

@pytest.mark.parametrize("scale", [1.0, 1e-3, 40.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_modified_gradient_is_the_gradient_of_twice_the_bures_loss(scale, reduction):
    """G_M = ∇L/√(1 − L) of L = 1 − F is the ordinary gradient of D = 2(1 − √F): against
    autograd of the dense D (complex128, per sample, any scale: F is that of the normalised
    states) and against 2·∇bures_loss, in every reduction; the values: bures = 1 − √F."""
    p, t = _states((7, 6), seed=85, scale=scale), _states((7, 6), seed=86)
    _, gp_m, gt_m = _modified(p, t, reduction)
    rp, rt = p.clone().requires_grad_(), t.clone().requires_grad_()
    d = 2 * (1 - torch.sqrt(_dense_fidelity(rp, rt)))
    {"mean": d.mean, "sum": d.sum, "none": d.sum}[reduction]().backward()
    assert _max_relative(gp_m, rp.grad) < 1e-13
    assert _max_relative(gt_m, rt.grad) < 1e-13
    loss_b, gp_b, gt_b = _family_grads(quflow.bures_loss, p, t, reduction)
    assert _max_relative(gp_m, 2 * gp_b) < 1e-13 and _max_relative(gt_m, 2 * gt_b) < 1e-13
    want = (d / 2).detach()
    want = {"mean": want.mean(), "sum": want.sum(), "none": want}[reduction]
    torch.testing.assert_close(loss_b, want, atol=1e-14, rtol=0)


def test_twice_the_bures_loss_is_the_phase_optimal_distance_of_unit_states():
    """For unit states, 2(1 − √F) = min_θ ‖p̂ − e^{iθ} t̂‖², attained at e^{iθ} = s/|s|;
    a grid of 4096 phases never goes below it (and comes within the grid's resolution)."""
    p, t = _states((6, 5), seed=87, scale=3.0), _states((6, 5), seed=88)
    p_hat = p / torch.linalg.vector_norm(p, dim=-1, keepdim=True)
    t_hat = t / torch.linalg.vector_norm(t, dim=-1, keepdim=True)
    d = 2 * quflow.bures_loss(p, t, reduction="none")
    s = (t_hat.conj() * p_hat).sum(-1, keepdim=True)
    at_optimum = (p_hat - (s / s.abs()) * t_hat).abs().square().sum(-1)
    torch.testing.assert_close(at_optimum, d, atol=1e-14, rtol=0)
    theta = torch.linspace(0, 2 * math.pi, 4097, dtype=torch.float64)[:-1]
    grid = (p_hat[:, None] - torch.exp(1j * theta)[:, None] * t_hat[:, None]).abs().square().sum(-1)
    assert (grid.min(-1).values >= d - 1e-14).all()
    assert (grid.min(-1).values - d).max() < (2 * math.pi / 4096) ** 2


def test_modified_gradient_of_non_unit_states():
    """What holds for non-unit inputs (the loss normalises them): G_M(p, t) is the gradient
    of D(p/‖p‖, t/‖t‖) = 2(1 − √F) through the normalisation, so G_M(c·p, t) = G_M(p, t)/c
    and Re⟨p, G_M⟩ = 0 (tangent: D is scale invariant). It is not the gradient of the raw
    distance D_raw = min_θ ‖p − e^{iθ} t‖² = ‖p‖² + ‖t‖² − 2|⟨t,p⟩|: at unit states
    ∇_p D_raw = G_M + D·p and ∇_t D_raw = G_M,t + D·t (G_M is D_raw's gradient projected
    on the sphere's tangent space); at other scales they differ altogether."""
    p, t = _states((5, 4), seed=89), _states((5, 4), seed=90)
    p = p / torch.linalg.vector_norm(p, dim=-1, keepdim=True)
    t = t / torch.linalg.vector_norm(t, dim=-1, keepdim=True)
    _, gp, gt = _modified(p, t)
    for c in (1e-5, 0.3, 7.0):
        _, gp_c, gt_c = _modified(c * p, t)
        assert _max_relative(gp_c, gp / c) < 1e-13 and _max_relative(gt_c, gt) < 1e-13
        rp = (c * p).requires_grad_()
        unit = rp / torch.linalg.vector_norm(rp, dim=-1, keepdim=True)  # plain autograd
        (2 * (1 - (t.conj() * unit).sum(-1).abs())).sum().backward()
        assert _max_relative(gp_c, rp.grad) < 1e-13
    assert ((p.conj() * gp).sum(-1).real.abs() < 1e-14).all()
    assert ((t.conj() * gt).sum(-1).real.abs() < 1e-14).all()

    def raw_grads(a, b):
        a, b = a.clone().requires_grad_(), b.clone().requires_grad_()
        d_raw = (a.abs().square().sum(-1) + b.abs().square().sum(-1)
                 - 2 * (b.conj() * a).sum(-1).abs())
        d_raw.sum().backward()
        return d_raw.detach(), a.grad, b.grad

    d, gp_raw, gt_raw = raw_grads(p, t)
    torch.testing.assert_close(d, 2 * quflow.bures_loss(p, t, reduction="none"), atol=1e-14, rtol=0)
    torch.testing.assert_close(gp_raw, gp + d[:, None] * p, atol=1e-14, rtol=0)
    torch.testing.assert_close(gt_raw, gt + d[:, None] * t, atol=1e-14, rtol=0)
    _, gp_raw3, _ = raw_grads(3 * p, t)
    _, gp3, _ = _modified(3 * p, t)
    assert (gp_raw3 - gp3).abs().max() > 0.1  # a different flow off the unit sphere


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
def test_family_gradients_in_terms_of_the_modified_flow(dtype):
    """Per sample: ∇(1 − √F) = ½·G_M, ∇(−log F) = G_M/√F, ∇θ = G_M/(2 sin θ)."""
    p, t = _states((8, 5), dtype, 91, scale=0.5), _states((8, 5), dtype, 92)
    _, gp_m, gt_m = _modified(p, t)
    f = 1 - quflow.fidelity_loss(p, t, reduction="none")[:, None]
    factor = {"bures": 0.5 * torch.ones_like(f), "log": 1 / f.sqrt(),
              "fubini_study": 0.5 / (1 - f).sqrt()}
    tol = FAMILY_TOL[dtype]
    for kind, fn in FAMILY.items():
        _, gp, gt = _family_grads(fn, p, t)
        assert _max_relative(gp, factor[kind] * gp_m) < tol, kind
        assert _max_relative(gt, factor[kind] * gt_m) < tol, kind


def test_fubini_study_gradient_has_the_norm_of_a_distance():
    """θ is a geodesic distance: ‖∇_p θ‖ = 1/‖p‖ and ‖∇_t θ‖ = 1/‖t‖ for 0 < θ < π/2."""
    p, t = _states((10, 5), seed=106, scale=3.0), _states((10, 5), seed=107)
    _, gp, gt = _family_grads(quflow.fubini_study_loss, p, t)
    for x, g in ((p, gp), (t, gt)):
        norm = torch.linalg.vector_norm(x, dim=-1)
        torch.testing.assert_close(torch.linalg.vector_norm(g, dim=-1) * norm,
                                   torch.ones(10, dtype=torch.float64), atol=1e-14, rtol=0)


# ---------------------------------------------------------------- F = 0 and F = 1

@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
def test_family_at_orthogonal_states(dtype):
    """F = 0: √F is a cone in the overlap; each loss returns the limit along a real
    positive overlap, the modified gradient's phase-1 convention: bures and the angle
    ∂p = −t̂/‖p‖, ∂t = −p̂/‖t‖ (so 2·∇bures = G_M holds at F = 0 too); −log F its
    continuation's gradient, 2/√ε times that, and the value 2 − log ε. All finite."""
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    eps = EPS[real]
    p = torch.tensor([[0.0, 2.0, 1j], [3.0, 0.0, 0.0]], dtype=dtype)
    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, -0.5j]], dtype=dtype)
    norm_p = torch.linalg.vector_norm(p, dim=-1, keepdim=True)
    norm_t = torch.linalg.vector_norm(t, dim=-1, keepdim=True)
    want_p, want_t = -t / norm_t / norm_p, -p / norm_p / norm_t
    values = {"bures": 1.0, "log": 2 - math.log(eps), "fubini_study": math.pi / 2}
    scales = {"bures": 1.0, "log": 2 / math.sqrt(eps), "fubini_study": 1.0}
    tol = 10 * eps
    _, gp_m, gt_m = _modified(p, t)
    for kind, fn in FAMILY.items():
        loss, gp, gt = _family_grads(fn, p, t, "none")
        assert torch.isfinite(gp).all() and torch.isfinite(gt).all()
        torch.testing.assert_close(loss, torch.full((2,), values[kind], dtype=real),
                                   atol=0, rtol=tol)
        assert _max_relative(gp, scales[kind] * want_p) < tol, kind
        assert _max_relative(gt, scales[kind] * want_t) < tol, kind
    _, gp_b, gt_b = _family_grads(quflow.bures_loss, p, t)
    assert _max_relative(2 * gp_b, gp_m) < tol and _max_relative(2 * gt_b, gt_m) < tol


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
def test_family_at_equal_states(dtype):
    """F = 1 (p = t, p = 3t, p = e^{iα}t): values in [0, 4ε]; bures and −log F have zero
    gradient there (to round-off: ≤ 8ε/‖p‖); the angle is a cone (like |x|): its gradient
    is finite with norm ≤ 1/‖p‖, in the direction of the round-off of p̂ − ⟨t̂,p̂⟩t̂, and 0
    where that component is exactly 0."""
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    eps = EPS[real]
    t = _states((1, 6), dtype, 93)
    for p in (t.clone(), 3 * t, t * complex(math.cos(1.0), math.sin(1.0))):
        norm_p = torch.linalg.vector_norm(p).item()
        for kind, fn in FAMILY.items():
            loss, gp, gt = _family_grads(fn, p, t)
            assert 0 <= loss.item() <= 4 * eps, kind
            assert torch.isfinite(gp).all() and torch.isfinite(gt).all()
            bound = 1 / norm_p if kind == "fubini_study" else 8 * eps / norm_p
            assert torch.linalg.vector_norm(gp).item() <= bound * (1 + 1e-6), kind
    e1 = torch.tensor([1.0, 0.0, 0.0], dtype=dtype)  # p̂ − ⟨t̂,p̂⟩t̂ is exactly 0: so is ∇θ
    loss, gp, gt = _family_grads(quflow.fubini_study_loss, 2 * e1, e1)
    assert loss.item() == 0 and gp.abs().max() == 0 and gt.abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("delta", [1e-3, 1e-6, 1e-10])
def test_family_near_equal_states_is_accurate(dtype, delta):
    """p = (1, δ), t = (1, 0): F = 1/(1 + δ²), θ = atan δ, 1 − √F = δ²/(√(1+δ²)(1+√(1+δ²))),
    −log F = log1p(δ²); ∂θ/∂p = (−δ, 1)/(1 + δ²). Computed from p̂'s orthogonal component,
    each value and gradient is relatively accurate even where arccos √F or 1 − √F would
    round to 0 (δ = 1e-10 in double, 1e-6 in float)."""
    p = torch.tensor([1.0, delta], dtype=dtype)
    t = torch.tensor([1.0, 0.0], dtype=dtype)
    root = math.sqrt(1 + delta ** 2)
    want = {"bures": delta ** 2 / (root * (1 + root)), "log": math.log1p(delta ** 2),
            "fubini_study": math.atan(delta)}
    rtol = 1e-13 if dtype == torch.float64 else 1e-5
    for kind, fn in FAMILY.items():
        assert fn(p, t).item() == pytest.approx(want[kind], rel=rtol), kind
    _, gp, _ = _family_grads(quflow.fubini_study_loss, p, t)
    want_grad = torch.tensor([-delta, 1.0], dtype=torch.float64) / (1 + delta ** 2)
    assert _max_relative(gp.double(), want_grad) < rtol


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_log_fidelity_is_continued_by_its_tangent_below_eps(dtype):
    """−log F for F ≥ ε; below, −log ε + 2(1 − √F/√ε): value and gradient continuous at
    F = ε, and the gradient's norm at most 2/(√ε‖p‖) everywhere. p = (δ, 1), t = (1, 0):
    √F = δ/√(1 + δ²)."""
    eps = EPS[dtype]
    c_min = math.sqrt(eps)
    t = torch.tensor([1.0, 0.0], dtype=dtype)

    def at(c):  # p with √F = c
        p = torch.tensor([c / math.sqrt(1 - c * c), 1.0], dtype=dtype)
        loss, gp, _ = _family_grads(quflow.log_fidelity_loss, p, t)
        return loss.item(), gp

    tol = 1e-12 if dtype == torch.float64 else 1e-4
    above, g_above = at(c_min * (1 + 1e-3))
    below, g_below = at(c_min * (1 - 1e-3))
    assert above == pytest.approx(-math.log(eps) - 2e-3, rel=1e-5)
    assert below == pytest.approx(-math.log(eps) + 2e-3, rel=1e-5)
    assert _max_relative(g_above, g_below) < 3e-3  # 2/c jumps by nothing at c_min
    for c in (0.0, 0.1 * c_min, 0.9 * c_min):
        value, g = at(c)
        assert value == pytest.approx(-math.log(eps) + 2 * (1 - c / c_min), rel=tol)
        assert torch.linalg.vector_norm(g).item() <= 2 / c_min * (1 + tol)
    value, _ = at(0.3)
    assert value == pytest.approx(-math.log(0.09), rel=tol)


def test_family_values_are_in_range():
    """0 ≤ 1 − √F ≤ 1, 0 ≤ −log F ≤ 2 − log ε, 0 ≤ θ ≤ π/2 on random, equal (where
    fidelity_loss may round to −ε) and orthogonal states."""
    t = _states((40, 5), seed=94)
    p = torch.cat([_states((40, 5), seed=95), t, 2j * t,
                   torch.stack([t[:, 1].conj(), -t[:, 0].conj(), 0 * t[:, 2], 0 * t[:, 3],
                                0 * t[:, 4]], -1)])  # ⟨t, p⟩ = 0 on the last 40
    tt = t.repeat(4, 1)
    upper = {"bures": 1.0, "log": 2 - math.log(EPS[torch.float64]), "fubini_study": math.pi / 2}
    for kind, fn in FAMILY.items():
        out = fn(p, tt, reduction="none")
        assert out.min() >= 0 and out.max() <= upper[kind], kind


# ---------------------------------------------------------------- conventions and errors

@pytest.mark.parametrize("kind", list(FAMILY))
def test_family_layouts_and_real_inputs(kind):
    """A real (B, n) pred/target is the complex state with zero imaginary part (gradient:
    the real part); layout="split" reads [Re ψ, Im ψ]; both as fidelity_loss."""
    fn = FAMILY[kind]
    p, t = _states((5, 6), seed=96, scale=2.0), _states((5, 6), seed=97)
    loss_r, gp_r, gt_r = _family_grads(fn, p.real, t.real)
    loss_c, gp_c, gt_c = _family_grads(fn, p.real.to(p.dtype), t.real.to(t.dtype))
    assert gp_r.dtype == torch.float64
    torch.testing.assert_close(loss_r, loss_c, atol=1e-14, rtol=0)
    torch.testing.assert_close(gp_r, gp_c.real, atol=1e-14, rtol=0)
    torch.testing.assert_close(gt_r, gt_c.real, atol=1e-14, rtol=0)
    loss_s, yp_grad, _ = _family_grads(fn, quflow.to_real(p), quflow.to_real(t), layout="split")
    loss_c, gp_c, _ = _family_grads(fn, p, t)
    torch.testing.assert_close(loss_s, loss_c, atol=1e-14, rtol=0)
    torch.testing.assert_close(yp_grad, quflow.to_real(gp_c), atol=1e-14, rtol=0)


@pytest.mark.parametrize("kind", list(FAMILY))
def test_family_reductions_and_broadcasting(kind):
    fn = FAMILY[kind]
    p, t = _states((3, 4, 5), seed=98), _states((4, 5), seed=99)
    none = fn(p, t, reduction="none")
    assert none.shape == (3, 4)
    torch.testing.assert_close(none, _dense_family(kind, p, t.expand(3, 4, 5)), atol=1e-13, rtol=0)
    assert torch.equal(fn(p, t), none.mean()) and torch.equal(fn(p, t, reduction="sum"), none.sum())
    empty = torch.zeros(0, 5, dtype=torch.complex128)
    assert fn(empty, t[0], reduction="sum").item() == 0
    assert fn(empty, t[0], reduction="none").shape == (0,)
    with pytest.raises(ValueError, match="pred: the batch is empty"):
        fn(empty, t[0])


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
@pytest.mark.parametrize("kind", list(FAMILY))
def test_family_is_right_at_any_finite_scale(dtype, kind):
    """L(c·p, t) = L(p, t) and ∇_p L(c·p, t) = ∇_p L(p, t)/c, subnormal states included."""
    fn = FAMILY[kind]
    p, t = _states((4, 5), dtype, 100), _states((4, 5), dtype, 101)
    loss0, gp0, _ = _family_grads(fn, p, t)
    tiny = 1e-310 if dtype == torch.complex128 else 1e-40
    rtol = 1e-12 if dtype == torch.complex128 else 1e-4
    for c in SCALES[dtype]:
        loss, gp, _ = _family_grads(fn, p * c, t)
        assert loss.item() == pytest.approx(loss0.item(), rel=rtol), c
        assert _max_relative(gp * c, gp0) < 10 * rtol, c
    torch.testing.assert_close(fn(p * tiny, t * tiny), fn(p, t), rtol=ROUNDED_TOL[dtype], atol=0)


@pytest.mark.parametrize("kind", list(FAMILY))
@pytest.mark.parametrize("call,exc,msg", [
    (lambda f: f([1.0, 0.0], torch.ones(2)), TypeError, "pred: expected a torch.Tensor"),
    (lambda f: f(torch.ones(2, dtype=torch.int64), torch.ones(2)), TypeError, "pred: expected a complex"),
    (lambda f: f(torch.ones(4), torch.ones(2, 4).half()), TypeError, "target: expected a complex"),
    (lambda f: f(torch.ones(3), torch.ones(4), layout="split"), ValueError,
     r"pred: with layout='split' a real pred must have an even last dimension"),
    (lambda f: f(torch.ones(2, dtype=torch.complex128), torch.ones(4)), ValueError,
     r"target: the state has n = 4 components but pred has n = 2; a real tensor"),
    (lambda f: f(torch.tensor(1.0), torch.ones(2)), ValueError, "pred: expected shape"),
    (lambda f: f(torch.ones(3, 4), torch.ones(2, 4)), ValueError, "do not broadcast"),
    (lambda f: f(torch.tensor([1.0, float("nan")]), torch.ones(2)), ValueError, "pred: contains NaN"),
    (lambda f: f(torch.ones(2), torch.tensor([float("inf"), 0.0])), ValueError, "target: contains NaN"),
    (lambda f: f(torch.ones(2, 2), torch.zeros(2, 2)), ValueError, "target: a sample has zero norm"),
    (lambda f: f(torch.ones(2), torch.ones(2), reduction="max"), ValueError,
     r"reduction: expected one of \('mean', 'sum', 'none'\), got 'max'"),
    (lambda f: f(torch.ones(2), torch.ones(2), layout="real"), ValueError,
     r"layout: expected one of \('amplitudes', 'split'\), got 'real'"),
])
def test_family_bad_input(kind, call, exc, msg):
    with pytest.raises(exc, match=msg):
        call(FAMILY[kind])


def test_family_under_torch_func_and_compile():
    """torch.func.grad equals eager autograd; torch.compile(fullgraph=True) traces each loss
    (forward and backward) without a graph break and equals eager."""
    torch._dynamo.reset()
    p, t = _states((4, 5), seed=102), _states((5,), seed=103)
    for kind, fn in FAMILY.items():
        got = torch.func.grad(lambda a: fn(a, t))(p)
        _, want, _ = _family_grads(fn, p, t, "mean")
        torch.testing.assert_close(got, want, atol=1e-15, rtol=0)
        a = p.clone().requires_grad_()
        value = torch.compile(fn, fullgraph=True, backend="aot_eager")(a, t)
        (grad,) = torch.autograd.grad(value, a)
        torch.testing.assert_close(value, fn(p, t), atol=1e-14, rtol=0)
        torch.testing.assert_close(grad, want, atol=1e-14, rtol=0)


@pytest.mark.parametrize("kind", list(FAMILY))
def test_family_near_equal_generic_float32_states(kind):
    """Generic complex64 states with θ ≈ 1e-4: the value's relative error is about ε/θ
    (≈ 1e-3 in float; bound 1e-2) against the dense textbook formula in double on the same
    float inputs, where that formula in float is wrong by more than 10 % or NaN (1 − √F ≈
    5e-9 is below float's ε; √F rounds above 1, where arccos is NaN)."""
    t = _states((16, 6), torch.complex64, 104)
    p = t + 1e-4 * _states((16, 6), torch.complex64, 105)
    want = _dense_family(kind, p.to(torch.complex128), t.to(torch.complex128))
    got = FAMILY[kind](p, t, reduction="none").double()
    naive = _dense_family(kind, p, t).double()
    assert ((got - want).abs() / want).max() < 1e-2
    naive_error = (naive - want).abs() / want
    assert naive_error.isnan().any() or naive_error.max() > 0.1
