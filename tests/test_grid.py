"""quflow.Grid and quflow.random_states."""

from __future__ import annotations

import math

import pytest
import torch

import quflow


def test_grid_points_and_spacing():
    g = quflow.Grid(n=20, length=2.0)
    assert g.dx == pytest.approx(2.0 / 21)
    assert g.x.dtype == torch.float64 and g.x.shape == (20,)
    assert g.x[0].item() == pytest.approx(g.dx) and g.x[-1].item() == pytest.approx(2.0 - g.dx)


def test_eigenstates_are_orthonormal_eigenvectors_of_the_discrete_laplacian():
    g = quflow.Grid(17, 3.0)
    phi = g.eigenstates(dtype=torch.float64)  # (17, 17)
    torch.testing.assert_close(phi @ phi.T, torch.eye(17, dtype=torch.float64), atol=1e-13, rtol=0)
    e = 1 / g.dx**2
    lap = 2 * e * torch.eye(17, dtype=torch.float64) - e * torch.diag(torch.ones(16, dtype=torch.float64), 1) \
        - e * torch.diag(torch.ones(16, dtype=torch.float64), -1)
    torch.testing.assert_close(phi @ lap, g.eigenvalues()[:, None] * phi, atol=1e-10, rtol=0)
    # continuum limit of the lowest levels: E_m ≈ (mπ/L)²
    fine = quflow.Grid(2000, 1.0)
    assert fine.eigenvalues(1).item() == pytest.approx(math.pi**2, rel=1e-6)
    assert g.eigenstates(3).shape == (3, 17) and g.eigenstates(3).dtype == torch.complex128


def test_random_states_are_normalised_reproducible_and_band_limited():
    g = quflow.Grid(20, 2.0)
    a = quflow.random_states(g, 50, seed=1)
    assert a.shape == (50, 20) and a.dtype == torch.complex128
    torch.testing.assert_close(torch.linalg.vector_norm(a, dim=-1), torch.ones(50, dtype=torch.float64))
    assert torch.equal(a, quflow.random_states(g, 50, seed=1))
    assert not torch.equal(a, quflow.random_states(g, 50, seed=2))
    low = quflow.random_states(g, 50, seed=1, modes=3, dtype=torch.complex64)
    assert low.dtype == torch.complex64
    coeff = low.to(torch.complex128) @ g.eigenstates().T  # components on φ_1..φ_n
    assert coeff[:, 3:].abs().max() < 1e-6 and coeff[:, :3].abs().min() > 0


@pytest.mark.parametrize("call,exc,msg", [
    (lambda: quflow.Grid(0), ValueError, "n: expected an int >= 1"),
    (lambda: quflow.Grid(5.5), TypeError, "n: expected an int"),
    (lambda: quflow.Grid(5, -1.0), ValueError, "length: expected a finite number > 0"),
    (lambda: quflow.Grid(5).eigenstates(6), ValueError, "count: the grid has 5 eigenstates"),
    (lambda: quflow.random_states("grid", 3), TypeError, "grid: expected a quflow.Grid"),
    (lambda: quflow.random_states(quflow.Grid(5), 0), ValueError, "batch: expected an int >= 1"),
    (lambda: quflow.random_states(quflow.Grid(5), 2, dtype=torch.float64), TypeError, "dtype"),
    (lambda: quflow.random_states(quflow.Grid(5), 2, modes=9), ValueError, "modes: the grid has 5"),
])
def test_bad_arguments(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_spacings_whose_inverse_square_overflows_are_refused():
    with pytest.raises(ValueError, match="length: .*dx"):
        quflow.Grid(4, 1e-300)
    g = quflow.Grid(4, 1e-150)  # 1/dx² still finite: the eigenvalues are right
    assert torch.isfinite(g.eigenvalues()).all()
    torch.testing.assert_close(g.eigenvalues()[0] * g.dx**2,
                               torch.tensor(4 * math.sin(math.pi / 10) ** 2, dtype=torch.float64))


def test_random_states_over_chosen_modes_real_or_complex():
    grid = quflow.Grid(20, 2.0)
    phi = grid.eigenstates(4)
    psi = quflow.random_states(grid, 50, seed=3, modes=(2, 4), real=True)
    assert psi.imag.abs().max() == 0
    in_span = (psi @ phi[[1, 3]].conj().T).abs().square().sum(-1)
    assert torch.allclose(in_span, torch.ones(50, dtype=torch.float64), atol=1e-13)
    assert (psi @ phi[[0, 2]].conj().T).abs().max() < 1e-14
    # a list of the lowest N modes draws exactly what modes=N draws
    assert torch.equal(quflow.random_states(grid, 5, seed=1, modes=[1, 2, 3]),
                       quflow.random_states(grid, 5, seed=1, modes=3))
    assert quflow.random_states(grid, 5, seed=1, modes=(1, 2)).imag.abs().max() > 0


@pytest.mark.parametrize("kwargs,exc,msg", [
    (dict(modes=(2, 21)), ValueError, "modes: the grid has 20 eigenstates, asked for 21"),
    (dict(modes=(0, 2)), ValueError, "modes"),
    (dict(modes=(2, 2)), ValueError, "modes: expected distinct eigenstate numbers"),
    (dict(modes=()), ValueError, "modes: expected distinct eigenstate numbers"),
    (dict(real=1), TypeError, "real: expected a bool"),
])
def test_random_states_bad_modes(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        quflow.random_states(quflow.Grid(20, 2.0), 2, seed=0, **kwargs)
