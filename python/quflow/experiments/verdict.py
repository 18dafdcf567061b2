"""The claim-by-claim verdict tables, rendered from a ``results.json``.

``quflow verdict results/results.json`` prints them; the tables in ``docs/reproduction.md``
are this module's output for the committed results in ``docs/reproduction/`` (a test
keeps them equal), so the documentation cannot drift from the code.

What is claimed and how it is judged, fixed here before the runs it judges:

* **The claims** (:data:`CLAIMS`). Each trained experiment has one claim with ONE primary
  comparison, the ratio of two methods' losses over the last quarter of the epochs
  (each run's geometric mean over that window, paired by seed, see ``_stats``), and
  secondary ones: another such ratio, the epochs each method needs to reach
  ``L < 1e-2`` and ``L < 1e-3`` (the difference of the primary pair, paired by seed) and
  the loss ratios after epochs 1, 10 and 40 (:func:`render_secondary`).
* **A ratio** ``a/b`` that the paper claims is below 1, with 95 % t-interval ``[lo, hi]``:
  *holds ≥2×* if ``hi < 1/EFFECT`` (the paper's factor, :data:`EFFECT` = 2); *holds* if
  ``hi < 1`` (the direction only); *contradicted* if ``lo > 1``; *not separable*
  otherwise, and always with one seed.
* **A row** (one setup: experiment × optimiser × learning rates × seeds): **no** if the
  primary comparison is contradicted; **not shown** if it is not separable; **yes** only
  if it holds ≥2× and every secondary loss ratio of the claim holds at least in direction
  (one that could not be made, its method not run, does not); **partly** otherwise. The
  epochs-to-threshold differences and the fixed-epoch ratios are reported, not judged into
  the row. A row whose primary methods were not run is "—".
* **Evidence beside each interval**: the exact sign-flip p-value (``_stats.sign_flip_p``),
  which cannot go below ``2/2ⁿ`` with ``n`` seeds (0.25 with 3).
* **Multiplicity**: below each table, how many comparisons it makes; with no difference
  between the methods about one in 20 would still exclude "no difference" by chance.
* **The toy** is deterministic (steps, no seeds): "std escapes ever more slowly as it
  starts closer; L2 and mod do not care", and "mod is fastest" which, where the results
  hold L2 at twice the step size with the same steps as mod, is labelled *step size*: on
  ``θ`` the modified gradient is exactly 2 × the L2 gradient.
"""

from __future__ import annotations

from typing import NamedTuple

from ._stats import paired_difference, paired_ratio

EFFECT = 2.0  # the paper's claimed factor: "holds ≥2×" needs the whole interval below 1/2


class Claim(NamedTuple):
    """One claim of the paper about one experiment."""
    text: str
    primary: tuple[str, str]  # (a, b): "a reaches a lower loss than b"
    secondary: tuple[tuple[str, str], ...]


# experiment -> its claim
CLAIMS = {
    "prediction": Claim("modified learns best: mod < std, mod < L2",
                        ("modified", "standard"), (("modified", "l2"),)),
    "control": Claim("modified best, L2 worst: mod < std < L2",
                     ("modified", "standard"), (("standard", "l2"),)),
}
THRESHOLDS = ("0.01", "0.001")  # keys of the entries' "reach"
EPOCHS_SHOWN = (1, 10, 40)
FAMILY = ("bures", "log_fidelity", "fubini_study")
NAMES = {"standard": "std", "modified": "mod", "l2": "L2", "bures": "Bures",
         "log_fidelity": "log F", "fubini_study": "FS"}
HOLDS_2X, HOLDS, CONTRADICTED, NOT_SEPARABLE = ("holds ≥2×", "holds", "contradicted",
                                                 "not separable")
YES, PARTLY, NOT_SHOWN, NO, MISSING, STEP_SIZE = ("**yes**", "partly", "not shown", "no",
                                                   "—", "step size")


