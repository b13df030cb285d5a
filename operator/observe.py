"""OBSERVE and APPLY: the impure halves around the pure planner (observe → plan → apply).

:func:`observe_storage` reads what is committed (data windows, FM checkpoints, DAS windows, VM
checkpoints) through ``exfm_trainer.storage`` + ``exfm_trainer.layout``; :func:`observe_jobs`
asks the launcher for the jobs a resource owns; :class:`GpuQuota` reads the namespace's
``requests.nvidia.com/gpu`` ResourceQuota (or ``EXFM_GPU_BUDGET``). :func:`apply` executes a
plan's actions. Both the kopf operator and the local runner (``exfm run``) use these.

Committed artifacts are immutable, so manifests are cached by URI: a poll costs one listing per
artifact folder, one marker check (``_COMMITTED`` exists) per artifact, and one manifest read per *new*
artifact.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from exfm_operator.api.resources import DataAugmentation, FoundationModel, Resource
from exfm_operator.launcher import TERMINAL_STATES, JobRef, Launcher
from exfm_operator.launcher.appdef import LABEL_GPUS, LABEL_KIND
from exfm_operator.planner import resolve
from exfm_operator.planner.actions import CancelJob, EmitEvent, Plan, SubmitJob
from exfm_operator.planner.naming import LABEL_OWNER_UID, LABEL_WINDOW_END, LABEL_WINDOW_START, label_value
from exfm_operator.planner.world import CheckpointInfo, DASWindowInfo, JobInfo, World
from exfm_trainer import layout
from exfm_trainer.storage import Storage, open_storage
from exfm_trainer.storage.commit import list_committed, read_manifest

log = logging.getLogger(__name__)

GPU_QUOTA_KEY = "requests.nvidia.com/gpu"
GPU_BUDGET_ENV = "EXFM_GPU_BUDGET"


# ---------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class CheckpointObs:
    version: str
    windows: list[int]
    last_window: int
    uri: str
    metrics: dict[str, float]
    manifest: dict[str, Any]


@dataclass(frozen=True)
class DASWindowObs:
    window: int
    fm_version: str
    fm_last_window: int
    staleness: int
    uri: str
    rows: int


class StorageObserver:
    """Reads committed artifacts; caches opened storages and (immutable) manifests."""

    def __init__(self, opener: Callable[[str], Storage] = open_storage, cache_size: int = 20_000) -> None:
        self._opener = opener
        self._storages: dict[str, Storage] = {}
        self._manifests: dict[str, dict[str, Any]] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def storage(self, uri: str) -> Storage:
        with self._lock:
            if uri not in self._storages:
                self._storages[uri] = self._opener(uri)
            return self._storages[uri]

    def _manifest(self, storage: Storage, prefix: str) -> dict[str, Any]:
        key = storage.uri(prefix)
        with self._lock:
            cached = self._manifests.get(key)
        if cached is not None:
            return cached
        manifest = read_manifest(storage, prefix)
        with self._lock:
            if len(self._manifests) >= self._cache_size:
                self._manifests.clear()
            self._manifests[key] = manifest
        return manifest

    def data_windows(self, uri: str) -> list[int]:
        """Ready (``_SUCCESS``) windows of a dataset, ascending."""
        from exfm_trainer.data.windows import list_ready_windows

        return sorted(list_ready_windows(self.storage(uri)))

    def checkpoints(self, root_uri: str, kind: str, namespace: str, name: str) -> list[CheckpointObs]:
        """Committed FM (``kind='fm'``) or VM (``'vm'``) checkpoints, oldest first."""
        storage = self.storage(root_uri)
        parent = (
            layout.fm_checkpoints(namespace, name) if kind == "fm" else layout.vm_checkpoints(namespace, name)
        )
        out = []
        for version in list_committed(storage, parent):
            prefix = f"{parent}/{version}"
            manifest = self._manifest(storage, prefix)
            windows = sorted(int(w) for w in manifest.get("windows", []))
            last = max(windows) if windows else int(version)
            metrics = (manifest.get("metrics") or {}).get(str(last)) or {}
            out.append(
                CheckpointObs(
                    version=version,
                    windows=windows,
                    last_window=last,
                    uri=storage.uri(prefix),
                    metrics={k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
                    manifest=manifest,
                )
            )
        return sorted(out, key=lambda c: c.last_window)

    def das_windows(self, root_uri: str, namespace: str, name: str) -> list[DASWindowObs]:
        """Committed augmented windows of a DataAugmentation with their FM lineage, ascending."""
        storage = self.storage(root_uri)
        parent = layout.das_output(namespace, name)
        out = []
        for folder in list_committed(storage, parent):
            window = layout.parse_window_dir(folder)
            if window is None:
                continue
            manifest = self._manifest(storage, f"{parent}/{folder}")
            fm_last = int(manifest.get("fm_last_window", -1))
            out.append(
                DASWindowObs(
                    window=window,
                    fm_version=str(manifest.get("fm_version", "")),
                    fm_last_window=fm_last,
                    staleness=int(manifest.get("staleness", layout.staleness(window, fm_last))),
                    uri=storage.uri(f"{parent}/{folder}"),
                    rows=int(manifest.get("rows", 0)),
                )
            )
        return sorted(out, key=lambda d: d.window)


# ---------------------------------------------------------------------------- jobs and quota


def owner_selector(uid: str) -> dict[str, str]:
    """The label selector of the jobs a resource owns (the planner labels jobs with the owner uid)."""
    return {LABEL_OWNER_UID: label_value(uid)}


def observe_jobs(launcher: Launcher, namespace: str, uid: str) -> list[JobRef]:
    """Jobs owned by the resource with uid ``uid``, with their current state."""
    return launcher.list_jobs(owner_selector(uid), namespace=namespace)


def job_info(job: JobRef) -> JobInfo:
    """A launcher ``JobRef`` as the planner's ``JobInfo``."""
    labels = job.labels
    try:
        windows = (int(labels[LABEL_WINDOW_START]), int(labels[LABEL_WINDOW_END]))
    except (KeyError, ValueError):
        windows = (0, 0)
    started = datetime.fromtimestamp(job.submitted_at, tz=UTC) if job.submitted_at else None
    return JobInfo(
        name=job.job_name,
        kind=job.kind or labels.get(LABEL_KIND, "fm-train"),
        windows=windows,
        state=job.state,
        handle=job.handle,
        gpus=job_gpus(job),
        started_at=started,
        message=job.message or None,
    )


