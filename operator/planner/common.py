"""Small pure helpers shared by the kind planners."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from exfm_operator.api.common import CheckpointStatus, Training, WindowRange, WindowSpan
from exfm_operator.planner.world import CheckpointInfo
from exfm_trainer.jobs import Optim
from exfm_trainer.jobs import WindowRange as JobWindows


def spans(windows: Iterable[int]) -> list[WindowSpan]:
    """Compress windows into ``[start, end)`` ranges: 0,1,2,5 → [0,3), [5,6)."""
    out: list[WindowSpan] = []
    for w in sorted(set(windows)):
        if out and out[-1].end == w:
            out[-1].end = w + 1
        else:
            out.append(WindowSpan(start=w, end=w + 1))
    return out


def latest(checkpoints: Iterable[CheckpointInfo]) -> CheckpointInfo | None:
    """The checkpoint with the highest last window (ties: highest version), or None."""
    return max(checkpoints, key=lambda c: (c.last_window, c.version), default=None)


def checkpoint_status(ckpt: CheckpointInfo | None) -> CheckpointStatus | None:
    """The status block of a checkpoint (None for None)."""
    if ckpt is None:
        return None
    return CheckpointStatus(
        version=ckpt.version, uri=ckpt.uri, last_window=ckpt.last_window, metrics=dict(ckpt.metrics)
    )


def contiguous_run(start: int, available: set[int], limit: int, rng: WindowRange) -> int:
    """How many consecutive windows from ``start`` are available and inside ``rng`` (at most ``limit``)."""
    n = 0
    while n < limit and (start + n) in available and rng.contains(start + n):
        n += 1
    return n


def optim(training: Training) -> Optim:
    """The job's optimizer settings from a spec's ``training`` block (FM and VM)."""
    return Optim(
        embedding_lr=training.embedding_lr,
        dense_lr=training.dense_lr,
        weight_decay=training.weight_decay,
        warmup_steps=training.warmup_steps,
        clip_grad_norm=training.clip_grad_norm,
    )


def training_job_fields(resource: Any, storage_uri: str, windows: tuple[int, int]) -> dict[str, Any]:
    """The job-config fields an FM or VM training job takes from its resource, for ``windows``."""
    meta, spec = resource.metadata, resource.spec
    return {
        "storage": storage_uri,
        "namespace": meta.namespace,
        "name": meta.name,
        "windows": JobWindows(start=windows[0], end=windows[1]),
        "batch_size": spec.training.batch_size,
        "seed": spec.training.seed,
        "device": spec.training.device,
        "keep_checkpoints": spec.retention.keep_checkpoints,
        "max_bad_row_fraction": spec.training.max_bad_row_fraction,
        "optim": optim(spec.training),
    }