def judge(ratio: dict | None) -> str | None:
    """The judgement of a paired ratio ``a/b`` claimed to be below 1 (``None``: not made).

    Args:
        ratio: ``{"mean", "ci95"}`` as from ``_stats.paired_ratio``; ``ci95`` is ``None``
            with one seed.

    Example:
        >>> judge({"mean": 0.7, "ci95": [0.6, 0.8]}), judge({"mean": 0.3, "ci95": [0.2, 0.4]})
        ('holds', 'holds ≥2×')
    """
    if ratio is None:
        return None
    if ratio["ci95"] is None:
        return NOT_SEPARABLE
    lo, hi = ratio["ci95"]
    if hi < 1 / EFFECT:
        return HOLDS_2X
    if hi < 1:
        return HOLDS
    return CONTRADICTED if lo > 1 else NOT_SEPARABLE


def claim_verdict(primary: str | None, secondary: list[str | None]) -> str:
    """A row's verdict from the judgements of its primary and secondary loss ratios.

    Example:
        >>> claim_verdict(HOLDS_2X, [HOLDS]), claim_verdict(HOLDS, [HOLDS_2X])
        ('**yes**', 'partly')
    """
    if primary is None:
        return MISSING
    if primary == CONTRADICTED:
        return NO
    if primary == NOT_SEPARABLE:
        return NOT_SHOWN
    if primary == HOLDS_2X and all(j in (HOLDS, HOLDS_2X) for j in secondary):
        return YES
    return PARTLY


# ---------------------------------------------------------------- the comparisons

def _setups(results: dict, split: str):
    """``(key, experiment, methods)`` of each trained setup, in the file's order."""
    for key, methods in results.items():
        if key == "toy" or not isinstance(methods, dict):
            continue
        methods = {m: e for m, e in methods.items() if isinstance(e, dict) and split in e}
        if methods:
            first = next(iter(methods.values()))
            yield key, first.get("experiment", key.split("-")[0]), methods


def _claimed(results: dict, split: str):
    """``(experiment, claim, key, methods)`` of each setup, claim by claim."""
    for experiment, claim in CLAIMS.items():
        for key, exp, methods in _setups(results, split):
            if exp == experiment:
                yield experiment, claim, key, methods


def _pairs(a: dict, b: dict, values) -> tuple[list, list] | None:
    """``values(entry)`` of ``a`` and ``b`` paired by seed (``None`` if either is missing)."""
    va, vb = values(a), values(b)
    if va is None or vb is None:
        return None
    by_seed = dict(zip(b.get("seeds") or range(len(vb)), vb))
    pairs = [(x, by_seed[s]) for s, x in zip(a.get("seeds") or range(len(va)), va)
             if s in by_seed]
    return ([x for x, _ in pairs], [y for _, y in pairs]) if pairs else None


def _ratio(methods: dict, a: str, b: str, split: str, epoch: int | None = None) -> dict | None:
    """Paired ratio ``a/b`` of the window losses (or of the losses after ``epoch``)."""
    def values(e):
        s = e[split]["window"] if epoch is None else e[split].get("at_epoch", {}).get(str(epoch))
        return s and s["per_seed"]
    pairs = methods.get(a) and methods.get(b) and _pairs(methods[a], methods[b], values)
    return paired_ratio(*pairs) if pairs else None


def _reach(methods: dict, a: str, b: str, split: str, threshold: str) -> dict | None:
    """Paired difference ``a − b`` of the epochs to reach ``L < threshold`` (or ``None``)."""
    pairs = methods.get(a) and methods.get(b) and _pairs(
        methods[a], methods[b], lambda e: e.get("reach", {}).get(split, {}).get(threshold))
    if not pairs:
        return None
    censor_at = methods[a].get("epochs", 0) + 1
    return {**paired_difference(*pairs, censor_at=censor_at), "censor_at": censor_at,
            "never": all(x is None and y is None for x, y in zip(*pairs))}


# ---------------------------------------------------------------- cells

def _g(x) -> str:
    return f"{x:g}" if isinstance(x, (int, float)) else "?"


