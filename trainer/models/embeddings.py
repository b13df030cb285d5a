"""Embedding tables on torchrec's fused path (FBGEMM TBE, rowwise Adagrad in the backward pass).

Three builds of the same tables (identical state-dict keys ``embedding_bags.t<i>.weight``):

- ``"fused"``: :class:`FusedEmbeddingBagCollection` (one process; optimizer fused into backward);
- ``"sharded"``: :class:`EmbeddingBagCollection` on the meta device with
  ``apply_optimizer_in_backward(RowWiseAdagrad)``, to be wrapped by ``DistributedModelParallel``
  (which materializes and shards the tables with fused TBE kernels);
- ``"plain"``: :class:`EmbeddingBagCollection` without an optimizer (inference).

Single-valued features use sum pooling, multi-valued ones mean pooling.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedTensor, PoolingType
from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from exfm_trainer.schema import FeatureSchema

EmbeddingMode = Literal["fused", "sharded", "plain"]


def table_name(index: int) -> str:
    """Table of the ``index``-th sparse feature (names stay dot-free whatever the column is called)."""
    return f"t{index}"


def table_configs(schema: FeatureSchema, dim: int | None) -> list[EmbeddingBagConfig]:
    """One table per sparse feature; ``dim`` overrides the schema's per-feature width.

    Tables are grouped by pooling (stable, in order of first appearance): torchrec's
    :class:`FusedEmbeddingBagCollection` runs one kernel per pooling group and concatenates the
    groups, but labels its output with the *ungrouped* key order. With interleaved SUM/MEAN tables
    its pooled columns would then be mislabelled and differ from the plain/sharded builds of the
    same weights (FM inference in the DAS and serving exports would read the wrong columns).
    Grouped input makes both orders agree. Table names stay ``t<feature index>``.
    """
    configs = [
        EmbeddingBagConfig(
            name=table_name(i),
            embedding_dim=dim or f.embedding_dim,
            num_embeddings=f.num_rows,
            feature_names=[f.name],
            pooling=PoolingType.MEAN if f.multi_valued else PoolingType.SUM,
        )
        for i, f in enumerate(schema.sparse)
    ]
    first: dict[PoolingType, int] = {}
    for c in configs:
        first.setdefault(c.pooling, len(first))
    return sorted(configs, key=lambda c: first[c.pooling])


def build_embeddings(
    schema: FeatureSchema,
    dim: int | None,
    mode: EmbeddingMode,
    lr: float = 0.02,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """The embedding-bag collection of ``schema`` in the requested build (see module docstring)."""
    tables = table_configs(schema, dim)
    if mode == "fused":
        return FusedEmbeddingBagCollection(
            tables=tables,
            optimizer_type=RowWiseAdagrad,
            optimizer_kwargs={"lr": lr},
            device=torch.device(device),
        )
    if mode == "sharded":
        ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
        apply_optimizer_in_backward(RowWiseAdagrad, ebc.parameters(), {"lr": lr})
        return ebc
    if mode == "plain":
        return EmbeddingBagCollection(tables=tables, device=torch.device(device))
    raise ValueError(f"unknown embedding mode {mode!r}; use fused, sharded or plain")


class PooledOrder:
    """Reorders a pooled :class:`KeyedTensor` to schema order (cached per key order, usually a no-op)."""

    def __init__(self, schema: FeatureSchema, dim: int | None) -> None:
        self.names = schema.sparse_names
        self.widths = {f.name: dim or f.embedding_dim for f in schema.sparse}
        self.width = sum(self.widths.values())
        self._perm: dict[tuple[str, ...], torch.Tensor | None] = {}

    def __call__(self, kt: KeyedTensor) -> torch.Tensor:
        keys = tuple(kt.keys())
        if keys not in self._perm:
            self._perm[keys] = self._permutation(keys, kt.length_per_key())
        perm = self._perm[keys]
        values = kt.values()
        if perm is None:
            return values
        return values.index_select(1, perm.to(values.device))

    def _permutation(self, keys: tuple[str, ...], lengths: list[int]) -> torch.Tensor | None:
        if list(keys) == self.names:
            return None
        starts: dict[str, int] = {}
        offset = 0
        for key, length in zip(keys, lengths, strict=True):
            starts[key] = offset
            offset += length
        cols = [starts[n] + j for n in self.names for j in range(self.widths[n])]
        return torch.tensor(cols, dtype=torch.long)
