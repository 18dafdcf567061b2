"""Side-by-side: the derivatives of quflow.crank_nicolson (forward mode, second order, compile).

    OMP_NUM_THREADS=1 python bench/bench_derivatives.py [--quick] [--json FILE]

One process, one run, one thread (torch.set_num_threads(1)), double precision, the paper's
box (n = 20, L = 2, dt = 0.2, V = 0 unless differentiated), batch 200, 100 steps. The
scalar is a plain-torch fidelity sum f(θ) = Σ_b |⟨w_b, ψ_T,b(θ)⟩|² with fixed random unit
states w_b, so that it has a non-zero Hessian. Two cases:

  constant H        θ = (ψ0 (200, 20) complex, V (20,) shared potential)
  per-sample control θ = (ψ0, u (200, 100) per-sample control, dipole coupling u·x)

Timed, interleaved round-robin so that the machine's drift hits every row alike, medians
of the repeats:

  forward           f(θ) under no_grad
  fwd+bwd (VJP)     torch.autograd.grad(f(θ), θ)
  JVP, torch.func   torch.func.jvp(f, θ, δθ)   (the primal forward, then the fused kernel)
  JVP, forward_ad   the same through torch.autograd.forward_ad dual tensors
  cn_jvp kernel     torch.ops.quflow.cn_jvp alone (ψ_T and J·δθ in one sweep)
  cn_forward kernel torch.ops.quflow.cn_forward alone
  HVP, double bwd   g = grad(f, θ, create_graph=True); grad(g, θ, v)
  HVP, fwd-over-rev torch.func.jvp(torch.func.grad(f), θ, v)
  HVP, graph kept   grad(g, θ, v, retain_graph=True) on a g computed once with its graph
                    (what each further product costs inside Newton-CG's inner loop)

JVP rows are relative to the forward (issue 13's target: a JVP costs ≤ 2× a forward), HVP
rows relative to forward+backward.

Memory of one HVP (double backward; per-sample control, batch 200) against steps: bytes
saved for backward (unique storages seen by saved_tensors_hooks, beyond the inputs), and
the peak resident memory added by the HVP in a fresh subprocess (VmHWM reset through
/proc/self/clear_refs after the inputs exist; it includes the C++ kernels' own buffers
and the outputs: the gradient and Hv of u are (200, steps) each). The plain-torch peer is
the dense CN (one torch.linalg.solve per step, batched LUs for the per-sample control),
differentiated twice by autograd; measured at 30 and 100 steps ('*': on the line through
those two points).

torch.compile: one training step of Linear(40 → 100) → per-sample control → crank_nicolson
→ 1 − |⟨t, ψ_T⟩|² mean → backward → Adam, batch 200, eager vs torch.compile(fullgraph=True)
of the loss (backward called outside the compiled function); also quflow.fidelity_loss in
place of the plain expression, if it compiles without a graph break. The first compiled call
(tracing, compiling forward and backward) is timed cold: inductor's caches go to a fresh
temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from bench_schrodinger import saved_bytes  # bytes autograd saves for backward
from torch import nn

import quflow

N, LENGTH, DT, BATCH, STEPS = 20, 2.0, 0.2, 200, 100
GRID = quflow.Grid(N, LENGTH)


# --------------------------------------------------------------------------- the functions

def make_case(control: bool, batch: int = BATCH, steps: int = STEPS, seed: int = 0):
    """(f, θ, δθ, v): f(*θ) the scalar, θ its inputs, δθ and v two fixed random directions."""
    gen = torch.Generator().manual_seed(seed)
    psi0 = quflow.random_states(GRID, batch, seed=seed)
    w = quflow.random_states(GRID, batch, seed=seed + 1)

    def rand(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=gen)

    def cdirection():
        return quflow.random_states(GRID, batch, seed=int(rand(1).abs().mul(1e6)))

    if control:
        u = 0.5 * rand(batch, steps)

        def f(psi, u):
            psi_t = quflow.crank_nicolson(psi, dt=DT, dx=GRID.dx, control=u, control_shape=GRID.x)
            return (w.conj() * psi_t).sum(-1).abs().pow(2).sum()
        theta = (psi0, u)
        tangent = (cdirection(), rand(batch, steps))
        v = (cdirection(), rand(batch, steps))
    else:
        pot = 10 * rand(N)

        def f(psi, pot):
            psi_t = quflow.crank_nicolson(psi, pot, dt=DT, dx=GRID.dx, steps=steps)
            return (w.conj() * psi_t).sum(-1).abs().pow(2).sum()
        theta = (psi0, pot)
        tangent = (cdirection(), rand(N))
        v = (cdirection(), rand(N))
    return f, theta, tangent, v


def raw_kernels(control: bool, theta, tangent, steps: int = STEPS):
    """The registered operators alone, on the same inputs (threads=1)."""
    psi0 = theta[0]
    if control:
        pot, u, shape = torch.zeros(1, N, dtype=torch.float64), theta[1], GRID.x
        tpot, tu, tshape = None, tangent[1], None
    else:
        pot, u, shape = theta[1].reshape(1, N), None, None
        tpot, tu, tshape = tangent[1].reshape(1, N), None, None

    def fwd():
        return torch.ops.quflow.cn_forward(psi0, pot, u, shape, DT, GRID.dx, steps, False, 1)

    def jvp():
        return torch.ops.quflow.cn_jvp(psi0, pot, u, shape, tangent[0], tpot, tu, tshape, DT,
                                       GRID.dx, steps, False, 1)
    return fwd, jvp


def variants(control: bool):
    """name → a function of no arguments, timing one evaluation."""
    f, theta, tangent, v = make_case(control)
    params = [t.clone().requires_grad_() for t in theta]

    def forward():
        with torch.no_grad():
            return f(*theta)

    def fwd_bwd():
        return torch.autograd.grad(f(*params), params)

    def jvp_func():
        return torch.func.jvp(f, theta, tangent)

    def jvp_forward_ad():
        import torch.autograd.forward_ad as fwad
        with fwad.dual_level():
            duals = [fwad.make_dual(t, d) for t, d in zip(theta, tangent)]
            return fwad.unpack_dual(f(*duals)).tangent

    def hvp_double_backward():
        g = torch.autograd.grad(f(*params), params, create_graph=True)
        return torch.autograd.grad(g, params, v)

    grad_f = torch.func.grad(f, argnums=tuple(range(len(theta))))

    def hvp_forward_over_reverse():
        return torch.func.jvp(grad_f, theta, v)

    kept = {}

    def hvp_graph_kept():
        if "g" not in kept:  # once: the gradient with its graph, as Newton-CG keeps it
            kept["g"] = torch.autograd.grad(f(*params), params, create_graph=True)
        return torch.autograd.grad(kept["g"], params, v, retain_graph=True)

    cn_fwd, cn_jvp = raw_kernels(control, theta, tangent)
    return {
        "forward": forward,
        "fwd+bwd (VJP)": fwd_bwd,
        "JVP, torch.func.jvp": jvp_func,
        "JVP, forward_ad": jvp_forward_ad,
        "cn_forward kernel": cn_fwd,
        "cn_jvp kernel": cn_jvp,
        "HVP, double backward": hvp_double_backward,
        "HVP, jvp(grad(f))": hvp_forward_over_reverse,
        "HVP, double backward, graph kept": hvp_graph_kept,
    }


# --------------------------------------------------------------------------- measurement

def interleaved_medians(fns: dict, repeats: int = 15, budget: float = 0.05):
    """Median seconds per call of each function; every repeat times each function in turn
    (its own inner loop of ~budget seconds), so load changes hit all of them alike."""
    inner = {}
    for name, fn in fns.items():  # warm-up, and an inner count per function
        fn()
        t0 = time.perf_counter()
        fn()
        inner[name] = max(1, int(budget / max(time.perf_counter() - t0, 1e-6)))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            times[name].append((time.perf_counter() - t0) / inner[name])
    return {name: statistics.median(ts) for name, ts in times.items()}


def dense_crank_nicolson(psi0, u, steps):
    """The plain-torch peer: one dense solve per step (batched LUs), autograd."""
    e = 1.0 / GRID.dx**2
    off = torch.ones(N - 1, dtype=torch.float64)
    lap = torch.diag(torch.full((N,), 2 * e, dtype=torch.float64)) - e * torch.diag(off, 1) \
        - e * torch.diag(off, -1)
    eye = torch.eye(N, dtype=torch.complex128)
    psi = psi0
    for k in range(steps):
        h = lap + torch.diag_embed(u[:, k, None] * GRID.x)
        rhs = (eye - 0.5j * DT * h) @ psi[..., None]
        psi = torch.linalg.solve(eye + 0.5j * DT * h, rhs)[..., 0]
    return psi


def hvp_inputs(steps: int, batch: int = BATCH):
    gen = torch.Generator().manual_seed(3)
    psi0 = quflow.random_states(GRID, batch, seed=0).requires_grad_()
    u = (0.5 * torch.randn(batch, steps, dtype=torch.float64, generator=gen)).requires_grad_()
    w = quflow.random_states(GRID, batch, seed=1)
    vu = torch.randn(batch, steps, dtype=torch.float64, generator=gen)
    return psi0, u, w, vu


def hvp(impl: str, psi0, u, w, vu):
    """One Hessian–vector product (direction v on u, zero on ψ0) by double backward."""
    steps = u.shape[1]
    if impl == "quflow":
        psi_t = quflow.crank_nicolson(psi0, dt=DT, dx=GRID.dx, control=u, control_shape=GRID.x)
    else:
        psi_t = dense_crank_nicolson(psi0, u, steps)
    f = (w.conj() * psi_t).sum(-1).abs().pow(2).sum()
    (g,) = torch.autograd.grad(f, u, create_graph=True)
    (hv,) = torch.autograd.grad(g, u, vu)
    return hv


_RSS_CHILD = """
import sys, torch
sys.path.insert(0, {here!r})
import bench_derivatives as b
torch.set_num_threads(1)
impl, steps = {impl!r}, {steps}
b.hvp(impl, *b.hvp_inputs(3))  # warm-up: first-call costs (code pages, thread pools)
inputs = b.hvp_inputs(steps)
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as fh:  # reset the peak (VmHWM) to the current RSS
    fh.write("5")
