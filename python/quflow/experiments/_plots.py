"""Private figures of the experiments (matplotlib, file-only Agg backend).

Conventions: every run is drawn faint and unsmoothed; the solid line is the geometric
mean over seeds with its 95 % interval as a band (see ``_stats``); nothing is smoothed
across epoch 0; a log axis is used only where the values span more than a decade.
"""

from __future__ import annotations

import math
from pathlib import Path

from . import _io

COLORS = {"standard": "tab:blue", "l2": "tab:orange", "modified": "tab:green"}


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    from .._extras import require

    matplotlib = require("matplotlib", "experiments")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _geo_band(runs: list[list[float]]):
    """Per epoch: geometric mean over runs and its 95 % t-interval (None with one run)."""
    from ._stats import log_summary

    mean, lo, hi = [], [], []
    for values in zip(*runs):
        s = log_summary(list(values))
        mean.append(s["mean"])
        lo.append(s["ci95"][0] if s["ci95"] else s["mean"])
        hi.append(s["ci95"][1] if s["ci95"] else s["mean"])
    return mean, lo, hi


def _spans_decades(values) -> bool:
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    return bool(positive) and max(positive) / min(positive) > 10


def curves(curves: dict, path: Path, *, title: str) -> None:
    """Training and validation quantum loss per epoch: each run faint, the seed
    geometric mean solid with its 95 % band (Fig. 2 of the paper, without smoothing)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    every = [v for runs in curves.values() for r in runs for s in ("train", "val") for v in r[s]]
    log = _spans_decades(every)
    for ax, split in zip(axes, ("train", "val")):
        for m, runs in curves.items():
            epochs = range(len(runs[0][split]))
            for r in runs:
                ax.plot(epochs, r[split], color=COLORS[m], alpha=0.25, lw=0.7)
            mean, lo, hi = _geo_band([r[split] for r in runs])
            ax.plot(epochs, mean, color=COLORS[m], lw=2,
                    label=f"{m} (geometric mean of {len(runs)} seeds)")
            if len(runs) > 1:
                ax.fill_between(epochs, lo, hi, color=COLORS[m], alpha=0.15, lw=0)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("epoch (0 = untrained network)")
        ax.set_title("training set" if split == "train" else "validation set")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("quantum loss 1 − |⟨ψ, φ⟩|²")
    axes[0].legend(fontsize=8)
    fig.suptitle(title + "\nfaint: each run; band: 95 % interval over seeds", fontsize=9)
    fig.tight_layout()
    _io.save_figure(fig, path)
    plt.close(fig)


def gradients(curves: dict, path: Path, *, title: str) -> None:
    """The decisive diagnostic: along each method's training, how far the standard and
    modified gradients of the network parameters (same probe batch, same weights) differ
    in direction (1 − cosine) and in size (‖g_modified‖/‖g_standard‖)."""
    plt = pyplot()
    fig, (ax_c, ax_n) = plt.subplots(1, 2, figsize=(11, 4.2))
    for m, runs in curves.items():
        epochs = range(len(runs[0]["cos"]))
        for r in runs:
            ax_c.plot(epochs, [max(1 - c, 1e-17) for c in r["cos"]], color=COLORS[m],
                      alpha=0.35, lw=0.8)
            ax_n.plot(epochs, [b / a if a > 0 else math.nan
                               for a, b in zip(r["norm_standard"], r["norm_modified"])],
                      color=COLORS[m], alpha=0.35, lw=0.8)
        ax_c.plot([], [], color=COLORS[m], label=f"along {m} training")
    ax_c.set_yscale("log")
    ax_c.set_ylabel("1 − cos(g_standard, g_modified)")
    ax_c.set_title("direction: 1e-4 means cosine 0.9999")
    ax_n.set_yscale("log")
    ax_n.set_ylabel("‖g_modified‖ / ‖g_standard‖")
    ax_n.set_title("size: the factor ≈ 1/√(1 − L) that Adam divides out")
    for ax in (ax_c, ax_n):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    ax_c.legend(fontsize=8)
    fig.suptitle(title + "\nnetwork-parameter gradients on a fixed probe batch, each run",
                 fontsize=9)
    fig.tight_layout()
    _io.save_figure(fig, path)
    plt.close(fig)


def summary(results: dict, path: Path, epochs: tuple[int, ...] = (1, 10, 40)) -> None:
    """Loss ratio to the standard gradient (validation, paired by seed) with 95 % intervals,
    one row per setup and method, after ``epochs`` and over the last quarter of the epochs:
    below 1 = better than standard."""
    plt = pyplot()
    from matplotlib import ticker

    rows = []
    for key, methods in results.items():
        for m in ("modified", "l2"):
            r = methods.get(m, {}).get("ratio_to_standard", {}).get("val")
            if r:
                rows.append((f"{key}: {m}", m, r))
    whens = [str(e) for e in epochs if any(str(e) in r["at_epoch"] for _, _, r in rows)]
    if not rows:
        return
    whens.append("window")
    fig, axes = plt.subplots(1, len(whens), figsize=(3.3 * len(whens) + 1.5,
                                                     0.42 * len(rows) + 1.6), sharey=True)
    for ax, when in zip(axes, whens):
        for i, (label, m, r) in enumerate(reversed(rows)):
            s = r["window"] if when == "window" else r["at_epoch"].get(when)
            if s is None:
                continue
            lo, hi = s["ci95"] if s["ci95"] else (s["mean"], s["mean"])
            ax.plot([lo, hi], [i, i], color=COLORS[m], lw=2)
            ax.plot([s["mean"]], [i], "o", color=COLORS[m])
            ax.plot(s["per_seed"], [i] * len(s["per_seed"]), "|", color="k", alpha=0.5, ms=8)
        ax.axvline(1, color="gray", lw=1, ls="--")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.FixedLocator(
            [0.001, 0.003, 0.01, 0.03, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 100, 300, 1000]))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(alpha=0.3, axis="x")
        ax.set_title("last quarter of the epochs" if when == "window" else f"after epoch {when}",
                     fontsize=10)
    axes[0].set_yticks(range(len(rows)))
    axes[0].set_yticklabels([label for label, _, _ in reversed(rows)], fontsize=8)
    fig.supxlabel("validation loss ratio to standard, paired by seed: < 1 = better than "
                  "standard; dot: geometric mean, line: 95 % interval, ticks: seeds",
                  fontsize=8)
    fig.tight_layout()
    _io.save_figure(fig, path)
    plt.close(fig)