def _plural(k: int, word: str) -> str:
    return f"{k} {word}{'s' * (k != 1)}"


def _n_seeds(k: int) -> str:
    return _plural(k, "seed")


def _ci(r: dict) -> str:
    return f"[{r['ci95'][0]:.3g}, {r['ci95'][1]:.3g}]" if r["ci95"] else "[1 seed]"


def _p(r: dict) -> str:
    return f", p {r['p_signflip']:.3g}" if r.get("p_signflip") is not None else ""


def _ratio_cell(r: dict | None, a: str = "", b: str = "") -> str:
    """``"a/b mean [lo, hi], p …: judgement"`` (no ``a/b`` when they are not given)."""
    name = f"{NAMES.get(a, a)}/{NAMES.get(b, b)} " if a else ""
    if r is None:
        return name + MISSING
    return f"{name}{r['mean']:.3g} {_ci(r)}{_p(r)}: {judge(r)}"


def _reach_cell(d: dict | None, a: str, b: str) -> str:
    if d is None:
        return MISSING
    if d["never"]:
        return "neither reaches it"
    cell = f"{NAMES.get(a, a)} − {NAMES.get(b, b)} {d['mean']:.3g} {_ci(d)}{_p(d)}"
    if d["censored"]:
        cell += (f" (never reached in {_n_seeds(d['censored'])}: counted as epoch "
                 f"{d['censor_at']}, a bound)")
    return cell


def _setup_cell(key: str, methods: dict, split: str) -> str:
    first = next(iter(methods.values()))
    n = len(first.get("seeds") or first[split]["window"]["per_seed"])
    parts = [first["study"]] if first.get("study") else []
    parts.append(_n_seeds(n).replace(" seed", " held-out seed") if "study" in first
                 else _n_seeds(n))
    if "epochs" in first:
        parts.append(_plural(first["epochs"], "epoch"))
    return f"{key} ({'; '.join(parts)})"


def _optimiser_cell(methods: dict, shown: list[str]) -> str:
    first = next(iter(methods.values()))
    lrs = {m: methods[m].get("lr") for m in shown if m in methods} or {"": first.get("lr")}
    cell = first.get("optimizer", "?")
    if len(set(lrs.values())) == 1:
        cell += f" {_g(next(iter(lrs.values())))}"
    else:
        cell += "; lr " + ", ".join(f"{NAMES.get(m, m)} {_g(lr)}" for m, lr in lrs.items())
    source = first.get("lr_source")
    return cell + (f" ({source})" if source and source != "paper" else "")


def _count_line(n: int, primary: int | None, seeds: set[int]) -> str:
    ps = f" ({primary} primary, one per row)" if primary is not None else ""
    line = (f"{n} comparisons with an interval in this table{ps}; if no method differed, "
            f"about 1 in 20 (here {n / 20:.2g}) would still exclude no difference at the "
            f"95 % level by chance, half of those on the claimed side.")
    if seeds:
        line += " Smallest possible sign-flip p: " + ", ".join(
            f"{_n_seeds(k)} {2 / 2 ** k:.3g}" for k in sorted(seeds)) + "."
    return line + "\n"


def _has_interval(r: dict | None) -> bool:
    """Whether ``r`` is a comparison that was made, with an interval (≥ 2 seeds)."""
    return r is not None and r["ci95"] is not None and not r.get("never")


def _line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


# ---------------------------------------------------------------- the toy

