"""Private learning-rate search: each method of a setup at its own best learning rate.

A comparison of gradient flows at one shared learning rate measures the rate as much as
the flow: a flow whose gradient is larger (the modified one, by ``1/√(1 − L)``) takes
larger steps at the same rate. So ``quflow reproduce --full`` first searches, for every
(experiment, optimiser, method), the rate that trains best, and then compares the
methods, each at its own rate, on *held-out* seeds that the search never saw.

Declared before the runs it chooses for:

* **Grid**: the paper's rate (quflow's default for SGD) times ``10^(k/2)``,
  ``k = −2 … 2`` (two decades in half-decade steps), rounded to 3 significant digits.
  When the best rate sits on an edge of the grid, the grid is extended by one half-decade
  beyond that edge, up to :data:`MAX_EXTEND` times per edge.
* **Seeds**: the selection seeds :data:`~._training.SELECTION_SEEDS` (network
  initialisation and mini-batch order), disjoint from every compared seed.
* **Criterion** (:data:`CRITERION`): the geometric mean over the selection seeds of each
  run's validation loss, itself the geometric mean over the last quarter of its epochs
  (the primary endpoint's statistic); the lowest wins. A rate at which any selection seed
  diverges is disqualified.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch

from . import _stats, _training

GRID_STEPS = (-2, -1, 0, 1, 2)  # the paper's rate × 10^(k/2)
MAX_EXTEND = 4  # half-decades added beyond an edge at most
CRITERION = ("geometric mean over the selection seeds of the validation loss over the last "
             "quarter of the epochs (each run's geometric mean); lowest wins; a rate at "
             "which any seed diverges is disqualified")


def rate(paper_lr: float, k: int) -> float:
    """The grid's rate ``paper_lr · 10^(k/2)``, rounded to 3 significant digits."""
    return float(f"{paper_lr * 10 ** (k / 2):.3g}")


def score(per_seed: list[float | None]) -> float | None:
    """The criterion: geometric mean of the per-seed values; ``None`` if any diverged."""
    if any(v is None for v in per_seed):
        return None
    return math.exp(statistics.fmean(math.log(max(v, 1e-16)) for v in per_seed))


def _best(points: dict[int, list]) -> int | None:
    scored = {k: score(v) for k, v in points.items()}
    scored = {k: v for k, v in scored.items() if v is not None}
    return min(scored, key=lambda k: (scored[k], k)) if scored else None


def _extensions(points: dict[int, list]) -> list[int]:
    """Grid steps to add next: one beyond an edge that holds the best rate."""
    best = _best(points)
    if best is None:
        return []
    low, high = min(points), max(points)
    new = []
    if best == low and low > GRID_STEPS[0] - MAX_EXTEND:
        new.append(low - 1)
    if best == high and high < GRID_STEPS[-1] + MAX_EXTEND:
        new.append(high + 1)
    return new


def run(setup: "_training.Setup", out: Path, *, resume: bool, workers=None,
        progress: bool = True, allow_version_change: bool = False) -> dict:
    """Runs the search of ``setup`` (``study="search"``): every method over the grid on
    the setup's (selection) seeds, extending the grid while the best rate is on an edge.

    Returns the ``lr_search.json`` entry: ``{"experiment", "optimizer", "epochs",
    "seeds", "criterion", "grid", "methods": {method: {"lrs", "scores", "per_seed",
    "chosen", "paper_lr", "extended"}}}`` plus the :func:`~._training.stamp`.
    Diverged runs are recorded as ``None``; their checkpoints keep the last finite epoch.
    """
    e = setup.experiment
    paper = e.lr[_training.PROBES.get(setup.optimizer, setup.optimizer)]
    train_set, val_set = setup.data()
    now = _training.stamp(train_set, val_set)
    probe = setup.probe_batch(train_set)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)

    def report(job, v):
        if progress:
            m, _, cfg = job
            shown = "diverged" if v is None else f"val {v:.3g} (last quarter)"
            print(f"   search {setup.key}: {m} lr {cfg.lr:g} seed {cfg.seed}: {shown}",
                  flush=True)

    points: dict[str, dict[int, list]] = {m: {} for m in setup.methods}
    pending = [(m, k) for m in setup.methods for k in GRID_STEPS]
    while pending:
        jobs = [(m, k, setup.config(m, s, lr=rate(paper, k))) for m, k in pending
                for s in setup.seeds]
        values = _train_all(setup, jobs, out, resume, train_set, val_set, probe, now,
                            workers, allow_version_change, report)
        for (m, k, _), v in zip(jobs, values):
            points[m].setdefault(k, []).append(v)
        pending = [(m, k) for m in setup.methods for k in _extensions(points[m])]
    methods = {}
    for m in setup.methods:
        ks = sorted(points[m])
        best = _best(points[m])
        methods[m] = {"lrs": [rate(paper, k) for k in ks],
                      "scores": [score(points[m][k]) for k in ks],
                      "per_seed": [points[m][k] for k in ks],
                      "chosen": None if best is None else rate(paper, best),
                      "paper_lr": paper,
                      "extended": len(ks) - len(GRID_STEPS)}
        if progress:
            print(f"   search {setup.key}: {m} chooses lr {methods[m]['chosen']:g} "
                  f"(paper {paper:g})", flush=True)
    return {"experiment": e.name, "optimizer": setup.optimizer, "epochs": setup.epochs,
            "seeds": list(setup.seeds), "states": list(setup.states),
            "real_states": setup.real_states, "target": setup.target,
            "criterion": CRITERION, "grid": "paper lr × 10^(k/2), k = −2…2, extended "
            f"at an edge holding the best (at most {MAX_EXTEND} per edge)",
            "methods": methods, **now}


def _train_all(setup, jobs, out, resume, train_set, val_set, probe, now, workers,
               allow_version_change, report) -> list[float | None]:
    """Each job's windowed validation loss (``None``: diverged), in order; ``report(job,
    value)`` after each."""
    e = setup.experiment
    if workers is not None:
        threads = torch.get_num_threads()
        futures = [workers.submit(_training._train_in_worker, setup, cfg, out, resume,
                                  train_set, val_set, probe, threads, now,
                                  allow_version_change) for _, _, cfg in jobs]
        runs = (f.result for f in futures)
    else:
        runs = (lambda cfg=cfg: _training.train(
            cfg, lambda: _training.mlp(e.inputs, e.outputs, e.hidden), e.batch_loss,
            train_set, val_set, setup.checkpoint(out, cfg), resume, probe=probe, stamp=now,
            allow_version_change=allow_version_change) for _, _, cfg in jobs)
    results = []
    for job, result in zip(jobs, runs):
        try:
            results.append(_stats.windowed(result()["val"]))
        except _training.Diverged:
            results.append(None)
        report(job, results[-1])
    return results


def chosen(entry: dict, methods) -> dict[str, float]:
    """``{method: chosen lr}`` from a search entry.

    Raises:
        KeyError: a method the search did not cover, or for which every rate diverged.
    """
    out = {}
    for m in methods:
        lr = entry["methods"].get(m, {}).get("chosen")
        if lr is None:
            raise KeyError(m)
        out[m] = lr
    return out


COMMITTED = Path(__file__).with_name("lr_search.json")


def committed() -> dict:
    """The learning-rate search committed with quflow (``lr_search.json`` beside this
    module: the search of the last ``quflow reproduce --full``), ``{}`` if there is none."""
    import json

    if not COMMITTED.exists():
        return {}
    return json.loads(COMMITTED.read_text())
