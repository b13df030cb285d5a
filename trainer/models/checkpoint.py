"""Checkpoint files, model rebuild and the FM inference API used by the DAS.

A checkpoint artifact (committed through :mod:`exfm_trainer.storage.commit`) holds:

- ``model.pt``: ``{"model": full state dict, "embedding_optim": {table: rowwise-Adagrad state},
  "dense_optim": torch optimizer state}`` (plain tensors; sharded tables are gathered first);
- ``model_config.json``: ``{"kind": "fm"|"vm", "preset", "feature_schema", "distillation"}``;
- ``MANIFEST.json``: a :class:`~exfm_trainer.layout.CheckpointManifest` plus file checksums.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from exfm_trainer.jobs import Distillation
from exfm_trainer.layout import CheckpointManifest, manifest_metadata
from exfm_trainer.models.embeddings import EmbeddingMode
from exfm_trainer.models.fm import FoundationModel
from exfm_trainer.models.vm import VerticalModel
from exfm_trainer.schema import FeatureSchema
from exfm_trainer.storage import Storage, StorageError
from exfm_trainer.storage.commit import commit_artifact, list_committed, read_manifest

MODEL_FILE = "model.pt"
CONFIG_FILE = "model_config.json"


def model_config(
    kind: Literal["fm", "vm"], schema: FeatureSchema, preset: str, distillation: Distillation | None = None
) -> dict[str, Any]:
    """What it takes to rebuild a model: kind, preset, feature schema (and the VM's distillation)."""
    cfg: dict[str, Any] = {
        "kind": kind,
        "preset": preset,
        "feature_schema": schema.model_dump(mode="json"),
    }
    if distillation is not None:
        cfg["distillation"] = distillation.model_dump(mode="json")
    return cfg


def build_model(
    config: dict[str, Any],
    embedding_mode: EmbeddingMode = "plain",
    embedding_lr: float = 0.02,
    device: torch.device | str = "cpu",
) -> FoundationModel | VerticalModel:
    """A fresh model of a :func:`model_config` dict."""
    schema = FeatureSchema.model_validate(config["feature_schema"])
    if config["kind"] == "fm":
        return FoundationModel(schema, config["preset"], embedding_mode, embedding_lr, device)
    if config["kind"] == "vm":
        distill = Distillation.model_validate(config.get("distillation") or {})
        return VerticalModel(schema, config["preset"], distill, embedding_mode, embedding_lr, device)
    raise ValueError(f"unknown model kind {config['kind']!r} in {CONFIG_FILE}")


def write_checkpoint(
    storage: Storage,
    prefix: str,
    state: dict[str, Any],
    config: dict[str, Any],
    manifest: CheckpointManifest,
) -> dict[str, Any]:
    """Commit a checkpoint (model state, config, manifest) at ``prefix``; returns the manifest dict."""
    with tempfile.TemporaryDirectory(prefix="exfm-ckpt-") as tmp:
        path = Path(tmp) / MODEL_FILE
        torch.save(state, path)
        files: dict[str, str | Path | bytes] = {
            MODEL_FILE: path,
            CONFIG_FILE: json.dumps(config, indent=2, sort_keys=True).encode(),
        }
        return commit_artifact(storage, prefix, files, manifest_metadata(manifest))


def read_checkpoint(
    storage: Storage, prefix: str, map_location: torch.device | str = "cpu"
) -> tuple[dict[str, Any], dict[str, Any], CheckpointManifest]:
    """``(state, config, manifest)`` of the committed checkpoint at ``prefix``.

    Raises StorageError when ``prefix`` holds no committed checkpoint.
    """
    raw = read_manifest(storage, prefix)
    manifest = CheckpointManifest.model_validate({k: v for k, v in raw.items() if k != "files"})
    config = json.loads(storage.get_bytes(f"{prefix.rstrip('/')}/{CONFIG_FILE}"))
    with storage.local_copy(f"{prefix.rstrip('/')}/{MODEL_FILE}") as path:
        state = torch.load(path, map_location=map_location, weights_only=True)
    return state, config, manifest


def latest_version(storage: Storage, parent: str) -> str | None:
    """Newest committed checkpoint version under ``parent`` (versions sort in window order)."""
    versions = list_committed(storage, parent)
    return versions[-1] if versions else None


class FMInference(nn.Module):
    """An FM in eval mode: ``module(batch) -> logits Tensor[B]`` (no gradient; on the module's device)."""

    def __init__(self, model: FoundationModel, device: torch.device) -> None:
        super().__init__()
        self.model = model.eval()
        self.device = device

    def forward(self, batch: Any) -> torch.Tensor:  # Batch (exfm_trainer.data.batches)
        with torch.no_grad():
            return self.model(batch.dense.to(self.device), batch.sparse.to(self.device))


def load_fm_for_inference(
    storage: Storage, prefix: str, device: torch.device | str = "cpu"
) -> tuple[FMInference, FeatureSchema, CheckpointManifest]:
    """Load the committed FM checkpoint at ``prefix`` for inference.

    Returns ``(module, feature_schema, manifest)``; ``module(batch) -> logits Tensor[B]`` in eval
    mode, where ``batch`` is an :class:`exfm_trainer.data.batches.Batch` built with that schema.
    Raises StorageError when the checkpoint is missing or uncommitted, or is not an FM.
    """
    dev = torch.device(device)
    state, config, manifest = read_checkpoint(storage, prefix)
    if config.get("kind") != "fm" or manifest.kind != "fm-checkpoint":
        raise StorageError(f"{storage.uri(prefix)} is a {manifest.kind}, not an FM checkpoint")
    model = build_model(config, "plain", device=dev)
    model.load_state_dict(state["model"])
    schema = FeatureSchema.model_validate(config["feature_schema"])
    return FMInference(model, dev).eval(), schema, manifest  # type: ignore[arg-type]


def load_model(
    storage: Storage, prefix: str, device: torch.device | str = "cpu"
) -> tuple[FoundationModel | VerticalModel, CheckpointManifest]:
    """Any committed FM/VM checkpoint as an eval-mode model (plain embeddings, no optimizer)."""
    state, config, manifest = read_checkpoint(storage, prefix)
    model = build_model(config, "plain", device=device)
    model.load_state_dict(state["model"])
    return model.eval(), manifest
