"""The foundation model (teacher): embeddings -> DCNv2 low-rank cross layers -> MLP -> logit."""

from __future__ import annotations

import torch
from torch import nn
from torchrec import KeyedJaggedTensor
from torchrec.modules.crossnet import LowRankCrossNet

from exfm_trainer.models.embeddings import EmbeddingMode
from exfm_trainer.models.inputs import FeatureInputModel
from exfm_trainer.models.layers import mlp
from exfm_trainer.models.presets import FMPreset, fm_preset
from exfm_trainer.schema import FeatureSchema


class FoundationModel(FeatureInputModel):
    """``forward(dense [B, n_dense], sparse KJT) -> logits [B]``.

    The input of the cross stack is ``[dense_tower(dense), pooled embeddings...]``; DCNv2 layers
    ``x_{l+1} = x_0 * (U_l V_l x_l + b_l) + x_l`` model explicit feature crosses, the MLP the rest.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        preset: FMPreset | str = "small",
        embedding_mode: EmbeddingMode = "fused",
        embedding_lr: float = 0.02,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.preset = fm_preset(preset) if isinstance(preset, str) else preset
        p = self.preset
        width = self._build_input(schema, p.embedding_dim, p.dense_dim, embedding_mode, embedding_lr, device)
        self.cross = LowRankCrossNet(in_features=width, num_layers=p.cross_layers, low_rank=p.cross_rank)
        self.top = mlp(width, p.mlp)
        self.out = nn.Linear(p.mlp[-1] if p.mlp else width, 1)
        dev = torch.device(device)
        for module in (self.dense_tower, self.cross, self.top, self.out):
            module.to(dev)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        x = self.cross(self.feature_input(dense, sparse))
        return self.out(self.top(x)).squeeze(-1)
