"""Private training harness shared by the prediction and control experiments.

One *setup* = (experiment, optimiser); one *run* = (setup, gradient method, seed). A run
trains a fully connected network on mini-batches of a fixed training set, evaluates the
quantum loss on the training and validation sets after every epoch (one batched forward
of both, without autograd), measures the standard and modified gradients of the network
parameters on a fixed probe batch (their cosine and norms: how different the two flows
really are), and checkpoints: after the last epoch, after any epoch that ends at least
``checkpoint_seconds`` after the last checkpoint, and, when the run is interrupted
(Ctrl-C or an error), the last completed epoch, so that ``--resume`` loses at most the
epoch in progress (a killed process, at most ``checkpoint_seconds``). Under ``torchrun``
(``torch.distributed``, gloo) every mini-batch is split across the ranks and DDP averages
the gradients, which equals one process on the same data and seed.
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from ..fidelity import (GRADIENTS, bures_loss, fidelity_loss, fubini_study_loss,
                        log_fidelity_loss)
from . import _io, _plots, _stats
from .verdict import NAMES

OPTIMIZERS = ("adam", "sgd")
# Probes of the explanation of the Adam result (``--study probes``): each optimiser's
# learning rate is its base optimiser's.
PROBES = {"adam-b2": "adam", "adam-warmup": "adam", "sgd-clip": "sgd"}
BETA2_PROBE = 0.99  # adam-b2: Adam remembers ~1/(1 − β₂) = 100 steps instead of 1000
WARMUP_STEPS = 200  # adam-warmup: the learning rate rises linearly over this many steps
# sgd-clip: each mini-batch gradient's norm is clipped to this before the step: about the
# standard gradient's size early in control (0.01–0.3 on the probe batch over its first
# epochs), below the modified gradient's first steps (0.47 in control, 1.6 in prediction)
CLIP_NORM = 0.1
CHECKPOINT_SECONDS = 10.0  # at most this much training is lost to a killed process

PAPER_METHODS = GRADIENTS  # the paper's three gradient flows of the quantum loss
# The loss family: losses whose plain gradient is compared with the three flows
FAMILY = {"bures": bures_loss, "log_fidelity": log_fidelity_loss,
          "fubini_study": fubini_study_loss}
METHODS = (*PAPER_METHODS, *FAMILY)
# Learning rates are chosen on these seeds; every comparison runs on later, held-out ones
SELECTION_SEEDS = (0, 1, 2)
FIRST_HELD_OUT_SEED = len(SELECTION_SEEDS)


def held_out_seeds(count: int) -> tuple[int, ...]:
    """``count`` seeds that the learning-rate search never sees."""
    return tuple(range(FIRST_HELD_OUT_SEED, FIRST_HELD_OUT_SEED + count))


def quantum_loss(pred: torch.Tensor, target: torch.Tensor, method: str,
                 reduction: str = "mean") -> torch.Tensor:
    """The loss a run trains with, both arguments in the split layout ``[Re ψ, Im ψ]``
    (or complex): the quantum loss ``1 − F`` with one of the paper's gradient flows
    (``method`` in :data:`PAPER_METHODS`), or a sibling loss of the family with its plain
    gradient (``"bures"``: ``1 − √F``; ``"log_fidelity"``: ``−log F``;
    ``"fubini_study"``: ``arccos √F``). Every run is *evaluated* with ``1 − F``."""
    if method in FAMILY:
        return FAMILY[method](pred, target, reduction=reduction, layout="split")
    return fidelity_loss(pred, target, gradient=method, reduction=reduction, layout="split")


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """Adam (the paper's) with torch's ``fused`` step: ~2.5× faster than the default
    per-tensor step (bench/bench_mainjob.py), the same update to round-off (its arithmetic
    is ordered differently; tests/test_experiments.py states the tolerance). Plain SGD
    keeps the default step: ``fused`` (bitwise equal) measured 4–13 % slower.

    The probes (:data:`PROBES`): ``"adam-b2"`` is Adam with ``β₂ =`` :data:`BETA2_PROBE`;
    ``"adam-warmup"`` is Adam whose rate :func:`train` ramps up over
    :data:`WARMUP_STEPS` steps; ``"sgd-clip"`` is SGD whose gradient :func:`train` clips
    to norm :data:`CLIP_NORM`."""
    if name in ("adam", "adam-warmup"):
        return torch.optim.Adam(params, lr=lr, fused=True)
    if name == "adam-b2":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, BETA2_PROBE), fused=True)
    if name in ("sgd", "sgd-clip"):
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"optimizer: expected one of {(*OPTIMIZERS, *PROBES)}, got {name!r}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    experiment: str
    method: str
    seed: int
    epochs: int
    lr: float
    batch_size: int
    extra: tuple = ()  # experiment-specific settings that a resumed run must share
    optimizer: str = "adam"  # "adam" (the paper's) or "sgd" (plain)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["extra"] = [list(x) for x in self.extra]
        return d


class ConfigMismatch(Exception):
    """A checkpoint or folder to resume from was written by a different configuration."""


class VersionMismatch(ConfigMismatch):
    """A checkpoint or folder to resume from was written by another quflow version, on
    other data, or by a quflow too old to say (see :func:`stamp`)."""


class Diverged(Exception):
    """A run's loss or network parameters stopped being finite (the message names the run
    and the epoch)."""


def data_fingerprint(train_set: tuple, val_set: tuple) -> str:
    """SHA-256 (hex) of the training and validation tensors: dtype, shape and bytes of each.

    The fingerprint is taken of the data rather than of the code that makes it: it changes
    exactly when a run would train or be judged on other numbers, whatever the cause (the
    simulator's kernels, the state sampler, a torch upgrade), and not when unrelated code
    changes. The data are made the same way by every process and at any thread count
    (each trajectory is computed on its own), so the fingerprint is too.
    """
    h = hashlib.sha256()
    for t in (*train_set, *val_set):
        t = t.detach().contiguous()
        h.update(f"{t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def stamp(train_set: tuple, val_set: tuple) -> dict:
    """What checkpoints, manifests and results.json record of the code and data: the
    quflow version (``quflow.__version__``) and :func:`data_fingerprint`. ``--resume``
    refuses a folder whose stamp differs (:class:`VersionMismatch`) unless told
    ``--allow-version-change``."""
    from .. import __version__

    return {"quflow_version": __version__,
            "data_fingerprint": data_fingerprint(train_set, val_set)}


_STAMP_KEYS = ("quflow_version", "data_fingerprint")


def _require_stamp(saved: dict, now: dict, name: str) -> None:
    """Raises :class:`VersionMismatch` unless ``saved`` carries the stamp ``now``."""
    if not all(k in saved for k in _STAMP_KEYS):
        raise VersionMismatch(
            f"{name} was written by an older quflow, which recorded no version or data "
            f"fingerprint (this is quflow {now['quflow_version']})")
    if any(saved[k] != now[k] for k in _STAMP_KEYS):
        what = "; ".join(f"{k}: {saved[k]!r} in the folder, {now[k]!r} now"
                         for k in _STAMP_KEYS if saved[k] != now[k])
        raise VersionMismatch(f"{name} was written by another quflow version or on other "
                              f"data ({what})")


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _differences(saved: dict, now: dict) -> str:
    keys = [k for k in {**saved, **now} if saved.get(k) != now.get(k)]
    return "; ".join(f"{k}: {saved.get(k)!r} in the folder, {now.get(k)!r} now" for k in keys)


def _require_config(cfg: RunConfig, saved: object, name: str) -> None:
    if saved != cfg.as_dict():
        if not isinstance(saved, dict):
            raise _io.CorruptCheckpoint(f"{name}: its configuration is not a dictionary")
        raise ConfigMismatch(f"{name} was written by a different configuration "
                             f"({_differences(saved, cfg.as_dict())})")


_CURVES = ("train", "val", "cos", "norm_standard", "norm_modified")


def load_run(cfg: RunConfig, path: Path, stamp: dict | None = None,
             allow_version_change: bool = False) -> dict:
    """The verified checkpoint of run ``cfg`` at ``path``.

    Args:
        cfg: the run's configuration; the checkpoint's must equal it.
        path: the checkpoint file.
        stamp: :func:`stamp` of this code and data; ``None``: not checked.
        allow_version_change: accept a checkpoint with another (or no) stamp.

    Raises:
        CorruptCheckpoint: damaged, edited or inconsistent (the message names the file).
        ConfigMismatch: written by another configuration.
        VersionMismatch: written by another quflow version, on other data, or by a
            quflow that recorded neither.
    """
    try:
        state = _io.load_checkpoint(path)
    except _io.CorruptCheckpoint as exc:
        raise _io.CorruptCheckpoint(f"{path}: {exc}") from None
    _require_config(cfg, state.get("config"), str(path))
    if stamp is not None and not allow_version_change:
        _require_stamp(state, stamp, str(path))
    epoch, curves = state.get("epoch"), state.get("curves")
    ok = (isinstance(epoch, int) and 1 <= epoch <= cfg.epochs and isinstance(curves, dict)
          and all(isinstance(curves.get(k), list) and len(curves[k]) == epoch + 1
                  for k in _CURVES)
          and all(isinstance(state.get(k), dict) for k in ("model", "optim"))
          and isinstance(state.get("shuffle"), torch.Tensor))
    if not ok:
        raise _io.CorruptCheckpoint(f"{path}: inconsistent content (epoch counter, curves "
                                    f"or training state)")
    return state


def _probe_gradients(model: nn.Module, batch_loss, probe) -> tuple[float, float, float]:
    """(cosine, ‖g_standard‖, ‖g_modified‖) of the network-parameter gradients on ``probe``."""
    params = [p for p in model.parameters() if p.requires_grad]
    flat = []
    for method in ("standard", "modified"):
        grads = torch.autograd.grad(batch_loss(model, *probe, method), params)
        flat.append(torch.cat([g.reshape(-1) for g in grads]))
    a, b = flat
    na, nb = a.norm().item(), b.norm().item()
    cos = (a @ b).item() / (na * nb) if na > 0 and nb > 0 else float("nan")
    return cos, na, nb


def _snapshot(cfg: RunConfig, epoch: int, model: nn.Module, opt: torch.optim.Optimizer,
              shuffle: torch.Generator, curves: dict, stamp: dict | None) -> dict:
    """A checkpoint's content, copied (training goes on changing the live tensors)."""
    return {**(stamp or {}), "config": cfg.as_dict(), "epoch": epoch,
            "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optim": copy.deepcopy(opt.state_dict()), "shuffle": shuffle.get_state(),
            "curves": {k: list(v) for k, v in curves.items()}}


def train(cfg: RunConfig, make_model: Callable[[], nn.Module],
          batch_loss: Callable[..., torch.Tensor],
          train_set: tuple[torch.Tensor, torch.Tensor], val_set: tuple[torch.Tensor, torch.Tensor],
          ckpt: Path | None, resume: bool, probe: tuple[torch.Tensor, torch.Tensor] | None = None,
          on_epoch: Callable[[int, float, float], None] | None = None,
          checkpoint_seconds: float = CHECKPOINT_SECONDS, stamp: dict | None = None,
          allow_version_change: bool = False) -> dict:
    """Trains one run; returns its curves over epochs ``0..E`` (index 0 = before training).

    ``{"train", "val"}``: quantum loss; ``{"cos", "norm_standard", "norm_modified"}``: the
    gradient diagnostic on ``probe`` (default: the first 200 training samples).
    ``batch_loss(model, x, y, gradient, reduction="mean")`` returns the quantum loss of a
    mini-batch (``reduction="none"``: per sample), backpropagating with the given gradient
    method. Checkpoints (see the module docstring): ``checkpoint_seconds=0`` writes one
    after every epoch; each records ``stamp`` (:func:`stamp`), which a resumed checkpoint
    must carry too unless ``allow_version_change``.

    A run *diverges* when its network parameters or its training or validation loss stop
    being finite: checked after every epoch, and when a mini-batch's loss refuses
    non-finite values (quflow's losses raise ``ValueError`` on NaN or Inf predictions).
    It then ends with :class:`Diverged`, naming the run and the epoch; the checkpoint
    keeps the last finite epoch that was saved (as on any interruption).
    """
    rank, size = world()
    torch.manual_seed(cfg.seed)
    model = make_model()
    opt = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr)
    shuffle = torch.Generator().manual_seed(cfg.seed + 1)
    curves = {k: [] for k in _CURVES}
    start = 0
    if resume and ckpt is not None and ckpt.exists():
        state = load_run(cfg, ckpt, stamp, allow_version_change)
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optim"])
            shuffle.set_state(state["shuffle"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise _io.CorruptCheckpoint(f"{ckpt}: its training state does not fit the run "
                                        f"({str(exc).splitlines()[0]})") from None
        curves, start = state["curves"], state["epoch"]
    ddp = nn.parallel.DistributedDataParallel(model) if size > 1 else model
    x_all, y_all = train_set
    if probe is None:
        probe = (x_all[:200], y_all[:200])

    n = x_all.shape[0]
    per_epoch = -(-n // cfg.batch_size)  # optimiser steps per epoch
    params = [p for p in model.parameters() if p.requires_grad]
    # training and validation sets evaluated as one batch: (n + n_val, ...)
    x_eval, y_eval = torch.cat((x_all, val_set[0])), torch.cat((y_all, val_set[1]))

    def record() -> tuple[float, float]:
        with torch.no_grad():
            losses = batch_loss(model, x_eval, y_eval, "standard", reduction="none")
        tr, va = losses[:n].mean().item(), losses[n:].mean().item()
        for k, v in zip(_CURVES, (tr, va, *_probe_gradients(model, batch_loss, probe))):
            curves[k].append(v)
        return tr, va

    def diverged(epoch: int) -> Diverged:
        return Diverged(f"the {cfg.experiment} run ({cfg.optimizer} lr {cfg.lr:g}, "
                        f"{cfg.method} gradient, seed {cfg.seed}) diverged in epoch {epoch}: "
                        f"its loss or network parameters are no longer finite; try a "
                        f"smaller --lr")

    if start == 0:
        record()
    saved_at, unsaved = time.monotonic(), None  # unsaved: the last completed epoch's snapshot
    try:
        for epoch in range(start, cfg.epochs):
            order = torch.randperm(n, generator=shuffle)
            try:
                for k, first in enumerate(range(0, n, cfg.batch_size)):
                    idx = order[first:first + cfg.batch_size][rank::size]  # this rank's share
                    opt.zero_grad()
                    batch_loss(ddp, x_all[idx], y_all[idx], cfg.method).backward()
                    if cfg.optimizer == "sgd-clip":
                        nn.utils.clip_grad_norm_(params, CLIP_NORM)
                    elif cfg.optimizer == "adam-warmup":  # from the step count: resumable
                        step = epoch * per_epoch + k
                        opt.param_groups[0]["lr"] = cfg.lr * min(1.0, (step + 1) / WARMUP_STEPS)
                    opt.step()
                tr, va = record()
            except ValueError:  # e.g. fidelity_loss: "pred: contains NaN or Inf"
                if _finite(model):
                    raise
                raise diverged(epoch + 1) from None
            if not (math.isfinite(tr) and math.isfinite(va) and _finite(model)):
                raise diverged(epoch + 1)
            if ckpt is not None and rank == 0:
                unsaved = _snapshot(cfg, epoch + 1, model, opt, shuffle, curves, stamp)
                if (epoch + 1 == cfg.epochs
                        or time.monotonic() - saved_at >= checkpoint_seconds):
                    _io.save_checkpoint(ckpt, unsaved)
                    saved_at, unsaved = time.monotonic(), None
            if on_epoch is not None:
                on_epoch(epoch + 1, tr, va)
    except BaseException:
        if unsaved is not None:  # Ctrl-C or an error: keep the completed epochs
            try:
                _io.save_checkpoint(ckpt, unsaved)
            except OSError:  # e.g. the disk is full: the older checkpoint stays whole
                pass
        raise
    return curves


def _seed_range(seeds: tuple) -> str:
    """``seeds 3–10`` for a contiguous range, else the list."""
    seeds = list(seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"seeds {seeds[0]}–{seeds[-1]}"
    return "seed " + str(seeds[0]) if len(seeds) == 1 else "seeds " + ", ".join(map(str, seeds))


def _finite(model: nn.Module) -> bool:
    """Whether every parameter of ``model`` is finite."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def mlp(inputs: int, outputs: int, hidden: int) -> nn.Sequential:
    """Fully connected, two hidden tanh layers, float64."""
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, outputs)).double()


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One trained experiment of the paper: its data, loss and network (a two-hidden-layer
    MLP ``inputs → hidden → hidden → outputs``), and its default settings."""

    name: str
    make_data: Callable  # make_data(states=, real=, target=) -> ((x, y) train, (x, y) val)
    batch_loss: Callable  # batch_loss(model, x, y, gradient, reduction="mean") -> quantum loss
    n: int  # grid points: eigenstates 1..n exist
    inputs: int
    outputs: int
    hidden: int
    lr: dict  # optimiser -> default learning rate
    batch_size: int
    epochs: dict  # {"quick": ..., "full": ...}
    seeds: dict  # {"quick": ..., "full": ...}
    states: tuple  # default initial states: 1-based box eigenstates superposed
    real_states: bool  # default: real coefficients
    target: int | None  # default control target φ_K; None: the experiment has no target
    probe: int  # probe batch for the gradient diagnostic: `probe` training samples, evenly spaced
    seconds_per_epoch: float  # a prior for the ETA (one thread, this project's 2-core VM)
    extra: tuple = ()
    # --study variants: (tag, {"states", "real_states", "target", "data_seed"}) each run
    # at the default setup's tuned learning rates
    variants: tuple = ()


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything one (experiment, optimiser, study) runs with, resolved from the options.

    ``lr`` maps each method to its learning rate (the paper's for every method, or each
    method's own from a learning-rate search); ``study`` is ``"paper"`` (the paper's
    settings), ``"tuned"`` (each method at its tuned rate), ``"probe"`` (an optimiser
    variant, :data:`PROBES`), ``"variant"`` (other states, targets or data, at the default
    setup's tuned rates) or ``"search"`` (one point of a learning-rate search:
    :mod:`._search`). ``lr_source``: ``"paper"``, ``"given"`` (``--lr``), ``"search"`` (a
    search in this output folder) or ``"committed"`` (the search committed with quflow).
    """

    experiment: Experiment
    optimizer: str
    lr: dict  # method -> learning rate
    seeds: tuple  # the seeds run, e.g. held_out_seeds(3)
    epochs: int
    states: tuple
    real_states: bool
    target: int | None
    methods: tuple = PAPER_METHODS
    study: str = "paper"
    lr_source: str = "paper"
    data_seed: int | None = None  # None: the experiment's default data draw
    tag: str = ""  # names a variant in the key, e.g. "m20"

    @property
    def key(self) -> str:
        """The results.json key: the experiment's name, ``-optimizer`` unless Adam, the
        variant's tag, and ``-tuned`` for tuned learning rates (``-search`` for a search)."""
        parts = [self.experiment.name]
        if self.optimizer != "adam":
            parts.append(self.optimizer)
        if self.tag:
            parts.append(self.tag)
        if self.study == "search":
            parts.append("search")
        elif self.lr_source in ("search", "committed"):
            parts.append("tuned")
        return "-".join(parts)

    @property
    def settings(self) -> dict:
        d = {"experiment": self.experiment.name, "study": self.study,
             "optimizer": self.optimizer, "lr_source": self.lr_source,
             "states": list(self.states), "real_states": self.real_states}
        if self.target is not None:
            d["target"] = self.target
        if self.data_seed is not None:
            d["data_seed"] = self.data_seed
        return d

    def describe(self) -> str:
        s = ",".join(f"φ{k}" for k in self.states)
        kind = "real" if self.real_states else "complex"
        target = f" → φ{self.target}" if self.target is not None else ""
        data = f", data draw {self.data_seed}" if self.data_seed is not None else ""
        return (f"{self.key}: {self.optimizer} {self.describe_lr()}, {self.epochs} epochs × "
                f"{len(self.seeds)} seeds ({_seed_range(self.seeds)}) × "
                f"{len(self.methods)} methods, {kind} mixes of {s}{target}{data}")

    def describe_lr(self) -> str:
        """``lr 0.005`` when every method shares it, else ``lr std 2, mod 1.5, …``."""
        values = {self.lr[m] for m in self.methods}
        if len(values) == 1:
            return f"lr {values.pop():g}"
        return "lr " + ", ".join(f"{NAMES.get(m, m)} {self.lr[m]:g}" for m in self.methods)

    def extra(self) -> tuple:
        e = self.experiment
        extra = (("hidden", e.hidden), ("states", list(self.states)),
                 ("real_states", self.real_states), *e.extra)
        if self.target is not None:
            extra = (*extra, ("target", self.target))
        if self.data_seed is not None:
            extra = (*extra, ("data_seed", self.data_seed))
        return extra

    def config(self, method: str, seed: int, lr: float | None = None) -> RunConfig:
        e = self.experiment
        return RunConfig(e.name, method, seed, self.epochs, self.lr[method] if lr is None
                         else lr, e.batch_size, self.extra(), self.optimizer)

    def configs(self) -> list[RunConfig]:
        return [self.config(m, s) for m in self.methods for s in self.seeds]

    def checkpoint(self, out: Path, cfg: RunConfig) -> Path:
        lr = f"-lr{cfg.lr:g}" if self.study == "search" else ""
        return out / "checkpoints" / f"{self.key}-{cfg.method}{lr}-seed{cfg.seed}.pt"

    def manifest(self) -> dict:
        return {"seeds": list(self.seeds), "epochs": self.epochs, "methods": list(self.methods),
                "lr": {m: self.lr[m] for m in self.methods}, **self.settings}

    def data(self) -> tuple[tuple, tuple]:
        """The (training, validation) sets ``(x, y)`` of this setup."""
        kwargs = {} if self.data_seed is None else {"seed": self.data_seed}
        return self.experiment.make_data(states=self.states, real=self.real_states,
                                          target=self.target, **kwargs)

    def probe_batch(self, train_set: tuple) -> tuple:
        """The gradient diagnostic's probe batch: ``experiment.probe`` training samples,
        evenly spaced over the training set."""
        n = self.experiment.probe
        stride = max(1, len(train_set[0]) // n)
        return tuple(t[::stride][:n] for t in train_set)

    def check_resumable(self, out: Path, *, allow_version_change: bool = False) -> None:
        """With ``--resume``: the folder's manifest and every checkpoint of this setup
        belong to this configuration, this quflow version and these data (:func:`stamp`;
        not checked with ``allow_version_change``), and are intact. Writes nothing.

        Raises:
            ConfigMismatch: another configuration (seeds, epochs, states, …): the
                differences are named.
            VersionMismatch: another quflow version or other data (named), or written by
                a quflow that recorded neither.
            CorruptCheckpoint: a damaged or edited checkpoint, named.
        """
        path = out / "checkpoints" / f"{self.key}.json"
        ckpts = [(cfg, self.checkpoint(out, cfg)) for cfg in self.configs()]
        if not path.exists() and not any(ckpt.exists() for _, ckpt in ckpts):
            return
        now = None if allow_version_change else stamp(*self.data())
        if path.exists():
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError):
                raise _io.CorruptCheckpoint(f"{path}: unreadable manifest") from None
            if not isinstance(saved, dict):
                raise _io.CorruptCheckpoint(f"{path}: unreadable manifest")
            config = {k: v for k, v in saved.items() if k not in _STAMP_KEYS}
            if config != self.manifest():
                raise ConfigMismatch(f"{path} was written by a different configuration "
                                     f"({_differences(config, self.manifest())})")
            if now is not None:
                _require_stamp(saved, now, str(path))
        for cfg, ckpt in ckpts:
            if ckpt.exists():
                load_run(cfg, ckpt, now, allow_version_change)

    def run(self, out: Path, *, resume: bool, progress: "Progress",
            allow_version_change: bool = False) -> dict:
        """Trains every (gradient, seed) run here, one after the other (worker processes:
        :meth:`start` with :class:`Workers`, then :meth:`finish`; each run seeds itself, so
        the results are the same); writes checkpoints, ``<key>.csv``, ``<key>.png`` and
        ``<key>-gradients.png``; returns the results.json entry."""
        started = self.start(out, resume=resume, allow_version_change=allow_version_change)
        return self.finish(out, started, resume=resume, progress=progress)

    def start(self, out: Path, *, resume: bool = False, workers: "Workers | None" = None,
              allow_version_change: bool = False) -> "_Started":
        """Makes the data and writes the manifest; with ``workers``, queues every run there
        (several setups may queue on one :class:`Workers`, so that one's last runs and
        figures overlap the next one's training). :meth:`finish` completes it."""
        e = self.experiment
        rank, size = world()
        if e.batch_size % size:
            raise ValueError(f"{e.name}: mini-batch {e.batch_size} does not split evenly "
                             f"over {size} processes")
        train_set, val_set = self.data()
        now = stamp(train_set, val_set)
        probe = self.probe_batch(train_set)
        if rank == 0:
            (out / "checkpoints").mkdir(parents=True, exist_ok=True)
            _io.remove_stale_temporaries(out / "checkpoints")
            _io.write_json(out / "checkpoints" / f"{self.key}.json",
                           {**self.manifest(), **now})
        configs = self.configs()
        futures = None
        if workers is not None:
            threads = torch.get_num_threads()
            futures = [workers.submit(_train_in_worker, self, cfg, out, resume, train_set,
                                      val_set, probe, threads, now, allow_version_change)
                       for cfg in configs]
        return _Started(train_set, val_set, probe, configs, futures, now, allow_version_change)

    def finish(self, out: Path, started: "_Started", *, resume: bool,
               progress: "Progress") -> dict:
        """Collects the queued runs (or trains them here, in order), then writes
        ``<key>.csv`` and the figures; returns the results.json entry."""
        e = self.experiment
        curves = {m: [] for m in self.methods}
        if started.futures is not None:
            for cfg, future in zip(started.configs, started.futures):
                curves[cfg.method].append(future.result())
                progress.finished(f"{self.key} {cfg.method} seed {cfg.seed}", e.name,
                                  cfg.epochs, curves[cfg.method][-1])
        else:
            for cfg in started.configs:
                on_epoch = progress.start(f"{self.key} {cfg.method} seed {cfg.seed}", e.name,
                                          cfg.epochs)
                curves[cfg.method].append(train(
                    cfg, lambda: mlp(e.inputs, e.outputs, e.hidden), e.batch_loss,
                    started.train_set, started.val_set, self.checkpoint(out, cfg), resume,
                    probe=started.probe, on_epoch=on_epoch, stamp=started.stamp,
                    allow_version_change=started.allow_version_change))
                progress.done(curves[cfg.method][-1])
        # the entry records this code and data; with --allow-version-change, also that its
        # checkpoints (each stamped by the quflow that wrote it) were not checked
        recorded = {**self.settings, **started.stamp}
        if started.allow_version_change:
            recorded["allow_version_change"] = True
        results = _stats.summarise(curves, list(self.seeds), epochs=self.epochs,
                                   setup=recorded)
        for m in self.methods:
            results[m]["lr"] = self.lr[m]
        if world()[0] == 0:
            rows = [["method", "seed", "epoch", "train_loss", "val_loss", "cos_standard_modified",
                     "grad_norm_standard", "grad_norm_modified"]]
            for m, runs in curves.items():
                for seed, c in enumerate(runs):
                    rows += [[m, seed, ep, *(f"{c[k][ep]:.8g}" for k in _CURVES)]
                             for ep in range(len(c["train"]))]
            _io.write_csv(out / f"{self.key}.csv", rows)
            _plots.curves(curves, out / f"{self.key}.png", title=self.describe())
            _plots.gradients(curves, out / f"{self.key}-gradients.png", title=self.describe(),
                             optimizer=self.optimizer)
        return results


class _Started(NamedTuple):
    """A setup between :meth:`Setup.start` and :meth:`Setup.finish`."""
    train_set: tuple
    val_set: tuple
    probe: tuple
    configs: list
    futures: list | None  # one per config when queued on Workers
    stamp: dict  # stamp() of the code and data
    allow_version_change: bool


class Workers:
    """Worker processes for independent runs, shared by every setup of a reproduction: a
    context manager. Leaving it on an exception (Ctrl-C, a failed run): no queued run
    starts, and the running ones get SIGINT too, so each saves its last completed epoch
    (train's handler); it returns once all have ended.

    The workers are never forked from this process: they come from a ``forkserver``
    (where the platform has one; ``spawn`` elsewhere), a fresh interpreter that imports
    torch but never runs an op. A forked copy of a process that has run a parallel op
    (torch's or quflow's OpenMP team, opened by making the data with ``--threads 2``)
    would wait forever in its first parallel op for the parent's team, whose threads do
    not exist in the child (GNU libgomp is not fork-safe). Every run seeds itself and
    gets its data from this process, so the results do not depend on the start method.
    """

    def __init__(self, workers: int) -> None:
        self._context = worker_context()
        if self._context.get_start_method() == "forkserver":
            # start the server now: its imports (~2-9 s) overlap the parent's data making
            _start_forkserver()
        self._stop = self._context.Event()
        self._pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=self._context, initializer=_worker_init,
            initargs=(self._stop,))
        self._futures: list[concurrent.futures.Future] = []

    def submit(self, fn, *args) -> concurrent.futures.Future:
        future = self._pool.submit(fn, *args)
        self._futures.append(future)
        return future

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is not None:
                self._stop.set()
                for future in self._futures:
                    future.cancel()
                procs = getattr(self._pool, "_processes", None) or {}
                for proc in list(procs.values()):
                    if proc.is_alive():
                        os.kill(proc.pid, signal.SIGINT)
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        return False


# imported once by the forkserver, so that each worker it forks starts with them: torch
# (~2-5 s) and torch._dynamo, which torch.optim imports on a process's first optimiser
# (~1.6 s). Neither runs an op nor starts a thread team on import. quflow's core (0.2 s)
# is left to each worker, so that the worker, not the server, is the process that loads
# it; the first module only sets the server's SIGINT handler (see _start_forkserver).
_PRELOAD = ["quflow.experiments._forkserver", "torch", "torch._dynamo"]


def _start_forkserver() -> None:
    """Starts the forkserver with SIGINT blocked (as CPython starts its resource tracker):
    the server unblocks it in its first import (:mod:`quflow.experiments._forkserver`),
    where Ctrl-C already ends it silently, so a Ctrl-C at any moment of its start prints
    nothing of the server's; one in this process meanwhile arrives when it is unblocked."""
    from multiprocessing import forkserver, resource_tracker

    if not hasattr(signal, "pthread_sigmask"):
        forkserver.ensure_running()
        return
    # the server starts the resource tracker first, which would unblock SIGINT here
    resource_tracker.ensure_running()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def worker_context() -> multiprocessing.context.BaseContext:
    """The start method of :class:`Workers`: ``forkserver`` (preloading torch) where the
    platform has it, else ``spawn``; never ``fork`` (see :class:`Workers`)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)  # no effect once the server runs
        return context
    return multiprocessing.get_context("spawn")


_TRAINING = False  # in a worker: a run is in progress
_STOP = None  # in a worker: set by the parent when interrupted; queued runs then do not start


def _worker_sigint(signum, frame) -> None:
    """SIGINT in a worker interrupts the run in progress once (train then saves its last
    completed epoch, undisturbed by further signals); an idle worker ignores it."""
    global _TRAINING
    if _TRAINING:
        _TRAINING = False
        raise KeyboardInterrupt


def _worker_init(stop) -> None:
    global _STOP
    _STOP = stop
    signal.signal(signal.SIGINT, _worker_sigint)
    if hasattr(signal, "pthread_sigmask"):  # blocked if the server's first import failed
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _train_in_worker(setup: Setup, cfg: RunConfig, out: Path, resume: bool, train_set, val_set,
                     probe, threads: int, stamp: dict, allow_version_change: bool) -> dict:
    """One run of ``setup`` in a worker process, with the parent's intra-op threads."""
    global _TRAINING
    torch.set_num_threads(threads)
    e = setup.experiment
    if _STOP is not None and _STOP.is_set():
        raise KeyboardInterrupt
    _TRAINING = True
    try:
        return train(cfg, lambda: mlp(e.inputs, e.outputs, e.hidden), e.batch_loss, train_set,
                     val_set, setup.checkpoint(out, cfg), resume, probe=probe, stamp=stamp,
                     allow_version_change=allow_version_change)
    finally:
        _TRAINING = False


STUDIES = ("search", "paper", "tuned", "probes", "variants")
DEFAULT_STUDIES = {"quick": ("paper", "tuned"), "full": STUDIES}


def plan(experiment: Experiment, *, quick: bool, optimizers: tuple[str, ...],
         seeds: int | None = None, epochs: int | None = None, lr: float | None = None,
         states: tuple[int, ...] | None = None, real_states: bool | None = None,
         target: int | None = None, studies: tuple[str, ...] | None = None) -> list[Setup]:
    """The setups that ``quflow reproduce <experiment>`` runs, with defaults filled in.

    Studies (:data:`STUDIES`; default :data:`DEFAULT_STUDIES`): ``"search"`` the
    learning-rate search (:mod:`._search`) on :data:`SELECTION_SEEDS`, every method of
    :data:`METHODS` in full mode; ``"paper"`` the paper's three flows at the paper's rate
    (or ``lr``); ``"tuned"`` every method at its own searched rate (the loss family too in
    full mode); ``"probes"`` the optimiser probes :data:`PROBES` (standard vs modified at
    the paper's rate); ``"variants"`` the experiment's other states, targets and data
    draws at the default setup's tuned rates. All but the search run on held-out seeds.
    Tuned setups' ``lr`` is ``{}`` until :func:`resolve` fills it in.

    Raises:
        ValueError: an eigenstate or target outside ``1..n``, or a target for an
            experiment without one.
    """
    e = experiment
    mode = "quick" if quick else "full"
    studies = tuple(studies) if studies else DEFAULT_STUDIES[mode]
    default = (e.states, e.real_states, e.target)
    states = tuple(states) if states else e.states
    for k in states:
        if not 1 <= k <= e.n:
            raise ValueError(f"--states: the grid has eigenstates 1..{e.n}, got {k}")
    if target is not None:
        if e.target is None:
            raise ValueError(f"--target: the {e.name} experiment has no target state")
        if not 1 <= target <= e.n:
            raise ValueError(f"--target: the grid has eigenstates 1..{e.n}, got {target}")
    real_states = e.real_states if real_states is None else real_states
    target = target if target is not None else e.target
    held_out = held_out_seeds(seeds or e.seeds[mode])
    epochs = epochs or e.epochs[mode]
    tuned_methods = PAPER_METHODS if quick else METHODS
    source = "search"
    setups = []
    for study in STUDIES:
        if study not in studies:
            continue
        for opt in optimizers:
            common = dict(epochs=epochs, states=states, real_states=real_states,
                          target=target)
            if study == "search":
                setups.append(Setup(e, opt, {}, SELECTION_SEEDS, methods=tuned_methods,
                                    study="search", lr_source="search", **common))
            elif study == "paper":
                rate = lr or e.lr[opt]
                setups.append(Setup(e, opt, {m: rate for m in PAPER_METHODS}, held_out,
                                    study="paper", lr_source="given" if lr else "paper",
                                    **common))
            elif study == "tuned":
                setups.append(Setup(e, opt, {}, held_out, methods=tuned_methods,
                                    study="tuned", lr_source=source, **common))
            elif study == "probes":
                for probe, base in PROBES.items():
                    if base == opt:
                        rate = lr or e.lr[opt]
                        setups.append(Setup(e, probe, {m: rate for m in ("standard",
                                                                         "modified")},
                                            held_out, methods=("standard", "modified"),
                                            study="probe", **common))
            elif study == "variants" and (states, real_states, target) == default:
                for tag, v in e.variants:
                    setups.append(Setup(
                        e, opt, {}, held_out, epochs, tuple(v.get("states", e.states)),
                        v.get("real_states", e.real_states), v.get("target", e.target),
                        methods=PAPER_METHODS, study="variant", lr_source=source,
                        data_seed=v.get("data_seed"), tag=tag))
    return setups


def search_key(setup: Setup) -> str:
    """The key of the search whose rates a tuned or variant setup uses: the experiment's
    default states, this optimiser."""
    name = setup.experiment.name
    return f"{name}-search" if setup.optimizer == "adam" else f"{name}-{setup.optimizer}-search"


def resolve(setup: Setup, searches: dict, committed: dict) -> Setup:
    """``setup`` with its tuned rates filled in: from ``searches`` (this output folder's
    ``lr_search.json``) when it holds a search of the same experiment, optimiser and
    epochs that covers the methods, else from ``committed`` (quflow's committed search).
    Setups with rates already set are returned unchanged.

    Raises:
        LookupError: neither has such a search (the message says what to run).
    """
    from . import _search

    if setup.lr:
        return setup
    key = search_key(setup)
    for source, table in (("search", searches), ("committed", committed)):
        entry = table.get(key)
        # this folder's search must be at this run's epochs; the committed one is the
        # full run's, which the quick run uses at its own, shorter, epochs
        if entry is None or (source == "search" and entry.get("epochs") != setup.epochs):
            continue
        try:
            rates = _search.chosen(entry, setup.methods)
        except KeyError:
            continue
        return dataclasses.replace(setup, lr=rates, lr_source=source)
    raise LookupError(f"{setup.key}: no learning-rate search of {key} at {setup.epochs} "
                      f"epochs covering {', '.join(setup.methods)} in this --out folder or "
                      f"committed with quflow; run --full --study search (with the same "
                      f"--epochs) first")


class Progress:
    """Run-level progress: ``[k/N] label: train …, val … | elapsed, ETA`` after each run,
    and on a terminal a per-epoch bar (tqdm) that leaves no carriage-return trail in a log
    file. One run at a time: :meth:`start` it, then :meth:`done` with its curves."""

    def __init__(self, total_epochs: dict[str, int], prior: dict[str, float], runs: int, *,
                 enabled: bool = True, stream=None) -> None:
        self.stream = stream or sys.stdout
        self.enabled = enabled and world()[0] == 0
        self.tty = self.enabled and self.stream.isatty()
        self.remaining = dict(total_epochs)  # experiment -> epochs still to run
        self.prior = dict(prior)  # experiment -> seconds per epoch before any is measured
        self.spent = {k: [0.0, 0] for k in prior}  # experiment -> [seconds, epochs]
        self.runs, self.runs_done = runs, 0
        self.t0 = self._clock = time.perf_counter()
        self._run = None

    def _eta(self) -> float:
        return sum(left * (secs / eps if eps else self.prior[name])
                   for name, left in self.remaining.items()
                   for secs, eps in [self.spent[name]])

    def start(self, label: str, experiment: str, epochs: int) -> Callable[[int, float, float], None]:
        """Begins a run; returns the per-epoch callback for :func:`train`."""
        run = {"label": label, "experiment": experiment, "epochs": epochs, "trained": 0,
               "t": time.perf_counter(), "bar": None}
        if self.tty:
            from tqdm import tqdm

            run["bar"] = tqdm(total=epochs, leave=False, dynamic_ncols=True, desc=label,
                              file=self.stream)
        self._run = run

        def on_epoch(epoch: int, tr: float, va: float) -> None:
            now = time.perf_counter()
            self.spent[experiment][0] += now - run["t"]
            self.spent[experiment][1] += 1
            run["t"] = now
            run["trained"] += 1
            if run["bar"] is not None:
                run["bar"].n = epoch
                run["bar"].set_postfix(train=f"{tr:.3g}", val=f"{va:.3g}")
        return on_epoch

    def reset_clock(self) -> None:
        """Parallel runs start now (see :meth:`finished`)."""
        self._clock = time.perf_counter()

    def finished(self, label: str, experiment: str, epochs: int, curves: dict) -> None:
        """A run trained elsewhere (a worker process) has finished: its epochs count with
        the wall time since the last report, so the ETA accounts for the parallel runs."""
        now = time.perf_counter()
        self.spent[experiment][0] += now - self._clock
        self._clock = now
        self.spent[experiment][1] += epochs
        self._run = {"label": label, "experiment": experiment, "epochs": epochs, "bar": None}
        self.done(curves)

    def done(self, curves: dict) -> None:
        """Ends the run started last (epochs a resumed run skipped count as done)."""
        run, self._run = self._run, None
        if run["bar"] is not None:
            run["bar"].close()
        self.remaining[run["experiment"]] -= run["epochs"]
        self.runs_done += 1
        if self.enabled:
            print(f"   [{self.runs_done}/{self.runs}] {run['label']}: train "
                  f"{curves['train'][-1]:.3g}, val {curves['val'][-1]:.3g} | elapsed "
                  f"{_clock(time.perf_counter() - self.t0)}, ETA {_clock(self._eta())}",
                  file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"
