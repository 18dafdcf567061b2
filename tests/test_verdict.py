"""The verdict's statistics (_stats: sign-flip p, paired differences with censoring, epochs
to reach a threshold) and its semantics (verdict: judgements, row verdicts, the toy's
step-size row), on synthetic results made by the real summariser."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from scipy.stats import t

from quflow.experiments import _stats, verdict

SEEDS = [3, 4, 5]  # held-out seeds, not starting at 0


# ---------------------------------------------------------------- synthetic results

def _runs(curves: list[list[float]]) -> list[dict]:
    """One run per seed, the same curve for training and validation."""
    return [{"train": c, "val": c, "cos": [1.0] * len(c), "norm_standard": [1.0] * len(c),
             "norm_modified": [1.0] * len(c)} for c in curves]


def _std(epochs: int = 8) -> list[list[float]]:
    """Standard's curves over epochs 0..E, one per seed: 1 at epoch 0, then decaying."""
    return [[1.0] + [0.5 * 0.5 ** e * (1 + 0.1 * k) for e in range(1, epochs + 1)]
            for k in range(len(SEEDS))]


def _times(curves: list[list[float]], factors: list[float]) -> list[list[float]]:
    """``curves`` with seed k's epochs ≥ 1 multiplied by ``factors[k]``."""
    return [[c[0]] + [v * f for v in c[1:]] for c, f in zip(curves, factors)]


def _setup(methods: dict[str, list[list[float]]], seeds=SEEDS, **settings) -> dict:
    """A results.json setup made by ``_stats.summarise`` from made-up curves."""
    first = next(iter(methods.values()))
    return _stats.summarise({m: _runs(c) for m, c in methods.items()}, list(seeds),
                            epochs=len(first[0]) - 1, setup=settings)


def _prediction(mod: list[float], l2: list[float] | None = None, **settings) -> dict:
    """A prediction setup: mod = std × ``mod`` per seed, L2 = std × ``l2`` (default 10)."""
    std = _std()
    methods = {"standard": std, "modified": _times(std, mod)}
    if l2 is not False:
        methods["l2"] = _times(std, l2 or [10.0, 10.1, 9.9])
    settings = {"experiment": "prediction", "study": "paper", "optimizer": "adam",
                "lr": 0.005, "lr_source": "paper", **settings}
    return _setup(methods, **settings)


def _rows(table: str, key: str) -> list[list[str]]:
    """The cells of the rows of setup ``key`` (or of the claim that starts with ``key``)."""
    rows = [[c.strip() for c in line.strip()[1:-1].split("|")]  # no cell holds a "|"
            for line in table.splitlines() if line.startswith("| ")]
    return [r for r in rows if r[1].startswith(f"{key} (") or r[0].startswith(key)]


def _row(table: str, key: str) -> list[str]:
    """The cells of the one row of setup ``key``."""
    found = _rows(table, key)
    assert len(found) == 1, table
    return found[0]


# ---------------------------------------------------------------- sign-flip p

def _brute_force_p(x: list[float]) -> float:
    total = abs(sum(x))
    tol = 1e-12 * sum(abs(v) for v in x)
    hits = sum(abs(sum(s * v for s, v in zip(signs, x))) >= total - tol
               for signs in itertools.product((-1, 1), repeat=len(x)))
    return hits / 2 ** len(x)


@pytest.mark.parametrize("n", range(1, 11))
def test_sign_flip_p_is_the_brute_force_enumeration(n):
    rng = random.Random(n)
    for x in ([rng.gauss(0.3, 1) for _ in range(n)],      # no ties
              [float(rng.randint(-3, 3)) for _ in range(n)]):  # ties (and zeros) count
        assert _stats.sign_flip_p(x) == _brute_force_p(x)


def test_sign_flip_p_known_values_and_limits():
    assert _stats.sign_flip_p([0.3, 0.1, 0.2]) == 0.25          # n = 3: the smallest p
    assert _stats.sign_flip_p([1, 2, 3, 4, 5]) == 0.0625        # n = 5
    assert _stats.sign_flip_p([-1.0] * 8) == 2 / 2 ** 8         # n = 8, either sign
    assert _stats.sign_flip_p([1.0, -1.0]) == 1.0               # mean 0: every pattern
    assert _stats.sign_flip_p([0.0, 0.0, 0.0]) == 1.0
    assert _stats.sign_flip_p([2.5]) == 1.0
    assert _stats.sign_flip_p([1.0] * 20) == 2 / 2 ** 20
    for bad in ([], [1.0] * 21):
        with pytest.raises(ValueError, match="x: expected 1 to 20 values"):
            _stats.sign_flip_p(bad)


