"""The reconcile skeleton shared by the three planners: suspend, spec problems, one active job,
retries with backoff, GPU quota, submission, conditions and events."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from exfm_operator.api.common import (
    CONDITION_TYPES,
    Condition,
    JobStatus,
    RetryPolicy,
    StatusBase,
    WindowSpan,
)
from exfm_operator.api.load import field_path
from exfm_operator.api.resources import Resource
from exfm_operator.planner.actions import Action, CancelJob, EmitEvent, Plan, SubmitJob
from exfm_operator.planner.naming import job_labels, job_name
from exfm_operator.planner.resolve import SpecProblem
from exfm_operator.planner.world import JOB_KIND_OF, JobInfo, World
from exfm_trainer.jobs import JobConfigError


@dataclass(frozen=True)
class Chunk:
    """The next windows to process, or why there are none (``windows`` None)."""

    windows: tuple[int, int] | None
    reason: str = ""
    message: str = ""
    done: bool = False


@dataclass(frozen=True)
class Target:
    """What the skeleton cannot read from the resource itself, resolved by the kind's planner."""

    chunk: Chunk
    build_config: Callable[[tuple[int, int]], dict[str, Any]]
    secret: str | None  # storage credentials Secret of the job


def _fmt(w: tuple[int, int]) -> str:
    return f"[{w[0]}, {w[1]})"


def job_status(job: JobInfo, attempt: int = 0) -> JobStatus:
    """The ``status.activeJob`` block of an observed job."""
    return JobStatus(
        name=job.name,
        handle=job.handle,
        kind=job.kind,
        windows=WindowSpan(start=job.windows[0], end=job.windows[1]),
        start_time=job.started_at,
        state=job.state,
        attempt=attempt,
    )


def _failures(jobs: list[JobInfo], windows: tuple[int, int]) -> list[JobInfo]:
    """Failed attempts at ``windows``. A SUCCEEDED job whose output is missing counts too: the caller
    only asks about windows that still need processing."""
    return [j for j in jobs if j.windows == windows and j.state in ("FAILED", "SUCCEEDED")]


def _failure_message(job: JobInfo) -> str:
    if job.state == "SUCCEEDED":
        return f"job {job.name} succeeded but the output of windows {_fmt(job.windows)} is not committed"
    return f"{job.message or 'failed without a message'} (job {job.name})"  # the reason first


def backoff(retry: RetryPolicy, failures: int) -> timedelta:
    """Delay before retry number ``failures`` (1-based): backoffSeconds * 2^(failures-1), capped."""
    seconds = retry.backoff_seconds * (2 ** min(max(failures - 1, 0), 30))
    return timedelta(seconds=min(seconds, retry.max_backoff_seconds))


def conditions(
    prev: list[Condition], now: datetime, generation: int | None, states: dict[str, tuple[bool, str, str]]
) -> list[Condition]:
    """Every condition type, keeping ``lastTransitionTime`` when the status did not change."""
    old = {c.type: c for c in prev}
    out = []
    for ctype in CONDITION_TYPES:
        value, reason, message = states.get(ctype, (False, "", ""))
        status = "True" if value else "False"
        before = old.get(ctype)
        changed = before is None or before.status != status
        out.append(
            Condition(
                type=ctype,  # type: ignore[arg-type]
                status=status,
                reason=reason or ("Ok" if not value else ctype),
                message=message,
                last_transition_time=now if changed else before.last_transition_time,
                observed_generation=generation,
            )
        )
    return out


def _config_problem(err: Exception) -> SpecProblem:
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        return SpecProblem(f"job config {field_path(first['loc'])}", first["msg"])
    return SpecProblem("spec", str(err).replace("\n", " "))


