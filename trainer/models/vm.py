"""The vertical model (student): small embeddings + MLP backbone, serving head, aux head, adapter."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torchrec import KeyedJaggedTensor

from exfm_trainer.jobs import Distillation
from exfm_trainer.models.embeddings import EmbeddingMode
from exfm_trainer.models.inputs import FeatureInputModel
from exfm_trainer.models.layers import grad_scale, mlp
from exfm_trainer.models.presets import VMPreset, vm_preset
from exfm_trainer.schema import FeatureSchema


class VMOutput(NamedTuple):
    serving: torch.Tensor
    """Serving-head logits [B] (the only exported output)."""
    aux: torch.Tensor | None
    """Aux-head logits [B] (mode ``aux``); the backbone receives its gradient scaled by beta."""
    adapter: torch.Tensor | None
    """Student-adapter logits [B] computed from the FM logit (when the adapter is on)."""


class StudentAdapter(nn.Module):
    """``adapter(z) = z + MLP(z)`` on the FM logit ``z``; starts as the identity (last layer zeroed)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, fm_logit: torch.Tensor) -> torch.Tensor:
        z = fm_logit.unsqueeze(-1)
        return (z + self.net(z)).squeeze(-1)


class VerticalModel(FeatureInputModel):
    """``forward(dense, sparse, fm_logit=None) -> VMOutput``.

    Heads exist only when used (DDP requires every parameter to receive a gradient): the aux head
    in mode ``aux``, the adapter when ``distillation.adapter`` and mode is not ``none``.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        preset: VMPreset | str = "tiny",
        distillation: Distillation | None = None,
        embedding_mode: EmbeddingMode = "fused",
        embedding_lr: float = 0.05,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.preset = vm_preset(preset) if isinstance(preset, str) else preset
        self.distillation = distillation or Distillation()
        p, d = self.preset, self.distillation
        width = self._build_input(schema, p.embedding_dim, p.dense_dim, embedding_mode, embedding_lr, device)
        self.backbone = mlp(width, p.mlp)
        hidden = p.mlp[-1] if p.mlp else width
        self.serving_head = nn.Linear(hidden, 1)
        self.aux_head = nn.Linear(hidden, 1) if d.mode == "aux" else None
        self.adapter = StudentAdapter(p.adapter_hidden) if d.adapter and d.mode != "none" else None
        dev = torch.device(device)
        for module in (self.dense_tower, self.backbone, self.serving_head, self.aux_head, self.adapter):
            if module is not None:
                module.to(dev)

    def hidden(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """Backbone output [B, hidden] shared by the serving and aux heads."""
        return self.backbone(self.feature_input(dense, sparse))

    def forward(
        self, dense: torch.Tensor, sparse: KeyedJaggedTensor, fm_logit: torch.Tensor | None = None
    ) -> VMOutput:
        h = self.hidden(dense, sparse)
        serving = self.serving_head(h).squeeze(-1)
        aux = None
        if self.aux_head is not None:
            aux = self.aux_head(grad_scale(h, self.distillation.beta)).squeeze(-1)
        adapter = None
        if self.adapter is not None:
            if fm_logit is None:
                raise ValueError(
                    "the student adapter needs the FM logit column (fm_logit); got none: "
                    "train on a DAS output"
                )
            adapter = self.adapter(fm_logit)
        return VMOutput(serving, aux, adapter)