def test_paired_ratio_has_the_sign_flip_p_of_its_log_ratios():
    r = _stats.paired_ratio([2.0, 8.0, 4.0], [1.0, 4.0, 2.0])   # ratio 2 in every seed
    assert r["mean"] == pytest.approx(2.0) and r["p_signflip"] == 0.25
    r = _stats.paired_ratio([2.0, 0.5, 1.0], [1.0, 1.0, 1.0])   # log-ratios ln 2, −ln 2, 0
    assert r["p_signflip"] == 1.0
    assert _stats.paired_ratio([2.0], [1.0])["p_signflip"] is None


# ---------------------------------------------------------------- paired differences

def test_paired_difference_counts_never_reached_as_a_censored_bound():
    values, reference = [3, None, 5, 4], [5, 6, None, 7]
    d = _stats.paired_difference(values, reference, censor_at=11)
    assert d["per_seed"] == [-2, 11 - 6, 5 - 11, -3] and d["censored"] == 2
    m, s = -1.5, math.sqrt((0.5**2 + 6.5**2 + 4.5**2 + 1.5**2) / 3)  # by hand
    assert d["mean"] == m
    half = t.ppf(0.975, 3) * s / math.sqrt(4)
    assert d["ci95"] == pytest.approx([m - half, m + half])
    assert d["p_signflip"] == _stats.sign_flip_p(d["per_seed"])
    # a bound: a later censoring epoch moves each censored seed's difference away, the
    # uncensored ones stay
    later = _stats.paired_difference(values, reference, censor_at=21)["per_seed"]
    assert later[1] > d["per_seed"][1] and later[2] < d["per_seed"][2]
    assert (later[0], later[3]) == (-2, -3)


def test_paired_difference_one_seed_and_zero_variance():
    d = _stats.paired_difference([None], [4], censor_at=9)
    assert d == {"mean": 5, "ci95": None, "per_seed": [5], "censored": 1, "p_signflip": None}
    d = _stats.paired_difference([2, 3, 4], [1, 2, 3], censor_at=9)
    assert d["ci95"] == [1.0, 1.0] and d["censored"] == 0 and d["p_signflip"] == 0.25
    with pytest.raises(ValueError, match="equal non-zero lengths"):
        _stats.paired_difference([1, 2], [1], censor_at=3)


# ---------------------------------------------------------------- summarise's reach

def test_summarise_records_the_first_epoch_below_each_threshold():
    val = [[0.005, 0.5, 0.009, 0.0005],    # epoch 0 never counts
           [1.0, 0.5, 0.2, 0.1],           # never
           [1.0, 1e-4, 0.5, 1e-5]]         # the first epoch, not the last one below
    train = [[1.0, 0.009, 0.009, 0.009]] * 3
    runs = [{**r, "train": tr} for r, tr in zip(_runs(val), train)]
    out = _stats.summarise({"standard": runs}, [7, 8, 9], epochs=3, setup={})["standard"]
    assert out["reach"]["val"] == {"0.01": [2, None, 1], "0.001": [3, None, 1]}
    assert out["reach"]["train"] == {"0.01": [1, 1, 1], "0.001": [None, None, None]}
    assert out["seeds"] == [7, 8, 9] and out["val"]["window"]["epochs"] == [3, 3]
    assert out["ratio_to_standard"]["val"]["window"]["p_signflip"] == 1.0  # ratio 1: a tie


# ---------------------------------------------------------------- verdict semantics

