"""Building blocks: MLP, the aux-loss gradient scale, the dense-feature tower."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class _GradScale(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``scale``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged in the forward pass; its gradient scaled by ``scale`` (0 blocks it)."""
    if scale == 1.0:
        return x
    return _GradScale.apply(x, scale)


def mlp(in_features: int, sizes: Sequence[int], last_activation: bool = True) -> nn.Sequential:
    """Linear+ReLU layers of the given widths (ReLU after the last one when ``last_activation``)."""
    layers: list[nn.Module] = []
    width = in_features
    for i, size in enumerate(sizes):
        layers.append(nn.Linear(width, size))
        if last_activation or i < len(sizes) - 1:
            layers.append(nn.ReLU())
        width = size
    return nn.Sequential(*layers)


class DenseTower(nn.Module):
    """Projects the float features to ``out_dim`` (Linear+ReLU); empty when there are none."""

    def __init__(self, n_dense: int, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim if n_dense else 0
        self.proj = nn.Sequential(nn.Linear(n_dense, out_dim), nn.ReLU()) if n_dense else None

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        if self.proj is None:
            return dense.new_zeros((dense.shape[0], 0))
        return self.proj(dense)