def _toy_rows(toy: dict) -> list[str]:
    """The toy's two rows, from the steps each gradient takes to ``L < 1e-3`` per offset."""
    steps = {g: r.get("steps_to_target_by_offset", {}) for g, r in toy.items()
             if isinstance(r, dict)}
    std, l2, mod = (steps.get(g, {}) for g in ("standard", "l2", "modified"))
    offsets = list(std or mod or l2)
    at2 = steps.get("l2_at_2lr")

    def seq(s: dict) -> list:
        return [s.get(d) for d in offsets]

    def shown(k) -> str:
        return "never" if k is None else str(k)

    def text(cols: list[tuple[str, dict]]) -> str:
        return "steps to L < 1e-3: " + "; ".join(
            f"δ={d}: " + ", ".join(f"{name} {shown(s.get(d, MISSING))}" for name, s in cols)
            for d in offsets)

    s, q, m = seq(std), seq(l2), seq(mod)
    escape = (None not in s and bool(s) and all(x < y for x, y in zip(s, s[1:]))
              and all(None not in c and max(c) - min(c) <= 2 for c in (q, m)))
    same_step = at2 is not None and bool(offsets) and None not in m and seq(at2) == m
    fastest = bool(offsets) and all(  # a gradient that never got there (None) is slower
        a is not None and (b is None or a < b) and (c is None or a < c)
        for a, b, c in zip(m, s, q))
    cols = [("mod", mod), ("std", std), ("L2", l2)] + ([("L2 at 2η", at2)] if at2 else [])
    note = ("a step size only: L2 at 2η takes the same steps (mod = 2·L2 on θ)"
            if same_step else "")
    at2_lr = toy.get("l2_at_2lr", {}).get("lr")  # 2η; files before it: η = 0.1
    eta = _g(at2_lr / 2) if isinstance(at2_lr, (int, float)) else "0.1"
    setup, gd = "toy (deterministic)", f"GD on θ, η {eta}"
    return [
        _line(["toy: std escapes ever more slowly as it starts closer; L2 and mod do not care",
               setup, gd, text([("std", std), ("L2", l2), ("mod", mod)]), "", "", "",
               YES if escape else NO]),
        _line(["toy: mod is fastest", setup, gd + ("; L2 also at 2η" if at2 else ""),
               text(cols), note, "", "", STEP_SIZE if same_step else (YES if fastest else NO)]),
    ]


# ---------------------------------------------------------------- the tables

def _check(split: str) -> None:
    if split not in ("val", "train"):
        raise ValueError(f"split: expected 'val' or 'train', got {split!r}")


def render(results: dict, split: str = "val") -> str:
    """The main verdict table (Markdown) and its count of comparisons.

    One row per setup (and two for the toy): the claim, the setup, the optimiser and
    learning rates, the primary and secondary loss ratios over the last quarter of the
    epochs with their 95 % intervals, sign-flip p and judgement, the difference in epochs
    to reach ``L < 1e-2`` and ``L < 1e-3``, and the verdict (module docstring).

    Args:
        results: a loaded ``results.json`` of ``quflow reproduce`` (old files render too).
        split: judge on the validation (``"val"``) or the training (``"train"``) loss.

    Example:
        >>> print(render({}), end="")  # doctest: +ELLIPSIS
        | claim (paper) | setup | ...
        |---|---|---|---|---|---|---|---|
        <BLANKLINE>
        0 comparisons with an interval in this table (0 primary, one per row); ...
    """
    _check(split)
    lines = ["| claim (paper) | setup | optimiser; lr | primary: last-quarter loss ratio "
             "[95 % CI], p: judgement | secondary | epochs to L < 1e-2: difference "
             "[95 % CI], p | epochs to L < 1e-3 | reproduces |",
             "|---|---|---|---|---|---|---|---|"]
    if isinstance(results.get("toy"), dict):
        lines += _toy_rows(results["toy"])
    n = primaries = 0
    seeds = set()
    across: dict[str, list[str]] = {}  # experiment -> the rows' verdicts
    for experiment, claim, key, methods in _claimed(results, split):
        a, b = claim.primary
        primary = _ratio(methods, a, b, split)
        secondary = [_ratio(methods, x, y, split) for x, y in claim.secondary]
        reach = [_reach(methods, a, b, split, t) for t in THRESHOLDS]
        made = [r for r in [primary, *secondary, *reach] if _has_interval(r)]
        n, primaries = n + len(made), primaries + _has_interval(primary)
        seeds |= {len(r["per_seed"]) for r in made}
        shown = [m for m in ("standard", "modified", "l2")
                 if m in (a, b) + sum(claim.secondary, ())]
        row = claim_verdict(judge(primary), [judge(r) for r in secondary])
        across.setdefault(experiment, []).append(row)
        lines.append(_line([
            f"{experiment}: {claim.text}", _setup_cell(key, methods, split),
            _optimiser_cell(methods, shown), _ratio_cell(primary, a, b),
            "; ".join(_ratio_cell(r, x, y) for r, (x, y) in zip(secondary, claim.secondary)),
            *(_reach_cell(d, a, b) for d in reach), row]))
    return ("\n".join(lines) + "\n\n" + _across_line(across)
            + _count_line(n, primaries, seeds))


