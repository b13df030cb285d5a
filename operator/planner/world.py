"""The observed world a planner reads: storage contents, job states and GPU quota. Frozen; no I/O.

``observe`` (kopf shell) and the local runner build it; the planner turns it into actions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

JobKind = Literal["fm-train", "das", "vm-train"]
JobState = Literal["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "UNKNOWN"]
ACTIVE_STATES: frozenset[str] = frozenset({"PENDING", "RUNNING", "UNKNOWN"})
JOB_KIND_OF: dict[str, JobKind] = {
    "FoundationModel": "fm-train",
    "DataAugmentation": "das",
    "VerticalModel": "vm-train",
}


@dataclass(frozen=True)
class JobInfo:
    """A job owned by the resource (found by its ``exfm.io/owner-uid`` label or the runner's records)."""

    name: str
    kind: JobKind
    windows: tuple[int, int]  # [start, end)
    state: JobState
    handle: str | None = None  # TorchX app handle
    gpus: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    message: str | None = None  # failure reason / last log line

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


@dataclass(frozen=True)
class CheckpointInfo:
    """A committed FM or VM checkpoint (from its MANIFEST.json)."""

    version: str
    windows: tuple[int, ...]  # every window the model has trained on
    last_window: int
    uri: str
    metrics: Mapping[str, float] = field(default_factory=dict)  # e.g. ne, auc of the last window
    das_windows: tuple[int, ...] = ()  # VM lineage
    fm_versions: tuple[str, ...] = ()  # VM lineage


@dataclass(frozen=True)
class DASWindowInfo:
    """A committed augmented window (from its DASWindowManifest)."""

    window: int
    fm_version: str
    fm_last_window: int
    staleness: int


@dataclass(frozen=True)
class World:
    """What one resource's planner sees.

    - FM: ``data_windows`` = ready windows of ``spec.dataset``; ``fm_checkpoints`` = its checkpoints.
    - DAS: ``data_windows`` = ready windows of its input dataset; ``fm_checkpoints`` = the referenced
      FM's checkpoints; ``das_windows`` = its committed output windows.
    - VM: ``das_windows`` = the referenced DAS's committed windows; ``vm_checkpoints`` = its checkpoints.
    - ``jobs``: jobs owned by this resource (any state; finished ones count retries).
    - ``gpu_in_use``: GPUs requested by active exfm jobs in the namespace; ``gpu_budget`` None = no limit.
    - ``pending_fm_gpus``: GPUs of FoundationModels in the namespace that wait for quota (their
      QuotaExceeded condition is True); DAS and VM jobs leave this much headroom.
    """

    now: datetime
    data_windows: tuple[int, ...] = ()
    fm_checkpoints: tuple[CheckpointInfo, ...] = ()
    das_windows: tuple[DASWindowInfo, ...] = ()
    vm_checkpoints: tuple[CheckpointInfo, ...] = ()
    jobs: tuple[JobInfo, ...] = ()
    gpu_in_use: int = 0
    gpu_budget: int | None = None
    pending_fm_gpus: int = 0