def test_ratio_judgements_and_row_verdicts():
    j = verdict.judge
    assert j({"mean": 0.3, "ci95": [0.2, 0.49]}) == "holds ≥2×"
    assert j({"mean": 0.4, "ci95": [0.3, 0.5]}) == "holds"          # hi = 1/EFFECT: not ≥2×
    assert j({"mean": 0.8, "ci95": [0.6, 0.99]}) == "holds"
    assert j({"mean": 2.0, "ci95": [1.01, 3.0]}) == "contradicted"
    assert j({"mean": 0.9, "ci95": [0.5, 1.2]}) == "not separable"
    assert j({"mean": 0.01, "ci95": None}) == "not separable"       # one seed
    assert j(None) is None
    v = verdict.claim_verdict
    assert v("contradicted", ["holds ≥2×"]) == "no"
    assert v("not separable", ["holds"]) == "not shown"
    assert v("holds ≥2×", ["holds"]) == v("holds ≥2×", ["holds ≥2×"]) == "**yes**"
    assert v("holds ≥2×", ["not separable"]) == v("holds ≥2×", [None]) == "partly"
    assert v("holds", ["holds ≥2×"]) == "partly"
    assert v(None, ["holds"]) == "—"


@pytest.mark.parametrize("mod,l2,verdict_,primary", [
    ([1.5, 1.52, 1.49], None, "no", "contradicted"),            # the secondary holds ≥2×
    ([1 / 1.3, 0.78, 0.76], None, "partly", "holds"),           # 1.3×: direction only
    ([0.3, 0.31, 0.29], None, "**yes**", "holds ≥2×"),
    ([0.3, 0.31, 0.29], [0.5, 4.0, 1.0], "partly", "holds ≥2×"),  # secondary not separable
    ([0.5, 2.0, 1.0], None, "not shown", "not separable"),
])
def test_row_verdicts_on_synthetic_results(mod, l2, verdict_, primary):
    results = {"prediction-tuned": _prediction(mod, l2, study="tuned")}
    row = _row(verdict.render(results), "prediction-tuned")
    assert row[-1] == verdict_ and row[3].startswith("mod/std ")
    assert row[3].endswith(f", p {_stats.sign_flip_p([math.log(f) for f in mod]):.3g}: "
                           f"{primary}")
    assert row[1] == "prediction-tuned (tuned; 3 held-out seeds; 8 epochs)"
    assert row[4].startswith("mod/L2 ")


def test_epochs_to_threshold_cells():
    std = _std()    # reaches 1e-2 at epoch 5 (seed 3) or 6, 1e-3 never (8 epochs)
    results = {"prediction": _setup({"standard": std, "modified": _times(std, [0.1] * 3)},
                                    experiment="prediction", optimizer="adam", lr=0.005)}
    row = _row(verdict.render(results), "prediction")
    expect = _stats.paired_difference([2, 3, 3], [5, 6, 6], censor_at=9)
    assert row[5] == (f"mod − std {expect['mean']:.3g} [{expect['ci95'][0]:.3g}, "
                      f"{expect['ci95'][1]:.3g}], p 0.25")
    assert row[6].endswith("(never reached in 3 seeds: counted as epoch 9, a bound)")
    assert row[4] == "mod/L2 —" and row[-1] == "partly"  # L2 not run: the claim not all shown


def test_missing_methods_and_old_results_render():
    std = _std()
    old = _setup({"standard": std, "modified": _times(std, [0.2, 0.21, 0.19]),
                  "l2": _times(std, [3.0, 3.1, 2.9])}, seeds=[0, 1, 2],
                 optimizer="sgd", lr=1.0)
    for entry in old.values():  # what files written before "reach" and "experiment" hold
        del entry["reach"]
    no_mod = _setup({"standard": std, "l2": std}, experiment="control", optimizer="sgd",
                    lr=1.0, study="probe")
    results = {"control-sgd": old, "control-sgd-clip": no_mod}
    table = verdict.render(results)
    row = _row(table, "control-sgd")
    assert row[1] == "control-sgd (3 seeds; 8 epochs)" and row[2] == "sgd 1"
    assert row[0].startswith("control:") and row[5] == row[6] == "—"
    assert row[-1] == "**yes**"  # std/L2 ≈ 0.33 holds, mod/std ≈ 0.2 holds ≥2×
    row = _row(table, "control-sgd-clip")
    assert row[3] == "mod/std —" and row[-1] == "—" and row[4].startswith("std/L2 1 ")
    assert "Smallest possible sign-flip p: 3 seeds 0.25." in table
    assert verdict.render_all(results).count("### ") == 2  # no loss family: no third table


