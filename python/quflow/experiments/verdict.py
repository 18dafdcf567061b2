"""The claim-by-claim verdict table, rendered from a ``results.json``.

``quflow verdict results/results.json`` prints it; the tables in ``docs/reproduction.md``
are this function's output for the committed results in ``docs/reproduction/`` (a test
keeps them equal), so the documentation cannot drift from the code.

Every comparison ``a < b`` between two gradient methods is judged on the ratio of their
losses paired by seed (geometric mean and 95 % t-interval, see ``_stats``): *holds* if the
whole interval is below 1, *contradicted* if it is above 1, *not separable* if it contains
1 (or there is one seed). A claim reproduces (**yes**) if all its comparisons hold,
**partly** if some do, **no** if none does.
"""

from __future__ import annotations

from ._stats import paired_ratio

# claim id -> (experiment, the paper's claim in short, [(a, b): "a reaches a lower loss than b"])
CLAIMS = {
    "prediction": ("prediction", "modified learns best: mod < std, mod < L2",
                   [("modified", "standard"), ("modified", "l2")]),
    "control": ("control", "modified best, L2 worst: mod < std < L2",
                [("modified", "standard"), ("standard", "l2")]),
}
EPOCHS_SHOWN = (1, 10, 40)
NAMES = {"standard": "std", "modified": "mod", "l2": "L2"}


def _judge(r: dict) -> str:
    if r["ci95"] is None:
        return "not separable"
    if r["ci95"][1] < 1:
        return "holds"
    if r["ci95"][0] > 1:
        return "contradicted"
    return "not separable"


def _fmt(r: dict) -> str:
    ci = r["ci95"]
    return f"{r['mean']:.3g} [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else f"{r['mean']:.3g} [1 seed]"


def _verdict(judgements: list[str]) -> str:
    held = sum(j == "holds" for j in judgements)
    return "**yes**" if held == len(judgements) else ("partly" if held else "no")


def _toy_row(toy: dict) -> str:
    steps = {g: r["steps_to_target_by_offset"] for g, r in toy.items()}
    offsets = list(steps["standard"])
    std = [steps["standard"][d] for d in offsets]
    mod = [steps["modified"][d] for d in offsets]
    l2 = [steps["l2"][d] for d in offsets]
    ok = [None not in std and std == sorted(std) and std[-1] > std[0],  # slower as δ → 0
          None not in mod and max(mod) - min(mod) <= 2,  # modified does not care
          all(m is not None and m < min(s or 10**9, l or 10**9) for m, s, l in zip(mod, std, l2))]
    text = "; ".join(f"δ={d}: std {s}, L2 {l}, mod {m}" for d, s, l, m in zip(offsets, std, l2, mod))
    return (f"| toy: std escapes ever more slowly as it starts closer; mod does not care and "
            f"is fastest | toy | GD on θ, η 0.1 | steps to L < 1e-3 | {text} | | "
            f"{_verdict(['holds' if o else 'contradicted' for o in ok])} |")


def render(results: dict, split: str = "val") -> str:
    """The verdict table (Markdown) for ``results`` (a loaded ``results.json``), judged on
    the validation (``split="val"``) or training (``"train"``) loss."""
    if split not in ("val", "train"):
        raise ValueError(f"split: expected 'val' or 'train', got {split!r}")
    lines = ["| claim (paper) | setup | optimiser | when | comparison 1: loss ratio [95 % CI] "
             "| comparison 2 | reproduces |",
             "|---|---|---|---|---|---|---|"]
    if "toy" in results:
        lines.append(_toy_row(results["toy"]))
    for claim, (experiment, text, comparisons) in CLAIMS.items():
        for key, methods in results.items():
            if key.split("-")[0] != experiment or "standard" not in methods:
                continue
            first = methods["standard"]
            stats = {m: methods[m][split] for m in methods}
            a, b = first[split]["window"]["epochs"]
            # early and middle of training (before the window), then the window
            whens = [(f"epoch {e}", lambda s, e=e: s["at_epoch"][str(e)])
                     for e in EPOCHS_SHOWN if e < a and str(e) in first[split]["at_epoch"]]
            whens.append((f"epoch {b}" if a == b else f"epochs {a}–{b}", lambda s: s["window"]))
            for when, pick in whens:
                cells, judgements = [], []
                for lo, hi in comparisons:
                    r = paired_ratio(pick(stats[lo])["per_seed"], pick(stats[hi])["per_seed"])
                    judgements.append(_judge(r))
                    cells.append(f"{NAMES[lo]}/{NAMES[hi]} {_fmt(r)}: {judgements[-1]}")
                lines.append(f"| {experiment}: {text} | {key} ({len(first['seeds'])} seeds) | "
                             f"{first['optimizer']} {first['lr']:g} | {when} | {cells[0]} | "
                             f"{cells[1]} | {_verdict(judgements)} |")
    return "\n".join(lines) + "\n"
