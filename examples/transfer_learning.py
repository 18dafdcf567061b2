"""Transfer learning: a pretrained classical network, frozen, feeding a quantum layer.

1. Pretrain an MLP on a source task: 4-class Gaussian blobs in the plane.
2. Cut off its last layer, freeze the rest (``quflow.transfer.Frozen``), attach
   Linear → π/2·tanh → 4-qubit circuit (lightning.qubit) → Linear, and train only
   the new part on a target task over the same inputs: which diagonal pair of
   blobs a point belongs to (an XOR of the source classes).
3. Check the frozen weights are bit-for-bit unchanged.

    python examples/transfer_learning.py    # ~15 s on one core
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

import quflow


def blobs(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points around (±1, ±1): inputs ``(n, 2)``, source labels ``(n,)`` in 0..3."""
    labels = torch.randint(0, 4, (n,), generator=generator)
    centres = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]])
    return centres[labels] + 0.45 * torch.randn(n, 2, generator=generator), labels


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def run(epochs: int = 60, seed: int = 0, verbose: bool = True) -> dict:
    """Pretrain, transfer, train; returns accuracies, timing and the freeze check."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_train, source_train = blobs(256, gen)
    x_test, source_test = blobs(512, gen)

    # 1. pretrain the classical model on the source task
    features = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
    pretrained = nn.Sequential(features, nn.Linear(16, 4))
    opt = torch.optim.Adam(pretrained.parameters(), lr=0.02)
    for _ in range(150):
        loss = nn.functional.cross_entropy(pretrained(x_train), source_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    source_acc = accuracy(pretrained, x_test, source_test)

    # 2. target task: diagonal pairs {0, 3} vs {1, 2}; frozen features + quantum head
    target_train = ((source_train == 1) | (source_train == 2)).long()
    target_test = ((source_test == 1) | (source_test == 2)).long()
    quantum = quflow.templates.strongly_entangling(4, 2)
    model = quflow.transfer.hybrid_head(features, quantum, in_features=16, out_features=2)
    frozen_before = copy.deepcopy(model.backbone.state_dict())
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=0.05)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        loss = nn.functional.cross_entropy(model(x_train), target_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if verbose and (epoch % 20 == 0 or epoch == 1):
            print(f"epoch {epoch:3d}  loss {loss.item():.4f}  test accuracy {accuracy(model, x_test, target_test):.3f}")
    seconds = time.perf_counter() - start
    unchanged = all(torch.equal(frozen_before[k], v) for k, v in model.backbone.state_dict().items())
    return {
        "source_accuracy": source_acc,
        "target_accuracy": accuracy(model, x_test, target_test),
        "trainable": sum(p.numel() for p in trainable),
        "frozen": sum(p.numel() for p in model.backbone.parameters()),
        "frozen_unchanged": unchanged,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    r = run(args.epochs, args.seed)
    print(
        f"source task accuracy {r['source_accuracy']:.3f}; target task accuracy "
        f"{r['target_accuracy']:.3f} training {r['trainable']} of "
        f"{r['trainable'] + r['frozen']} parameters ({r['seconds']:.1f} s); "
        f"frozen weights unchanged: {r['frozen_unchanged']}"
    )
    if not r["frozen_unchanged"]:
        raise SystemExit("frozen weights changed")


if __name__ == "__main__":
    main()
