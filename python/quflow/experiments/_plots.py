"""Private figures of the experiments (matplotlib, file-only Agg backend).

Conventions: every seed's run is drawn as a thin unsmoothed line; the solid line is the
per-epoch *median* over seeds and the band the per-epoch *min–max envelope* over seeds,
so the band is the spread of the runs themselves and never leaves the loss's range
``[0, 1]`` (a t-interval of a 3-seed mean does); nothing is smoothed across epoch 0; a
log axis is used only where the values span more than a decade.

Each public function saves one PNG (atomically, :func:`_io.save_figure`) and closes it;
the ``_..._figure`` helper behind it builds and returns the Figure (what the tests read).
"""

from __future__ import annotations

import itertools
import math
import textwrap
from pathlib import Path

from . import _io


class _Palette(dict):
    """Method → colour; a method without a colour gets the next unused one of a cycle
    (and keeps it), so a new method never raises ``KeyError``."""

    _CYCLE = ("tab:pink", "tab:olive", "tab:cyan", "tab:gray", "gold", "navy", "teal",
              "darkred", "lime", "magenta")

    def __missing__(self, method: str) -> str:
        used = set(self.values())
        free = [c for c in self._CYCLE if c not in used]
        color = free[0] if free else self._CYCLE[len(self) % len(self._CYCLE)]
        self[method] = color
        return color


# the first three are the colours of every figure so far; keep them
COLORS = _Palette({"standard": "tab:blue", "l2": "tab:orange", "modified": "tab:green",
                   "bures": "tab:red", "log_fidelity": "tab:purple",
                   "fubini_study": "tab:brown"})

_LOSS_MAX = 1.0  # the quantum loss 1 − |⟨ψ, φ⟩|² lies in [0, 1]
_STUDIES = {"paper": "paper's settings", "tuned": "tuned learning rate",
            "probe": "probes", "variant": "variants"}


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    from .._extras import require

    matplotlib = require("matplotlib", "experiments")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    _io.save_figure(fig, path)
    pyplot().close(fig)


def _wrap(title: str) -> str:
    """A setup's title in lines that fit an 11-inch figure at font size 9 (a tuned setup
    lists every method's learning rate)."""
    return textwrap.fill(title, 120)


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _spans_decades(values) -> bool:
    positive = [v for v in _finite(values) if v > 0]
    return bool(positive) and max(positive) / min(positive) > 10


def _envelope(runs: list[list[float]]):
    """Per epoch over the runs that reach it: median, minimum and maximum (finite values
    only; NaN where no run has a finite value). Runs may differ in length."""
    import statistics

    med, lo, hi = [], [], []
    for column in itertools.zip_longest(*runs):
        values = _finite(column)
        med.append(statistics.median(values) if values else math.nan)
        lo.append(min(values) if values else math.nan)
        hi.append(max(values) if values else math.nan)
    return med, lo, hi


def _loss_limits(values, log: bool) -> tuple[float, float]:
    """y limits for a loss: a little room around the values, the top never above the
    loss's range (1.05 when the values reach 1) and never far above the largest value."""
    values = _finite(values)
    top_value = max(values)
    if log:
        positive = [v for v in values if v > 0]
        bottom, top = min(positive) / 1.6, top_value * 1.25
    else:
        span = (top_value - min(values)) or max(abs(top_value), 1e-12)
        bottom, top = min(values) - 0.05 * span, top_value + 0.05 * span
    if top_value <= _LOSS_MAX:
        top = min(top, 1.05 * _LOSS_MAX)
    return bottom, top


