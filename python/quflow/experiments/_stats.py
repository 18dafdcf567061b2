"""Private statistics over seeds for the trained experiments.

Losses span decades, so every statistic is taken on a log scale: a *geometric* mean over
seeds with a 95 % Student-t interval of the mean log (``exp(m ± t₀.₉₇₅,ₙ₋₁·s/√n)``), and
ratios between methods are *paired* by seed (the same seed gives every method the same
initial network and the same mini-batch order): ``exp`` of the mean per-seed log-ratio,
with its t-interval. With one seed there is no interval (``None``).

The windowed statistic is the geometric mean of a run's loss over the last quarter of
its epochs (epoch 0, the untrained network, never included): robust to the single-epoch
spikes that Adam produces, unlike the loss after the last epoch.

Beside each interval stands an exact sign-flip p-value (:func:`sign_flip_p`), which
assumes no normality but is coarse with few seeds: its smallest possible value is
``2/2ⁿ`` (0.25 with 3 seeds, 0.0625 with 5, 0.0078 with 8), so with 3 seeds no
comparison can reach p < 0.05, whatever its t-interval says. Epochs to reach a loss
threshold (``"reach"`` in :func:`summarise`) are compared by :func:`paired_difference`.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

FIXED_EPOCHS = (1, 10, 20, 40, 80, 150)
REACH = (1e-2, 1e-3)  # loss thresholds of summarise's "reach"
MAX_SIGN_FLIP_N = 20  # 2²⁰ sign patterns: exact enumeration stays below a second
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


def sign_flip_p(x: list[float]) -> float:
    """Exact two-sided sign-flip (paired permutation) p-value of ``mean(x)`` against 0.

    Under the null hypothesis each paired difference ``xᵢ`` is as likely to have the
    opposite sign, so the p-value is the fraction of all ``2ⁿ`` sign patterns ``s`` with
    ``|mean(s·x)| ≥ |mean(x)|`` (ties, up to a relative 1e-12, count). Enumerated exactly,
    so it is discrete: its smallest possible value is ``2/2ⁿ`` (n = 3: 0.25; n = 5:
    0.0625; n = 8: 0.0078), and it is 1 for ``n = 1``.

    Args:
        x: the ``n`` per-seed paired differences (or log-ratios), ``1 ≤ n ≤ 20``.

    Returns:
        The p-value, in ``[2/2ⁿ, 1]``.

    Raises:
        ValueError: ``x`` is empty or has more than 20 values.

    Example:
        >>> sign_flip_p([0.3, 0.1, 0.2])   # all positive: 2 of the 8 patterns are as extreme
        0.25
    """
    n = len(x)
    if not 1 <= n <= MAX_SIGN_FLIP_N:
        raise ValueError(f"x: expected 1 to {MAX_SIGN_FLIP_N} values, got {n}")
    a = np.asarray(x, dtype=np.float64)
    sums = np.zeros(1)
    for v in a:  # sums of s·x over all 2^k patterns of the first k values
        sums = np.concatenate([sums + v, sums - v])
    tol = 1e-12 * float(np.abs(a).sum())
    return float(np.count_nonzero(np.abs(sums) >= abs(float(a.sum())) - tol)) / sums.size


def _sign_flip_or_none(x: list[float]) -> float | None:
    """:func:`sign_flip_p`, or ``None`` with one value or more than it enumerates."""
    return sign_flip_p(x) if 1 < len(x) <= MAX_SIGN_FLIP_N else None


def paired_ratio(values: list[float], reference: list[float]) -> dict:
    """``values / reference`` paired by seed.

    Returns:
        :func:`log_summary` of the per-seed ratios (geometric mean ratio, 95 % interval,
        per seed) and ``"p_signflip"``: :func:`sign_flip_p` of the per-seed log-ratios
        (``None`` with one seed or more than 20).
    """
    ratios = [max(v, _FLOOR) / max(r, _FLOOR) for v, r in zip(values, reference)]
    logs = [math.log(q) for q in ratios]
    return {**log_summary(ratios), "p_signflip": _sign_flip_or_none(logs)}


def paired_difference(values: list[int | None], reference: list[int | None], *,
                      censor_at: int) -> dict:
    """``values − reference`` paired by seed, for epochs to reach a threshold.

    A run that never reached the threshold (``None``) counts as ``censor_at`` (e.g. the
    number of epochs + 1), so with censored seeds the difference is a *bound*: where only
    ``values`` is censored the true difference is at least the one shown, where only
    ``reference`` is, at most; where both are, it is unknown (0 is counted).

    Args:
        values: per seed, the first epoch at which a run reached the threshold, or ``None``.
        reference: the same for the reference method, in the same seed order.
        censor_at: what a ``None`` counts as.

    Returns:
        ``{"mean", "ci95", "per_seed", "censored", "p_signflip"}``: the mean difference,
        its 95 % Student-t interval (``None`` with one seed; ``[mean, mean]`` when every
        seed differs by the same amount), the per-seed differences, how many seeds had a
        ``None`` on either side, and :func:`sign_flip_p` (``None`` with one seed).

    Example:
        >>> d = paired_difference([3, 4, None], [5, 6, 8], censor_at=11)
        >>> d["per_seed"], d["censored"], d["p_signflip"]
        ([-2, -2, 3], 1, 1.0)
    """
    if len(values) != len(reference) or not values:
        raise ValueError(f"values, reference: expected equal non-zero lengths, got "
                         f"{len(values)} and {len(reference)}")
    diffs = [(censor_at if v is None else v) - (censor_at if r is None else r)
             for v, r in zip(values, reference)]
    m = statistics.fmean(diffs)
    ci = None
    if len(diffs) > 1:
        half = _t975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
        ci = [m - half, m + half]
    return {"mean": m, "ci95": ci, "per_seed": diffs,
            "censored": sum(v is None or r is None for v, r in zip(values, reference)),
            "p_signflip": _sign_flip_or_none(diffs)}


def window(epochs: int) -> tuple[int, int]:
    """First and last epoch of the last quarter of ``epochs`` (at least one epoch)."""
    width = max(1, math.ceil(epochs / 4))
    return epochs - width + 1, epochs


def windowed(curve: list[float]) -> float:
    """Geometric mean of ``curve[a..b]`` over :func:`window` (``curve[0]`` = epoch 0)."""
    a, b = window(len(curve) - 1)
    return math.exp(statistics.fmean(math.log(max(v, _FLOOR)) for v in curve[a:b + 1]))


def first_below(curve: list[float], threshold: float) -> int | None:
    """The first epoch ``e ≥ 1`` with ``curve[e] < threshold``, or ``None`` (never)."""
    return next((e for e, v in enumerate(curve) if e >= 1 and v < threshold), None)


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
        seeds: the seeds (any integers), in the order of each method's list.
        epochs: ``E``.
        setup: settings copied into every method's entry (optimiser, learning rate, states…).

    Returns:
        method → entry; besides the statistics of each split, ``"reach"``:
        ``{"train"|"val": {"0.01"|"0.001": [per seed the first epoch ≥ 1 whose loss is
        below the threshold, or None]}}``.
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
            "reach": {s: {f"{t:g}": [first_below(r[s], t) for r in runs] for t in REACH}
                      for s in ("train", "val")},
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
