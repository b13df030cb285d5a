"""Planner of a FoundationModel: train ready windows in order, ``windowsPerJob`` per job."""

from __future__ import annotations

from exfm_operator.api.resources import FMLineage, FoundationModel, FoundationModelStatus
from exfm_operator.planner.actions import Plan
from exfm_operator.planner.common import (
    checkpoint_status,
    contiguous_run,
    latest,
    spans,
    training_job_fields,
)
from exfm_operator.planner.core import Chunk, Target, reconcile
from exfm_operator.planner.resolve import dataset_schema
from exfm_operator.planner.world import World
from exfm_trainer.jobs import DatasetRef, FMTrainJob


def next_fm_chunk(fm: FoundationModel, world: World) -> Chunk:
    """The next window range to train, or why there is none.

    Starts after the newest checkpoint (or at the first ready window >= ``windows.start``); takes
    consecutive ready windows; an open range waits for ``windowsPerJob`` of them, a closed range's
    last chunk may be shorter.
    """
    rng = fm.spec.windows
    ckpt = latest(world.fm_checkpoints)
    ready = {w for w in world.data_windows if rng.contains(w)}
    start = max(ckpt.last_window + 1, rng.start) if ckpt is not None else min(ready, default=rng.start)
    if rng.end is not None and start >= rng.end:
        return Chunk(None, "Complete", f"trained every window of [{rng.start}, {rng.end})", done=True)
    per_job = fm.spec.cadence.windows_per_job
    n = contiguous_run(start, ready, per_job, rng)
    closes_range = rng.end is not None and start + n == rng.end
    if n == per_job or (n > 0 and closes_range):
        return Chunk((start, start + n))
    return Chunk(
        None,
        "WaitingForData",
        f"waiting for window {start + n} of {fm.spec.dataset.uri} "
        f"({n}/{per_job} windows of the next job ready)",
    )


def _observed_status(fm: FoundationModel, world: World) -> FoundationModelStatus:
    ckpt = latest(world.fm_checkpoints)
    trained = {w for c in world.fm_checkpoints for w in c.windows}
    status = FoundationModelStatus(
        latest_checkpoint=checkpoint_status(ckpt),
        lineage=FMLineage(windows=spans(trained)),
        last_window=ckpt.last_window if ckpt else None,
    )
    status.counters.windows_processed = len(trained)
    return status


def plan_foundation_model(fm: FoundationModel, world: World) -> Plan[FoundationModelStatus]:
    """Reconcile one FoundationModel against the observed world (pure)."""
    spec = fm.spec

    def target() -> Target:
        schema = dataset_schema(spec.dataset, "spec.dataset")

        def build(windows: tuple[int, int]) -> dict:
            job = FMTrainJob(
                **training_job_fields(fm, spec.storage.uri, windows),
                dataset=DatasetRef(uri=spec.dataset.uri, schema=schema),
                preset=spec.preset,
            )
            return job.model_dump(mode="json", by_alias=True)

        return Target(chunk=next_fm_chunk(fm, world), build_config=build, secret=spec.storage.secret_ref)

    status = _observed_status(fm, world)
    return reconcile(status, fm, world, target, has_output=status.latest_checkpoint is not None)