def _across_line(across: dict[str, list[str]]) -> str:
    """Whether a claim holds across its setups: the count of each verdict per claim."""
    if not across:
        return ""
    order = (YES, PARTLY, NOT_SHOWN, NO, MISSING)
    parts = []
    for experiment, rows in across.items():
        counts = ", ".join(f"{rows.count(v)} {v.strip('*')}" for v in order if rows.count(v))
        parts.append(f"{experiment} {counts} (of {_plural(len(rows), 'setup')})")
    return "Across setups: " + "; ".join(parts) + ".\n\n"


def render_secondary(results: dict, split: str = "val") -> str:
    """The claims' loss ratios after epochs 1, 10 and 40 (where run), one row per setup and
    comparison whose methods were run (Markdown), and its count of comparisons; these are
    secondary endpoints, reported but not judged into the verdict."""
    _check(split)
    lines = ["| setup | comparison | " + " | ".join(f"after epoch {e}" for e in EPOCHS_SHOWN)
             + " |", "|---|---|" + "---|" * len(EPOCHS_SHOWN)]
    n, seeds = 0, set()
    for _, claim, key, methods in _claimed(results, split):
        for a, b in (claim.primary, *claim.secondary):
            rs = [_ratio(methods, a, b, split, e) for e in EPOCHS_SHOWN]
            if not any(rs):
                continue
            made = [r for r in rs if _has_interval(r)]
            n, seeds = n + len(made), seeds | {len(r["per_seed"]) for r in made}
            lines.append(_line([_setup_cell(key, methods, split), f"{NAMES[a]}/{NAMES[b]}",
                                *(_ratio_cell(r) for r in rs)]))
    return "\n".join(lines) + "\n\n" + _count_line(n, None, seeds)


def render_family(results: dict, split: str = "val") -> str:
    """The other losses of the family against standard, ``x/std`` over the last quarter of
    the epochs, judged as "x reaches a lower loss than std" (Markdown), for the setups
    that ran any of them; ``""`` when none did."""
    _check(split)
    lines = ["| setup | optimiser; lr | " + " | ".join(f"{NAMES[f]}/std" for f in FAMILY)
             + " |", "|---|---|" + "---|" * len(FAMILY)]
    n, seeds = 0, set()
    for key, _, methods in _setups(results, split):
        if not any(f in methods for f in FAMILY):
            continue
        rs = [_ratio(methods, f, "standard", split) for f in FAMILY]
        made = [r for r in rs if _has_interval(r)]
        n, seeds = n + len(made), seeds | {len(r["per_seed"]) for r in made}
        shown = ["standard", *(f for f in FAMILY if f in methods)]
        lines.append(_line([_setup_cell(key, methods, split), _optimiser_cell(methods, shown),
                            *(_ratio_cell(r) for r in rs)]))
    if len(lines) == 2:
        return ""
    return "\n".join(lines) + "\n\n" + _count_line(n, None, seeds)


def render_all(results: dict, split: str = "val") -> str:
    """:func:`render`, :func:`render_secondary` and (if any) :func:`render_family`, each
    under a short Markdown heading."""
    out = ("### The claims\n\n" + render(results, split)
           + "\n### Loss ratios after fixed epochs (secondary)\n\n"
           + render_secondary(results, split))
    family = render_family(results, split)
    return out + ("\n### The loss family against standard\n\n" + family if family else "")
