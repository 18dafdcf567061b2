"""The ``quflow`` command line.

``quflow reproduce [toy|prediction|control|all] [options]`` reruns the experiments of
Schnell & Thuerey (ICML 2023 workshop); ``quflow verdict [results.json]`` prints the
claim-by-claim verdict table that the README shows. Also ``python -m quflow ...``. Under
``torchrun`` the prediction and control runs train data-parallel (DDP, gloo); rank 0
writes the results.

Every option is checked, its range included, before anything is built or written. One
``quflow reproduce`` at a time writes to an ``--out`` folder: it holds an OS lock
(``flock``) on ``DIR/.quflow-lock`` while it runs, which the OS releases when the
process ends, however it ends; under ``torchrun`` rank 0 takes it for every rank.
Checkpoints, their manifests and every results.json entry of a trained setup record the
quflow version and a fingerprint of the training and validation data; ``--resume``
refuses a folder written by another version, on other data, or by a quflow that
recorded neither, unless ``--allow-version-change``.

Threads: ``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` (unless set), so that OpenMP
threads waiting between parallel ops sleep rather than spin: spinning threads made two
threads 0.12× as fast as one on a busy machine. libgomp reads the variable when torch
loads it; ``import quflow`` does not import torch, so the command sets the variable
first and imports torch only once the command line is parsed. Worker processes
(``--jobs``) inherit it. ``--help``, ``--version`` and ``verdict`` never import torch.

Exit codes: 0 done; 1 an unexpected error; 2 a bad command line (nothing was run or
written); 3 ``--resume`` refused: the folder holds another configuration, or was written
by another quflow version, on other data, or by an older quflow (the differences are
named); 4 ``--resume`` refused: a damaged or edited checkpoint (named); 5 ``--out`` is
in use by another ``quflow reproduce`` (nothing was written); 6 a run diverged: its loss
or network parameters stopped being finite (the run and epoch are named); 7 a file
could not be written, e.g. a full disk (the file is named); 130 interrupted (Ctrl-C, at
any moment, torch's import included): completed epochs are saved, ``--resume``
continues. With 3 to 7 and 130 the files already written stay whole, and the cause is
one line on stderr. After Ctrl-C a shell's ``$?`` is 130 either as the exit status or
as an end by SIGINT, which CPython chooses when the interrupt hit code run through
``exec`` (as in torch's import).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_MISMATCH, EXIT_CORRUPT = 0, 1, 2, 3, 4
EXIT_BUSY, EXIT_DIVERGED, EXIT_WRITE, EXIT_INTERRUPTED = 5, 6, 7, 130
TRAINED = ("prediction", "control")
EXPERIMENT_NAMES = ("toy", *TRAINED)
LOCK_NAME = ".quflow-lock"

# the largest values the options take (stated in --help). Eigenstates are bounded by the
# experiments' grid (GRID_POINTS, checked against each experiment's own grid in plan).
MAX_SEEDS = 1000  # each seed is one run per gradient method
MAX_EPOCHS = 100_000  # ~7 h per prediction run on one core
MAX_JOBS = 256
MAX_THREADS = 256
GRID_POINTS = 20  # the prediction and control grids (tests check it)


def _experiments() -> dict:
    from .experiments import control, prediction

    return {"prediction": prediction.EXPERIMENT, "control": control.EXPERIMENT}


def _integer(name: str, maximum: int, what: str = ""):
    """An argparse type: an integer from 1 to ``maximum``, checked on the text (a huge
    ``--modes`` is refused before anything is built from it)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:  # also "1e23" and integers of more than 4300 digits
            value = None
        if value is None or not 1 <= value <= maximum:
            shown = text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"
            raise argparse.ArgumentTypeError(
                f"{name} must be an integer from 1 to {maximum}{what}, got {shown!r}")
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
    for s in states:
        if s > GRID_POINTS:
            raise argparse.ArgumentTypeError(
                f"--states: the grid has eigenstates 1..{GRID_POINTS}, got {s}")
    if len(set(states)) != len(states):
        raise argparse.ArgumentTypeError(f"--states: an eigenstate appears twice in {text}")
    return states


