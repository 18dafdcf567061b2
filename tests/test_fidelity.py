"""quflow.fidelity_loss / FidelityLoss / to_complex / to_real.

Oracles: gradcheck of the "standard" mode (an exact gradient of the value); plain-autograd
references for each mode's formula (tests/README.md, "Fidelity loss"); phase invariance.
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


def test_real_layout_inputs_equal_complex_inputs():
    p, t = _states((4, 3), seed=5), _states((4, 3), seed=6)
    for mode in ("standard", "modified", "l2"):
        yp = quflow.to_real(p).requires_grad_()
        loss_real = quflow.fidelity_loss(yp, quflow.to_real(t), gradient=mode)
        loss_real.backward()
        loss_c, gp, _ = _grads(p, t, mode)
        torch.testing.assert_close(loss_real.detach(), loss_c, atol=1e-14, rtol=0)
        torch.testing.assert_close(yp.grad, quflow.to_real(gp), atol=1e-14, rtol=0)
    # mixed: real pred, complex target
    torch.testing.assert_close(quflow.fidelity_loss(quflow.to_real(p), t),
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
    assert "gradient='l2'" in repr(crit)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("call,exc,msg", [
    (lambda: quflow.fidelity_loss([1.0, 0.0], torch.ones(2)), TypeError, "pred: expected a torch.Tensor"),
    (lambda: quflow.fidelity_loss(torch.ones(2, dtype=torch.int64), torch.ones(2)), TypeError, "pred: expected a complex"),
    (lambda: quflow.fidelity_loss(torch.ones(3), torch.ones(4)), ValueError, "pred: a real pred must have an even"),
    (lambda: quflow.fidelity_loss(torch.ones(4), torch.ones(3, dtype=torch.complex128)), ValueError, "n = 2 and n = 3"),
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
    with pytest.raises(ValueError, match=msg):  # the real layout too
        quflow.fidelity_loss(quflow.to_real(p.detach()), quflow.to_real(t))


# ---------------------------------------------------------------- torch.compile (issue 13)

COMPILE_TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def _compile_case(dtype, gradient, reduction):
    """A small network feeding fidelity_loss; returns (loss function, inputs, params)."""
    gen = torch.Generator().manual_seed(50)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
    with torch.no_grad():
        for w in model.parameters():
            w.copy_(torch.randn(w.shape, generator=gen) * 0.5)
    model = model.to(dtype)
    x = torch.randn(6, 8, generator=gen).to(dtype)
    y = torch.randn(6, 8, generator=gen).to(dtype)  # real layout, 4 complex components

    def loss(x, y):
        out = quflow.fidelity_loss(model(x), y, gradient=gradient, reduction=reduction)
        return out if out.ndim == 0 else (out * torch.arange(1, 7, dtype=dtype)).sum()
    return loss, (x, y), list(model.parameters())


def _value_and_grads(fn, inputs, params):
    value = fn(*inputs)
    return value.detach(), torch.autograd.grad(value, params)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("gradient", ["standard", "modified", "l2"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_compiled_fullgraph_forward_and_backward_equal_eager(dtype, gradient, reduction):
    """torch.compile(fullgraph=True) traces fidelity_loss without a graph break (a break
    would raise) and AOTAutograd traces its custom backward; values and parameter gradients
    equal eager mode to COMPILE_TOL (eager uses the direct formula, compiled the scaled one)."""
    torch._dynamo.reset()
    loss, inputs, params = _compile_case(dtype, gradient, reduction)
    eager = _value_and_grads(loss, inputs, params)
    compiled = _value_and_grads(torch.compile(loss, fullgraph=True, backend="aot_eager"),
                                inputs, params)
    torch.testing.assert_close(compiled, eager, atol=COMPILE_TOL[dtype], rtol=COMPILE_TOL[dtype])


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
