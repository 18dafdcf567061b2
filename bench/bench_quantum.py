"""Side-by-side: quflow.QuantumLayer vs PennyLane's TorchLayer, time and peak memory.

    OMP_NUM_THREADS=1 python bench/bench_quantum.py [--quick] [--qubits 4 8 12 16]

Threads pinned to 1 (OMP_NUM_THREADS=1 for lightning's OpenMP and
torch.set_num_threads(1)); medians; double precision. Circuit: AngleEmbedding(x) →
StronglyEntanglingLayers (2 layers) → ⟨Z_i⟩ on every wire, batch 64. Peers:

  TorchLayer, lightning.qubit, diff_method="adjoint"   (one circuit per sample)
  TorchLayer, default.qubit, diff_method="backprop"    (broadcast over the batch)

"fwd+bwd": out = layer(x); out.sum().backward() with x not requiring grad.
"PINN step": model Linear(1→q) → tanh → circuit → Linear(q→1) on 64 points,
loss = mean((du/dx − cos x)²) + u(0)², loss.backward(). TorchLayer on lightning adjoint
returns silently wrong weight gradients there, so it is not timed in that row.

Times: the implementations take turns in one process (medians of interleaved rounds),
so that the load of a shared machine hits them alike. Memory: each case also runs in a
process of its own (warm-up and one call): "peak MB" is the growth of its peak resident
set over its size before the first call (model and inputs built, libraries loaded). A
case is stopped at --timeout seconds or --memory-limit GB (address space) and reported as
such (and not timed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

BATCH, LAYERS = 64, 2
IMPLS = ("quflow", "torchlayer-lightning", "torchlayer-default")


def circuit_for(n):
    import pennylane as qml

    def circuit(inputs, weights):
        qml.AngleEmbedding(inputs, wires=range(n))
        qml.StronglyEntanglingLayers(weights, wires=range(n))
        return [qml.expval(qml.PauliZ(i)) for i in range(n)]

    return circuit


def make_layer(impl, n):
    import pennylane as qml

    import quflow

    shapes = {"weights": (LAYERS, n, 3)}
    circuit = circuit_for(n)
    if impl == "quflow":
        return quflow.QuantumLayer(circuit, shapes, wires=n)
    device, method = ("lightning.qubit", "adjoint") if impl == "torchlayer-lightning" else ("default.qubit", "backprop")
    node = qml.QNode(circuit, qml.device(device, wires=n), interface="torch", diff_method=method)
    return qml.qnn.TorchLayer(node, shapes)


def status_mb(field):
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in MB.
    (Not ``ru_maxrss``: a child inherits its parent's at fork time.)"""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover


