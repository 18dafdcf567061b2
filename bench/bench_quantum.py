"""Side-by-side: quflow.QuantumLayer vs PennyLane's TorchLayer, forward + backward.

    OMP_NUM_THREADS=1 python bench/bench_quantum.py [--quick]

One process, one run, threads pinned to 1 (OMP_NUM_THREADS=1 for lightning's
OpenMP and torch.set_num_threads(1)); medians of repeated runs; double precision.
Circuit: AngleEmbedding(x) → StronglyEntanglingLayers (2 layers) → ⟨Z_i⟩ on every
wire, batch 64, at 4 and 8 qubits. Peers:

  TorchLayer, lightning.qubit, diff_method="adjoint"   (one circuit per sample)
  TorchLayer, default.qubit, diff_method="backprop"    (broadcast over the batch)

"fwd+bwd": out = layer(x); out.sum().backward() with x not requiring grad.
"PINN step": model Linear(1→q) → tanh → circuit → Linear(q→1) on 64 points,
loss = mean((du/dx − cos x)²) + u(0)², loss.backward(). Only default.qubit
backprop gives correct weight gradients there besides quflow (TorchLayer on
lightning adjoint is silently wrong), so it is the only peer in that row.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pennylane as qml  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import quflow  # noqa: E402

BATCH, LAYERS = 64, 2


def circuit_for(n):
    def circuit(inputs, weights):
        qml.AngleEmbedding(inputs, wires=range(n))
        qml.StronglyEntanglingLayers(weights, wires=range(n))
        return [qml.expval(qml.PauliZ(i)) for i in range(n)]

    return circuit


def layers(n):
    shapes = {"weights": (LAYERS, n, 3)}
    circuit = circuit_for(n)
    return {
        "quflow.QuantumLayer (lightning, adjoint)": quflow.QuantumLayer(circuit, shapes, wires=n),
        "TorchLayer lightning.qubit adjoint": qml.qnn.TorchLayer(
            qml.QNode(circuit, qml.device("lightning.qubit", wires=n), interface="torch", diff_method="adjoint"),
            shapes,
        ),
        "TorchLayer default.qubit backprop": qml.qnn.TorchLayer(
            qml.QNode(circuit, qml.device("default.qubit", wires=n), interface="torch", diff_method="backprop"),
            shapes,
        ),
    }


def median_time(fn, reps):
    fn()  # warm-up (recording caches, device set-up)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fwd_bwd(layer, x):
    def run():
        layer.zero_grad()
        layer(x).sum().backward()

    return run


def pinn_step(quantum, n, x):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, n), nn.Tanh(), quantum, nn.Linear(n, 1)).double()
    x0 = torch.zeros(1, 1, dtype=torch.float64)

    def run():
        xs = x.detach().requires_grad_(True)
        u = model(xs)
        (ux,) = torch.autograd.grad(u.sum(), xs, create_graph=True)
        loss = (ux - torch.cos(xs)).pow(2).mean() + model(x0).pow(2).sum()
        model.zero_grad()
        loss.backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    torch.set_num_threads(1)
    reps = 3 if args.quick else 9
    print(f"batch {BATCH}, {LAYERS} strongly entangling layers, double, 1 thread, median of {reps}\n")
    print("| case | qubits | quflow | TorchLayer lightning adjoint | TorchLayer default.qubit backprop | quflow / default.qubit |")
    print("|---|---|---|---|---|---|")
    for n in (4, 8):
        torch.manual_seed(0)
        x = torch.rand(BATCH, n, dtype=torch.float64) * 3.0
        t = {}
        for name, layer in layers(n).items():
            layer = layer.double()
            t[name] = median_time(fwd_bwd(layer, x), reps)
        q, light, dq = t.values()
        print(f"| fwd+bwd | {n} | {q * 1e3:.1f} ms | {light * 1e3:.1f} ms | {dq * 1e3:.1f} ms | {q / dq:.2f}× |")
    for n in (4, 8):
        xs = torch.linspace(0, 6.28, BATCH, dtype=torch.float64).reshape(-1, 1)
        shapes = {"weights": (LAYERS, n, 3)}
        circuit = circuit_for(n)
        ours = quflow.QuantumLayer(circuit, shapes, wires=n)
        ref = quflow.QuantumLayer(circuit, shapes, wires=n, device="default.qubit", diff_method="backprop")
        q = median_time(pinn_step(ours, n, xs), reps)
        dq = median_time(pinn_step(ref, n, xs), reps)
        print(f"| PINN step (du/dx in the loss) | {n} | {q * 1e3:.1f} ms | wrong gradients | {dq * 1e3:.1f} ms | {q / dq:.2f}× |")


if __name__ == "__main__":
    main()
