"""Threads on a busy machine: quflow at 1 vs 2 threads while another process computes.

    python bench/bench_threads_busy.py [--quick] [--json FILE]

Each cell runs in a fresh process (libgomp reads OMP_WAIT_POLICY once, when torch loads
it), timing quflow's forward+backward in a training-loop shape: each iteration runs a
torch matmul first (parallel on torch's OpenMP team, which then waits for the next region
by spinning or sleeping according to the policy), then quflow's forward and backward; 1
and 2 threads alternate within the process, medians reported. "busy": one other process
spins on a core throughout (a pure-Python loop: what any other job on a shared machine
is to the scheduler). Policies: unset (libgomp's default: spin a while, then sleep),
OMP_WAIT_POLICY=PASSIVE (sleep at once) and ACTIVE (spin).

The figure to read is the ratio 1 thread / 2 threads: above 1 two threads help, below 1
they hurt. A quiet 2-core machine is the best case for two threads; a busy one the worst.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

CASES = [("n=20, batch 200, 100 steps, control", 20, 200, 100),
         ("n=256, batch 2000, 20 steps, control", 256, 2000, 20)]

CHILD = r"""
import json, statistics, sys, time, torch, quflow
n, batch, steps, reps = (int(a) for a in sys.argv[1:5])
grid = quflow.Grid(n, 2.0)
psi0 = quflow.random_states(grid, batch, seed=0)
u0 = 0.5 * torch.randn(batch, steps, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
w = quflow.random_states(grid, batch, seed=2)
a = torch.randn(384, 384, dtype=torch.float64)

def step():
    torch.mm(a, a)  # the loop's own torch work, not timed
    t0 = time.perf_counter()
    p, u = psi0.clone().requires_grad_(), u0.clone().requires_grad_()
    out = quflow.crank_nicolson(p, dt=0.2, dx=grid.dx, control=u, control_shape=grid.x)
    torch.autograd.grad(out, [p, u], grad_outputs=w)
    return time.perf_counter() - t0

times = {1: [], 2: []}
for threads in (1, 2, 1, 2):  # warm-up
    torch.set_num_threads(threads)
    step()
deadline = time.perf_counter() + 20
for _ in range(reps):
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for _ in range(3):
            times[threads].append(step())
    if time.perf_counter() > deadline:
        break
print(json.dumps({t: statistics.median(v) for t, v in times.items()}))
"""


def _spin(stop):
    while not stop.is_set():
        for _ in range(100_000):
            pass


def cell(case, policy, busy, reps):
    _, n, batch, steps = case
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("OMP_NUM_THREADS", None)
    if policy != "unset":
        env["OMP_WAIT_POLICY"] = policy
    stop = multiprocessing.Event()
    competitor = multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
    if busy:
        competitor.start()
        time.sleep(0.2)
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, str(n), str(batch), str(steps),
                               str(reps)], env=env, capture_output=True, text=True,
                              timeout=300, check=True)
    finally:
        if busy:
            stop.set()
            competitor.join()
    t = {int(k): v for k, v in json.loads(done.stdout).items()}
    return dict(case=case[0], policy=policy, load="busy" if busy else "quiet",
                t1_ms=t[1] * 1e3, t2_ms=t[2] * 1e3, ratio=t[1] / t[2])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the paper's size only, fewer reps")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    cases = CASES[:1] if args.quick else CASES
    reps = 5 if args.quick else 15
    print(f"cores available: {len(os.sched_getaffinity(0))}")
    print("| case | OMP_WAIT_POLICY | machine | 1 thread ms | 2 threads ms | 1 thread / 2 threads |")
    print("|---|---|---|---:|---:|---:|")
    rows = []
    for case in cases:
        for policy in ("unset", "PASSIVE", "ACTIVE"):
            for busy in (False, True):
                r = cell(case, policy, busy, reps)
                rows.append(r)
                print(f"| {r['case']} | {r['policy']} | {r['load']} | {r['t1_ms']:.3g} | "
                      f"{r['t2_ms']:.3g} | {r['ratio']:.2f}× |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