def build(impl, n, kind):
    """A closure running one fwd+bwd or one PINN step of ``impl`` at ``n`` qubits."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    layer = make_layer(impl, n).double()
    if kind == "fwd+bwd":
        x = torch.rand(BATCH, n, dtype=torch.float64) * 3.0

        def run():
            layer.zero_grad()
            layer(x).sum().backward()

        return run
    model = nn.Sequential(nn.Linear(1, n), nn.Tanh(), layer, nn.Linear(n, 1)).double()
    xs0 = torch.linspace(0, 6.28, BATCH, dtype=torch.float64).reshape(-1, 1)
    x0 = torch.zeros(1, 1, dtype=torch.float64)

    def run():
        xs = xs0.detach().requires_grad_(True)
        u = model(xs)
        (ux,) = torch.autograd.grad(u.sum(), xs, create_graph=True)
        loss = (ux - torch.cos(xs)).pow(2).mean() + model(x0).pow(2).sum()
        model.zero_grad()
        loss.backward()

    return run


def one_case(impl, n, kind):
    """Runs in a child process: warm-up and one timed call; prints {"ms", "peak_mb"}."""
    import torch

    torch.set_num_threads(1)
    run = build(impl, n, kind)
    base = status_mb("VmRSS")
    run()
    start = time.perf_counter()
    run()
    ms = 1e3 * (time.perf_counter() - start)
    peak = status_mb("VmHWM")
    print(json.dumps({"ms": ms, "peak_mb": peak - base}))


def interleaved(impls, n, kind, reps, budget):
    """Median times in this process, the implementations taking turns (so that a change
    of the machine's load hits all of them alike)."""
    runs = {impl: build(impl, n, kind) for impl in impls}
    for run in runs.values():
        run()  # warm-up
    times = {impl: [] for impl in impls}
    start = time.perf_counter()
    for _ in range(reps):
        for impl, run in runs.items():
            t = time.perf_counter()
            run()
            times[impl].append(time.perf_counter() - t)
        if time.perf_counter() - start > budget * len(impls):
            break
    return {impl: 1e3 * statistics.median(t) for impl, t in times.items()}, len(times[impls[0]])


def spawn(impl, n, kind, args):
    cmd = [sys.executable, __file__, "--one", impl, str(n), kind, "--memory-limit", str(args.memory_limit)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return f"> {args.timeout} s", ""
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        memory = "MemoryError" in out.stderr or "alloc" in out.stderr.lower()
        return (f"> {args.memory_limit:g} GB" if memory else "failed"), ""
    r = json.loads(lines[-1])
    return r["ms"], f"{r['peak_mb']:.0f}"


def fmt(ms):
    if isinstance(ms, str):
        return ms
    return f"{ms:.1f} ms" if ms < 1000 else f"{ms / 1e3:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions instead of 7")
    parser.add_argument("--qubits", type=int, nargs="+", default=[4, 8, 12, 16])
    parser.add_argument("--timeout", type=int, default=300, help="seconds per case")
    parser.add_argument("--memory-limit", type=float, default=8.0, help="GB of address space per case")
    parser.add_argument("--budget", type=float, default=30.0, help="seconds of timed calls per case")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--kinds", nargs="+", default=["fwd+bwd", "PINN step"], choices=["fwd+bwd", "PINN step"])
    parser.add_argument("--one", nargs=3, metavar=("IMPL", "N", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.reps = args.reps or (3 if args.quick else 7)
    if args.one:
        limit = int(args.memory_limit * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        impl, n, kind = args.one
        one_case(impl, int(n), kind)
        return
    import torch

    torch.set_num_threads(1)
    print(f"batch {BATCH}, {LAYERS} strongly entangling layers, double, 1 thread, medians of up to "
          f"{args.reps} interleaved rounds (fewer past {args.budget:.0f} s per implementation); "
          "peak MB = RSS growth of a separate process\n")
    print("| case | qubits | quflow | TorchLayer lightning adjoint | TorchLayer default.qubit backprop "
          "| quflow / default.qubit | peak MB: quflow / lightning / default.qubit |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for kind in args.kinds:
        for n in args.qubits:
            res = {}
            for impl in IMPLS:
                if kind == "PINN step" and impl == "torchlayer-lightning":
                    res[impl] = ("wrong gradients", "")
                    continue
                res[impl] = spawn(impl, n, kind, args)
            ok = [i for i in IMPLS if not isinstance(res[i][0], str)]
            if ok:
                medians, _ = interleaved(ok, n, kind, args.reps, args.budget)
                for impl in ok:
                    res[impl] = (medians[impl], res[impl][1])
            q, dq = res["quflow"][0], res["torchlayer-default"][0]
            ratio = f"{q / dq:.2f}×" if not isinstance(q, str) and not isinstance(dq, str) else "–"
            mem = " / ".join(res[i][1] or "–" for i in IMPLS)
            print(f"| {kind} | {n} | {fmt(q)} | {fmt(res['torchlayer-lightning'][0])} | {fmt(dq)} | {ratio} | {mem} |",
                  flush=True)


if __name__ == "__main__":
    main()
