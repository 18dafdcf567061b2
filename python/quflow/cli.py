"""The ``quflow`` command line.

``quflow reproduce [toy|prediction|control|all] [--quick|--full] [--seeds N] [--epochs N]
[--out DIR] [--resume]``; also ``python -m quflow ...``. Under ``torchrun`` the prediction
and control runs train data-parallel (DDP, gloo); rank 0 writes the results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from .experiments import _training, control, prediction, toy

# experiment name -> module with run(out, quick=, ...) -> {method: {"final_loss", ...}}
EXPERIMENTS = {"toy": toy, "prediction": prediction, "control": control}
TRAINED = ("prediction", "control")


def _positive(name):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {value}")
        return value
    return parse


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lr must be a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"--lr must be a finite number > 0, got {text}")
    return value


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
    speed.add_argument("--full", dest="quick", action="store_false",
                       help="long runs (150 epochs; ~10 min on 2 cores)")
    rep.add_argument("--out", default="results", help="output directory (default: results)")
    rep.add_argument("--seeds", type=_positive("--seeds"), default=3,
                     help="seeds per method for prediction/control (default: 3)")
    rep.add_argument("--epochs", type=_positive("--epochs"), default=None,
                     help="epochs per run (default: the mode's; quick 15, full 150)")
    rep.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                     help="optimiser for prediction/control (default: adam, as the paper)")
    rep.add_argument("--lr", type=_positive_float, default=None,
                     help="learning rate (default: the paper's 0.005)")
    rep.add_argument("--modes", type=_positive("--modes"), default=None,
                     help="initial states mix the lowest N of the 20 box eigenstates (default: 5)")
    rep.add_argument("--resume", action="store_true",
                     help="continue interrupted runs from their last completed epoch")
    rep.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress bars")
    return parser


def _writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise SystemExit(f"quflow: error: --out {path}: cannot write there ({exc.strerror})")
    return path


def reproduce(experiment: str, out: Path, quick: bool, *, seeds: int = 3,
              epochs: int | None = None, resume: bool = False, progress: bool = True,
              optimizer: str = "adam", lr: float | None = None,
              modes: int | None = None) -> dict:
    """Runs the experiment(s), merges them into ``out/results.json`` and returns them."""
    rank, _ = _training.world()
    out = _writable_dir(Path(out)) if rank == 0 else Path(out)
    names = list(EXPERIMENTS) if experiment == "all" else [experiment]
    # refuse bad settings, or (with --resume) a directory of another configuration, before
    # anything is written
    for name in names:
        if name in TRAINED:
            try:
                EXPERIMENTS[name].check(out, resume=resume, quick=quick, seeds=seeds,
                                        epochs=epochs, optimizer=optimizer, lr=lr, modes=modes)
            except _training.ConfigMismatch as exc:
                raise SystemExit(f"quflow: error: --resume {out}: {exc}") from None
            except ValueError as exc:
                raise SystemExit(f"quflow: error: {exc}") from None
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in names:
        if name == "toy" and rank != 0:
            continue
        start = time.perf_counter()
        if rank == 0:
            print(f"== {name} ({'quick' if quick else 'full'}) -> {out}", flush=True)
        if name in TRAINED:
            results[name] = EXPERIMENTS[name].run(out, quick=quick, seeds=seeds, epochs=epochs,
                                                  resume=resume, progress=progress,
                                                  optimizer=optimizer, lr=lr, modes=modes)
        else:
            results[name] = EXPERIMENTS[name].run(out, quick=quick)
        if rank == 0:
            _training.write_atomic(
                results_path, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
            print(f"   done in {time.perf_counter() - start:.1f} s", flush=True)
    if rank == 0:
        _print_summary({k: results[k] for k in names})
    return results


def _print_summary(results: dict) -> None:
    print("\n| experiment | method | final loss (mean ± std) | steps to L < 1e-3 |")
    print("|---|---|---|---|")
    for exp, methods in results.items():
        for method, r in methods.items():
            hit = r.get("steps_to_target")
            by = r.get("steps_to_target_by_offset")
            if by:
                hit = f"{hit} (θ₀ = π/2 − δ, δ = {', '.join(by)}: {', '.join(map(str, by.values()))})"
            print(f"| {exp} | {method} | {r['final_loss']:.3g} ± {r['final_loss_std']:.2g} | "
                  f"{'—' if hit is None else hit} |")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:  # launched by torchrun: data-parallel training over gloo
        import torch.distributed as dist

        dist.init_process_group("gloo")
    try:
        # "reproduce" is the only (required) subcommand
        reproduce(args.experiment, Path(args.out), args.quick, seeds=args.seeds,
                  epochs=args.epochs, resume=args.resume, progress=args.progress,
                  optimizer=args.optimizer, lr=args.lr, modes=args.modes)
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
