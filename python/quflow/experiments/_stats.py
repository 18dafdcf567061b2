"""Private statistics over seeds for the trained experiments.

Losses span decades, so every statistic is taken on a log scale: a *geometric* mean over
seeds with a 95 % Student-t interval of the mean log (``exp(m ± t₀.₉₇₅,ₙ₋₁·s/√n)``), and
ratios between methods are *paired* by seed (the same seed gives every method the same
initial network and the same mini-batch order): ``exp`` of the mean per-seed log-ratio,
with its t-interval. With one seed there is no interval (``None``).

The windowed statistic is the geometric mean of a run's loss over the last quarter of
its epochs (epoch 0, the untrained network, never included): robust to the single-epoch
spikes that Adam produces, unlike the loss after the last epoch.
"""

from __future__ import annotations

import math
import statistics

FIXED_EPOCHS = (1, 10, 20, 40, 80, 150)
_FLOOR = 1e-16  # a loss of exactly 0 (perfect fit to round-off) still has a logarithm


def _t975(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def log_summary(values: list[float]) -> dict:
    """Geometric mean over seeds with a 95 % interval: ``{"mean", "ci95", "per_seed"}``."""
    logs = [math.log(max(v, _FLOOR)) for v in values]
    m = statistics.fmean(logs)
    ci = None
    if len(logs) > 1:
        half = _t975(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
        ci = [math.exp(m - half), math.exp(m + half)]
    return {"mean": math.exp(m), "ci95": ci, "per_seed": list(values)}


def paired_ratio(values: list[float], reference: list[float]) -> dict:
    """``values / reference`` paired by seed: geometric mean ratio, 95 % interval, per seed."""
    return log_summary([max(v, _FLOOR) / max(r, _FLOOR) for v, r in zip(values, reference)])


def window(epochs: int) -> tuple[int, int]:
    """First and last epoch of the last quarter of ``epochs`` (at least one epoch)."""
    width = max(1, math.ceil(epochs / 4))
    return epochs - width + 1, epochs


def windowed(curve: list[float]) -> float:
    """Geometric mean of ``curve[a..b]`` over :func:`window` (``curve[0]`` = epoch 0)."""
    a, b = window(len(curve) - 1)
    return math.exp(statistics.fmean(math.log(max(v, _FLOOR)) for v in curve[a:b + 1]))


def _split_stats(runs: list[list[float]]) -> dict:
    """Statistics of one split (training or validation) over the seeds' curves."""
    epochs = len(runs[0]) - 1
    a, b = window(epochs)
    return {
        "final": log_summary([r[-1] for r in runs]),
        "window": {"epochs": [a, b], **log_summary([windowed(r) for r in runs])},
        "at_epoch": {str(e): log_summary([r[e] for r in runs])
                     for e in FIXED_EPOCHS if e <= epochs},
    }


def _ratios(stats: dict, ref: dict) -> dict:
    return {
        "final": paired_ratio(stats["final"]["per_seed"], ref["final"]["per_seed"]),
        "window": paired_ratio(stats["window"]["per_seed"], ref["window"]["per_seed"]),
        "at_epoch": {e: paired_ratio(s["per_seed"], ref["at_epoch"][e]["per_seed"])
                     for e, s in stats["at_epoch"].items()},
    }


def summarise(curves: dict[str, list[dict]], seeds: list[int], *, epochs: int,
              setup: dict) -> dict:
    """The results.json entry of one setup (experiment × optimiser).

    Args:
        curves: method → one dict per seed with lists over epochs 0..E: ``"train"``,
            ``"val"`` (quantum loss), ``"cos"``, ``"norm_standard"``, ``"norm_modified"``
            (gradient diagnostic on the probe batch).
        seeds: the seeds, in the order of each method's list.
        epochs: ``E``.
        setup: settings copied into every method's entry (optimiser, learning rate, states…).
    """
    out = {}
    split = {m: {s: _split_stats([r[s] for r in runs]) for s in ("train", "val")}
             for m, runs in curves.items()}
    for m, runs in curves.items():
        finals = [r["val"][-1] for r in runs]
        n_epochs = len(runs[0]["cos"])
        out[m] = {
            # the first round's keys: validation loss after the last epoch, arithmetic
            # mean and population standard deviation over seeds
            "final_loss": statistics.fmean(finals),
            "final_loss_std": statistics.pstdev(finals),
            "seeds": list(seeds),
            "final_loss_per_seed": finals,
            "final_train_loss": statistics.fmean(r["train"][-1] for r in runs),
            "epochs": epochs,
            **setup,
            "train": split[m]["train"],
            "val": split[m]["val"],
            "ratio_to_standard": {s: _ratios(split[m][s], split["standard"][s])
                                  for s in ("train", "val")} if "standard" in split else {},
            "gradients": {
                "cos_standard_modified_mean": [statistics.fmean(r["cos"][e] for r in runs)
                                               for e in range(n_epochs)],
                "cos_standard_modified_min": [min(r["cos"][e] for r in runs)
                                              for e in range(n_epochs)],
                "norm_standard_mean": [statistics.fmean(r["norm_standard"][e] for r in runs)
                                       for e in range(n_epochs)],
                "norm_modified_mean": [statistics.fmean(r["norm_modified"][e] for r in runs)
                                       for e in range(n_epochs)],
            },
        }
    return out