def _curves_figure(curves: dict, *, title: str, thresholds=(1e-2, 1e-3)):
    """The Figure of :func:`curves` (not saved, not closed)."""
    plt = pyplot()
    curves = {m: runs for m, runs in curves.items() if runs}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    every = [v for runs in curves.values() for r in runs for s in ("train", "val")
             for v in r[s]]
    log = _spans_decades(every)
    for ax, split in zip(axes, ("train", "val")):
        for m, runs in curves.items():
            c = COLORS[m]
            for r in runs:
                ax.plot(range(len(r[split])), r[split], color=c, alpha=0.45, lw=0.6)
            med, lo, hi = _envelope([r[split] for r in runs])
            epochs = range(len(med))
            ax.plot(epochs, med, color=c, lw=2, label=f"{m} ({len(runs)} seeds)")
            if len(runs) > 1:
                ax.fill_between(epochs, lo, hi, color=c, alpha=0.15, lw=0)
        if log:
            ax.set_yscale("log")
        if every and _finite(every):
            ax.set_ylim(*_loss_limits(every, log))
        bottom, top = ax.get_ylim()
        for t in thresholds or ():
            if bottom < t < top:
                ax.axhline(t, color="k", lw=0.8, ls=":", alpha=0.4, zorder=0)
                # labelled at the left, where the curves are still near 1
                ax.annotate(f"{t:g}", (0, t), xycoords=("axes fraction", "data"),
                            xytext=(3, 1), textcoords="offset points", fontsize=7,
                            color="0.4", ha="left", va="bottom")
        ax.set_xlabel("epoch (0 = untrained network)")
        ax.set_title("training set" if split == "train" else "validation set", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("quantum loss 1 − |⟨ψ, φ⟩|²")
    if curves:
        axes[0].legend(fontsize=8)
    note = "thin: each seed; solid: median over seeds; band: min–max over seeds"
    if thresholds:
        note += "; dotted: " + ", ".join(f"{t:g}" for t in thresholds) + " (epochs-to-threshold)"
    fig.suptitle(_wrap(title) + "\n" + note, fontsize=9)
    fig.tight_layout()
    return fig


def curves(curves: dict, path: Path, *, title: str, thresholds=(1e-2, 1e-3)) -> None:
    """Training and validation quantum loss per epoch (Fig. 2 of the paper, unsmoothed).

    Args:
        curves: ``{method: [run, ...]}``, one run per seed, each a dict of lists over
            epochs ``0..E`` under ``"train"`` and ``"val"`` (losses in ``[0, 1]``).
            Methods with no runs are left out.
        path: the PNG to write.
        title: the first line of the suptitle (the setup, its optimiser and lr).
        thresholds: losses drawn as faint dotted lines (those of epochs-to-threshold).

    Each seed is a thin line, the median over seeds solid, the min–max envelope over
    seeds a band; the y axis is log when the losses span more than a decade.
    """
    _save(_curves_figure(curves, title=title, thresholds=thresholds), path)


def _size_title(optimizer: str | None) -> str:
    text = "size: ≈ 1/√(1 − L)"
    if optimizer is not None and optimizer.lower().startswith("adam"):
        text += "\n(Adam divides out a scale common to all parameters)"
    return text


def _gradients_figure(curves: dict, *, title: str, optimizer: str | None = None):
    """The Figure of :func:`gradients` (not saved, not closed)."""
    plt = pyplot()
    curves = {m: runs for m, runs in curves.items() if runs}
    fig, (ax_c, ax_n) = plt.subplots(1, 2, figsize=(11, 4.4))
    for m, runs in curves.items():
        for r in runs:
            cos = r.get("cos", [])
            ax_c.plot(range(len(cos)), [max(1 - c, 1e-17) for c in cos], color=COLORS[m],
                      alpha=0.35, lw=0.8)
            ratio = [b / a if a > 0 else math.nan
                     for a, b in zip(r.get("norm_standard", []), r.get("norm_modified", []))]
            ax_n.plot(range(len(ratio)), ratio, color=COLORS[m], alpha=0.35, lw=0.8)
        ax_c.plot([], [], color=COLORS[m], label=f"along {m} training")
    ax_c.set_yscale("log")
    ax_c.set_ylabel("1 − cos(g_standard, g_modified)")
    ax_c.set_title("direction: 1e-4 means cosine 0.9999", fontsize=10)
    ax_n.set_yscale("log")
    ax_n.set_ylabel("‖g_modified‖ / ‖g_standard‖")
    ax_n.set_title(_size_title(optimizer), fontsize=10)
    for ax in (ax_c, ax_n):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if curves:
        ax_c.legend(fontsize=8)
    fig.suptitle(_wrap(title) + "\nnetwork-parameter gradients on a fixed probe batch, each run",
                 fontsize=9)
    fig.tight_layout()
    return fig


def gradients(curves: dict, path: Path, *, title: str, optimizer: str | None = None) -> None:
    """The decisive diagnostic: along each method's training, how far the standard and
    modified gradients of the network parameters (same probe batch, same weights) differ
    in direction (1 − cosine) and in size (‖g_modified‖/‖g_standard‖).

    Args:
        curves: ``{method: [run, ...]}``, each run with lists over epochs under ``"cos"``,
            ``"norm_standard"`` and ``"norm_modified"``.
        path: the PNG to write.
        title: the suptitle's first line; it names the optimiser actually used.
        optimizer: the optimiser's name; only an Adam-like one (``"adam…"``) makes the
            size panel say that the step normalisation removes the size factor.
    """
    _save(_gradients_figure(curves, title=title, optimizer=optimizer), path)


def _log_ticks(ax, axis: str, lo: float, hi: float) -> None:
    """Readable plain-number ticks on a log axis from ``lo`` to ``hi``: 1-2-5 per decade
    over a short range, 1-3 over a middle one, powers of ten beyond."""
    from matplotlib import ticker

    decades = math.log10(hi / lo)
    mantissas = (1, 2, 5) if decades <= 2.5 else (1, 3) if decades <= 5 else (1,)
    ticks = [m * 10.0 ** k for k in range(math.floor(math.log10(lo)) - 1,
                                          math.ceil(math.log10(hi)) + 1) for m in mantissas]
    a = getattr(ax, f"{axis}axis")
    a.set_major_locator(ticker.FixedLocator([t for t in ticks if lo <= t <= hi]))
    a.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    a.set_minor_formatter(ticker.NullFormatter())


def _lr_sweep_figure(search: dict):
    """The Figure of :func:`lr_sweep` (not saved, not closed)."""
    plt = pyplot()
    from matplotlib.lines import Line2D

    keys = list(search)
    ncols = 1 if len(keys) == 1 else 2
    nrows = max(1, math.ceil(len(keys) / ncols))
    width = 7.5 if ncols == 1 else 12.0
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, 3.9 * nrows + 1.1),
                             squeeze=False, layout="constrained")
    methods_seen: list[str] = []
    criteria: list[str] = []
    for ax, key in zip(axes.flat, keys):
        s = search[key]
        if s.get("criterion") and s["criterion"] not in criteria:
            criteria.append(s["criterion"])
        methods = s.get("methods", {})
        ys = [v for d in methods.values() for v in _finite(d.get("scores", []))]
        ys += [v for d in methods.values() for per in d.get("per_seed") or []
               for v in _finite(per or [])]
        ys = [v for v in ys if v > 0]
        lo, hi = (min(ys), max(ys)) if ys else (1e-4, 1.0)
        if hi / lo < 10:  # at least a decade, centred on the values
            mid = math.sqrt(lo * hi)
            lo, hi = mid / math.sqrt(10), mid * math.sqrt(10)
        # the values fill the axes up to the fraction f; above it, one row per method
        # (axes fraction 0.97, 0.94, ...) marks the diverged lrs
        rows = [0.97 - 0.03 * i for i in range(len(methods))]
        f = (min(rows) if rows else 0.97) - 0.06
        span = math.log10(hi / lo)
        bottom = lo / 10 ** (0.05 * span)
        top = bottom * 10 ** (1.05 * span / f)
        xs = [x for d in methods.values() for x in d.get("lrs", [])]
        xs += [d[k] for d in methods.values() for k in ("chosen", "paper_lr")
               if d.get(k) is not None]
        xs = [x for x in xs if x > 0]
        for paper in sorted({d["paper_lr"] for d in methods.values()
                             if d.get("paper_lr") is not None}):
            ax.axvline(paper, color="0.5", ls="--", lw=1, zorder=0)
        any_diverged = False
        for i, (m, d) in enumerate(methods.items()):
            if m not in methods_seen:
                methods_seen.append(m)
            c = COLORS[m]
            lrs, scores = list(d.get("lrs", [])), list(d.get("scores", []))
            ok = [(x, y) for x, y in zip(lrs, scores) if y is not None and math.isfinite(y)]
            if ok:
                ax.plot(*zip(*ok), "-o", color=c, ms=4, lw=1.4, gid=f"score:{m}")
            for x, per in zip(lrs, d.get("per_seed") or []):
                seeds = [v for v in _finite(per or []) if v > 0]
                if seeds:
                    ax.plot([x] * len(seeds), seeds, ".", color=c, alpha=0.35, ms=4)
            diverged = [x for x, y in zip(lrs, scores) if y is None or not math.isfinite(y)]
            if diverged:
                any_diverged = True
                ax.plot(diverged, [rows[i]] * len(diverged), "x", color=c, ms=5, mew=1.5,
                        transform=ax.get_xaxis_transform(), clip_on=False,
                        gid=f"diverged:{m}")
            chosen = d.get("chosen")
            if chosen is not None:
                at = dict(ok).get(chosen)
                style = dict(marker="*", ls="", color=c, ms=13, mec="k", mew=0.8,
                             gid=f"chosen:{m}", zorder=5)
                if at is None:  # not among the finite scores: mark it in the strip
                    ax.plot([chosen], [rows[i]], transform=ax.get_xaxis_transform(),
                            clip_on=False, **style)
                else:
                    ax.plot([chosen], [at], **style)
        if any_diverged:
            ax.plot([0, 1], [f + 0.03] * 2, color="0.8", lw=0.8, transform=ax.transAxes)
        ax.set_xscale("log")
        ax.set_yscale("log")
        if xs:
            xlo, xhi = min(xs) / 1.6, max(xs) * 1.6
            ax.set_xlim(xlo, xhi)
            _log_ticks(ax, "x", xlo, xhi)
        ax.set_ylim(bottom, top)
        # ticks only below the strip of diverged marks, and within the loss's range
        below_strip = bottom * (top / bottom) ** (f + 0.03)
        _log_ticks(ax, "y", bottom, min(below_strip, max(hi, _LOSS_MAX)))
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3, which="major")
        seeds = s.get("seeds")
        head = f"{key}: {s.get('optimizer', '?')}, {s.get('epochs', '?')} epochs"
        if seeds:
            head += f", seeds {', '.join(str(x) for x in seeds)}"
        ax.set_title(head, fontsize=9)
        ax.set_xlabel("learning rate", fontsize=8)
        ax.set_ylabel("selection score (validation loss)", fontsize=8)
    spare = list(axes.flat)[len(keys):]
    for ax in spare:
        ax.set_axis_off()
    handles = [Line2D([], [], color=COLORS[m], marker="o", ms=4, label=m)
               for m in methods_seen]
    handles += [
        Line2D([], [], ls="", marker=".", color="0.4", alpha=0.5, label="one seed's score"),
        Line2D([], [], ls="", marker="*", ms=11, mec="k", mfc="0.8", label="chosen lr"),
        Line2D([], [], ls="", marker="x", color="0.2", mew=1.5,
               label="diverged (≥ 1 seed): top row"),
        Line2D([], [], ls="--", color="0.5", label="the paper's lr"),
    ]
    if spare:  # the empty panel holds the legend
        spare[0].legend(handles=handles, loc="center", fontsize=8, frameon=False)
    else:
        fig.legend(handles=handles, loc="outside lower center", fontsize=8, frameon=False,
                   ncol=4 if ncols == 1 else 5)
    caption = "learning-rate sweep"
    if criteria:
        caption += "; score: " + " | ".join(criteria)
    fig.suptitle(textwrap.fill(caption, 100 if ncols == 1 else 160), fontsize=9)
    return fig


