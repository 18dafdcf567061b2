"""Side-by-side: quflow.metric_tensor / quflow.QNG vs PennyLane's metric functions and QNGOptimizer.

    OMP_NUM_THREADS=1 python bench/bench_qng.py [--quick]

One process, one run, one thread (OMP_NUM_THREADS=1, torch.set_num_threads(1)), double.
Circuit: Hadamards, StronglyEntanglingLayers (as its primitive gates: qml.adjoint_metric_tensor
cannot expand templates), ⟨Z₀⟩; no inputs; 4×2, 6×3, 8×4 (qubits × layers).
Peers: qml.adjoint_metric_tensor (the full metric, default.qubit QNode),
qml.metric_tensor(approx="block-diag"/"diag") on lightning.qubit, and
qml.QNGOptimizer.step (block-diag, lightning.qubit). Medians of repeated runs; a peer
that needs more than ~5 s is run once.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pennylane as qml  # noqa: E402
import torch  # noqa: E402
from pennylane import numpy as pnp  # noqa: E402

import quflow  # noqa: E402


def circuit_for(n):
    def circuit(weights):
        for i in range(n):
            qml.Hadamard(wires=i)
        with qml.QueuingManager.stop_recording():
            ops = qml.StronglyEntanglingLayers(weights, wires=range(n)).decomposition()
        for op in ops:
            qml.apply(op)
        return qml.expval(qml.PauliZ(0))

    return circuit


def timed(fn, reps, slow=5.0):
    start = time.perf_counter()
    out = fn()
    first = time.perf_counter() - start
    if first > slow:
        return first, out
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def fmt(seconds):
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4×2 and 6×3 only, fewer repetitions")
    args = parser.parse_args()
    torch.set_num_threads(1)
    reps = 3 if args.quick else 7
    sizes = [(4, 2), (6, 3)] if args.quick else [(4, 2), (6, 3), (8, 4)]
    print(f"one thread, double, median of {reps} (PennyLane runs over 5 s: once)\n")
    print("| qubits × layers | params | what | quflow | PennyLane | PennyLane / quflow | max abs diff |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for n, layers in sizes:
        circuit = circuit_for(n)
        shape = (layers, n, 3)
        w = np.random.default_rng(0).uniform(0, 2 * np.pi, shape)
        layer = quflow.QuantumLayer(circuit, {"weights": shape}, wires=n).double()
        with torch.no_grad():
            layer.weights.copy_(torch.from_numpy(w))
        default_qnode = qml.QNode(circuit, qml.device("default.qubit", wires=n), interface="autograd")
        lightning_qnode = qml.QNode(circuit, qml.device("lightning.qubit", wires=n), interface="autograd")
        wp = pnp.array(w, requires_grad=True)
        p = w.size
        peers = {
            "full": lambda: qml.adjoint_metric_tensor(default_qnode)(wp),
            "block-diag": lambda: qml.metric_tensor(lightning_qnode, approx="block-diag")(wp),
            "diag": lambda: qml.metric_tensor(lightning_qnode, approx="diag")(wp),
        }
        for approx, peer in peers.items():
            ours_t, ours = timed(lambda: quflow.metric_tensor(layer, approx=approx), reps)
            pl_t, ref = timed(peer, reps)
            diff = np.abs(ours.numpy() - np.asarray(ref).reshape(p, p)).max()
            name = {"full": "metric, full (adjoint_metric_tensor)", "block-diag": "metric, block-diag", "diag": "metric, diag"}[approx]
            print(f"| {n} × {layers} | {p} | {name} | {fmt(ours_t)} | {fmt(pl_t)} | {pl_t / ours_t:.0f}× | {diff:.1e} |")

        def quflow_step(approx):
            opt = quflow.QNG(layer, lr=0.05, lam=1e-3, approx=approx)

            def run():
                opt.zero_grad()
                layer().backward()
                opt.step()

            return run

        def pl_step():
            opt = qml.QNGOptimizer(stepsize=0.05, approx="block-diag", lam=1e-3)
            return opt.step(lightning_qnode, wp)

        pl_t, _ = timed(pl_step, reps)
        for approx in ("block-diag", "full"):
            ours_t, _ = timed(quflow_step(approx), reps)
            print(f"| {n} × {layers} | {p} | QNG step, {approx} (PennyLane: block-diag) | {fmt(ours_t)} | {fmt(pl_t)} | {pl_t / ours_t:.1f}× | |")


if __name__ == "__main__":
    main()
