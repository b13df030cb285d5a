"""Builders shared by the planner tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from exfm_operator.api import DataAugmentation, FoundationModel, VerticalModel
from exfm_operator.planner import CheckpointInfo, DASWindowInfo, JobInfo, World, plan_data_augmentation

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SCHEMA = {"dense": ["d0"], "sparse": [{"name": "s0", "hash_buckets": 100}], "vertical": "vertical"}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def fm(spec: dict | None = None, **meta) -> FoundationModel:
    base = {
        "dataset": {"uri": "s3://data/clicks", "schema": SCHEMA},
        "storage": {"uri": "s3://exfm/art", "secretRef": "minio"},
    }
    md = {"name": "fm", "namespace": "ads", "uid": "uid-fm", "generation": 3, **meta}
    return FoundationModel.model_validate({"metadata": md, "spec": merge(base, spec or {})})


def das(spec: dict | None = None, status: dict | None = None, **meta) -> DataAugmentation:
    md = {"name": "das", "namespace": "ads", "uid": "uid-das", "generation": 1, **meta}
    doc = {"metadata": md, "spec": merge({"fmRef": {"name": "fm"}}, spec or {})}
    if status:
        doc["status"] = status
    return DataAugmentation.model_validate(doc)


def published_das(phase: str = "Running", **spec) -> DataAugmentation:
    """A DAS whose status.output was filled by its planner (as the operator would have)."""
    d = das(spec)
    d.status = plan_data_augmentation(d, fm(), world(fm_checkpoints=(ckpt(1),))).status
    d.status.phase = phase  # type: ignore[assignment]
    return d


def vm(spec: dict | None = None, **meta) -> VerticalModel:
    md = {"name": "vm-feed", "namespace": "ads", "uid": "uid-vm", "generation": 2, **meta}
    return VerticalModel.model_validate(
        {"metadata": md, "spec": merge({"dasRef": {"name": "das"}}, spec or {})}
    )


def ckpt(last: int, first: int = 0, **kw) -> CheckpointInfo:
    v = f"{last:05d}"
    return CheckpointInfo(
        version=v, windows=tuple(range(first, last + 1)), last_window=last, uri=f"s3://x/{v}", **kw
    )


def dwin(window: int, fm_last: int) -> DASWindowInfo:
    return DASWindowInfo(
        window=window, fm_version=f"{fm_last:05d}", fm_last_window=fm_last, staleness=window - fm_last - 1
    )


def job(
    kind: str, windows: tuple[int, int], state: str, name: str | None = None, ago: int = 0, **kw
) -> JobInfo:
    t = NOW - timedelta(seconds=ago)
    return JobInfo(
        name=name or f"{kind}-{windows[0]}-{windows[1]}-{state.lower()}",
        kind=kind,  # type: ignore[arg-type]
        windows=windows,
        state=state,  # type: ignore[arg-type]
        handle=f"kubernetes://exfm/{name or 'x'}",
        started_at=t - timedelta(seconds=100),
        finished_at=t if state in ("SUCCEEDED", "FAILED", "CANCELLED") else None,
        **kw,
    )


def world(**kw) -> World:
    return World(now=NOW, **kw)
