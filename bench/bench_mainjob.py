"""The main job's per-step costs, side by side in one process (issue 14).

Run: ``OMP_NUM_THREADS=1 python bench/bench_mainjob.py`` (``make bench``). One intra-op
thread, float64, the prediction experiment's sizes (batch 200, n = 20 complex components
in the real layout, the 40 → 64 → 64 → 40 MLP). Every case is timed in interleaved rounds
(each round times every variant once, ``reps`` calls each), so that a change in the
machine's load hits all variants alike; the table gives the median over rounds and the
ratio of medians.

Cases:
  fidelity forward  quflow.fidelity_loss vs the same value written in plain torch: the
                    textbook expression (``(t.conj()*p).sum(-1)``, ``abs()**2`` sums) and
                    the fastest plain one found (``linalg.vecdot``, real-view norms); pred
                    requires grad, as in training.
  fidelity fwd+bwd  the same with ``.backward()`` (quflow: the modified gradient; plain:
                    autograd of the textbook value, i.e. the standard gradient).
  optimiser step    Adam and SGD, torch's default (per-tensor) step vs foreach / fused.
  evaluation        the per-epoch loss of the training and validation sets (12 500
                    samples): one batched no-grad forward vs one forward per set.
  checkpoint        writing one run's checkpoint vs the in-memory snapshot that replaces
                    most writes.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import quflow
from quflow.experiments import _io, _training, prediction

torch.set_num_threads(1)
N = 20


def bench(variants: dict, reps: int, rounds: int = 15) -> dict:
    """Median seconds per call of each variant over ``rounds`` interleaved rounds."""
    for fn in variants.values():  # warm up
        for _ in range(max(1, reps // 5)):
            fn()
    times = {k: [] for k in variants}
    for _ in range(rounds):
        for k, fn in variants.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            times[k].append((time.perf_counter() - t0) / reps)
    return {k: statistics.median(v) for k, v in times.items()}


def table(title: str, result: dict, base: str) -> None:
    if title:
        print(f"\n{title}")
    for k, t in result.items():
        unit, scale = ("ms", 1e3) if t >= 1e-3 else ("µs", 1e6)
        print(f"  {k:44s} {t * scale:9.1f} {unit}   {t / result[base]:5.2f}× {base}")


def main() -> None:
    (x, y), (xv, yv) = prediction.make_data()
    torch.manual_seed(0)
    model = _training.mlp(2 * N, 2 * N, 64)
    xb, yb = x[:200], y[:200]
    out = model(xb).detach().requires_grad_()

    def textbook(p, t):
        p, t = torch.complex(p[..., :N], p[..., N:]), torch.complex(t[..., :N], t[..., N:])
        s = (t.conj() * p).sum(-1)
        return (1 - s.abs() ** 2 / ((p.abs() ** 2).sum(-1) * (t.abs() ** 2).sum(-1))).mean()

    def fastest_plain(p, t):
        p, t = torch.complex(p[..., :N], p[..., N:]), torch.complex(t[..., :N], t[..., N:])
        s = torch.linalg.vecdot(t, p)
        norm = lambda z: torch.linalg.vector_norm(torch.view_as_real(z), dim=(-2, -1))  # noqa: E731
        return (1 - (s.abs() / (norm(p) * norm(t))) ** 2).mean()

    quflow_loss = lambda p, t: quflow.fidelity_loss(p, t, gradient="modified",  # noqa: E731
                                                    layout="split")
    for f in (textbook, fastest_plain):
        assert abs(f(out, yb).item() - quflow_loss(out, yb).item()) < 1e-14
    losses = {"quflow.fidelity_loss": quflow_loss, "plain torch, textbook": textbook,
              "plain torch, vecdot + real-view norms": fastest_plain}
    table("fidelity forward (batch 200, n = 20, real layout, pred requires grad)",
          bench({k: (lambda f=f: f(out, yb)) for k, f in losses.items()}, reps=200),
          "plain torch, textbook")
    r = bench({k: (lambda f=f: f(out, yb).backward()) for k, f in losses.items()}, reps=100)
    table("fidelity forward + backward", r, "plain torch, textbook")

    loss = quflow.fidelity_loss(model(xb), yb, layout="split")
    loss.backward()  # gradients in place; the steps below reuse them
    params = list(model.parameters())
    saved = [p.detach().clone() for p in params]
    optims = {"Adam, default (per-tensor)": torch.optim.Adam(params, lr=1e-9, foreach=False),
              "Adam, foreach": torch.optim.Adam(params, lr=1e-9, foreach=True),
              "Adam, fused (quflow reproduce)": torch.optim.Adam(params, lr=1e-9, fused=True),
              "SGD, default (per-tensor; quflow reproduce)": torch.optim.SGD(params, lr=1e-9, foreach=False),
              "SGD, fused": torch.optim.SGD(params, lr=1e-9, fused=True)}
    r = bench({k: o.step for k, o in optims.items()}, reps=100)
    table("optimiser step (9 384 float64 parameters)",
          {k: v for k, v in r.items() if k.startswith("Adam")}, "Adam, default (per-tensor)")
    table("", {k: v for k, v in r.items() if k.startswith("SGD")},
          "SGD, default (per-tensor; quflow reproduce)")
    with torch.no_grad():
        for p, s in zip(params, saved):
            p.copy_(s)

    x_eval, y_eval = torch.cat((x, xv)), torch.cat((y, yv))
    n = len(x)

    def batched():
        with torch.no_grad():
            per = prediction.batch_loss(model, x_eval, y_eval, "standard", reduction="none")
        return per[:n].mean().item(), per[n:].mean().item()

    def per_set():
        with torch.no_grad():
            return tuple(prediction.batch_loss(model, a, b, "standard").item()
                         for a, b in ((x, y), (xv, yv)))

    table("evaluation of the training and validation sets (10 000 + 2 500 samples)",
          bench({"one batched forward (quflow reproduce)": batched,
                 "one forward per set": per_set}, reps=5), "one forward per set")

    opt = _training.make_optimizer("adam", params, 0.005)
    opt.step()
    cfg = _training.RunConfig("prediction", "modified", 0, 150, 0.005, 200)
    curves = {k: [0.5] * 151 for k in _training._CURVES}
    gen = torch.Generator().manual_seed(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.pt"
        snap = lambda: _training._snapshot(cfg, 150, model, opt, gen, curves)  # noqa: E731
        table("checkpoint of a prediction run (150 epochs of curves)",
              bench({"write (torch.save, SHA-256, fsync, rename)":
                     lambda: _io.save_checkpoint(path, snap()),
                     "in-memory snapshot only": snap}, reps=5), "in-memory snapshot only")


if __name__ == "__main__":
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, python {sys.version.split()[0]}")
    main()
