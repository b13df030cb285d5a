"""The feature input shared by the FM and the VM: embedding tables + dense tower, in schema order."""

from __future__ import annotations

import torch
from torch import nn
from torchrec import KeyedJaggedTensor

from exfm_trainer.models.embeddings import EmbeddingMode, PooledOrder, build_embeddings
from exfm_trainer.models.layers import DenseTower
from exfm_trainer.schema import FeatureSchema


class FeatureInputModel(nn.Module):
    """Base of both models: registers ``sparse`` (tables, None without sparse features) and
    ``dense_tower`` on the model itself, so their state-dict keys stay ``sparse.*`` / ``dense_tower.*``.
    """

    def _build_input(
        self,
        schema: FeatureSchema,
        embedding_dim: int | None,
        dense_dim: int,
        embedding_mode: EmbeddingMode,
        embedding_lr: float,
        device: torch.device | str,
    ) -> int:
        """Create the input modules; returns the width of :meth:`feature_input`."""
        self.schema = schema
        self.sparse = (
            build_embeddings(schema, embedding_dim, embedding_mode, embedding_lr, device)
            if schema.sparse
            else None
        )
        self._order = PooledOrder(schema, embedding_dim)
        self.dense_tower = DenseTower(len(schema.dense), dense_dim)
        return self.dense_tower.out_dim + self._order.width

    def feature_input(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """``[dense_tower(dense), pooled embeddings in schema order...]`` as one [B, width] tensor."""
        parts = [self.dense_tower(dense)]
        if self.sparse is not None:
            parts.append(self._order(self.sparse(sparse)))
        return torch.cat(parts, dim=1)
