"""Model size presets for the scaling study: ``tiny`` (tests), ``small``, ``medium``, ``large``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FMPreset:
    """Teacher size: embedding width, DCNv2 low-rank cross stack and top MLP."""

    embedding_dim: int
    dense_dim: int
    cross_layers: int
    cross_rank: int
    mlp: tuple[int, ...]
    dense_lr: float = 0.003
    """Adam LR of the dense layers (larger models take smaller steps)."""


@dataclass(frozen=True)
class VMPreset:
    """Student size: embedding width and MLP backbone (the heads sit on its last layer)."""

    embedding_dim: int
    dense_dim: int
    mlp: tuple[int, ...]
    dense_lr: float = 0.01
    """Adam LR of the dense layers."""


FM_PRESETS: dict[str, FMPreset] = {
    "tiny": FMPreset(embedding_dim=8, dense_dim=8, cross_layers=1, cross_rank=4, mlp=(32,)),
    "small": FMPreset(embedding_dim=16, dense_dim=16, cross_layers=2, cross_rank=16, mlp=(64, 32)),
    "medium": FMPreset(
        embedding_dim=32, dense_dim=32, cross_layers=3, cross_rank=32, mlp=(256, 128), dense_lr=0.002
    ),
    "large": FMPreset(
        embedding_dim=64, dense_dim=64, cross_layers=4, cross_rank=64, mlp=(512, 256, 128), dense_lr=0.001
    ),
}

VM_PRESETS: dict[str, VMPreset] = {
    "tiny": VMPreset(embedding_dim=4, dense_dim=4, mlp=(32, 16)),
    "small": VMPreset(embedding_dim=8, dense_dim=8, mlp=(64, 32)),
    "medium": VMPreset(embedding_dim=16, dense_dim=16, mlp=(128, 64), dense_lr=0.005),
    "large": VMPreset(embedding_dim=32, dense_dim=32, mlp=(256, 128), dense_lr=0.003),
}


def fm_preset(name: str) -> FMPreset:
    try:
        return FM_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown FM preset {name!r}; choose one of {sorted(FM_PRESETS)}") from None


def vm_preset(name: str) -> VMPreset:
    try:
        return VM_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown VM preset {name!r}; choose one of {sorted(VM_PRESETS)}") from None
