"""Optimal control of one state: Newton-CG with exact Hessian–vector products vs L-BFGS vs Adam.

The paper's control box (``quflow.experiments.control``: ``n = 20``, ``L = 2``, ``V = 0``,
``dt = 0.2``, dipole coupling ``u(t)·x`` with ``x = grid.x``) and one piecewise-constant
control signal ``u`` of ``T = 50`` steps steer a box eigenstate ``φ_i`` into ``φ_j``; the
objective is the infidelity, with no penalty on ``u``:

    f(u) = 1 − |⟨φ_j, ψ_T(u)⟩|²,      ψ_T(u) = quflow.crank_nicolson(φ_i, control=u, ...)

Two problems: ``φ₁ → φ₂``, a dipole-allowed transition, and ``φ₁ → φ₃``, which is
dipole-forbidden (``⟨φ₁|x − L/2|φ₃⟩ = 0`` by parity; the constant ``L/2`` only adds a
global phase), so the overlap is second order in ``u`` and ``f = 1 − O(u⁴)`` near 0.
``u = 0`` is a stationary point of both (a maximum: ``φ_i`` only picks up a phase, the
overlap is 0 and so is its gradient), so every method starts from the same small random
control ``u₀ = 0.05·N(0, 1)`` (seeds 0–4), where the gradient is small but not zero
(``‖∇f‖ = 1e-7 … 6e-7`` for ``φ₁ → φ₃``, ``6e-3 … 1e-2`` for ``φ₁ → φ₂``).

* **Newton-CG**: a trust-region Newton method whose subproblem is solved by truncated
  conjugate gradients (Steihaug), written below. Each Hessian–vector product is one double
  backward through the op, ``torch.autograd.grad(g, u, v, retain_graph=True)`` on the
  gradient ``g`` computed with ``create_graph=True`` (quflow's C++ second-order adjoint: one
  tangent sweep and one adjoint sweep of the tangent-augmented step).
* **L-BFGS**: ``torch.optim.LBFGS`` with the strong Wolfe line search, history 20, lr 1,
  its gradient and change tolerances set to 0 (with the defaults it stops after its first
  evaluation on every ``φ₁ → φ₃`` start).
* **Adam**: ``torch.optim.Adam``, learning rate per problem, the best of 0.01 … 3 by the
  median number of objective evaluations to the goal (``--sweep`` reruns that choice).

Each run stops at the first evaluated control with fidelity ≥ 0.999. The tables give, over
the seeds, how many runs reached it and the medians of those that did: iterations,
objective evaluations (forward sweeps), gradients (adjoint sweeps), Hessian–vector products
and wall time, in one thread (``torch.set_num_threads(1)``).

    python examples/optimal_control.py            # ~15 s on one core
    python examples/optimal_control.py --sweep    # also Adam's learning-rate sweep (~30 s)
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import quflow

N, LENGTH, DT = 20, 2.0, 0.2        # the paper's control box (quflow.experiments.control)
STEPS = 50                          # horizon T = 50 steps (t = 10), as in the paper
GOAL = 0.999                        # fidelity
GRID = quflow.Grid(N, LENGTH)


class Reached(Exception):
    """Raised inside an objective evaluation that reaches the goal (stops L-BFGS mid-search)."""


class Problem:
    """f(u) = 1 − |⟨φ_target, ψ_T(u)⟩|² with counters; u real (T,) float64."""

    def __init__(self, steps: int = STEPS, initial: int = 1, target: int = 2):
        modes = GRID.eigenstates(max(initial, target), dtype=torch.complex128)
        self.psi0, self.target = modes[initial - 1], modes[target - 1]
        self.steps = steps
        self.evals = self.grads = self.hvps = 0
        self.best = None  # the first control that reached the goal
        self.lowest = math.inf  # the lowest objective evaluated
        self.iterations = 0

    def fidelity(self, u: torch.Tensor) -> torch.Tensor:
        psi_t = quflow.crank_nicolson(self.psi0, dt=DT, dx=GRID.dx, control=u,
                                      control_shape=GRID.x)
        return (self.target.conj() * psi_t).sum().abs() ** 2

    def loss(self, u: torch.Tensor, stop: bool = True) -> torch.Tensor:
        """One forward sweep (recorded by autograd when u requires grad)."""
        self.evals += 1
        f = 1 - self.fidelity(u)
        self.lowest = min(self.lowest, f.item())
        if f.item() <= 1 - GOAL and self.best is None:
            self.best = u.detach().clone()
            if stop:
                raise Reached
        return f

    def initial_control(self, seed: int = 0, scale: float = 0.05) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return scale * torch.randn(self.steps, dtype=torch.float64, generator=gen)


# ------------------------------------------------------------------ the optimisers

def steihaug_cg(hvp, g: torch.Tensor, radius: float, tol: float, max_iter: int):
    """Approximately minimise m(p) = g·p + ½ p·H·p subject to ‖p‖ ≤ radius by conjugate
    gradients from p = 0, stopping at ‖r‖ ≤ tol, at negative curvature (then to the boundary
    along the current direction) or at the boundary. Returns (p, H·p); H·p is accumulated
    from the products CG already made, so the model costs no extra product."""
    p, hp = torch.zeros_like(g), torch.zeros_like(g)
    r = g.clone()                # residual of H·p + g = 0
    d = -r
    rr = r.dot(r)
    if rr.sqrt() <= tol:  # already stationary (e.g. g = 0 at u = 0): no step
        return p, hp
    for _ in range(max_iter):
        hd = hvp(d)
        curvature = d.dot(hd)
        alpha = rr / curvature if curvature > 0 else None
        if alpha is None or (p + alpha * d).norm() >= radius:
            # τ ≥ 0 with ‖p + τ·d‖ = radius: the positive root of a quadratic in τ
            a, b, c = d.dot(d), 2 * p.dot(d), p.dot(p) - radius**2
            tau = (-b + torch.sqrt(b * b - 4 * a * c)) / (2 * a)
            return p + tau * d, hp + tau * hd
        p, hp = p + alpha * d, hp + alpha * hd
        r = r + alpha * hd
        rr_new = r.dot(r)
        if rr_new.sqrt() <= tol:
            break
        d = -r + (rr_new / rr) * d
        rr = rr_new
    return p, hp


def newton_cg(problem: Problem, u0: torch.Tensor, max_iter: int = 100, radius: float = 1.0,
              max_radius: float = 100.0, eta: float = 0.1):
    """Trust-region Newton-CG. Per iteration: the gradient at the current point with its graph
    (create_graph=True), Steihaug CG on exact Hessian–vector products (double backward), one
    objective evaluation at the trial point; the radius shrinks when the model predicts the
    decrease badly (ratio < 1/4) and grows when a boundary step predicts it well (> 3/4)."""
    u = u0.clone().requires_grad_()
    f = problem.loss(u)
    g = None
    for problem.iterations in range(1, max_iter + 1):
        if g is None:  # a new point: its gradient, differentiable once more
            (g,) = torch.autograd.grad(f, u, create_graph=True)
            problem.grads += 1
        g_flat = g.detach()

        def hvp(v):
            problem.hvps += 1
            (hv,) = torch.autograd.grad(g, u, v, retain_graph=True)
            return hv

        gnorm = g_flat.norm()
        tol = min(0.5, math.sqrt(gnorm.item())) * gnorm.item()  # superlinear forcing term
        p, hp = steihaug_cg(hvp, g_flat, radius, tol, max_iter=u.numel())
        predicted = -(g_flat.dot(p) + 0.5 * p.dot(hp)).item()
        trial = (u.detach() + p).requires_grad_()
        f_trial = problem.loss(trial)  # raises Reached at the goal
        rho = (f.item() - f_trial.item()) / predicted if predicted > 0 else -1.0
        if rho < 0.25:
            radius *= 0.25
        elif rho > 0.75 and p.norm().item() >= 0.99 * radius:
            radius = min(2 * radius, max_radius)
        if rho > eta:
            u, f, g = trial, f_trial, None


def run(method: str, problem: Problem, u0: torch.Tensor, max_iter: int, lr: float = 0.1):
    """Optimise from u0 until the fidelity reaches GOAL; returns a result row."""
    start = time.perf_counter()
    try:
        if method == "Newton-CG":
            newton_cg(problem, u0, max_iter=max_iter)
        elif method == "L-BFGS":
            u = u0.clone().requires_grad_()
            opt = torch.optim.LBFGS([u], lr=1, max_iter=max_iter, max_eval=10 * max_iter,
                                    history_size=20, tolerance_grad=0.0,
                                    tolerance_change=0.0, line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                f = problem.loss(u)
                f.backward()
                problem.grads += 1
                return f
            try:
                opt.step(closure)
            finally:
                problem.iterations = opt.state[u].get("n_iter", 0)
        elif method == "Adam":
            u = u0.clone().requires_grad_()
            opt = torch.optim.Adam([u], lr=lr)
            for problem.iterations in range(1, max_iter + 1):
                opt.zero_grad()
                f = problem.loss(u)
                f.backward()
                problem.grads += 1
                opt.step()
        else:
            raise ValueError(f"unknown method {method!r}")
    except Reached:
        pass
    seconds = time.perf_counter() - start
    fidelity = None
    if problem.best is not None:
        with torch.no_grad():
            fidelity = problem.fidelity(problem.best).item()
    return dict(method=method, reached=problem.best is not None, fidelity=fidelity,
                lowest=problem.lowest, iterations=problem.iterations, evals=problem.evals,
                grads=problem.grads, hvps=problem.hvps, seconds=seconds, u=problem.best)


# iteration caps: Adam's is far larger because its steps are cheap (one forward + backward)
CAPS = {"Newton-CG": 50, "L-BFGS": 200, "Adam": 3000}
# (initial, target) → Adam's learning rate: the best of LEARNING_RATES by the median number of
# objective evaluations to the goal over SEEDS (``--sweep`` reruns that choice)
PROBLEMS = {(1, 2): 0.3, (1, 3): 1.0}
LEARNING_RATES = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
SEEDS = 5


def solve(method: str, initial: int, target: int, seed: int, steps: int = STEPS,
          lr: float | None = None) -> dict:
    """One run of one method from the seeded initial control."""
    problem = Problem(steps, initial, target)
    lr = PROBLEMS.get((initial, target), 0.1) if lr is None else lr
    return run(method, problem, problem.initial_control(seed), CAPS[method], lr=lr)


def compare(initial: int, target: int, seeds=range(SEEDS), steps: int = STEPS) -> dict:
    """method → the runs over the seeds (the methods take turns seed by seed, so that a
    change in the machine's load hits them alike)."""
    runs = {m: [] for m in CAPS}
    for s in seeds:
        for m in CAPS:
            runs[m].append(solve(m, initial, target, s, steps))
    return runs


def table(runs: dict) -> str:
    """Medians over the seeds of the runs that reached the goal."""
    lines = ["| method | reached | iterations | f evals | gradients | Hv products | wall ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for method, rs in runs.items():
        ok = [r for r in rs if r["reached"]]
        cells = [f"{statistics.median(r[k] for r in ok):g}" if ok else "—"
                 for k in ("iterations", "evals", "grads", "hvps")]
        ms = f"{1e3 * statistics.median(r['seconds'] for r in ok):.0f}" if ok else "—"
        missed = [f"F = {1 - r['lowest']:.3f}" for r in rs if not r["reached"]]
        note = f" (missed: best {', '.join(missed)})" if missed else ""
        lines.append(f"| {method} | {len(ok)}/{len(rs)}{note} | {' | '.join(cells)} | {ms} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=SEEDS, help="initial controls per problem")
    ap.add_argument("--sweep", action="store_true", help="also sweep Adam's learning rate")
    args = ap.parse_args()
    torch.set_num_threads(1)
    solve("Newton-CG", 1, 2, seed=0)  # warm-up: the first calls of the op and of autograd
    for (initial, target), lr in PROBLEMS.items():
        print(f"\nφ{initial} → φ{target}: n = {N}, L = {LENGTH}, dt = {DT}, T = {STEPS} steps, "
              f"u₀ = 0.05·N(0, 1), seeds 0–{args.seeds - 1}, goal F ≥ {GOAL}, Adam lr {lr}, "
              f"one thread; medians over the runs that reached the goal")
        print(table(compare(initial, target, range(args.seeds))))
        if args.sweep:
            for rate in LEARNING_RATES:
                rs = [solve("Adam", initial, target, s, lr=rate) for s in range(args.seeds)]
                ok = [r["evals"] for r in rs if r["reached"]]
                med = statistics.median(ok) if ok else "—"
                print(f"  Adam lr {rate}: {len(ok)}/{len(rs)} reached, median evaluations {med}")


if __name__ == "__main__":
    main()
