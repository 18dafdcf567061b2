"""The 1-D Dirichlet box: grid points, box eigenstates and random initial states."""

from __future__ import annotations

from collections.abc import Sequence

import math
import numbers

import torch

from . import _checks

__all__ = ["Grid", "random_states"]


class Grid:
    """Uniform grid of ``n`` interior points on ``(0, length)`` with ``ψ(0) = ψ(length) = 0``.

    Points are ``x_j = j·dx`` for ``j = 1..n`` with ``dx = length / (n + 1)``; the walls
    themselves are not stored.

    The discrete operator ``−∂x² ≈ −(1/dx²)·tridiag(1, −2, 1)`` has the box eigenstates
    ``φ_m(x_j) = √(2/(n+1))·sin(m·π·j/(n+1))``, ``m = 1..n``, with eigenvalues
    ``E_m = (4/dx²)·sin²(m·π/(2(n+1)))``. They are orthonormal in the plain ℓ² inner
    product ``⟨a, b⟩ = Σ_j conj(a_j)·b_j`` that quflow uses everywhere.

    Args:
        n: number of interior points, ``n >= 1``.
        length: box length ``L > 0``, with ``dx = L/(n+1) >= 1.5e-154`` (so that the
            eigenvalues ``~ 1/dx²`` are finite in float64).

    Example:
        >>> grid = Grid(n=20, length=2.0)
        >>> round(grid.dx, 6), tuple(grid.x.shape)
        (0.095238, (20,))
    """

    def __init__(self, n: int, length: float = 1.0) -> None:
        self.n = _checks.count("n", n, minimum=1)
        self.length = _checks.positive_float("length", length)
        self.dx = self.length / (self.n + 1)
        if not math.isfinite(4.0 / self.dx / self.dx):
            raise ValueError(f"length: the spacing dx = length/(n+1) = {self.dx:.3g} is so "
                             f"small that 4/dx² overflows float64 (dx must be >= 1.5e-154)")

    @property
    def x(self) -> torch.Tensor:
        """Interior points ``x_j = j·dx``, float64 of shape ``(n,)``."""
        return torch.arange(1, self.n + 1, dtype=torch.float64) * self.dx

    def eigenvalues(self, count: int | None = None) -> torch.Tensor:
        """Eigenvalues ``E_1 < … < E_count`` of the discrete ``−∂x²``, float64 ``(count,)``."""
        m = torch.arange(1, self._count(count) + 1, dtype=torch.float64)
        return (4.0 / self.dx / self.dx) * torch.sin(m * math.pi / (2 * (self.n + 1))) ** 2

    def eigenstates(self, count: int | None = None,
                    dtype: torch.dtype = torch.complex128) -> torch.Tensor:
        """The lowest ``count`` box eigenstates (default: all ``n``), unit ℓ² norm.

        Returns:
            Tensor of shape ``(count, n)``; row ``m-1`` is ``φ_m``. Real-valued, returned
            in ``dtype`` (complex128 by default; any floating or complex dtype).
        """
        m = torch.arange(1, self._count(count) + 1, dtype=torch.float64)[:, None]
        j = torch.arange(1, self.n + 1, dtype=torch.float64)[None, :]
        modes = math.sqrt(2.0 / (self.n + 1)) * torch.sin(m * j * math.pi / (self.n + 1))
        return modes.to(dtype)

    def _count(self, count: int | None, name: str = "count") -> int:
        if count is None:
            return self.n
        c = _checks.count(name, count, minimum=1)
        if c > self.n:
            raise ValueError(f"{name}: the grid has {self.n} eigenstates, asked for {c}")
        return c

    def __repr__(self) -> str:
        return f"Grid(n={self.n}, length={self.length})"


def random_states(grid: Grid, batch: int, *, seed: int | None = None,
                  modes: int | Sequence[int] | None = None, real: bool = False,
                  dtype: torch.dtype = torch.complex128,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Random normalised states ``ψ = Σ_m c_m φ_m`` over box eigenstates.

    The coefficients ``c_m`` are i.i.d. standard complex Gaussians (real Gaussians with
    ``real=True``), and ``ψ`` is normalised to ``‖ψ‖ = 1``; over all ``n`` modes (the
    default) complex coefficients give the uniform (Haar) distribution on the unit sphere of
    ``C^n``. Seeded runs are reproducible.

    Args:
        grid: the :class:`Grid`.
        batch: number of states, ``>= 1``.
        seed: seed of a private generator (ignored if ``generator`` is given).
        modes: an int ``N``: the lowest ``N`` eigenstates (``1..n``; default ``n``); or a
            sequence of distinct 1-based eigenstate numbers, e.g. ``(2, 3)``.
        real: real coefficients (states with a real wavefunction).
        dtype: ``torch.complex128`` (default) or ``torch.complex64``.
        generator: an explicit ``torch.Generator`` to draw from.

    Returns:
        Tensor of shape ``(batch, n)`` and dtype ``dtype``, unit ℓ² norm per row.

    Example:
        >>> psi = random_states(Grid(20, 2.0), batch=3, seed=0)
        >>> psi.shape, torch.allclose(psi.abs().pow(2).sum(-1), torch.ones(3, dtype=torch.float64))
        (torch.Size([3, 20]), True)
        >>> random_states(Grid(20, 2.0), batch=2, seed=0, modes=(2, 3), real=True).imag.abs().max()
        tensor(0., dtype=torch.float64)
    """
    if not isinstance(grid, Grid):
        raise TypeError(f"grid: expected a quflow.Grid, got {type(grid).__name__}")
    batch = _checks.count("batch", batch, minimum=1)
    if dtype not in (torch.complex64, torch.complex128):
        raise TypeError(f"dtype: expected torch.complex64 or torch.complex128, got {dtype}")
    if not isinstance(real, bool):
        raise TypeError(f"real: expected a bool, got {type(real).__name__}")
    if modes is None or isinstance(modes, numbers.Integral):
        basis = grid.eigenstates(grid._count(modes, "modes"), dtype=torch.complex128)
    else:
        chosen = [grid._count(m, "modes") for m in modes]
        if not chosen or len(set(chosen)) != len(chosen):
            raise ValueError(f"modes: expected distinct eigenstate numbers, got {list(modes)}")
        basis = grid.eigenstates(max(chosen), dtype=torch.complex128)[[m - 1 for m in chosen]]
    if generator is None:
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(_checks.count("seed", seed))
    if real:
        coeff = torch.randn(batch, basis.shape[0], dtype=torch.float64, generator=generator)
        coeff = coeff.to(torch.complex128)
    else:
        coeff = torch.view_as_complex(
            torch.randn(batch, basis.shape[0], 2, dtype=torch.float64, generator=generator))
    psi = coeff @ basis  # (batch, modes) @ (modes, n)
    psi = psi / torch.linalg.vector_norm(psi, dim=-1, keepdim=True)
    return psi.to(dtype)