def _import_torch() -> None:
    """Imports torch with SIGINT blocked, then delivers a Ctrl-C that came meanwhile.

    A ``KeyboardInterrupt`` raised inside torch's C++ start-up (``from torch._C import
    *``) is swallowed there and leaves numpy half imported: the command then ran on and
    failed later, or aborted. Blocked, the signal waits until the import is done and then
    ends the command as any Ctrl-C does (exit 130)."""
    if "torch" in sys.modules or not hasattr(signal, "pthread_sigmask"):
        import torch  # noqa: F401
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        import torch  # noqa: F401
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _name_list(option: str, text: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """``text`` split at commas: names from ``allowed``, none repeated."""
    names = tuple(t.strip() for t in text.split(","))
    if any(n not in allowed for n in names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"{option} must be a comma-separated list of {', '.join(allowed)} without "
            f"repeats, got {text!r}")
    return names


def _optimizer_list(text):
    _import_torch()
    from .experiments._training import OPTIMIZERS

    return _name_list("--optimizer", text, OPTIMIZERS)


STUDIES = ("search", "paper", "tuned", "probes", "variants")  # = _training.STUDIES


def _study_list(text):
    return _name_list("--study", text, STUDIES)


_EXIT_CODES = ("exit codes: 0 done, 1 error, 2 bad command line, 3 --resume refused (another "
               "configuration, quflow version or data), 4 --resume refused (damaged "
               "checkpoint), 5 --out in use by another quflow reproduce, 6 a run diverged "
               "(non-finite loss or parameters), 7 a file could not be written (e.g. a full "
               "disk), 130 interrupted (rerun with --resume). OMP_WAIT_POLICY defaults to "
               "PASSIVE (OpenMP threads sleep, not spin, between ops).")


class _SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser: an argument it does not know is an error in the
    subcommand's own usage (``quflow reproduce --bogus`` shows the ``reproduce`` usage),
    where argparse would hand it to the top-level parser."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def _parser() -> argparse.ArgumentParser:
    return _parsers()[0]


def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser, and each subcommand's parser by name (its usage errors)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="quflow", description="quflow: learning through differentiable quantum simulation",
        epilog=_EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"quflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_SubcommandParser)
    rep = sub.add_parser(
        "reproduce", help="rerun the experiments of Schnell & Thuerey (ICML 2023 workshop)",
        description="Rerun the paper's experiments; writes CSV, PNG and DIR/results.json.",
        epilog=_EXIT_CODES)
    eigenstates = " (the grid's eigenstates)"
    rep.add_argument("experiment", nargs="?", default="all", choices=[*EXPERIMENT_NAMES, "all"],
                     help="which experiment (default: all)")
    speed = rep.add_mutually_exclusive_group()
    speed.add_argument("--quick", dest="quick", action="store_true", default=True,
                       help="short runs (default): 3 held-out seeds, prediction 15 / control "
                            "40 epochs; studies paper,tuned, the tuned learning rates "
                            "committed from the last full search")
    speed.add_argument("--full", dest="quick", action="store_false",
                       help="long runs: 8 held-out seeds, prediction 40 / control 150 "
                            "epochs; every study, the learning-rate search included")
    rep.add_argument("--study", type=_study_list, default=None,
                     help="which studies, comma-separated: search (learning rates on "
                          "selection seeds 0-2), paper (the paper's rates), tuned (each "
                          "method at its searched rate), probes (Adam beta2 0.99, Adam "
                          "warm-up, SGD clipping), variants (other states, targets, data) "
                          "(default: quick paper,tuned; full all)")
    rep.add_argument("--out", default="results", help="output directory (default: results)")
    rep.add_argument("--seeds", type=_integer("--seeds", MAX_SEEDS), default=None,
                     help=f"held-out seeds per method (seeds 3, 4, ...; 0-2 select the "
                          f"learning rates), at most {MAX_SEEDS} (default: quick 3, full 8)")
    rep.add_argument("--epochs", type=_integer("--epochs", MAX_EPOCHS), default=None,
                     help=f"epochs per run, at most {MAX_EPOCHS} (default: the mode's)")
    rep.add_argument("--optimizer", type=_optimizer_list, default=None,
                     help="optimisers, comma-separated (default: adam,sgd; adam is the paper's)")
    rep.add_argument("--lr", type=_positive_float, default=None,
                     help="learning rate of the paper and probes studies, with a single "
                          "--optimizer (default: adam 0.005; sgd 0.5 prediction, 1.0 control)")
    states = rep.add_mutually_exclusive_group()
    states.add_argument("--states", type=_state_list, default=None,
                        help=f"initial states superpose these box eigenstates (1 to "
                             f"{GRID_POINTS}), e.g. 2,3 (default: prediction 1,2,3,4,5; "
                             f"control 2,3)")
    states.add_argument("--modes", type=_integer("--modes", GRID_POINTS, eigenstates),
                        default=None, help=f"shorthand for --states 1,...,N; N at most "
                                           f"{GRID_POINTS}")
    kind = rep.add_mutually_exclusive_group()
    kind.add_argument("--real-states", dest="real_states", action="store_true", default=None,
                      help="real superposition coefficients (default for control)")
    kind.add_argument("--complex-states", dest="real_states", action="store_false",
                      help="complex superposition coefficients (default for prediction)")
    rep.add_argument("--target", type=_integer("--target", GRID_POINTS, eigenstates),
                     default=None, help=f"control target: box eigenstate K, 1 to "
                                        f"{GRID_POINTS} (default 1, the ground state)")
    rep.add_argument("--threads", type=_integer("--threads", MAX_THREADS),
                     default=os.environ.get("QUFLOW_THREADS", "1"),
                     help=f"intra-op threads per process, at most {MAX_THREADS} (default 1: "
                          f"these networks are tiny; QUFLOW_THREADS sets the default)")
    rep.add_argument("--jobs", type=_integer("--jobs", MAX_JOBS), default=None,
                     help=f"runs trained at once, each in its own process, at most {MAX_JOBS} "
                          f"(default: the available cores // --threads, at least 1; 1 under "
                          f"torchrun). Every run seeds itself: the results do not depend on it")
    rep.add_argument("--resume", action="store_true",
                     help="continue interrupted runs from their last completed epoch")
    rep.add_argument("--allow-version-change", action="store_true",
                     help="with --resume: continue checkpoints written by another quflow "
                          "version, on other data, or by an older quflow that recorded "
                          "neither (refused otherwise)")
    rep.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress output")
    ver = sub.add_parser("verdict", help="print the verdict table from a results.json",
                         description="Render the claim-by-claim verdict table (Markdown) "
                                     "from a results.json written by quflow reproduce.")
    ver.add_argument("results", nargs="?", default="results/results.json",
                     help="path to results.json (default: results/results.json)")
    ver.add_argument("--split", choices=("val", "train"), default="val",
                     help="judge on the validation (default) or the training loss")
    return parser, {"reproduce": rep, "verdict": ver}


# options -> the experiments that use them (for "options an experiment does not use")
_USED_BY = {"study": TRAINED, "seeds": TRAINED, "epochs": TRAINED, "optimizer": TRAINED,
            "lr": TRAINED, "states": TRAINED, "modes": TRAINED, "real_states": TRAINED, "target": ("control",),
            "resume": TRAINED, "jobs": TRAINED, "allow_version_change": TRAINED}


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
    if args.allow_version_change and not args.resume:
        parser.error("--allow-version-change: only with --resume")
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
                target=args.target if name == "control" else None, studies=args.study)
        except ValueError as exc:
            parser.error(str(exc))
    _check_tuned(setups, Path(args.out), parser)
    return setups


