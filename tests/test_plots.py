"""The experiments' figures (quflow.experiments._plots): what they draw, read back from
the matplotlib artists, and that each writes a PNG."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("matplotlib")

from quflow.experiments import _plots  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    return path.is_file() and path.stat().st_size > len(PNG) and path.read_bytes()[:8] == PNG


def _run(train, val=None, epochs=None):
    epochs = len(train) if epochs is None else epochs
    return {"train": list(train), "val": list(val if val is not None else train),
            "cos": [1 - 10.0 ** -(1 + e % 6) for e in range(epochs)],
            "norm_standard": [0.1 + 0.01 * e for e in range(epochs)],
            "norm_modified": [0.2 + 0.01 * e for e in range(epochs)]}


def _spread_curves():
    """Three seeds per method that disagree wildly: 1e-6 and 0.99 at the same epoch."""
    e = 12
    low = [1.0] + [1e-6] * e
    high = [1.0] + [0.99] * e
    mid = [1.0] + [10.0 ** -(1 + k % 5) for k in range(e)]
    return {"standard": [_run(low), _run(mid), _run(high)],
            "modified": [_run(high), _run(low), _run(mid)],
            "bures": [_run(mid), _run(high), _run(low)],
            "l2": []}  # a method that was not run is left out


def test_curves_band_is_the_seed_envelope_within_the_loss_range(tmp_path):
    from matplotlib.collections import PolyCollection

    curves = _spread_curves()
    fig = _plots._curves_figure(curves, title="synthetic: sgd lr 0.5")
    try:
        for ax, split in zip(fig.axes, ("train", "val")):
            bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
            assert len(bands) == 3  # one per method with runs
            for band, (m, runs) in zip(bands, [(m, r) for m, r in curves.items() if r]):
                ys = [y for path in band.get_paths() for _, y in path.vertices]
                lo = min(min(r[split]) for r in runs)
                hi = max(max(r[split]) for r in runs)
                assert (min(ys), max(ys)) == pytest.approx((lo, hi)), m  # the envelope
                assert 0 <= min(ys) and max(ys) <= 1
                # per epoch: the band's vertical extent is the min-max over seeds
                for path in band.get_paths():
                    for x, y in path.vertices:
                        column = [r[split][int(round(x))] for r in runs]
                        assert min(column) - 1e-12 <= y <= max(column) + 1e-12
            assert ax.get_yscale() == "log"
            assert ax.get_ylim()[1] <= 1.05
            dotted = sorted(line.get_ydata()[0] for line in ax.get_lines()
                            if line.get_linestyle() == ":")
            assert dotted == [1e-3, 1e-2]  # the default thresholds
            assert ax.get_legend_handles_labels()[1] == [
                "standard (3 seeds)", "modified (3 seeds)", "bures (3 seeds)"]
        assert "median" in fig.get_suptitle()
        assert "min–max" in fig.get_suptitle()
    finally:
        _plots.pyplot().close(fig)
    _plots.curves(curves, tmp_path / "curves.png", title="synthetic: sgd lr 0.5")
    assert _is_png(tmp_path / "curves.png")


def test_curves_linear_axis_stays_near_the_values(tmp_path):
    """Within a decade the axis is linear and its top stays near the largest value."""
    curves = {"standard": [_run([0.5, 0.4, 0.3]), _run([0.5, 0.45, 0.35])]}
    fig = _plots._curves_figure(curves, title="t")
    try:
        ax = fig.axes[0]
        assert ax.get_yscale() == "linear"
        assert 0.5 <= ax.get_ylim()[1] <= 0.55
    finally:
        _plots.pyplot().close(fig)


def test_colors_never_raise_for_a_new_method():
    assert _plots.COLORS["standard"] == "tab:blue"
    assert _plots.COLORS["l2"] == "tab:orange"
    assert _plots.COLORS["modified"] == "tab:green"
    known = ("standard", "l2", "modified", "bures", "log_fidelity", "fubini_study")
    assert len({_plots.COLORS[m] for m in known}) == len(known)
    new = _plots.COLORS["some_new_method"]
    assert new not in {_plots.COLORS[m] for m in known}
    assert _plots.COLORS["some_new_method"] == new  # it keeps its colour


@pytest.mark.parametrize(("optimizer", "mentions_adam"),
                         [("sgd", False), (None, False), ("adam", True), ("AdamW", True)])
def test_gradients_size_title_names_adam_only_for_adam(tmp_path, optimizer, mentions_adam):
    curves = _spread_curves()
    fig = _plots._gradients_figure(curves, title=f"synthetic: {optimizer} lr 1",
                                   optimizer=optimizer)
    try:
        size_title = fig.axes[1].get_title()
        assert "1/√(1 − L)" in size_title
        assert ("adam" in size_title.lower()) == mentions_adam
    finally:
        _plots.pyplot().close(fig)
    _plots.gradients(curves, tmp_path / "g.png", title="t", optimizer=optimizer)
    assert _is_png(tmp_path / "g.png")


def test_gradients_signature_stays_compatible(tmp_path):
    _plots.gradients(_spread_curves(), tmp_path / "g.png", title="old caller")
    assert _is_png(tmp_path / "g.png")


def _search():
    lrs = [1e-3, 1e-2, 1e-1, 1.0]
    return {
        "prediction-sgd": {
            "experiment": "prediction", "optimizer": "sgd", "epochs": 15, "seeds": [0, 1, 2],
            "criterion": "validation loss, geometric mean over seeds of the last-quarter mean",
            "methods": {
                "standard": {"lrs": lrs, "scores": [0.3, 0.05, 0.01, None],
                             "per_seed": [[0.3, 0.31, 0.29], [0.05, 0.04, 0.06],
                                          [0.01, 0.02, 0.005], [0.02, None, None]],
                             "chosen": 0.1, "paper_lr": 0.5},
                "modified": {"lrs": lrs, "scores": [0.2, 0.02, None, None],
                             "per_seed": [[0.2, 0.2, 0.2], [0.02, 0.03, 0.01],
                                          [None, 0.01, 0.01], [None, None, None]],
                             "chosen": 0.01, "paper_lr": 0.5},
                # every lr diverged but one, and no per-seed scores
                "bures": {"lrs": lrs, "scores": [None, 0.07, None, None],
                          "chosen": 0.01, "paper_lr": 0.5},
            }},
        "control-sgd": {
            "experiment": "control", "optimizer": "sgd", "epochs": 40, "seeds": [0, 1, 2],
            "criterion": "validation loss, geometric mean over seeds of the last-quarter mean",
            "methods": {
                "standard": {"lrs": [0.1, 1.0, 10.0], "scores": [0.5, 0.4, None],
                             "per_seed": [[0.5, 0.5, 0.5], [0.4, 0.3, 0.5], [None, 1.0, 1.0]],
                             "chosen": 1.0, "paper_lr": 1.0},
            }},
        "control": {
            "experiment": "control", "optimizer": "adam", "epochs": 40, "seeds": [0, 1, 2],
            "criterion": "validation loss, geometric mean over seeds of the last-quarter mean",
            "methods": {"log_fidelity": {"lrs": [1e-3, 5e-3], "scores": [0.4, 0.39],
                                         "per_seed": [[0.4] * 3, [0.39] * 3],
                                         "chosen": 5e-3, "paper_lr": 5e-3}}},
    }


def test_lr_sweep_marks_the_chosen_and_the_diverged_lrs(tmp_path):
    search = _search()
    fig = _plots._lr_sweep_figure(search)
    try:
        visible = [ax for ax in fig.axes if ax.axison]  # the spare one holds the legend
        assert len(visible) == len(search)
        for ax, (key, s) in zip(visible, search.items()):
            assert key in ax.get_title() and s["optimizer"] in ax.get_title()
            assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
            lines = {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}
            for m, d in s["methods"].items():
                chosen = lines[f"chosen:{m}"]
                assert list(chosen.get_xdata()) == [d["chosen"]]
                score = dict(zip(d["lrs"], d["scores"]))[d["chosen"]]
                assert list(chosen.get_ydata()) == [score]
                diverged = [x for x, y in zip(d["lrs"], d["scores"]) if y is None]
                if diverged:
                    assert list(lines[f"diverged:{m}"].get_xdata()) == diverged
                else:
                    assert f"diverged:{m}" not in lines
            # the paper's lr: a vertical line
            paper = {d["paper_lr"] for d in s["methods"].values()}
            vertical = {line.get_xdata()[0] for line in ax.get_lines()
                        if line.get_linestyle() == "--"}
            assert paper <= vertical
    finally:
        _plots.pyplot().close(fig)
    _plots.lr_sweep(search, tmp_path / "sweep.png")
    assert _is_png(tmp_path / "sweep.png")


def _ratio(means):
    def stat(m):
        return {"mean": m, "ci95": [m / 1.5, m * 1.5], "per_seed": [m / 1.2, m, m * 1.2]}
    return {"val": {"final": stat(means[-1]), "window": stat(means[-1]),
                    "at_epoch": {"1": stat(means[0]), "10": stat(means[1]),
                                 "40": stat(means[2])}}}


def _results():
    results = {}
    for i, key in enumerate(("prediction", "prediction-sgd", "control", "control-sgd-clip",
                             "prediction-tuned")):
        study = "tuned" if key.endswith("tuned") else "variant" if key.endswith("clip") \
            else "paper"
        entry = {"standard": {"optimizer": "sgd", "lr": 0.5, "study": study}}
        for j, m in enumerate(("modified", "l2", "bures", "log_fidelity", "fubini_study")):
            scale = 10.0 ** ((i + j) % 7 - 3)
            entry[m] = {"optimizer": "sgd", "lr": 0.5, "study": study,
                        "ratio_to_standard": _ratio([scale, 1 / scale, 1.0, scale * 3])}
        results[key] = entry
    # one entry without intervals (one seed) and one without a study
    results["control"]["modified"]["ratio_to_standard"]["val"]["window"]["ci95"] = None
    del results["control"]["l2"]["study"]
    return results


def test_summary_panels_share_one_x_range(tmp_path):
    results = _results()
    fig = _plots._summary_figure(results)
    try:
        axes = fig.axes
        assert len(axes) == 4  # epochs 1, 10, 40 and the last quarter
        limits = {tuple(ax.get_xlim()) for ax in axes}
        assert len(limits) == 1
        lo, hi = limits.pop()
        # every interval of every panel lies inside the common range
        for ax in axes:
            assert ax.get_xscale() == "log"
            for line in ax.get_lines():
                if line.get_transform() is not ax.transData:
                    continue  # the group separators span the axes
                xs = [x for x in line.get_xdata() if math.isfinite(x)]
                assert all(lo <= x <= hi for x in xs)
        labels = [t.get_text() for t in axes[0].get_yticklabels()]
        assert any("paper" in t for t in labels) and any("tuned" in t for t in labels)
        assert any("fubini_study" in t for t in labels)
        assert any("control-sgd-clip" in t for t in labels)
        assert not any(t.startswith("prediction: standard") for t in labels)
        # the paper's rows come before (above) the tuned ones
        top_down = labels[::-1]
        first_tuned = next(i for i, t in enumerate(top_down) if t.startswith("prediction-tuned"))
        last_paper = max(i for i, t in enumerate(top_down) if t.startswith("prediction-sgd:"))
        assert last_paper < first_tuned
    finally:
        _plots.pyplot().close(fig)
    _plots.summary(results, tmp_path / "summary.png")
    assert _is_png(tmp_path / "summary.png")


def test_summary_writes_nothing_without_ratios(tmp_path):
    _plots.summary({"control": {"standard": {}}}, tmp_path / "summary.png")
    assert not (tmp_path / "summary.png").exists()