def lr_sweep(search: dict, path: Path) -> None:
    """The learning-rate sweep: the selection score against the learning rate, per
    setup and method, with the chosen and the paper's learning rates marked.

    Args:
        search: ``{setup_key: {"experiment", "optimizer", "epochs", "seeds", "criterion",
            "methods": {method: {"lrs": [float, ascending], "scores": [float | None],
            "per_seed": [[float | None per seed] per lr] (optional), "chosen": float,
            "paper_lr": float}}}}``; a score of ``None`` means at least one seed diverged.
        path: the PNG to write.

    One panel per setup (two columns), both axes log: a line with markers per method,
    each seed's score a faint dot, a diverged lr an ``x`` at the top of the panel, the
    chosen lr a star, the paper's lr a dashed grey vertical line.
    """
    _save(_lr_sweep_figure(search), path)


def _summary_rows(results: dict) -> list[tuple]:
    """``(label, method, stats, study)`` for every non-standard method with a ratio,
    grouped by study (paper, tuned, probe, variant, others, unrecorded), then in the
    order of the setups and methods in ``results``."""
    rows = []
    for key, methods in results.items():
        for m, entry in methods.items():
            if m == "standard" or not isinstance(entry, dict):
                continue
            r = entry.get("ratio_to_standard", {}).get("val")
            if not r:
                continue
            label = f"{key}: {m}"
            if entry.get("optimizer") is not None and entry.get("lr") is not None:
                label += f" ({entry['optimizer']} {entry['lr']:g})"
            rows.append((label, m, r, entry.get("study")))
    order = list(_STUDIES)
    rank = {s: order.index(s) if s in order else len(order) for _, _, _, s in rows}
    rank[None] = len(order) + 1
    return sorted(rows, key=lambda row: rank[row[3]])  # stable: keeps the setup order