hv = b.hvp(impl, *inputs)
print(status("VmHWM") - before)
"""


def peak_rss_added(impl: str, steps: int) -> int | None:
    code = _RSS_CHILD.format(here=os.path.dirname(os.path.abspath(__file__)), impl=impl,
                             steps=steps)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=600)
    if out.returncode != 0:
        print(f"  (peak RSS of {impl} at {steps} steps failed: {out.stderr.strip()[-200:]})")
        return None
    return int(out.stdout.split()[-1])


def measure_memory(impl: str, steps: int) -> dict:
    inputs = hvp_inputs(steps)
    return dict(saved=saved_bytes(lambda: hvp(impl, *inputs), inputs[:2]),
                rss=peak_rss_added(impl, steps))


def memory_rows(step_counts=(100, 300, 1000, 3000), dense_steps=(30, 100)):
    """quflow measured at every step count; the dense peer (1.5 GB of peak RSS at 100 steps)
    at ``dense_steps`` only, and extrapolated along the line through those two points."""
    dense = {steps: measure_memory("dense", steps) for steps in dense_steps}
    (s1, m1), (s2, m2) = sorted(dense.items())
    rows = []
    for steps in step_counts:
        row = dict(steps=steps, quflow=measure_memory("quflow", steps))
        if steps in dense:
            row["dense"], row["dense scaled"] = dense[steps], False
        else:
            row["dense"] = {k: None if m1[k] is None or m2[k] is None else
                            m1[k] + (m2[k] - m1[k]) * (steps - s1) / (s2 - s1) for k in m1}
            row["dense scaled"] = True
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- torch.compile

def training_step_variants(loss_kind: str):
    """(eager step, compiled step, compile seconds) for Linear → control → CN → loss → Adam."""
    torch.manual_seed(0)
    psi0 = quflow.random_states(GRID, BATCH, seed=0)
    x = quflow.to_real(psi0)
    target = GRID.eigenstates(1, dtype=torch.complex128)[0]

    def loss_fn(model, x, psi0):
        u = model(x)
        psi_t = quflow.crank_nicolson(psi0, dt=DT, dx=GRID.dx, control=u, control_shape=GRID.x)
        if loss_kind == "plain":
            return (1 - (target.conj() * psi_t).sum(-1).abs().pow(2)).mean()
        return quflow.fidelity_loss(psi_t, target, gradient="modified")

    steps = {}
    for mode in ("eager", "compiled"):
        model = nn.Linear(2 * N, STEPS).double()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        fn = loss_fn if mode == "eager" else torch.compile(loss_fn, fullgraph=True)

        def step(model=model, opt=opt, fn=fn):
            opt.zero_grad()
            loss = fn(model, x, psi0)
            loss.backward()
            opt.step()
            return loss
        steps[mode] = step
    t0 = time.perf_counter()
    steps["compiled"]()  # first call: tracing and compiling
    compile_s = time.perf_counter() - t0
    return steps, compile_s


# --------------------------------------------------------------------------- the report

def fmt_ms(s):
    ms = 1e3 * s
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, memory up to 1000 steps")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    # torch.compile's first call is timed cold: inductor's on-disk caches in a fresh folder
    cache = tempfile.mkdtemp(prefix="quflow-bench-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    try:
        report(args)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def report(args):
    torch.set_num_threads(1)
    repeats = 5 if args.quick else 21
    print(f"quflow {quflow.__version__}, torch {torch.__version__}, kernels: "
          f"{quflow._core.kernel_isa()}, threads: {torch.get_num_threads()}, "
          f"repeats: {repeats}\n")
    results = {"timing": {}, "memory": None, "compile": {}}

    print("| case | computation | ms | × forward | × fwd+bwd |")
    print("|---|---|---:|---:|---:|")
    for label, control in (("n=20, batch 200, 100 steps, constant H (θ = ψ0, V)", False),
                           ("n=20, batch 200, 100 steps, per-sample control (θ = ψ0, u)",
                            True)):
        med = interleaved_medians(variants(control), repeats=repeats)
        results["timing"][label] = med
        base_f, base_fb = med["forward"], med["fwd+bwd (VJP)"]
        for i, (name, t) in enumerate(med.items()):
            rel_f = f"{t / base_f:.2f}×"
            rel_fb = f"{t / base_fb:.2f}×" if name.startswith(("fwd+bwd", "HVP")) else ""
            if name == "cn_jvp kernel":
                rel_f += f" ({t / med['cn_forward kernel']:.2f}× cn_forward)"
            print(f"| {label if i == 0 else ''} | {name} | {fmt_ms(t)} | {rel_f} | {rel_fb} |")

    print("\nMemory of one HVP (double backward, per-sample control, batch 200, n = 20):")
    mem = memory_rows((100, 300, 1000) if args.quick else (100, 300, 1000, 3000))
    results["memory"] = mem
    print("| steps | quflow: saved for backward | quflow: peak RSS added | "
          "dense solve: saved | dense solve: peak RSS added |")
    print("|---:|---:|---:|---:|---:|")

    def mb(x, star=""):
        if x is None:
            return "—"
        return f"{x / 1e6:.2f} MB{star}" if x < 1e8 else f"{x / 1e6:.0f} MB{star}"
    for r in mem:
        star = "*" if r["dense scaled"] else ""
        print(f"| {r['steps']} | {mb(r['quflow']['saved'])} | {mb(r['quflow']['rss'])} | "
              f"{mb(r['dense']['saved'], star)} | {mb(r['dense']['rss'], star)} |")

    print("\ntorch.compile: one training step (Linear(40 → 100) → control → crank_nicolson → "
          "loss → backward → Adam), batch 200:")
    print("| loss | eager ms | compiled ms | compiled / eager | first compiled call s |")
    print("|---|---:|---:|---:|---:|")
    for kind, label in (("plain", "1 − \\|⟨t, ψ_T⟩\\|² mean (plain torch)"),
                        ("fidelity_loss", "quflow.fidelity_loss")):
        try:
            steps, compile_s = training_step_variants(kind)
        except Exception as exc:  # a graph break under fullgraph=True, or another failure
            lines = str(exc).strip().splitlines()
            cause = [ln.split("#")[0].strip() for ln in lines if ln.startswith("Caused by:")]
            msg = (lines[0][:100] + (f"… {cause[0]}" if cause else "")).replace("|", "\\|")
            results["compile"][kind] = dict(error=f"{type(exc).__name__}: {msg}")
            print(f"| {label} | — | does not compile: {type(exc).__name__}: {msg} | | |")
            continue
        med = interleaved_medians(steps, repeats=repeats)
        results["compile"][kind] = dict(med, compile_s=compile_s)
        print(f"| {label} | {fmt_ms(med['eager'])} | {fmt_ms(med['compiled'])} | "
              f"{med['compiled'] / med['eager']:.2f}× | {compile_s:.1f} |")

    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
