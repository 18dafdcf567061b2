"""Private training harness shared by the prediction and control experiments.

One *run* = one (experiment, gradient method, seed). A run trains with Adam on mini-batches
of a fixed training set, evaluates the quantum loss on the training and validation sets
after every epoch, and checkpoints atomically after every epoch so that ``--resume``
loses at most the epoch in progress. Under ``torchrun`` (``torch.distributed`` with the
gloo backend) every mini-batch is split across the ranks and DDP averages the gradients,
which equals one process on the same data and seed.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from ..fidelity import GRADIENTS


@dataclasses.dataclass(frozen=True)
class RunConfig:
    experiment: str
    method: str
    seed: int
    epochs: int
    lr: float
    batch_size: int
    extra: tuple = ()  # experiment-specific settings that a resumed run must share
    optimizer: str = "adam"  # "adam" (the paper's) or "sgd" (plain, for comparison)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["extra"] = [list(x) for x in self.extra]
        return d


class ConfigMismatch(Exception):
    """A checkpoint to resume from was written by a different configuration."""


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def write_atomic(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it over ``path``:
    readers see the old file or the new one, never a torn one. The file gets the
    permissions of an ordinary new file (0666 & ~umask), not mkstemp's 0600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _require_config(cfg: RunConfig, saved: dict, name: str) -> None:
    if saved != cfg.as_dict():
        diff = {k: (saved.get(k), v) for k, v in cfg.as_dict().items() if saved.get(k) != v}
        raise ConfigMismatch(f"{name}: written by a different configuration "
                             f"(saved vs now: {diff})")


def check_resumable(cfg: RunConfig, path: Path) -> None:
    """Raises ConfigMismatch if ``path`` holds a checkpoint of another configuration."""
    if path.exists():
        _require_config(cfg, torch.load(path, weights_only=False)["config"], path.name)


def train(cfg: RunConfig, make_model: Callable[[], nn.Module],
          batch_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor, str], torch.Tensor],
          train_set: tuple[torch.Tensor, torch.Tensor], val_set: tuple[torch.Tensor, torch.Tensor],
          ckpt: Path | None, resume: bool, progress: bool = True) -> dict:
    """Trains one run; returns ``{"train": [...], "val": [...]}`` (quantum loss per epoch,
    index 0 = before training).

    ``batch_loss(model, x, y, gradient)`` returns the mean quantum loss of a mini-batch,
    backpropagating with the given gradient method.
    """
    rank, size = world()
    torch.manual_seed(cfg.seed)
    model = make_model()
    opt = (torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.SGD)(model.parameters(),
                                                                            lr=cfg.lr)
    shuffle = torch.Generator().manual_seed(cfg.seed + 1)
    curves = {"train": [], "val": []}
    start = 0
    if resume and ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        _require_config(cfg, state["config"], ckpt.name)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        shuffle.set_state(state["shuffle"])
        curves, start = state["curves"], state["epoch"]
    ddp = nn.parallel.DistributedDataParallel(model) if size > 1 else model

    def evaluate() -> tuple[float, float]:
        with torch.no_grad():
            return tuple(batch_loss(model, x, y, "standard").item() for x, y in (train_set, val_set))

    if start == 0:
        tr, va = evaluate()
        curves["train"].append(tr)
        curves["val"].append(va)
    x_all, y_all = train_set
    n = x_all.shape[0]
    epochs = range(start, cfg.epochs)
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=cfg.epochs, initial=start, leave=False, dynamic_ncols=True,
                   desc=f"{cfg.experiment} {cfg.method} seed {cfg.seed}")
    for epoch in epochs:
        order = torch.randperm(n, generator=shuffle)
        for first in range(0, n, cfg.batch_size):
            idx = order[first:first + cfg.batch_size][rank::size]  # this rank's share
            opt.zero_grad()
            batch_loss(ddp, x_all[idx], y_all[idx], cfg.method).backward()
            opt.step()
        tr, va = evaluate()
        curves["train"].append(tr)
        curves["val"].append(va)
        if ckpt is not None and rank == 0:
            state = {"config": cfg.as_dict(), "epoch": epoch + 1, "model": model.state_dict(),
                     "optim": opt.state_dict(), "shuffle": shuffle.get_state(), "curves": curves}
            write_atomic(ckpt, lambda tmp: torch.save(state, tmp))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(train=f"{tr:.3g}", val=f"{va:.3g}")
    if bar is not None:
        bar.close()
    return curves


def mlp(inputs: int, outputs: int, hidden: int) -> nn.Sequential:
    """Fully connected, two hidden tanh layers, float64."""
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, outputs)).double()


def smooth(values: list[float], window: int = 10) -> list[float]:
    """Trailing moving average over up to ``window`` epochs."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def run_suite(name: str, out: Path, *, methods, seeds: int, epochs: int, lr: float,
              batch_size: int, extra: tuple, make_model, batch_loss, train_set, val_set,
              resume: bool, progress: bool = True, check_only: bool = False,
              optimizer: str = "adam") -> dict | None:
    """All (method, seed) runs of one experiment: checkpoints in ``out/checkpoints``, curves
    in ``out/<name>.csv``, the figure ``out/<name>.png``; returns the results.json entry."""
    import csv
    import statistics

    rank, size = world()
    if batch_size % size:
        raise ValueError(f"{name}: mini-batch {batch_size} does not split evenly over "
                         f"{size} processes")
    ckpt_dir = out / "checkpoints"
    configs = [RunConfig(name, m, s, epochs, lr, batch_size, extra, optimizer)
               for m in methods for s in range(seeds)]
    paths = {c: ckpt_dir / f"{name}-{c.method}-seed{c.seed}.pt" for c in configs}
    if resume:  # refuse before any run writes anything
        for c in configs:
            check_resumable(c, paths[c])
    if check_only:
        return None
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    curves = {c: train(c, make_model, batch_loss, train_set, val_set, paths[c], resume, progress)
              for c in configs}
    results = {}
    for m in methods:
        runs = [c for c in configs if c.method == m]
        finals = [curves[c]["val"][-1] for c in runs]
        results[m] = {
            "final_loss": statistics.fmean(finals),
            "final_loss_std": statistics.pstdev(finals),
            "seeds": [c.seed for c in runs],
            "final_loss_per_seed": finals,
            "final_train_loss": statistics.fmean(curves[c]["train"][-1] for c in runs),
            "epochs": epochs,
        }
    if rank == 0:
        with open(out / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["method", "seed", "epoch", "train_loss", "val_loss"])
            for c in configs:
                for e, (tr, va) in enumerate(zip(curves[c]["train"], curves[c]["val"])):
                    w.writerow([c.method, c.seed, e, f"{tr:.8g}", f"{va:.8g}"])
        _plot(name, {c: curves[c] for c in configs}, methods, out / f"{name}.png")
    return results


