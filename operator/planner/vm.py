"""Planner of a VerticalModel: train the DAS's committed windows in order, ``windowsPerJob`` per job."""

from __future__ import annotations

from exfm_operator.api.resources import DataAugmentation, VerticalModel, VerticalModelStatus, VMLineage
from exfm_operator.planner.actions import Plan
from exfm_operator.planner.common import (
    checkpoint_status,
    contiguous_run,
    latest,
    spans,
    training_job_fields,
)
from exfm_operator.planner.core import Chunk, Target, reconcile
from exfm_operator.planner.resolve import SpecProblem, vm_storage
from exfm_operator.planner.world import World
from exfm_trainer.jobs import ArtifactRef, DatasetRef, Distillation, VMTrainJob


def next_vm_chunk(vm: VerticalModel, das: DataAugmentation, world: World) -> Chunk:
    """The next DAS windows to train on, or why there are none.

    Starts after the newest checkpoint (or at the first committed DAS window >= ``windows.start``);
    an open range waits for ``windowsPerJob`` consecutive windows unless the DAS has Succeeded.
    """
    rng = vm.spec.windows
    ckpt = latest(world.vm_checkpoints)
    start = max(ckpt.last_window + 1, rng.start) if ckpt else rng.start
    if rng.end is not None and start >= rng.end:
        return Chunk(None, "Complete", f"trained every window of [{rng.start}, {rng.end})", done=True)
    avail = sorted(d.window for d in world.das_windows if d.window >= start and rng.contains(d.window))
    upstream_done = das.status.phase == "Succeeded"
    if not avail:
        if upstream_done:
            return Chunk(
                None, "Complete", f"DataAugmentation {das.metadata.name!r} has no more windows", done=True
            )
        return Chunk(
            None, "WaitingForDAS", f"waiting for DataAugmentation {das.metadata.name!r} window {start}"
        )
    first = avail[0]
    per_job = vm.spec.cadence.windows_per_job
    n = contiguous_run(first, set(avail), per_job, rng)
    closes = (rng.end is not None and first + n == rng.end) or (upstream_done and first + n > avail[-1])
    if n == per_job or closes:
        return Chunk((first, first + n))
    return Chunk(
        None,
        "WaitingForDAS",
        f"waiting for DataAugmentation {das.metadata.name!r} window {first + n} "
        f"({n}/{per_job} windows of the next job ready)",
    )


def _observed_status(world: World) -> VerticalModelStatus:
    ckpt = latest(world.vm_checkpoints)
    trained = {w for c in world.vm_checkpoints for w in (c.das_windows or c.windows)}
    fm_versions = sorted({v for c in world.vm_checkpoints for v in c.fm_versions})
    status = VerticalModelStatus(
        latest_checkpoint=checkpoint_status(ckpt),
        lineage=VMLineage(das_windows=spans(trained), fm_versions=fm_versions),
        last_window=ckpt.last_window if ckpt else None,
    )
    status.counters.windows_processed = len({w for c in world.vm_checkpoints for w in c.windows})
    return status


def plan_vertical_model(
    vm: VerticalModel, das: DataAugmentation | None, world: World
) -> Plan[VerticalModelStatus]:
    """Reconcile one VerticalModel; ``das`` is the DataAugmentation named by ``spec.dasRef`` (or None).

    The VM reads ``das.status.output`` (uri, schema, storage) that the DAS planner publishes.
    """
    meta, spec = vm.metadata, vm.spec

    def target() -> Target:
        if das is None:
            raise SpecProblem(
                "spec.dasRef",
                f"DataAugmentation {spec.das_ref.name!r} not found in namespace {meta.namespace!r}",
                reason="UpstreamMissing",
            )
        output = das.status.output
        storage = vm_storage(vm, das)
        if output is None or storage is None:
            raise SpecProblem(
                "spec.dasRef",
                f"DataAugmentation {das.metadata.name!r} has not published its output yet (status.output)",
                reason="WaitingForUpstream",
            )
        if spec.vertical is not None and output.feature_schema.vertical is None:
            raise SpecProblem(
                "spec.vertical",
                f"the dataset schema of DataAugmentation {das.metadata.name!r} has no vertical column "
                "(schema.vertical); remove spec.vertical or declare the column",
            )
        if spec.features is not None:
            try:
                output.feature_schema.select(spec.features)
            except ValueError as err:
                raise SpecProblem(
                    "spec.features", f"{err} (the schema of DataAugmentation {das.metadata.name!r})"
                ) from None
        d = spec.distillation

        def build(windows: tuple[int, int]) -> dict:
            job = VMTrainJob(
                **training_job_fields(vm, storage.uri, windows),
                dataset=DatasetRef(uri=output.uri, schema=output.feature_schema),
                das=ArtifactRef(namespace=das.metadata.namespace, name=das.metadata.name),
                vertical=spec.vertical,
                preset=spec.preset,
                distillation=Distillation.model_validate(d.model_dump()),
                features=spec.features,
                export=spec.export,
            )
            return job.model_dump(mode="json", by_alias=True)

        return Target(chunk=next_vm_chunk(vm, das, world), build_config=build, secret=storage.secret_ref)

    status = _observed_status(world)
    return reconcile(status, vm, world, target, has_output=status.latest_checkpoint is not None)
