"""Artifact layout and manifest schemas: the contract between the operator and the trainer.

Everything lives under one storage root (``s3://bucket/prefix`` or a local path)::

    data windows (any URI):  <dataset>/window=00042/part-*.parquet, _SUCCESS
    FM checkpoints:          fm/<ns>/<name>/ckpt/<version>/{model files, MANIFEST.json, _COMMITTED}
    DAS windows:             das/<ns>/<name>/window=00042/{part-*.parquet, MANIFEST.json, _COMMITTED}
    VM checkpoints:          vm/<ns>/<name>/ckpt/<version>/{..., MANIFEST.json, _COMMITTED}
    VM serving exports:      vm/<ns>/<name>/serving/<version>/{..., MANIFEST.json, _COMMITTED}
    per-window metrics:      <fm|vm>/<ns>/<name>/metrics/window=00042.json

A checkpoint's version is the last window it trained on, zero-padded (``00042``), so a retried
job writes the same name and versions sort in time order. No torch import here.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

WINDOW_DIGITS = 5
WINDOW_RE = re.compile(r"^window=(\d+)$")
DATA_SUCCESS = "_SUCCESS"

# Columns the DAS appends to every augmented row.
FM_LOGIT_COLUMN = "fm_logit"
FM_VERSION_COLUMN = "fm_version"
FM_WINDOW_COLUMN = "fm_last_window"


def window_dir(window: int) -> str:
    """Folder name of a window: ``window=00042``."""
    if window < 0:
        raise ValueError(f"window index must be >= 0, got {window}")
    return f"window={window:0{WINDOW_DIGITS}d}"


def parse_window_dir(name: str) -> int | None:
    """The window index of a ``window=NNNNN`` folder name, or None for anything else."""
    match = WINDOW_RE.match(name.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def version_name(last_window: int) -> str:
    """Checkpoint version named after the last window it trained on."""
    return f"{last_window:0{WINDOW_DIGITS}d}"


def model_root(kind: Literal["fm", "vm", "das"], namespace: str, name: str) -> str:
    return f"{kind}/{namespace}/{name}"


def fm_checkpoints(namespace: str, name: str) -> str:
    return f"{model_root('fm', namespace, name)}/ckpt"


def fm_checkpoint(namespace: str, name: str, version: str) -> str:
    return f"{fm_checkpoints(namespace, name)}/{version}"


def das_output(namespace: str, name: str) -> str:
    return model_root("das", namespace, name)


def das_window(namespace: str, name: str, window: int) -> str:
    return f"{das_output(namespace, name)}/{window_dir(window)}"


def vm_checkpoints(namespace: str, name: str) -> str:
    return f"{model_root('vm', namespace, name)}/ckpt"


def vm_checkpoint(namespace: str, name: str, version: str) -> str:
    return f"{vm_checkpoints(namespace, name)}/{version}"


def vm_serving(namespace: str, name: str, version: str) -> str:
    return f"{model_root('vm', namespace, name)}/serving/{version}"


def metrics_key(kind: Literal["fm", "vm"], namespace: str, name: str, window: int) -> str:
    return f"{model_root(kind, namespace, name)}/metrics/{window_dir(window)}.json"


def pins_key(kind: Literal["fm", "vm"], namespace: str, name: str) -> str:
    """JSON list of checkpoint versions that retention must keep (referenced or pinned)."""
    return f"{model_root(kind, namespace, name)}/PINS.json"


class WindowMetrics(BaseModel):
    """Progressive-validation metrics of one window (evaluated before training on it)."""

    model_config = ConfigDict(extra="allow")

    window: int
    rows: int
    ne: float | None = None
    auc: float | None = None
    logloss: float | None = None
    calibration: float | None = Field(default=None, description="sum(pred) / sum(label)")
    base_rate: float | None = None
    samples_per_s: float | None = None
    skipped_rows: int = 0


class CheckpointManifest(BaseModel):
    """Metadata of an FM or VM checkpoint (``MANIFEST.json`` minus the file list)."""

    model_config = ConfigDict(extra="allow")

    kind: Literal["fm-checkpoint", "vm-checkpoint"]
    namespace: str
    name: str
    version: str
    windows: list[int] = Field(description="Every window this model has trained on, ascending.")
    preset: str
    metrics: dict[str, WindowMetrics] = Field(
        default_factory=dict, description="Per-window metrics of the job that wrote it (key: window)."
    )
    # VM lineage
    das_windows: list[int] = Field(default_factory=list)
    fm_versions: list[str] = Field(default_factory=list)

    @property
    def last_window(self) -> int:
        return max(self.windows) if self.windows else -1


class DASWindowManifest(BaseModel):
    """Lineage of one augmented window."""

    model_config = ConfigDict(extra="allow")

    kind: Literal["das-window"] = "das-window"
    window: int
    input_uri: str
    fm_namespace: str
    fm_name: str
    fm_version: str
    fm_uri: str
    fm_last_window: int
    staleness: int = Field(description="window - fm_last_window - 1: 0 means the FM saw every earlier window")
    rows: int
    skipped_rows: int = 0
    columns: list[str] = Field(default_factory=list)


def staleness(window: int, fm_last_window: int) -> int:
    """Windows between the FM's last trained window and ``window`` (0 = freshest legal FM)."""
    return window - fm_last_window - 1


def manifest_metadata(model: BaseModel) -> dict[str, Any]:
    """A manifest model as the metadata dict :func:`commit_artifact` takes."""
    return model.model_dump(mode="json")