def _summary_figure(results: dict, epochs: tuple[int, ...] = (1, 10, 40)):
    """The Figure of :func:`summary` (not saved, not closed); ``None`` without rows."""
    plt = pyplot()
    rows = _summary_rows(results)
    if not rows:
        return None
    whens = [str(e) for e in epochs if any(str(e) in r.get("at_epoch", {})
                                           for _, _, r, _ in rows)]
    whens.append("window")
    # one line per row; a heading line before each study group when any row has a study
    lines: list[tuple] = []  # (label, row or None)
    grouped = any(study is not None for *_, study in rows)
    for study, group in itertools.groupby(rows, key=lambda row: row[3]):
        if grouped:
            name = _STUDIES.get(study, study) if study is not None else "study not recorded"
            lines.append((f"— {name} —", None))
        lines += [(row[0], row) for row in group]
    n = len(lines)
    fig, axes = plt.subplots(1, len(whens), figsize=(2.9 * len(whens) + 2.6, 0.24 * n + 1.5),
                             sharey=True, sharex=True, squeeze=False)
    axes = axes[0]
    xs = [1.0]
    for ax, when in zip(axes, whens):
        for i, (_, row) in enumerate(reversed(lines)):
            if row is None:
                ax.axhline(i, color="0.85", lw=0.6, zorder=0)
                continue
            _, m, r, _ = row
            s = r.get("window") if when == "window" else r.get("at_epoch", {}).get(when)
            if s is None:
                continue
            lo, hi = s["ci95"] if s.get("ci95") else (s["mean"], s["mean"])
            seeds = _finite(s.get("per_seed", []))
            xs += [v for v in (lo, hi, s["mean"], *seeds) if v is not None and v > 0]
            ax.plot([lo, hi], [i, i], color=COLORS[m], lw=2)
            ax.plot([s["mean"]], [i], "o", color=COLORS[m], ms=4.5)
            ax.plot(seeds, [i] * len(seeds), "|", color="k", alpha=0.5, ms=6)
        ax.axvline(1, color="gray", lw=1, ls="--")
        ax.set_xscale("log")
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(alpha=0.3, axis="x")
        ax.set_title("last quarter of the epochs" if when == "window" else f"after epoch {when}",
                     fontsize=8)
    xs = [v for v in xs if math.isfinite(v)]
    xlo, xhi = min(xs) / 1.5, max(xs) * 1.5
    for ax in axes:
        ax.set_xlim(xlo, xhi)
    _log_ticks(axes[0], "x", xlo, xhi)
    axes[0].set_ylim(-0.7, n - 0.3)
    axes[0].set_yticks(range(n))
    axes[0].set_yticklabels([label for label, _ in reversed(lines)], fontsize=7)
    for tick, (_, row) in zip(axes[0].get_yticklabels(), reversed(lines)):
        if row is None:
            tick.set_fontweight("bold")
    fig.supxlabel("validation loss ratio to standard, paired by seed (same log scale in every "
                  "panel): < 1 = better than standard; dot: geometric mean, line: 95 % "
                  "interval, ticks: seeds", fontsize=7)
    fig.tight_layout()
    return fig


def summary(results: dict, path: Path, epochs: tuple[int, ...] = (1, 10, 40)) -> None:
    """Loss ratio to the standard gradient (validation, paired by seed) with 95 % intervals,
    one row per setup and non-standard method (grouped by the entry's ``"study"``: the
    paper's settings, tuned, probes, variants), after ``epochs`` and over the last quarter
    of the epochs: below 1 = better than standard. Every panel has the same log x range.
    Writes nothing when no entry has a ratio."""
    fig = _summary_figure(results, epochs)
    if fig is not None:
        _save(fig, path)
