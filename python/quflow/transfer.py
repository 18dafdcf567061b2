"""Transfer learning: a frozen pretrained classical model feeding a quantum layer."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from . import _checks
from .quantum import QuantumLayer

__all__ = ["Frozen", "hybrid_head"]


class Frozen(nn.Module):
    """A pretrained module whose parameters never change.

    Parameters are set to ``requires_grad=False`` (optimisers built from
    ``p for p in model.parameters() if p.requires_grad`` skip them) and the module
    stays in eval mode even when its parent is put in training mode, so dropout
    and BatchNorm statistics are frozen too. Gradients still flow *through* it to
    its inputs.

    Args:
        module: the pretrained feature extractor.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        self.module = module
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.module.eval()

    def train(self, mode: bool = True) -> "Frozen":  # noqa: D102 - keeps eval mode
        super().train(mode)
        self.module.eval()
        return self

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


class _AngleScale(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.tanh(x)

    def extra_repr(self) -> str:
        return f"scale={self.scale:.4g}"


def hybrid_head(
    backbone: nn.Module,
    quantum: QuantumLayer,
    in_features: int,
    out_features: int,
    *,
    angle_scale: float = math.pi / 2,
) -> nn.Sequential:
    """``Frozen(backbone) → Linear → scale·tanh → quantum → Linear``.

    The dressed-quantum-circuit pattern of transfer learning (Mari et al.,
    "Transfer learning in hybrid classical-quantum neural networks", Quantum 4,
    340 (2020)): only the adapter, the circuit weights and the head train.

    Args:
        backbone: pretrained model producing ``(B, in_features)`` features; frozen.
        quantum: the circuit; its ``input_size`` must be known (templates set it).
        in_features: width of the backbone's features.
        out_features: width of the model's output.
        angle_scale: the adapter squashes features to angles in
            ``(−angle_scale, angle_scale)``.

    Returns:
        ``nn.Sequential`` with children ``backbone``, ``adapter``, ``squash``,
        ``quantum``, ``head``.

    Raises:
        ValueError: if ``quantum.input_size`` is unknown or sizes are not positive.
    """
    if not isinstance(quantum, QuantumLayer):
        raise TypeError(f"quantum must be a quflow.QuantumLayer, got {type(quantum).__name__}")
    if quantum.input_size is None:
        raise ValueError("quantum.input_size is unknown: construct the layer with input_size=")
    _checks.count("in_features", in_features, minimum=1)
    _checks.count("out_features", out_features, minimum=1)
    dtype = next(quantum.parameters(), torch.empty(0)).dtype
    with torch.no_grad():
        n_out = quantum(torch.zeros(1, quantum.input_size, dtype=dtype)).reshape(1, -1).shape[1]
    return nn.Sequential(
        OrderedDict(
            backbone=Frozen(backbone),
            adapter=nn.Linear(in_features, quantum.input_size, dtype=dtype),
            squash=_AngleScale(angle_scale),
            quantum=quantum,
            head=nn.Linear(n_out, out_features, dtype=dtype),
        )
    )