def job_gpus(job: JobRef) -> int:
    """GPUs the job requested (its ``exfm.io/gpus`` label; 0 when absent or malformed)."""
    try:
        return int(job.labels.get(LABEL_GPUS, "0"))
    except ValueError:
        return 0


@dataclass(frozen=True)
class QuotaObs:
    budget: int | None  # None: unlimited
    in_use: int
    source: str


class GpuQuota:
    """GPU budget of a namespace: its ResourceQuota on ``requests.nvidia.com/gpu`` when there is one
    (hard and used as the API server counts them), else ``EXFM_GPU_BUDGET`` minus the GPUs of the
    operator's running jobs, else unlimited."""

    def __init__(self, api_client: Any = None, budget: int | None = None) -> None:
        self._client = api_client
        env = os.environ.get(GPU_BUDGET_ENV)
        self.budget = budget if budget is not None else (int(env) if env else None)

    def read(
        self, namespace: str, launcher_jobs: list[JobRef] | None = None, gpus: int | None = None
    ) -> QuotaObs:
        """``gpus``: what the caller's job requests; 0 skips the ResourceQuota request (the planner
        checks the budget only for jobs that request GPUs)."""
        running = sum(job_gpus(j) for j in launcher_jobs or [] if j.state not in TERMINAL_STATES)
        if self._client is not None and gpus != 0:
            from kubernetes import client
            from kubernetes.client.rest import ApiException
            from urllib3.exceptions import HTTPError

            try:
                quotas = client.CoreV1Api(self._client).list_namespaced_resource_quota(namespace).items
            except (ApiException, HTTPError) as err:  # a ConnectionError: the operator retries
                reason = getattr(err, "reason", None) or err
                raise ConnectionError(f"reading the ResourceQuotas of {namespace} failed: {reason}") from err
            hard = [q for q in quotas if q.status and (q.status.hard or {}).get(GPU_QUOTA_KEY) is not None]
            if hard:
                budget = min(int(float(q.status.hard[GPU_QUOTA_KEY])) for q in hard)
                used = max(int(float((q.status.used or {}).get(GPU_QUOTA_KEY, 0))) for q in hard)
                return QuotaObs(budget, used, "resourcequota")
        if self.budget is not None:
            return QuotaObs(self.budget, running, GPU_BUDGET_ENV)
        return QuotaObs(None, running, "unlimited")


# ---------------------------------------------------------------------------- apply


