"""Serving export of a VM: backbone + serving head only (no aux head, no adapter), as TorchScript.

The exported module takes plain tensors so it runs without torchrec::

    probs = module(dense [B, n_dense] float32, values [N] int64, lengths [F * B] int)

where ``values``/``lengths`` are a KeyedJaggedTensor's flattened ids and lengths with the keys in
the schema's sparse order (feature-major). Tables become ``nn.EmbeddingBag`` copies of the trained
weights (sum pooling; mean for multi-valued features). The artifact at
``layout.vm_serving(ns, name, version)`` holds ``serving.pt`` and ``feature_schema.json``.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchrec import KeyedJaggedTensor

from exfm_trainer.models.embeddings import table_name
from exfm_trainer.models.vm import VerticalModel
from exfm_trainer.schema import FeatureSchema
from exfm_trainer.storage import Storage
from exfm_trainer.storage.commit import commit_artifact, read_manifest

SERVING_FILE = "serving.pt"
SCHEMA_FILE = "feature_schema.json"


class ServingModule(nn.Module):
    """TorchScript-able serving path: embedding bags + dense tower + backbone + serving head."""

    def __init__(self, vm: VerticalModel) -> None:
        super().__init__()
        schema = vm.schema
        state = vm.state_dict()
        bags = []
        for i, feat in enumerate(schema.sparse):
            weight = state[f"sparse.embedding_bags.{table_name(i)}.weight"].detach().float().cpu()
            bag = nn.EmbeddingBag(
                weight.shape[0], weight.shape[1], mode="mean" if feat.multi_valued else "sum"
            )
            bag.weight.data.copy_(weight)
            bags.append(bag)
        self.bags = nn.ModuleList(bags)
        self.n_sparse = len(bags)
        tower = vm.dense_tower.proj
        self.has_dense = tower is not None
        self.dense_proj = copy.deepcopy(tower).cpu() if tower is not None else nn.Sequential()
        self.backbone = copy.deepcopy(vm.backbone).cpu()
        self.head = copy.deepcopy(vm.serving_head).cpu()

    def forward(self, dense: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        batch = dense.shape[0]
        parts: list[torch.Tensor] = []
        if self.has_dense:
            parts.append(self.dense_proj(dense))
        lengths = lengths.to(torch.long)
        start = 0
        for i, bag in enumerate(self.bags):
            lens = lengths[i * batch : (i + 1) * batch]
            n = int(lens.sum())
            ids = values[start : start + n].to(torch.long)
            offsets = torch.cumsum(lens, 0) - lens
            parts.append(bag(ids, offsets))
            start += n
        h = self.backbone(torch.cat(parts, dim=1))
        return torch.sigmoid(self.head(h).squeeze(-1))


def export_serving(
    vm: VerticalModel, storage: Storage, prefix: str, metadata: dict[str, Any]
) -> dict[str, Any]:
    """Script the serving path of ``vm`` and commit it with its schema at ``prefix``."""
    module = torch.jit.script(ServingModule(vm).eval())
    with tempfile.TemporaryDirectory(prefix="exfm-serving-") as tmp:
        path = Path(tmp) / SERVING_FILE
        torch.jit.save(module, str(path))
        files: dict[str, str | Path | bytes] = {
            SERVING_FILE: path,
            SCHEMA_FILE: vm.schema.model_dump_json(indent=2).encode(),
        }
        meta = {"kind": "vm-serving", **metadata}
        return commit_artifact(storage, prefix, files, meta)


class ServingPredictor:
    """Probabilities of an exported VM: ``predictor(batch)`` or ``predictor.predict(dense, kjt)``."""

    def __init__(self, module: torch.jit.ScriptModule, schema: FeatureSchema, manifest: dict[str, Any]):
        self.module = module
        self.schema = schema
        self.manifest = manifest

    def predict(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """Probabilities; ``dense`` holds the serving schema's dense columns in order, ``sparse`` at
        least its sparse keys (others are ignored)."""
        if dense.shape[-1] != len(self.schema.dense):
            raise ValueError(
                f"dense input has {dense.shape[-1]} columns but the serving schema takes "
                f"{len(self.schema.dense)}: {self.schema.dense} in that order"
            )
        names = self.schema.sparse_names
        if sparse.keys() != names:
            missing = sorted(set(names) - set(sparse.keys()))
            if missing:
                raise ValueError(f"sparse features {missing} of the serving schema are missing")
            sparse = sparse.permute([sparse.keys().index(n) for n in names])
        with torch.no_grad():
            return self.module(dense.float().cpu(), sparse.values().cpu(), sparse.lengths().cpu())

    def __call__(self, batch: Any) -> torch.Tensor:
        return self.predict(batch.dense, batch.sparse)


def load_serving(storage: Storage, prefix: str) -> ServingPredictor:
    """Load the committed serving export at ``prefix``; the result maps a Batch to probabilities [B]."""
    manifest = read_manifest(storage, prefix)
    schema = FeatureSchema.model_validate_json(storage.get_bytes(f"{prefix.rstrip('/')}/{SCHEMA_FILE}"))
    with storage.local_copy(f"{prefix.rstrip('/')}/{SERVING_FILE}") as path:
        module = torch.jit.load(str(path), map_location="cpu")
    return ServingPredictor(module.eval(), schema, manifest)
