"""The pure reconcile planner: (resource, upstream, observed world) → (actions, status).

No I/O and no kopf/torchx/kubernetes imports; the kopf handlers and the local runner both call it.
"""

from __future__ import annotations

from exfm_operator.api.resources import DataAugmentation, FoundationModel, Resource
from exfm_operator.planner.actions import Action, CancelJob, EmitEvent, Plan, SubmitJob
from exfm_operator.planner.core import backoff
from exfm_operator.planner.das import next_das_chunk, plan_data_augmentation
from exfm_operator.planner.fm import next_fm_chunk, plan_foundation_model
from exfm_operator.planner.naming import job_labels, job_name
from exfm_operator.planner.resolve import (
    SpecProblem,
    das_input,
    das_output_uri,
    das_storage,
    fm_checkpoints_uri,
    join_uri,
    vm_checkpoints_uri,
    vm_storage,
)
from exfm_operator.planner.vm import next_vm_chunk, plan_vertical_model
from exfm_operator.planner.world import (
    ACTIVE_STATES,
    JOB_KIND_OF,
    CheckpointInfo,
    DASWindowInfo,
    JobInfo,
    World,
)


def plan_resource(
    resource: Resource, world: World, fm: FoundationModel | None = None, das: DataAugmentation | None = None
) -> Plan:
    """The kind's planner: ``fm`` is a DataAugmentation's FoundationModel, ``das`` a VerticalModel's DAS."""
    if isinstance(resource, FoundationModel):
        return plan_foundation_model(resource, world)
    if isinstance(resource, DataAugmentation):
        return plan_data_augmentation(resource, fm, world)
    return plan_vertical_model(resource, das, world)


def plan_delete(resource: Resource, world: World) -> list[CancelJob]:
    """CancelJob for every active job of a resource being deleted."""
    kind = JOB_KIND_OF[resource.kind]
    return [
        CancelJob(
            job_name=j.name, handle=j.handle, reason=f"{resource.kind} {resource.metadata.name} deleted"
        )
        for j in world.jobs
        if j.kind == kind and j.active
    ]


__all__ = [
    "ACTIVE_STATES", "JOB_KIND_OF", "Action", "CancelJob", "CheckpointInfo", "DASWindowInfo", "EmitEvent",
    "JobInfo", "Plan", "SpecProblem", "SubmitJob", "World", "backoff", "das_input", "das_output_uri",
    "das_storage", "fm_checkpoints_uri", "job_labels", "job_name", "join_uri", "next_das_chunk",
    "next_fm_chunk", "next_vm_chunk", "plan_data_augmentation", "plan_delete", "plan_foundation_model",
    "plan_resource", "plan_vertical_model", "vm_checkpoints_uri", "vm_storage",
]  # fmt: skip