@dataclass
class ApplyResult:
    submitted: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def apply(
    plan: Plan,
    *,
    launcher: Launcher,
    namespace: str,
    owner: dict[str, str] | None = None,
    emit: Callable[[str, str, str], None] | None = None,
    on_submit: Callable[[SubmitJob, str], None] | None = None,
) -> ApplyResult:
    """Execute ``plan.actions``: ``SubmitJob`` → ``launcher.submit`` (idempotent by job name, labelled
    with ``owner``), ``CancelJob`` → ``launcher.cancel``, ``EmitEvent`` → ``emit(type, reason, message)``.

    A failing action does not stop the others; failures are collected in ``errors`` (the caller
    decides whether to retry) and reported as Warning events.
    """
    result = ApplyResult()
    for action in plan.actions:
        kind = type(action).__name__
        try:
            if isinstance(action, SubmitJob):
                handle = launcher.submit(action, namespace=namespace, extra_labels=owner)
                result.submitted.append(handle)
                if on_submit is not None:
                    on_submit(action, handle)
            elif isinstance(action, CancelJob):
                handle = action.handle or launcher.find(action.job_name, namespace)
                if handle:
                    launcher.cancel(handle)
                    result.cancelled.append(handle)
            elif isinstance(action, EmitEvent):
                event = (action.type, action.reason, action.message)
                result.events.append(event)
                if emit is not None:
                    emit(*event)
            else:
                raise TypeError(f"unknown planner action {kind}")
        except Exception as err:
            msg = f"{kind} {getattr(action, 'job_name', '')}: {err}".strip()
            log.warning("apply failed: %s", msg)
            result.errors.append(msg)
            if emit is not None:
                emit("Warning", "ApplyFailed", msg[:1000])
    return result


# ---------------------------------------------------------------------------- world


def _ckpt_info(c: CheckpointObs) -> CheckpointInfo:
    return CheckpointInfo(
        version=c.version,
        windows=tuple(c.windows),
        last_window=c.last_window,
        uri=c.uri,
        metrics=c.metrics,
        das_windows=tuple(int(w) for w in c.manifest.get("das_windows", [])),
        fm_versions=tuple(str(v) for v in c.manifest.get("fm_versions", [])),
    )


def _das_info(d: DASWindowObs) -> DASWindowInfo:
    return DASWindowInfo(d.window, d.fm_version, d.fm_last_window, d.staleness)


def observe_world(
    resource: Resource,
    *,
    observer: StorageObserver,
    launcher: Launcher,
    quota: GpuQuota,
    fm: FoundationModel | None = None,
    das: DataAugmentation | None = None,
    pending_fm_gpus: int = 0,
) -> World:
    """The planner's ``World`` for a FoundationModel, DataAugmentation (``fm`` = its FM) or
    VerticalModel (``das`` = its DAS), from storage, the launcher's jobs and the GPU quota.

    Raises ``StorageError``/``OSError`` when storage is unreachable and ``LauncherError`` when the
    scheduler is (the kopf shell turns both into a retry)."""
    ns, name, kind = resource.metadata.namespace, resource.metadata.name, resource.kind
    # Jobs first, storage second: a job seen SUCCEEDED has committed its artifacts before finishing,
    # so they are visible below (the other order could pair a finished job with missing output).
    jobs = observe_jobs(launcher, ns, resource.metadata.uid or "") if resource.metadata.uid else []
    fields: dict[str, Any] = {}
    if kind == "FoundationModel":
        fields["data_windows"] = tuple(observer.data_windows(resource.spec.dataset.uri))
        ckpts = observer.checkpoints(resource.spec.storage.uri, "fm", ns, name)
        fields["fm_checkpoints"] = tuple(_ckpt_info(c) for c in ckpts)
    elif kind == "DataAugmentation" and fm is not None:
        dataset = resolve.das_input(resource, fm)
        fields["data_windows"] = tuple(observer.data_windows(dataset.uri))
        ckpts = observer.checkpoints(fm.spec.storage.uri, "fm", fm.metadata.namespace, fm.metadata.name)
        fields["fm_checkpoints"] = tuple(_ckpt_info(c) for c in ckpts)
        try:
            root = resolve.das_storage(resource, fm).uri
        except resolve.SpecProblem:
            root = None  # the planner reports the field
        if root is not None:
            fields["das_windows"] = tuple(_das_info(d) for d in observer.das_windows(root, ns, name))
    elif kind == "VerticalModel" and das is not None:
        if das.status.output is not None:
            root = das.status.output.storage.uri
            wins = observer.das_windows(root, das.metadata.namespace, das.metadata.name)
            fields["das_windows"] = tuple(_das_info(d) for d in wins)
        storage = resolve.vm_storage(resource, das)
        if storage is not None:
            ckpts = observer.checkpoints(storage.uri, "vm", ns, name)
            fields["vm_checkpoints"] = tuple(_ckpt_info(c) for c in ckpts)
    resources = getattr(resource.spec, "resources", None)
    q = quota.read(ns, jobs, gpus=getattr(resources, "total_gpus", None))
    return World(
        now=datetime.now(tz=UTC),
        jobs=tuple(job_info(j) for j in jobs),
        gpu_in_use=q.in_use,
        gpu_budget=q.budget,
        pending_fm_gpus=pending_fm_gpus,
        **fields,
    )


__all__ = [
    "ApplyResult",
    "CheckpointObs",
    "DASWindowObs",
    "GpuQuota",
    "QuotaObs",
    "StorageObserver",
    "apply",
    "job_gpus",
    "job_info",
    "observe_jobs",
    "observe_world",
    "owner_selector",
]