def _check_tuned(setups: list, out: Path, parser) -> None:
    """Every tuned setup has a search to take its rates from: one this command runs, or
    one in ``out/lr_search.json``, or the committed one; else a usage error."""
    from .experiments import _search, _training

    trained = [s for s in setups if s != "toy"]
    searched = {s.key for s in trained if s.study == "search"}
    pending = [s for s in trained if not s.lr and _training.search_key(s) not in searched]
    if not pending:
        return
    found = _read_dict(out / "lr_search.json") or {}
    committed = _search.committed()
    for s in pending:
        try:
            _training.resolve(s, found, committed)
        except LookupError as exc:
            parser.error(f"--study tuned/variants: {exc}")


def _writable_dir(path: Path, parser) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as exc:
        parser.error(f"--out {path}: cannot write there ({exc.strerror})")
    return path


def _read_dict(path: Path) -> dict | None:
    """The JSON object in ``path``: ``{}`` if there is no file, ``None`` if unreadable."""
    if not path.exists():
        return {}
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _load_results(path: Path) -> dict:
    results = _read_dict(path)
    if results is None:
        print(f"quflow: warning: {path} is unreadable; writing a new one", file=sys.stderr)
        return {}
    return results


def default_jobs(threads: int) -> int:
    """Worker processes that fit the available cores at ``threads`` intra-op threads each."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        cores = os.cpu_count() or 1
    return max(1, cores // threads)


def reproduce(setups: list, out: Path, *, quick: bool, resume: bool = False,
              progress: bool = True, jobs: int = 1, allow_version_change: bool = False) -> dict:
    """Runs ``setups`` (``"toy"`` or :class:`~quflow.experiments._training.Setup`):
    learning-rate searches first (``out/lr_search.json``, ``out/lr-sweep.png``), then the
    tuned setups' rates are filled in (:func:`~quflow.experiments._training.resolve`),
    then every other setup. Merges each entry into ``out/results.json`` after it ends,
    writes ``out/verdict.md`` at the end, and returns the merged results. The caller holds
    the lock on ``out`` (:func:`out_lock`).

    Raises:
        ConfigMismatch, CorruptCheckpoint: with ``resume``, before the runs it concerns
            (``VersionMismatch``, a ``ConfigMismatch``, unless ``allow_version_change``).
        LookupError: a tuned setup has no search to take its rates from (before anything
            runs).
        Diverged: a run's loss or parameters stopped being finite.
        OSError: a file could not be written (its ``filename`` names it).
    """
    from .experiments import _io, _plots, _search, _training, verdict

    rank, size = _training.world()
    searches = [s for s in setups if s != "toy" and s.study == "search"]
    trained = [s for s in setups if s != "toy" and s.study != "search"]
    searched = {s.key for s in searches}
    search_path = out / "lr_search.json"
    found = _load_results(search_path) if rank == 0 else {}
    if size > 1:
        found = _broadcast(found)
    committed = _search.committed()
    # every setup whose rates do not wait for a search of this run has them now
    trained = [s if s.lr or _training.search_key(s) in searched
               else _training.resolve(s, found, committed) for s in trained]
    waiting = {s.key for s in trained if not s.lr}  # their rates come from this run's search
    if resume:  # refuse before any run writes anything
        for s in trained:
            if s.key not in waiting:
                s.check_resumable(out, allow_version_change=allow_version_change)
    if rank == 0:
        _io.remove_stale_temporaries(out)
        _io.remove_stale_temporaries(out / "checkpoints")
    results_path = out / "results.json"
    results = _load_results(results_path) if rank == 0 else {}
    runs = sum(len(s.methods) * len(s.seeds) for s in trained) + sum(
        len(s.methods) * len(_search.GRID_STEPS) * len(s.seeds) for s in searches)
    shared = jobs > 1 and size == 1 and runs > 1
    with _training.Workers(min(jobs, runs)) if shared else contextlib.nullcontext() as workers:
        for s in searches:
            if progress and rank == 0:
                print(f"== {s.key}: learning rates for {', '.join(s.methods)} on selection "
                      f"seeds {', '.join(map(str, s.seeds))}, {s.epochs} epochs "
                      f"({_search.CRITERION})", flush=True)
            found[s.key] = _search.run(s, out, resume=resume, workers=workers,
                                       progress=progress and rank == 0,
                                       allow_version_change=allow_version_change)
            if rank == 0:
                _io.write_json(search_path, found)
        if size > 1:
            found = _broadcast(found)
        trained = [_training.resolve(s, found, committed) for s in trained]
        if resume:
            for s in trained:
                if s.key in waiting:
                    s.check_resumable(out, allow_version_change=allow_version_change)
        tuned = [s for s in trained if s.lr_source in ("search", "committed")]
        if rank == 0 and progress:
            for s in tuned:
                entry = (found if s.lr_source == "search" else committed)[
                    _training.search_key(s)]
                where = ("this folder's search" if s.lr_source == "search" else
                         "the search committed with quflow (the last full run's)")
                print(f"== {s.key}: tuned learning rates from {where}, {entry['epochs']} "
                      f"epochs, selection seeds {', '.join(map(str, entry['seeds']))}: "
                      f"{s.describe_lr()}", flush=True)
        if rank == 0:
            sweep = found or {_training.search_key(s): committed[_training.search_key(s)]
                              for s in tuned if s.lr_source == "committed"}
            if sweep:
                _plots.lr_sweep(sweep, out / "lr-sweep.png")
        results = _train_setups(setups, trained, out, results, quick=quick, resume=resume,
                                progress=progress, workers=workers,
                                allow_version_change=allow_version_change)
    if rank == 0:
        _io.write_text(out / "verdict.md", verdict.render_all(results))
    return results


def _broadcast(obj):
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _train_setups(setups: list, trained: list, out: Path, results: dict, *, quick: bool,
                  resume: bool, progress: bool, workers, allow_version_change: bool) -> dict:
    """The toy and the trained setups of :func:`reproduce`, after the searches."""
    from .experiments import _io, _plots, _training, toy

    rank, _ = _training.world()
    results_path = out / "results.json"
    total, prior = {}, {}
    for s in trained:
        name = s.experiment.name
        total[name] = total.get(name, 0) + s.epochs * len(s.configs())
        prior[name] = s.experiment.seconds_per_epoch
    runs = sum(len(s.configs()) for s in trained)
    bar = _training.Progress(total, prior, runs, enabled=progress)
    # With workers every setup's runs queue at once, so that one setup's last runs, its
    # figures and the toy overlap the next setup's training.
    shared = workers is not None and runs > 1
    started = [s.start(out, resume=resume, workers=workers,
                       allow_version_change=allow_version_change) for s in trained] \
        if shared else None
    bar.reset_clock()
    t0 = time.perf_counter()
    order = [s for s in setups if s == "toy"] + trained
    for s in order:
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
                entry = s.finish(out, started[trained.index(s)], resume=resume, progress=bar)
            else:
                entry = s.run(out, resume=resume, progress=bar,
                              allow_version_change=allow_version_change)
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


@contextlib.contextmanager
def out_lock(out: Path):
    """Holds an exclusive OS lock (``flock``) on ``out/.quflow-lock`` for one ``quflow
    reproduce``; yields ``None`` when it has it, else the text of the lock file (the
    holder's process id). The OS releases the lock when the process ends, however it ends
    (the workers never hold it: they are not forked from this process). Without
    ``fcntl`` (not POSIX) there is no lock.
    """
    try:
        import fcntl
    except ImportError:
        yield None
        return
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield None
    finally:
        os.close(fd)  # releases the lock


def _reproduce_main(args, parser) -> int:
    _import_torch()
    import torch

    from .experiments import _training

    torch.set_num_threads(args.threads)
    setups = plan(args, parser)
    rank, size = _training.world()
    jobs = 1 if size > 1 else args.jobs or default_jobs(args.threads)
    out = _writable_dir(Path(args.out), parser) if rank == 0 else Path(args.out)
    with out_lock(out) if rank == 0 else contextlib.nullcontext() as holder:
        if size > 1:  # every rank learns whether rank 0 has the lock
            import torch.distributed as dist

            shared = [holder]
            dist.broadcast_object_list(shared, src=0)
            holder = shared[0]
        if holder is not None:
            if rank == 0:
                print(f"quflow: --out {out} is in use by another quflow reproduce (process "
                      f"{holder}); wait for it to end, or use another --out.",
                      file=sys.stderr)
            return EXIT_BUSY
        return _run_locked(args, setups, out, jobs, rank)


def _run_locked(args, setups: list, out: Path, jobs: int, rank: int) -> int:
    """``quflow reproduce`` once the command line is checked and ``out`` is locked."""
    from .experiments import _io, _training

    if args.progress and rank == 0:
        what = ", ".join(s if s == "toy" else s.key for s in setups)
        mode = ("quick" if args.quick else "full") + "".join(
            f", --{name} {value}" for name, value in (("epochs", args.epochs),
                                                     ("seeds", args.seeds)) if value)
        print(f"quflow reproduce {args.experiment} ({mode}): {what}; {args.threads} "
              f"thread(s) per process, {jobs} run(s) at once -> {out}", flush=True)
    try:
        results = reproduce(setups, out, quick=args.quick, resume=args.resume,
                            progress=args.progress, jobs=jobs,
                            allow_version_change=args.allow_version_change)
    except KeyboardInterrupt:
        print("\nquflow: interrupted. Completed epochs are saved; rerun the same command "
              "with --resume to continue.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _training.VersionMismatch as exc:
        print(f"quflow: --resume refused: {exc}. Use another --out, or add "
              f"--allow-version-change to continue it anyway.", file=sys.stderr)
        return EXIT_MISMATCH
    except _training.ConfigMismatch as exc:
        print(f"quflow: --resume refused: {exc}. Use the same options, or another --out.",
              file=sys.stderr)
        return EXIT_MISMATCH
    except _io.CorruptCheckpoint as exc:
        print(f"quflow: --resume refused: damaged checkpoint {exc}. Delete it to rerun that "
              f"run from the start.", file=sys.stderr)
        return EXIT_CORRUPT
    except LookupError as exc:  # a tuned setup without a search (before any run)
        print(f"quflow: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except _training.Diverged as exc:
        if rank == 0:  # every rank diverges alike
            print(f"quflow: {exc}. Completed setups' files and checkpoints are kept.",
                  file=sys.stderr)
        return EXIT_DIVERGED
    except OSError as exc:
        what = f"cannot write {exc.filename}" if exc.filename else "input/output error"
        print(f"quflow: {what}: {exc.strerror or exc}. The files written before are "
              f"whole.", file=sys.stderr)
        return EXIT_WRITE
    if rank == 0 and args.progress:
        from .experiments import verdict

        print(f"\nThe verdict (written to {out / 'verdict.md'}, with the secondary "
              f"endpoints):\n")
        print(verdict.render(results), end="")
    return EXIT_OK


def _passive_openmp() -> None:
    """Sets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment has a policy. The command
    calls it before anything imports torch, so that this process's libgomp reads it (see
    the module docstring); worker processes and any other child inherit it."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    """The ``quflow`` command; ``argv`` defaults to the command line (``sys.argv``).

    Ctrl-C at any moment ends it with one line on stderr and exit 130
    (``EXIT_INTERRUPTED``).
    """
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before training, e.g. during torch's import
        print("quflow: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: list[str] | None) -> int:
    _passive_openmp()  # before torch loads: parsing --optimizer imports it
    parser, commands = _parsers()
    args = parser.parse_args(argv)
    usage = commands[args.command]  # usage errors show the subcommand's usage
    if args.command == "verdict":
        from .experiments import verdict

        path = Path(args.results)
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            usage.error(f"results: cannot read {path} ({exc})")
        if not isinstance(results, dict):
            usage.error(f"results: {path} is not a results.json of quflow reproduce")
        try:
            table = verdict.render(results, split=args.split)
        except (KeyError, TypeError, IndexError):
            usage.error(f"results: {path} lacks what this version of quflow writes; rerun "
                        f"quflow reproduce")
        print(table, end="")
        return EXIT_OK
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:  # launched by torchrun: data-parallel training over gloo
        import torch.distributed as dist

        dist.init_process_group("gloo")
    try:
        return _reproduce_main(args, usage)
    finally:
        if distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