def test_the_experiment_comes_from_the_entry_not_the_key():
    std = _std()
    results = {"variant-x": _setup({"standard": std, "modified": std}, experiment="control",
                                   optimizer="sgd", lr=2.0, study="variant")}
    assert _row(verdict.render(results), "variant-x")[0].startswith("control:")


def test_per_method_learning_rates_and_the_count_line():
    s = _prediction([0.3, 0.31, 0.29], optimizer="sgd", lr_source="search", study="tuned")
    for m, lr in (("standard", 2.0), ("modified", 1.5), ("l2", 1.0)):
        s[m]["lr"] = lr
    table = verdict.render({"prediction-sgd-tuned": s})
    assert _row(table, "prediction-sgd-tuned")[2] == "sgd; lr std 2, mod 1.5, L2 1 (search)"
    # primary, secondary, and mod − std to 1e-2 and 1e-3 (std never reaches 1e-3, mod does)
    assert table.splitlines()[-1].startswith(
        "4 comparisons with an interval in this table (1 primary, one per row)")


def test_secondary_and_family_tables():
    std = _std(40)
    s = _setup({"standard": std, "modified": _times(std, [0.3, 0.31, 0.29]),
                "bures": _times(std, [1.1, 1.12, 1.09])},
               experiment="control", optimizer="adam", lr=0.005)
    secondary = verdict.render_secondary({"control": s})
    (row,) = _rows(secondary, "control")  # std/L2: L2 not run, no row
    assert row[1] == "mod/std" and row[2].startswith("0.3 [") and row[2].endswith("holds ≥2×")
    assert len(row) == 2 + len(verdict.EPOCHS_SHOWN)
    family = verdict.render_family({"control": s})
    row = _row(family, "control")
    assert row[2].endswith(": contradicted") and row[3] == row[4] == "—"
    assert verdict.render_family({"toy": {}}) == ""
    assert "### The loss family against standard" in verdict.render_all({"control": s})
    with pytest.raises(ValueError, match="split"):
        verdict.render({}, split="test")


# ---------------------------------------------------------------- the toy

def _toy(std, l2, mod, l2_at_2lr=None) -> dict:
    offsets = ("0.01", "0.0001", "1e-06")
    toy = {g: {"steps_to_target_by_offset": dict(zip(offsets, s))}
           for g, s in (("standard", std), ("l2", l2), ("modified", mod))}
    if l2_at_2lr:
        toy["l2_at_2lr"] = {"steps_to_target_by_offset": dict(zip(offsets, l2_at_2lr))}
    return {"toy": toy}


def test_toy_fastest_is_a_step_size_when_l2_at_twice_the_step_takes_the_same_steps():
    paper = ([41, 67, 92], [40, 40, 40], [19, 19, 19])
    row = _row(verdict.render(_toy(*paper, l2_at_2lr=[19, 19, 19])), "toy: mod is fastest")
    assert row[-1] == "step size"
    assert row[4] == "a step size only: L2 at 2η takes the same steps (mod = 2·L2 on θ)"
    assert "δ=0.01: mod 19, std 41, L2 40, L2 at 2η 19" in row[3]
    assert _row(verdict.render(_toy(*paper)), "toy: mod is fastest")[-1] == "**yes**"  # old
    assert _row(verdict.render(_toy(*paper, l2_at_2lr=[20, 20, 19])),
                "toy: mod is fastest")[-1] == "**yes**"
    escape = "toy: std escapes"
    assert _row(verdict.render(_toy(*paper)), escape)[-1] == "**yes**"
    assert _row(verdict.render(_toy([41, 41, 41], *paper[1:])), escape)[-1] == "no"
    assert _row(verdict.render(_toy([41, 67, None], *paper[1:])), escape)[-1] == "no"


def test_the_table_says_whether_a_claim_holds_across_its_setups():
    line = verdict._across_line({"control": [verdict.YES, verdict.NO, verdict.NO],
                                 "prediction": [verdict.NOT_SHOWN]})
    assert line == ("Across setups: control 1 yes, 2 no (of 3 setups); prediction 1 not shown "
                    "(of 1 setup).\n\n")
    assert verdict._across_line({}) == ""
