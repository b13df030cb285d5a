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
    """Aux-head (distillation tower) logits [B] in mode ``aux``; the backbone receives its gradient
    scaled by beta."""


class VerticalModel(FeatureInputModel):
    """``forward(dense, sparse) -> VMOutput``.

    The aux head exists only in mode ``aux`` (DDP requires every parameter to receive a
    gradient): a tower (``distillation.aux_tower``) beside the linear serving head, both on the
    shared backbone. The student adapter is not part of the VM: it has its own optimizer and sits
    in the trainer (:mod:`exfm_trainer.models.adapter`).
    """

    def __init__(
        self,
        schema: FeatureSchema,
        preset: VMPreset | str = "tiny",
        distillation: Distillation | None = None,
        embedding_mode: EmbeddingMode = "fused",
        embedding_lr: float = 0.02,
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
        self.aux_head = None
        if d.mode == "aux":
            tower = d.aux_tower
            self.aux_head = nn.Sequential(mlp(hidden, tower), nn.Linear(tower[-1] if tower else hidden, 1))
        dev = torch.device(device)
        for module in (self.dense_tower, self.backbone, self.serving_head, self.aux_head):
            if module is not None:
                module.to(dev)

    def hidden(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """Backbone output [B, hidden] shared by the serving and aux heads."""
        return self.backbone(self.feature_input(dense, sparse))

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> VMOutput:
        h = self.hidden(dense, sparse)
        serving = self.serving_head(h).squeeze(-1)
        aux = None
        if self.aux_head is not None:
            aux = self.aux_head(grad_scale(h, self.distillation.beta)).squeeze(-1)
        return VMOutput(serving, aux)
