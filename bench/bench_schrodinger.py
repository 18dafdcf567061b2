"""Side-by-side: quflow.crank_nicolson vs what a user would otherwise write in plain torch.

    OMP_NUM_THREADS=1 python bench/bench_schrodinger.py [--quick] [--json FILE]

One process, one run, threads pinned to 1 (torch.set_num_threads(1)); medians of
repeated runs; double precision; the same Crank–Nicolson discretisation everywhere
(n interior points, L = 2, dt = 0.2, V = 0, control u·x). Peers:

  (a) dense solve   build I ± i·dt/2·H_k densely, one torch.linalg.solve per step
                    (one LU for the whole batch when H is shared, batched LUs with a
                    per-sample control), differentiated by autograd
  (b) propagator    constant H only: U = (I + i·dt/2·H)⁻¹(I − i·dt/2·H) built once by
                    torch.linalg.solve, then ψ ← ψ Uᵀ per step, autograd
  (c) torch Thomas  the tridiagonal (Thomas) algorithm written in torch, vectorised over
                    the batch with a Python loop over the grid, autograd

Where a peer needs more than ~20 s, it is timed at k and 2k steps and extrapolated
linearly to the full count (marked '*'): set-up is counted once, every step does the
same work.
Forward+backward is forward plus the vector-Jacobian product with a fixed random cotangent
w (torch.autograd.grad(out, (ψ0[, u]), grad_outputs=w): the gradient of L = Re Σ conj(w)·ψ),
so no loss computation is timed.
Memory: bytes saved for backward (unique storages seen by saved_tensors_hooks), not counting
the inputs ψ0 and u themselves.

Threads (the one part that is not pinned to 1): quflow forward+backward at 1 and at 2
threads (torch.set_num_threads, which quflow follows), in a training-loop shape: each
iteration runs a torch op first (a 384×384 matmul, parallel in torch's OpenMP pool, whose
workers are still spinning when quflow starts), then quflow's forward+backward; also with
nothing between the calls. Reported: the median time of quflow's part of an iteration and
the speed-up 1 thread / 2 threads, the two thread counts alternating in one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import quflow

DT, LENGTH = 0.2, 2.0


# --------------------------------------------------------------------------- peers

def _hamiltonian_parts(n):
    grid = quflow.Grid(n, LENGTH)
    e = 1.0 / grid.dx**2
    off = torch.ones(n - 1, dtype=torch.float64)
    lap = torch.diag(torch.full((n,), 2 * e, dtype=torch.float64)) - e * torch.diag(off, 1) \
        - e * torch.diag(off, -1)
    return grid, lap


def dense_solve(psi0, n, steps, control=None, trajectory=False):
    """(a): one dense solve per step."""
    grid, lap = _hamiltonian_parts(n)
    eye = torch.eye(n, dtype=torch.complex128)
    psi, states = psi0, [psi0]
    if control is None:
        a, b = eye + 0.5j * DT * lap, eye - 0.5j * DT * lap
        for _ in range(steps):
            psi = torch.linalg.solve(a, b @ psi.T).T
            states.append(psi)
    else:
        for k in range(steps):
            h = lap + torch.diag_embed(control[:, k, None] * grid.x)
            psi = torch.linalg.solve(eye + 0.5j * DT * h, ((eye - 0.5j * DT * h) @ psi[..., None]))[..., 0]
            states.append(psi)
    return torch.stack(states, 1) if trajectory else psi


def propagator(psi0, n, steps, trajectory=False):
    """(b): dense CN propagator built once, applied by matmul."""
    _, lap = _hamiltonian_parts(n)
    eye = torch.eye(n, dtype=torch.complex128)
    u_t = torch.linalg.solve(eye + 0.5j * DT * lap, eye - 0.5j * DT * lap).T
    psi, states = psi0, [psi0]
    for _ in range(steps):
        psi = psi @ u_t
        states.append(psi)
    return torch.stack(states, 1) if trajectory else psi


def torch_thomas(psi0, n, steps):
    """(c): Thomas algorithm in torch, batch-vectorised, Python loop over the grid."""
    grid = quflow.Grid(n, LENGTH)
    he = 0.5 * DT / grid.dx**2
    d = torch.full((n,), 2 / grid.dx**2, dtype=torch.float64)
    a = 1 + 0.5j * DT * d  # diagonal of I + i·dt/2·H; off-diagonal c = −i·he
    c = -1j * he
    w = [a[0]]
    for j in range(1, n):
        w.append(a[j] - c * c / w[j - 1])
    psi = psi0
    for _ in range(steps):
        cols = psi.unbind(1)
        rhs = [(1 - 0.5j * DT * d[j]) * cols[j]
               + 1j * he * ((cols[j - 1] if j else 0) + (cols[j + 1] if j + 1 < n else 0))
               for j in range(n)]
        y = [rhs[0] / w[0]]
        for j in range(1, n):
            y.append((rhs[j] - c * y[j - 1]) / w[j])
        x = [None] * n
        x[-1] = y[-1]
        for j in range(n - 2, -1, -1):
            x[j] = y[j] - c / w[j] * x[j + 1]
        psi = torch.stack(x, 1)
    return psi


def quflow_op(psi0, n, steps, control=None, trajectory=False, adjoint="reverse"):
    grid = quflow.Grid(n, LENGTH)
    if control is None:
        return quflow.crank_nicolson(psi0, dt=DT, dx=grid.dx, steps=steps, trajectory=trajectory,
                                     adjoint=adjoint)
    return quflow.crank_nicolson(psi0, dt=DT, dx=grid.dx, control=control, control_shape=grid.x,
                                 trajectory=trajectory, adjoint=adjoint)


# --------------------------------------------------------------------------- measurement

def median_time(fn, budget=2.0, min_runs=3, max_runs=30):
    t0 = time.perf_counter()
    fn()  # warm-up
    if time.perf_counter() - t0 > budget:
        min_runs = 1  # a slow peer: one more run is enough at this scale
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or (len(times) < max_runs and time.perf_counter() - start < budget):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def saved_bytes(fn, inputs=()):
    """Bytes of the distinct storages autograd saves for backward while fn() runs, not
    counting the storages of `inputs` (they exist whether or not anything is saved)."""
    seen = {}
    exclude = {t.untyped_storage().data_ptr() for t in inputs}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr not in exclude:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def run_case(label, n, batch, steps, peers, control=False, trajectory=False, grad=True,
             peer_steps=None):
    """Times forward (and forward+backward) of quflow and each peer; returns table rows."""
    psi0 = quflow.random_states(quflow.Grid(n, LENGTH), batch, seed=0)
    u = 0.5 * torch.randn(batch, steps, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) \
        if control else None
    # backward = the vector-Jacobian product with a fixed random cotangent w (the gradient
    # of L = Re Σ conj(w)·ψ), so that the op's own forward and backward are what is timed
    w = quflow.random_states(quflow.Grid(n, LENGTH), batch * (steps + 1 if trajectory else 1),
                             seed=2).reshape(batch, -1, n)
    w = w if trajectory else w[:, 0]

    def make(impl, k):
        def fwd():
            with torch.no_grad():
                return impl(psi0, k)

        def fwd_bwd():
            p = psi0.clone().requires_grad_()
            uu = None if u is None else u[:, :k].clone().requires_grad_()
            out = impl(p, k, uu)
            inputs = [p] if uu is None else [p, uu]
            return torch.autograd.grad(out, inputs, grad_outputs=w[:, :k + 1] if trajectory else w)
        return fwd, fwd_bwd

    def ctl(uu, k):  # the control peers need u even without grad
        return uu if uu is not None or u is None else u[:, :k]

    impls = {
        "quflow": lambda p, k, uu=None: quflow_op(p, n, k, control=ctl(uu, k), trajectory=trajectory),
        "(a) dense solve": lambda p, k, uu=None: dense_solve(p, n, k, control=ctl(uu, k),
                                                             trajectory=trajectory),
        "(b) propagator": lambda p, k, uu=None: propagator(p, n, k, trajectory=trajectory),
        "(c) torch Thomas": lambda p, k, uu=None: torch_thomas(p, n, k),
    }
    rows = []
    results = {}
    for name in ["quflow", *peers]:
        k = steps if name == "quflow" or peer_steps is None else min(steps, peer_steps.get(name, steps))
        if k == steps:
            fwd, fwd_bwd = make(impls[name], k)
            t_f = median_time(fwd)
            t_fb = median_time(fwd_bwd) if grad else None
        else:  # t(steps) = t(k) + (t(2k) − t(k))·(steps − k)/k: set-up counted once
            def extrapolate(t1, t2):
                return t1 + max(t2 - t1, 0.0) * (steps - k) / k
            (f1, fb1), (f2, fb2) = make(impls[name], k), make(impls[name], 2 * k)
            t_f = extrapolate(median_time(f1), median_time(f2))
            t_fb = extrapolate(median_time(fb1), median_time(fb2)) if grad else None
        results[name] = (t_f, t_fb, k != steps)
    base_f, base_fb, _ = results["quflow"]
    for name, (t_f, t_fb, scaled) in results.items():
        star = "*" if scaled else ""
        rows.append(dict(case=label, impl=name, forward_ms=t_f * 1e3,
                         fwd_bwd_ms=None if t_fb is None else t_fb * 1e3,
                         forward_ratio=t_f / base_f,
                         fwd_bwd_ratio=None if t_fb is None else t_fb / base_fb, scaled=star))
    return rows


def memory_rows(n=20, batch=200):
    """Saved-for-backward bytes; (a) is measured at ≤ 300 steps and grows linearly (at 3000
    steps it would hold ~10 GB, more than the benchmark machine should be asked for)."""
    rows = []
    psi0 = quflow.random_states(quflow.Grid(n, LENGTH), batch, seed=0)
    dense_per_step = None
    for steps in (100, 300, 1000, 3000):
        u = torch.zeros(batch, steps, dtype=torch.float64, requires_grad=True)
        p = psi0.clone().requires_grad_()
        row = dict(steps=steps)
        row["quflow reverse"] = saved_bytes(lambda: quflow_op(p, n, steps, control=u), (p, u))
        row["quflow store"] = saved_bytes(lambda: quflow_op(p, n, steps, control=u, adjoint="store"),
                                          (p, u))
        if steps <= 300:
            row["(a) dense solve"] = saved_bytes(lambda: dense_solve(p, n, steps, control=u), (p, u))
            dense_per_step = row["(a) dense solve"] / steps
            row["(a) scaled"] = ""
        else:
            row["(a) dense solve"] = dense_per_step * steps
            row["(a) scaled"] = "*"
        rows.append(row)
    return rows


def thread_rows(quick=False):
    """quflow forward+backward at 1 vs 2 threads, with and without a torch op in between."""
    cases = [("n=256, batch 2000, 20 steps, constant H", 256, 2000, 20, False),
             ("n=256, batch 2000, 20 steps, per-sample control", 256, 2000, 20, True),
             ("n=256, batch 200, 100 steps, constant H", 256, 200, 100, False)]
    if quick:
        cases = cases[:1]
    a = torch.randn(384, 384, dtype=torch.float64)
    rows = []
    for label, n, batch, steps, control in cases:
        grid = quflow.Grid(n, LENGTH)
        psi0 = quflow.random_states(grid, batch, seed=0)
        u = 0.5 * torch.randn(batch, steps, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(1)) if control else None
        w = quflow.random_states(grid, batch, seed=2)

        def step(between):
            if between:
                torch.mm(a, a)  # the training loop's own torch work, not timed
            t0 = time.perf_counter()
            p = psi0.clone().requires_grad_()
            uu = None if u is None else u.clone().requires_grad_()
            out = quflow_op(p, n, steps, control=uu)
            torch.autograd.grad(out, [p] if uu is None else [p, uu], grad_outputs=w)
            return time.perf_counter() - t0

        for between in (True, False):
            times = {1: [], 2: []}
            for threads in (1, 2):  # warm-up (starts torch's and quflow's workers)
                torch.set_num_threads(threads)
                step(between)
            for _ in range(5 if quick else 15):
                for threads in (1, 2):
                    torch.set_num_threads(threads)
                    for _ in range(3):
                        times[threads].append(step(between))
            t1, t2 = statistics.median(times[1]), statistics.median(times[2])
            rows.append(dict(case=label, between="matmul" if between else "nothing",
                             t1_ms=t1 * 1e3, t2_ms=t2 * 1e3, speedup=t1 / t2))
    torch.set_num_threads(1)
    return rows


def fmt_ms(x):
    return "—" if x is None else (f"{x:.3g}" if x < 100 else f"{x:.0f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="paper sizes only (skips n = 256, 2048)")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"quflow {quflow.__version__}, torch {torch.__version__}, kernels: "
          f"{quflow._core.kernel_isa()}, threads: {torch.get_num_threads()}\n")

    rows = []
    rows += run_case("n=20, batch 200, 100 steps, constant H", 20, 200, 100,
                     ["(a) dense solve", "(b) propagator"])
    rows += run_case("n=20, batch 200, 100 steps, constant H, trajectory", 20, 200, 100,
                     ["(b) propagator"], trajectory=True)
    rows += run_case("n=20, batch 200, 50 steps, per-sample control u[b,k]·x", 20, 200, 50,
                     ["(a) dense solve"], control=True)
    if not args.quick:
        rows += run_case("n=256, batch 200, 100 steps, constant H", 256, 200, 100,
                         ["(a) dense solve", "(b) propagator", "(c) torch Thomas"],
                         peer_steps={"(c) torch Thomas": 10})
        rows += run_case("n=2048, batch 200, 100 steps, constant H", 2048, 200, 100,
                         ["(a) dense solve", "(b) propagator", "(c) torch Thomas"],
                         peer_steps={"(a) dense solve": 2, "(b) propagator": 5,
                                     "(c) torch Thomas": 2})

    print("| case | implementation | forward ms | × quflow | fwd+bwd ms | × quflow |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        fb_ratio = "—" if r["fwd_bwd_ratio"] is None else f"{r['fwd_bwd_ratio']:.1f}×"
        print(f"| {r['case']} | {r['impl']}{r['scaled']} | {fmt_ms(r['forward_ms'])} | "
              f"{r['forward_ratio']:.1f}× | {fmt_ms(r['fwd_bwd_ms'])} | {fb_ratio} |")

    mem = memory_rows()
    print("\nBackprop memory (bytes saved for backward beyond the inputs ψ0 and u), n=20, "
          "batch 200, per-sample control:")
    print("| steps | quflow reverse | quflow store | (a) dense solve |")
    print("|---:|---:|---:|---:|")
    for m in mem:
        print(f"| {m['steps']} | {m['quflow reverse'] / 1e6:.2f} MB | {m['quflow store'] / 1e6:.2f} MB | "
              f"{m['(a) dense solve'] / 1e6:.0f} MB{m['(a) scaled']} |")
    threads = thread_rows(args.quick)
    print("\nThreads: quflow forward+backward inside a loop, 1 vs 2 threads (median of "
          "quflow's part of an iteration):")
    print("| case | between calls | 1 thread ms | 2 threads ms | speed-up |")
    print("|---|---|---:|---:|---:|")
    for t in threads:
        print(f"| {t['case']} | {t['between']} | {fmt_ms(t['t1_ms'])} | {fmt_ms(t['t2_ms'])} | "
              f"{t['speedup']:.2f}× |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(rows=rows, memory=mem, threads=threads), f, indent=1)


if __name__ == "__main__":
    main()