COLORS = {"standard": "tab:blue", "l2": "tab:orange", "modified": "tab:green"}


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot(name: str, curves: dict, methods, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, split in zip(axes, ("train", "val")):
        for m in methods:
            runs = [c for c in curves if c.method == m]
            for c in runs:
                ax.plot(smooth(curves[c][split]), color=COLORS[m], alpha=0.25, lw=0.8)
            mean = [sum(v) / len(v) for v in zip(*(curves[c][split] for c in runs))]
            ax.plot(smooth(mean), color=COLORS[m], lw=2, label=m)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(f"{name}: {'training' if split == 'train' else 'validation'} set")
    axes[0].set_ylabel("quantum loss 1 − |⟨ψ, φ⟩|² (10-epoch mean)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One trained experiment of the paper: its data, loss and network (a two-hidden-layer
    MLP ``inputs → hidden → hidden → outputs``), and the paper's optimiser settings."""

    name: str
    make_data: Callable  # make_data(modes=) -> ((x, y) train, (x, y) validation)
    batch_loss: Callable  # batch_loss(model, x, y, gradient) -> mean quantum loss
    inputs: int
    outputs: int
    hidden: int
    lr: float
    batch_size: int
    epochs: dict  # {"quick": ..., "full": ...}
    modes: int  # default initial-state distribution: lowest `modes` box eigenstates
    extra: tuple = ()

    def run(self, out: Path, *, quick: bool = True, seeds: int = 3, epochs: int | None = None,
            resume: bool = False, progress: bool = True, optimizer: str = "adam",
            lr: float | None = None, modes: int | None = None,
            check_only: bool = False) -> dict | None:
        """All three gradient methods × ``seeds`` runs; writes CSV, PNG and checkpoints.

        Returns ``{method: {"final_loss", "final_loss_std", "seeds", "final_loss_per_seed",
        "final_train_loss", "epochs"}}``: validation quantum loss after the last epoch, mean
        and population standard deviation over seeds. ``optimizer``/``lr`` override the
        paper's Adam and learning rate (for comparisons, e.g. plain SGD); ``modes`` changes
        the initial-state distribution. All of them belong to a run's configuration.
        """
        modes = modes or self.modes
        train_set, val_set = self.make_data(modes=modes)
        return run_suite(
            self.name, Path(out), methods=GRADIENTS, seeds=seeds,
            epochs=epochs or self.epochs["quick" if quick else "full"], lr=lr or self.lr,
            batch_size=self.batch_size, extra=(("hidden", self.hidden), ("modes", modes),
                                               *self.extra),
            make_model=lambda: mlp(self.inputs, self.outputs, self.hidden),
            batch_loss=self.batch_loss, train_set=train_set, val_set=val_set, resume=resume,
            progress=progress, check_only=check_only, optimizer=optimizer)

    def check(self, out: Path, *, resume: bool = False, **settings) -> None:
        """Validates ``settings`` (ValueError, e.g. more ``modes`` than the grid has) and,
        with ``resume``, that ``out`` holds no checkpoints of another configuration
        (ConfigMismatch). Trains nothing and writes nothing."""
        self.run(out, resume=resume, progress=False, check_only=True, **settings)
