"""The ``quflow`` command line.

``quflow reproduce [toy|prediction|control|all] [options]`` reruns the experiments of
Schnell & Thuerey (ICML 2023 workshop); ``quflow verdict [results.json]`` prints the
claim-by-claim verdict table that the README shows. Also ``python -m quflow ...``. Under
``torchrun`` the prediction and control runs train data-parallel (DDP, gloo); rank 0
writes the results.

Exit codes: 0 done; 1 an unexpected error; 2 a bad command line (nothing was run or
written); 3 ``--resume`` refused: the folder holds another configuration (the
differences are named); 4 ``--resume`` refused: a damaged or edited checkpoint (named);
130 interrupted (Ctrl-C): completed epochs are saved, ``--resume`` continues.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_MISMATCH, EXIT_CORRUPT, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
TRAINED = ("prediction", "control")
EXPERIMENT_NAMES = ("toy", *TRAINED)


def _experiments() -> dict:
    from .experiments import control, prediction

    return {"prediction": prediction.EXPERIMENT, "control": control.EXPERIMENT}


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


def _state_list(text):
    items = [t.strip() for t in text.split(",")]
    try:
        states = tuple(int(t) for t in items)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--states must be a comma-separated list of eigenstate numbers (1-based), "
            f"e.g. 2,3; got {text!r}") from None
    if any(s < 1 for s in states):
        raise argparse.ArgumentTypeError(f"--states: eigenstates are numbered from 1, got {text}")
    if len(set(states)) != len(states):
        raise argparse.ArgumentTypeError(f"--states: an eigenstate appears twice in {text}")
    return states


def _optimizer_list(text):
    from .experiments._training import OPTIMIZERS

    names = tuple(t.strip() for t in text.split(","))
    bad = [n for n in names if n not in OPTIMIZERS]
    if bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"--optimizer must be a comma-separated list of {', '.join(OPTIMIZERS)} without "
            f"repeats, got {text!r}")
    return names


_EXIT_CODES = ("exit codes: 0 done, 1 error, 2 bad command line, 3 --resume refused (another "
               "configuration), 4 --resume refused (damaged checkpoint), 130 interrupted "
               "(rerun with --resume)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quflow", description="quflow: learning through differentiable quantum simulation",
        epilog=_EXIT_CODES)
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser(
        "reproduce", help="rerun the experiments of Schnell & Thuerey (ICML 2023 workshop)",
        description="Rerun the paper's experiments; writes CSV, PNG and DIR/results.json.",
        epilog=_EXIT_CODES)
    rep.add_argument("experiment", nargs="?", default="all", choices=[*EXPERIMENT_NAMES, "all"],
                     help="which experiment (default: all)")
    speed = rep.add_mutually_exclusive_group()
    speed.add_argument("--quick", dest="quick", action="store_true", default=True,
                       help="short runs: 3 seeds, prediction 15 / control 40 epochs (default)")
    speed.add_argument("--full", dest="quick", action="store_false",
                       help="long runs: 5 seeds, 150 epochs")
    rep.add_argument("--out", default="results", help="output directory (default: results)")
    rep.add_argument("--seeds", type=_positive("--seeds"), default=None,
                     help="seeds per method (default: quick 3, full 5)")
    rep.add_argument("--epochs", type=_positive("--epochs"), default=None,
                     help="epochs per run (default: the mode's)")
    rep.add_argument("--optimizer", type=_optimizer_list, default=None,
                     help="optimisers, comma-separated (default: adam,sgd; adam is the paper's)")
    rep.add_argument("--lr", type=_positive_float, default=None,
                     help="learning rate, with a single --optimizer (default: adam 0.005; "
                          "sgd 0.5 prediction, 1.0 control)")
    states = rep.add_mutually_exclusive_group()
    states.add_argument("--states", type=_state_list, default=None,
                        help="initial states superpose these box eigenstates, e.g. 2,3 "
                             "(default: prediction 1,2,3,4,5; control 2,3)")
    states.add_argument("--modes", type=_positive("--modes"), default=None,
                        help="shorthand for --states 1,...,N")
    kind = rep.add_mutually_exclusive_group()
    kind.add_argument("--real-states", dest="real_states", action="store_true", default=None,
                      help="real superposition coefficients (default for control)")
    kind.add_argument("--complex-states", dest="real_states", action="store_false",
                      help="complex superposition coefficients (default for prediction)")
    rep.add_argument("--target", type=_positive("--target"), default=None,
                     help="control target: box eigenstate K (default 1, the ground state)")
    rep.add_argument("--threads", type=_positive("--threads"),
                     default=os.environ.get("QUFLOW_THREADS", "1"),
                     help="intra-op threads per process (default 1: these networks are "
                          "tiny; QUFLOW_THREADS sets the default)")
    rep.add_argument("--jobs", type=_positive("--jobs"), default=None,
                     help="runs trained at once, each in its own process (default: the "
                          "available cores // --threads, at least 1; 1 under torchrun). "
                          "Every run seeds itself: the results do not depend on it")
    rep.add_argument("--resume", action="store_true",
                     help="continue interrupted runs from their last completed epoch")
    rep.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress output")
    ver = sub.add_parser("verdict", help="print the verdict table from a results.json",
                         description="Render the claim-by-claim verdict table (Markdown) "
                                     "from a results.json written by quflow reproduce.")
    ver.add_argument("results", nargs="?", default="results/results.json",
                     help="path to results.json (default: results/results.json)")
    ver.add_argument("--split", choices=("val", "train"), default="val",
                     help="judge on the validation (default) or the training loss")
    return parser


# options -> the experiments that use them (for "options an experiment does not use")
_USED_BY = {"seeds": TRAINED, "epochs": TRAINED, "optimizer": TRAINED, "lr": TRAINED,
            "states": TRAINED, "modes": TRAINED, "real_states": TRAINED, "target": ("control",),
            "resume": TRAINED, "jobs": TRAINED}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-") if name != "real_states" else "--real-states/--complex-states"


def plan(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list:
    """Resolves and validates the options into the setups to run; bad combinations are
    usage errors (exit 2) before anything runs."""
    from .experiments import _training

    names = list(EXPERIMENT_NAMES) if args.experiment == "all" else [args.experiment]
    for option, users in _USED_BY.items():
        value = getattr(args, option)
        if value not in (None, False) and not set(users) & set(names):
            parser.error(f"{_flag(option)}: not used by the {args.experiment} experiment")
    optimizers = args.optimizer or _training.OPTIMIZERS
    if args.lr is not None and len(optimizers) > 1:
        parser.error("--lr: give a single --optimizer (the optimisers' learning rates differ)")
    states = args.states or (tuple(range(1, args.modes + 1)) if args.modes else None)
    setups = []
    experiments = _experiments()
    for name in names:
        if name == "toy":
            setups.append("toy")
            continue
        try:
            setups += _training.plan(
                experiments[name], quick=args.quick, optimizers=optimizers, seeds=args.seeds,
                epochs=args.epochs, lr=args.lr, states=states, real_states=args.real_states,
                target=args.target if name == "control" else None)
        except ValueError as exc:
            parser.error(str(exc))
    return setups


def _writable_dir(path: Path, parser) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as exc:
        parser.error(f"--out {path}: cannot write there ({exc.strerror})")
    return path


def _load_results(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        results = json.loads(path.read_text())
        if isinstance(results, dict):
            return results
    except (OSError, ValueError):
        pass
    print(f"quflow: warning: {path} is unreadable; writing a new one", file=sys.stderr)
    return {}


def default_jobs(threads: int) -> int:
    """Worker processes that fit the available cores at ``threads`` intra-op threads each."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        cores = os.cpu_count() or 1
    return max(1, cores // threads)


def reproduce(setups: list, out: Path, *, quick: bool, resume: bool = False,
              progress: bool = True, jobs: int = 1) -> dict:
    """Runs ``setups`` (``"toy"`` or :class:`~quflow.experiments._training.Setup`), merges
    their entries into ``out/results.json`` after each, and returns the merged results.

    Raises:
        ConfigMismatch, CorruptCheckpoint: with ``resume``, before anything runs.
    """
    from .experiments import _io, _plots, _training, toy

    rank, size = _training.world()
    trained = [s for s in setups if s != "toy"]
    if resume:  # refuse before any run writes anything
        for s in trained:
            s.check_resumable(out)
    if rank == 0:
        _io.remove_stale_temporaries(out)
        _io.remove_stale_temporaries(out / "checkpoints")
    results_path = out / "results.json"
    results = _load_results(results_path) if rank == 0 else {}
    total = {}
    prior = {}
    for s in trained:
        name = s.experiment.name
        total[name] = total.get(name, 0) + s.epochs * len(s.configs())
        prior[name] = s.experiment.seconds_per_epoch
    runs = sum(len(s.configs()) for s in trained)
    bar = _training.Progress(total, prior, runs, enabled=progress)
    # With jobs > 1 every setup's runs queue at once on one set of workers, so that one
    # setup's last runs, its figures and the toy overlap the next setup's training.
    shared = jobs > 1 and size == 1 and runs > 1
    with _training.Workers(min(jobs, runs)) if shared else contextlib.nullcontext() as workers:
        started = [s.start(out, resume=resume, workers=workers) for s in trained] \
            if shared else None
        bar.reset_clock()
        t0 = time.perf_counter()
        for s in setups:
            start = time.perf_counter()
            if s == "toy":
                if rank != 0:
                    continue
                if progress:
                    print("== toy: gradient descent on θ from θ₀ = π/2 − δ, δ = 1e-2, 1e-4, "
                          "1e-6", flush=True)
                key, entry = "toy", toy.run(out, quick=quick)
            else:
                if progress and rank == 0:
                    print(f"== {s.describe()}", flush=True)
                key = s.key
                if shared:
                    entry = s.finish(out, started[trained.index(s)], resume=resume,
                                     progress=bar)
                else:
                    entry = s.run(out, resume=resume, progress=bar)
            if rank == 0:
                results[key] = entry
                _io.write_json(results_path, results)
                _plots.summary({k: v for k, v in results.items() if k != "toy"},
                               out / "summary.png")
                if progress:
                    # with shared workers a setup's runs may have started with the first
                    print(f"   {key} done in {time.perf_counter() - start:.1f} s"
                          + (f" ({time.perf_counter() - t0:.1f} s since the start)"
                             if shared else ""), flush=True)
    return results


def _print_summary(results: dict, keys: list[str]) -> None:
    print("\n| setup | method | val loss, last quarter (geo. mean [95 % CI]) | "
          "ratio to standard [95 % CI] | train loss, last quarter |")
    print("|---|---|---|---|---|")
    for key in keys:
        if key == "toy":
            for g, r in results[key].items():
                by = ", ".join(f"δ={d}: {k}" for d, k in r["steps_to_target_by_offset"].items())
                print(f"| toy | {g} | steps to L < 1e-3: {by} | | |")
            continue
        for m, r in results[key].items():
            va, tr = r["val"]["window"], r["train"]["window"]
            ratio = r["ratio_to_standard"]["val"]["window"] if m != "standard" else None
            ratio_text = "—" if ratio is None else f"{ratio['mean']:.3g} {_ci(ratio)}"
            print(f"| {key} | {m} | {va['mean']:.3g} {_ci(va)} | {ratio_text} | "
                  f"{tr['mean']:.3g} |")


def _ci(stat: dict) -> str:
    ci = stat.get("ci95")
    return f"[{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "[1 seed]"


def _reproduce_main(args, parser) -> int:
    import torch

    from .experiments import _io, _training

    torch.set_num_threads(args.threads)
    setups = plan(args, parser)
    rank, size = _training.world()
    jobs = 1 if size > 1 else args.jobs or default_jobs(args.threads)
    out = _writable_dir(Path(args.out), parser) if rank == 0 else Path(args.out)
    if args.progress and rank == 0:
        what = ", ".join(s if s == "toy" else s.key for s in setups)
        mode = ("quick" if args.quick else "full") + "".join(
            f", --{name} {value}" for name, value in (("epochs", args.epochs),
                                                     ("seeds", args.seeds)) if value)
        print(f"quflow reproduce {args.experiment} ({mode}): {what}; {args.threads} "
              f"thread(s) per process, {jobs} run(s) at once -> {out}", flush=True)
    try:
        results = reproduce(setups, out, quick=args.quick, resume=args.resume,
                            progress=args.progress, jobs=jobs)
    except _training.ConfigMismatch as exc:
        print(f"quflow: --resume refused: {exc}. Use the same options, or another --out.",
              file=sys.stderr)
        return EXIT_MISMATCH
    except _io.CorruptCheckpoint as exc:
        print(f"quflow: --resume refused: damaged checkpoint {exc}. Delete it to rerun that "
              f"run from the start.", file=sys.stderr)
        return EXIT_CORRUPT
    if rank == 0 and args.progress:
        _print_summary(results, [s if s == "toy" else s.key for s in setups])
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "verdict":
        from .experiments import verdict

        path = Path(args.results)
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"results: cannot read {path} ({exc})")
        if not isinstance(results, dict):
            parser.error(f"results: {path} is not a results.json of quflow reproduce")
        try:
            table = verdict.render(results, split=args.split)
        except (KeyError, TypeError, IndexError):
            parser.error(f"results: {path} lacks what this version of quflow writes; rerun "
                         f"quflow reproduce")
        print(table, end="")
        return EXIT_OK
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:  # launched by torchrun: data-parallel training over gloo
        import torch.distributed as dist

        dist.init_process_group("gloo")
    try:
        return _reproduce_main(args, parser)
    except KeyboardInterrupt:
        print("\nquflow: interrupted. Completed epochs are saved; rerun the same command "
              "with --resume to continue.", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
