"""The ``quflow`` command line: ``quflow reproduce [EXPERIMENT] [--quick|--full] [--out DIR]``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from .experiments import toy

# experiment name -> runner(out_dir, quick=...) -> {method: {"final_loss", ...}}
EXPERIMENTS = {"toy": toy.run}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quflow", description="quflow: learning through differentiable quantum simulation")
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser(
        "reproduce", help="rerun the experiments of Schnell & Thuerey (ICML 2023 workshop)",
        description="Rerun the paper's experiments; writes CSV, PNG and DIR/results.json.")
    rep.add_argument("experiment", nargs="?", default="all", choices=[*EXPERIMENTS, "all"],
                     help="which experiment (default: all)")
    speed = rep.add_mutually_exclusive_group()
    speed.add_argument("--quick", dest="quick", action="store_true", default=True,
                       help="short runs (default)")
    speed.add_argument("--full", dest="quick", action="store_false", help="the paper's lengths")
    rep.add_argument("--out", default="results", help="output directory (default: results)")
    return parser


def _writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise SystemExit(f"quflow: error: --out {path}: cannot write there ({exc.strerror})")
    return path


def _write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def reproduce(experiment: str, out: Path, quick: bool) -> dict:
    """Runs the experiment(s), merges them into ``out/results.json`` and returns them."""
    out = _writable_dir(Path(out))
    names = list(EXPERIMENTS) if experiment == "all" else [experiment]
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in names:
        start = time.perf_counter()
        print(f"== {name} ({'quick' if quick else 'full'}) -> {out}", flush=True)
        results[name] = EXPERIMENTS[name](out, quick=quick)
        _write_json_atomic(results_path, results)
        print(f"   done in {time.perf_counter() - start:.1f} s", flush=True)
    _print_summary({k: results[k] for k in names})
    return results


def _print_summary(results: dict) -> None:
    print("\n| experiment | method | final loss (mean ± std) | steps to L < 1e-3 |")
    print("|---|---|---|---|")
    for exp, methods in results.items():
        for method, r in methods.items():
            hit = r.get("steps_to_target", "—")
            by = r.get("steps_to_target_by_offset")
            if by:
                hit = f"{hit} (θ₀ = π/2 − δ, δ = {', '.join(by)}: {', '.join(map(str, by.values()))})"
            print(f"| {exp} | {method} | {r['final_loss']:.3g} ± {r['final_loss_std']:.2g} | "
                  f"{'—' if hit is None else hit} |")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "reproduce":
        reproduce(args.experiment, Path(args.out), args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