def reconcile(
    status: StatusBase, resource: Resource, world: World, target: Callable[[], Target], *, has_output: bool
) -> Plan:
    """Fill ``status`` (already holding the observed facts) and decide the actions for ``resource``.

    ``target`` is called once suspend/delete are handled; it raises :class:`SpecProblem` when the spec
    or an upstream resource is not usable yet. DAS and VM jobs leave ``world.pending_fm_gpus`` free.
    """
    meta, spec, prev = resource.metadata, resource.spec, resource.status
    name, namespace, uid, generation = meta.name, meta.namespace, meta.uid, meta.generation
    job_kind = JOB_KIND_OF[resource.kind]
    deleting = meta.deletion_timestamp is not None
    retry: RetryPolicy = spec.retry
    now = world.now
    status.observed_generation = generation
    jobs = [j for j in world.jobs if j.kind == job_kind]
    active = sorted((j for j in jobs if j.active), key=lambda j: (j.started_at or now, j.name))
    status.counters.jobs_submitted = prev.counters.jobs_submitted
    status.counters.jobs_succeeded = sum(j.state == "SUCCEEDED" for j in jobs)
    status.counters.jobs_failed = sum(j.state == "FAILED" for j in jobs)
    actions: list[Action] = []
    states: dict[str, tuple[bool, str, str]] = {
        "Ready": (has_output, "OutputAvailable" if has_output else "NoOutputYet", ""),
    }

    def finish(phase: str) -> Plan:
        status.phase = phase  # type: ignore[assignment]
        status.conditions = conditions(prev.conditions, now, generation, states)
        actions.extend(_transition_events(prev, status))
        return Plan(actions=actions, status=status)

    if deleting or spec.suspend:
        for job in active:
            why = "resource deleted" if deleting else "spec.suspend is true"
            actions.append(CancelJob(job_name=job.name, handle=job.handle, reason=why))
            actions.append(EmitEvent("Normal", "JobCancelled", f"cancelled job {job.name}: {why}"))
        status.active_job = None
        if deleting:
            states["Progressing"] = (False, "Deleting", "resource is being deleted")
            return finish(prev.phase)
        states["Suspended"] = (True, "Suspended", "spec.suspend is true: no jobs are submitted")
        states["Progressing"] = (False, "Suspended", "")
        return finish("Suspended")

    # Extra active jobs (should not happen): keep the oldest, cancel the rest.
    for job in active[1:]:
        actions.append(CancelJob(job_name=job.name, handle=job.handle, reason="one active job per resource"))
    current = active[0] if active else None

    try:
        tgt = target()
    except SpecProblem as problem:
        msg = f"{problem.field}: {problem.message}"
        status.last_error = msg
        if current is not None:
            status.active_job = job_status(current)
        if problem.reason.startswith("Waiting"):
            states["Progressing"] = (False, problem.reason, msg)
            return finish("Running" if current is not None else "Pending")
        states["Degraded"] = (True, problem.reason, msg)
        states["Progressing"] = (current is not None, "JobRunning" if current else problem.reason, "")
        return finish("Degraded")

    if current is not None:
        failed = _failures(jobs, current.windows)
        status.counters.retries = len(failed)
        status.active_job = job_status(
            current, attempt=len([j for j in jobs if j.windows == current.windows]) - 1
        )
        states["Progressing"] = (True, "JobRunning", f"job {current.name} ({current.state}) on windows "
                                 f"{_fmt(current.windows)}")  # fmt: skip
        if failed:
            msg = f"retry {len(failed)}/{retry.limit} after: {_failure_message(failed[-1])}"
            states["Degraded"] = (True, "Retrying", msg)
            status.last_error = _failure_message(failed[-1])
        return finish("Running")

    chunk = tgt.chunk
    if chunk.windows is None:
        states["Progressing"] = (
            False,
            chunk.reason or ("Complete" if chunk.done else "Waiting"),
            chunk.message,
        )
        return finish("Succeeded" if chunk.done else "Waiting")

    windows = chunk.windows
    failed = _failures(jobs, windows)
    status.counters.retries = len(failed)
    if failed:
        last = max(failed, key=lambda j: (j.finished_at or j.started_at or now, j.name))
        status.last_error = _failure_message(last)
        if len(failed) > retry.limit:
            msg = f"windows {_fmt(windows)} failed {len(failed)} times (retry.limit {retry.limit}): " + (
                status.last_error
            )
            states["Degraded"] = (True, "RetriesExhausted", msg)
            states["Progressing"] = (False, "RetriesExhausted", "raise retry.limit or fix the cause")
            return finish("Failed")
        ready_at = (last.finished_at or last.started_at or now) + backoff(retry, len(failed))
        if now < ready_at:
            status.next_retry_time = ready_at
            msg = f"{status.last_error}; retry {len(failed)}/{retry.limit} at {ready_at.isoformat()}"
            states["Degraded"] = (True, "JobFailed", msg)
            states["Progressing"] = (False, "BackingOff", msg)
            return finish("Degraded")
        states["Degraded"] = (True, "Retrying", f"retry {len(failed)}/{retry.limit}: {status.last_error}")

    res = spec.resources
    gpus = res.total_gpus
    if world.gpu_budget is not None and gpus > 0:
        reserved = world.pending_fm_gpus if resource.kind != "FoundationModel" else 0
        free = world.gpu_budget - world.gpu_in_use - reserved
        if gpus > free:
            msg = (
                f"job needs {gpus} GPUs ({res.replicas} replicas x {res.gpu}); namespace "
                f"{namespace} uses {world.gpu_in_use} of its {world.gpu_budget} GPU budget"
                + (f" and {reserved} are held for waiting FoundationModel jobs" if reserved else "")
                + (" (the job can never fit: lower spec.resources)" if gpus > world.gpu_budget else "")
            )
            states["QuotaExceeded"] = (True, "GPUQuotaExceeded", msg)
            states["Progressing"] = (False, "WaitingForQuota", msg)
            return finish("Pending")

    try:
        config = tgt.build_config(windows)
    except (ValidationError, JobConfigError, ValueError) as err:
        problem = err if isinstance(err, SpecProblem) else _config_problem(err)
        msg = f"{problem.field}: {problem.message}"
        status.last_error = msg
        states["Degraded"] = (True, problem.reason, msg)
        return finish("Degraded")

    attempt = len([j for j in jobs if j.windows == windows])
    jname = job_name(job_kind, namespace, name, uid, windows, attempt)
    submit = SubmitJob(
        job_name=jname,
        job_kind=job_kind,
        config=config,
        windows=windows,
        resources=spec.resources,
        image=spec.image,
        labels=job_labels(resource.kind, name, uid, job_kind, windows, attempt),
        env_from_secret=tgt.secret,
        attempt=attempt,
    )
    actions.append(submit)
    actions.append(
        EmitEvent("Normal", "JobSubmitted", f"submitted {job_kind} job {jname} on windows {_fmt(windows)}")
    )
    status.counters.jobs_submitted += 1
    status.active_job = JobStatus(
        name=jname, kind=job_kind, windows=WindowSpan(start=windows[0], end=windows[1]), start_time=now,
        state="PENDING", attempt=attempt,
    )  # fmt: skip
    states["Progressing"] = (True, "JobSubmitted", f"job {jname} on windows {_fmt(windows)}")
    return finish("Running")


_EVENT_ON_TRUE = {
    "Degraded": "Warning",
    "QuotaExceeded": "Warning",
    "Suspended": "Normal",
}


def _transition_events(prev: StatusBase, status: StatusBase) -> list[EmitEvent]:
    """One event per condition that turned True (or changed reason while True), and on completion."""
    events = []
    for cond in status.conditions:
        kind = _EVENT_ON_TRUE.get(cond.type)
        if kind is None or cond.status != "True":
            continue
        before = prev.condition(cond.type)
        if before is None or before.status != "True" or before.reason != cond.reason:
            events.append(EmitEvent(kind, cond.reason, cond.message or cond.type))  # type: ignore[arg-type]
    if status.phase != prev.phase and status.phase in ("Succeeded", "Failed"):
        kind = "Normal" if status.phase == "Succeeded" else "Warning"
        events.append(EmitEvent(kind, status.phase, f"phase {prev.phase} -> {status.phase}"))  # type: ignore[arg-type]
    return events
