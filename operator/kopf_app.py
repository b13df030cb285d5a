"""The kopf shell: thin handlers that run observe → plan → apply and write ``.status`` only.

Per kind (FoundationModel, DataAugmentation, VerticalModel): ``on.resume``/``on.create``/
``on.update`` and a ``timer`` (``poll_interval``) reconcile; ``on.delete`` (kopf's finalizer)
cancels the jobs the resource owns. Indexes give each handler the resources it references
without extra API calls. Transient failures (storage, scheduler, API) raise
``kopf.TemporaryError`` (retried after ``retry_delay``); an object the planner rejects goes
Degraded with a message naming the field, and the operator keeps running. Never imports torch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import kopf
from pydantic import ValidationError

from exfm_operator import metrics
from exfm_operator.api.base import GROUP, VERSION
from exfm_operator.api.load import validation_problems
from exfm_operator.api.resources import KINDS, PLURALS
from exfm_operator.launcher import TERMINAL_STATES, Launcher, LauncherError, make_launcher
from exfm_operator.observe import GpuQuota, StorageObserver, apply, observe_jobs, observe_world
from exfm_operator.planner import JOB_KIND_OF, SpecProblem, plan_resource
from exfm_operator.settings import OperatorSettings
from exfm_trainer.storage import StorageError

log = logging.getLogger(__name__)
TRANSIENT = (StorageError, OSError, LauncherError, ConnectionError, TimeoutError)


@dataclass
class OperatorContext:
    """What the handlers share: settings, the launcher, the storage observer, the quota reader."""

    settings: OperatorSettings
    launcher: Launcher
    observer: StorageObserver = field(default_factory=StorageObserver)
    quota: GpuQuota = field(default_factory=GpuQuota)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _seen: dict[str, tuple[int, frozenset[str]]] = field(default_factory=dict)

    _executor: ThreadPoolExecutor | None = None

    def lock(self, uid: str) -> asyncio.Lock:
        return self._locks.setdefault(uid, asyncio.Lock())

    async def run(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` in the operator's pool of ``settings.max_workers`` threads (blocking I/O)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.settings.max_workers, thread_name_prefix="exfm-io")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


def make_context(
    settings: OperatorSettings | None = None, launcher: Launcher | None = None
) -> OperatorContext:
    """A context from settings: the launcher backend and, for ``kubernetes``, quota from the API."""
    settings = settings or OperatorSettings()
    if launcher is None:
        if settings.scheduler == "local_cwd":
            launcher = make_launcher("local_cwd", state_dir=settings.state_dir)
        else:
            launcher = make_launcher(
                "kubernetes",
                queue=settings.queue,
                image=settings.image,
                service_account=settings.service_account,
                list_ttl=settings.job_list_ttl,
            )
    client = getattr(launcher, "_client", None) if settings.read_quota else None
    return OperatorContext(settings, launcher, quota=GpuQuota(client, settings.gpu_budget))


# ---------------------------------------------------------------------------- pure-ish helpers


def _degraded_status(old: dict, reason: str, message: str, generation: int | None) -> dict:
    """The resource's status with phase Degraded and a Degraded=True condition naming the problem."""
    conditions = [c for c in (old.get("conditions") or []) if c.get("type") not in ("Degraded", "Ready")]
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    conditions += [
        {"type": "Degraded", "status": "True", "reason": reason, "message": message[:32000],
         "lastTransitionTime": stamp, "observedGeneration": generation},
        {"type": "Ready", "status": "False", "reason": reason, "message": "see the Degraded condition",
         "lastTransitionTime": stamp, "observedGeneration": generation},
    ]  # fmt: skip
    return {**old, "phase": "Degraded", "conditions": conditions, "lastError": message[:32000],
            "observedGeneration": generation}  # fmt: skip


def _status_patch(old: dict, new: dict) -> dict:
    """Merge-patch turning ``old`` into ``new`` at the top level (removed keys become null)."""
    patch = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch


def _parse(kind: str, body: dict) -> Any:
    raw = {
        k: body.get(k)
        for k in ("apiVersion", "kind", "metadata", "spec", "status")
        if body.get(k) is not None
    }
    raw["metadata"] = dict(body.get("metadata") or {})
    return KINDS[kind].model_validate(raw)


def _one(index: Any, key: tuple[str, str]) -> dict | None:
    if index is None or key not in index:
        return None
    for body in index[key]:
        return body
    return None


@dataclass
class ReconcileOutcome:
    status: dict
    events: list[tuple[str, str, str]]
    submitted_kinds: list[str]
    failed_jobs: list[str]
    artifacts: tuple[int, frozenset[str]] | None = None


def reconcile_sync(
    ctx: OperatorContext,
    kind: str,
    body: dict,
    fm_body: dict | None,
    das_body: dict | None,
    pending_fm_gpus: int,
) -> ReconcileOutcome:
    """One observe → plan → apply cycle (blocking; run in a worker thread)."""
    old_status = dict(body.get("status") or {})
    generation = (body.get("metadata") or {}).get("generation")
    name = body["metadata"]["name"]
    try:
        resource = _parse(kind, body)
    except ValidationError as err:
        message = "; ".join(validation_problems(err, f"{kind} {name!r}"))
        return ReconcileOutcome(_degraded_status(old_status, "InvalidSpec", message, generation),
                                [("Warning", "InvalidSpec", message)], [], [])  # fmt: skip
    ref_name = None
    fm = das = None
    try:
        if kind == "DataAugmentation":
            ref_name = resource.spec.fm_ref.name
            fm = _parse("FoundationModel", fm_body) if fm_body else None
        elif kind == "VerticalModel":
            ref_name = resource.spec.das_ref.name
            das = _parse("DataAugmentation", das_body) if das_body else None
    except ValidationError as err:
        message = f"referenced {ref_name!r} is invalid: " + "; ".join(
            validation_problems(err, ref_name or "")
        )
        return ReconcileOutcome(
            _degraded_status(old_status, "InvalidReference", message, generation), [], [], []
        )
    if kind != "FoundationModel" and fm is None and das is None:
        field_path = "spec.fmRef.name" if kind == "DataAugmentation" else "spec.dasRef.name"
        ref_kind = "FoundationModel" if kind == "DataAugmentation" else "DataAugmentation"
        message = f"{field_path}: {ref_kind} {ref_name!r} does not exist in this namespace (yet)"
        status = {**old_status, "phase": "Waiting", "lastError": message, "observedGeneration": generation}
        return ReconcileOutcome(status, [], [], [])

    world = observe_world(
        resource, observer=ctx.observer, launcher=ctx.launcher, quota=ctx.quota, fm=fm, das=das,
        pending_fm_gpus=pending_fm_gpus,
    )  # fmt: skip
    try:
        plan = plan_resource(resource, world, fm, das)
    except SpecProblem as err:
        message = f"{err.field}: {err.message}"
        return ReconcileOutcome(_degraded_status(old_status, err.reason, message, generation),
                                [("Warning", err.reason, message)], [], [])  # fmt: skip
    events: list[tuple[str, str, str]] = []
    submitted: list[str] = []
    result = apply(
        plan,
        launcher=ctx.launcher,
        namespace=resource.metadata.namespace,
        emit=lambda t, r, m: events.append((t, r, m)),
        on_submit=lambda action, _handle: submitted.append(str(action.job_kind)),
    )
    if result.errors and not result.submitted and not result.cancelled:
        raise LauncherError("; ".join(result.errors))
    status = plan.status.to_json()
    failed = [j.name for j in world.jobs if j.state == "FAILED"]
    committed = frozenset(
        [f"d{w.window}" for w in world.das_windows if kind == "DataAugmentation"]
        + [
            f"c{c.version}"
            for c in (world.fm_checkpoints if kind == "FoundationModel" else world.vm_checkpoints)
        ]
    )
    return ReconcileOutcome(status, events, submitted, failed, (len(committed), committed))


# ---------------------------------------------------------------------------- registry


def build_registry(ctx: OperatorContext) -> kopf.OperatorRegistry:
    """A kopf registry with the handlers of the three kinds bound to ``ctx``."""
    registry = kopf.OperatorRegistry()
    seen_failed: set[str] = set()

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = ctx.settings.finalizer
        settings.posting.level = logging.WARNING
        settings.execution.max_workers = ctx.settings.max_workers
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 60
        # A deleted resource keeps its finalizer until its in-flight ``poll`` timer returns; kopf
        # re-checks every ``cancellation_polling`` s (default 60), so poll soon instead.
        settings.background.cancellation_polling = min(5.0, max(0.5, ctx.settings.poll_interval))

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # Read KUBECONFIG at call time (the kubernetes client caches it at import), else in-cluster.
        return kopf.login_with_kubeconfig(**kwargs) or kopf.login_with_service_account(**kwargs)

    @kopf.on.probe(id="launcher", registry=registry)
    def probe_launcher(**_: Any) -> str:
        return ctx.launcher.scheduler

    def _index_fn(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict:
        return {(namespace, name): {"metadata": dict(body.metadata), "spec": dict(body.spec),
                                    "status": dict(body.status), "kind": body.get("kind")}}  # fmt: skip

    for plural in PLURALS.values():
        kopf.index(GROUP, VERSION, plural, id=f"{plural}_idx", registry=registry)(_index_fn)

    def _pending_fm_gpus(index: Any, namespace: str) -> int:
        total = 0
        for (ns, _name), store in (index or {}).items():
            if ns != namespace:
                continue
            for fm_body in store:
                conds = (fm_body.get("status") or {}).get("conditions") or []
                if any(c.get("type") == "QuotaExceeded" and c.get("status") == "True" for c in conds):
                    res = (fm_body.get("spec") or {}).get("resources") or {}
                    total += int(res.get("gpu", 0) or 0) * int(res.get("replicas", 1) or 1)
        return total

    def make_reconcile(kind: str) -> Any:
        async def reconcile(
            body: kopf.Body, patch: kopf.Patch, namespace: str, uid: str, logger: Any, **kwargs: Any
        ) -> None:
            if body.metadata.get("deletionTimestamp"):
                return
            spec = body.get("spec") or {}
            fm_body = das_body = None
            if kind == "DataAugmentation":
                fm_body = _one(
                    kwargs.get("foundationmodels_idx"), (namespace, (spec.get("fmRef") or {}).get("name"))
                )
            elif kind == "VerticalModel":
                das_body = _one(
                    kwargs.get("dataaugmentations_idx"), (namespace, (spec.get("dasRef") or {}).get("name"))
                )
            pending = _pending_fm_gpus(kwargs.get("foundationmodels_idx"), namespace)
            raw = {"metadata": dict(body.metadata), "spec": dict(spec), "status": dict(body.status),
                   "kind": kind, "apiVersion": f"{GROUP}/{VERSION}"}  # fmt: skip
            started = time.perf_counter()
            async with ctx.lock(uid):
                try:
                    out = await ctx.run(reconcile_sync, ctx, kind, raw, fm_body, das_body, pending)
                except TRANSIENT as err:
                    metrics.RECONCILE_ERRORS.labels(kind).inc()
                    kopf.warn(body, reason="RetryLater", message=str(err)[:1000])
                    raise kopf.TemporaryError(
                        f"{type(err).__name__}: {err}", delay=ctx.settings.retry_delay
                    ) from err
                finally:
                    metrics.RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)
            _record(kind, uid, out)
            for etype, reason, message in out.events:
                kopf.event(body, type=etype, reason=reason, message=message[:1000])
            old = dict(body.status)
            status_patch = _status_patch(old, out.status)
            if status_patch:
                if old.get("phase") != out.status.get("phase"):
                    kopf.info(
                        body, reason="Phase", message=f"{old.get('phase')} -> {out.status.get('phase')}"
                    )
                patch.status.update(status_patch)

        return reconcile

    def _record(kind: str, uid: str, out: ReconcileOutcome) -> None:
        for job_kind in out.submitted_kinds:
            metrics.JOBS_SUBMITTED.labels(job_kind).inc()
        for job in out.failed_jobs:
            if job not in seen_failed:
                seen_failed.add(job)
                metrics.JOBS_FAILED.labels(JOB_KIND_OF[kind]).inc()
        if out.artifacts is not None:
            before = ctx._seen.get(uid)
            new = out.artifacts[1] - (before[1] if before else frozenset())
            if before is not None and new:
                metrics.WINDOWS_PROCESSED.labels(JOB_KIND_OF[kind]).inc(len(new))
            ctx._seen[uid] = out.artifacts

    def make_delete(kind: str) -> Any:
        async def on_delete(body: kopf.Body, namespace: str, uid: str, logger: Any, **_: Any) -> None:
            try:
                jobs = await asyncio.to_thread(observe_jobs, ctx.launcher, namespace, uid)
                active = [j for j in jobs if j.state not in TERMINAL_STATES]
                for job in active:
                    await asyncio.to_thread(ctx.launcher.cancel, job.handle)
                    metrics.JOBS_CANCELLED.labels(JOB_KIND_OF[kind]).inc()
            except TRANSIENT as err:
                raise kopf.TemporaryError(f"cancelling jobs: {err}", delay=ctx.settings.retry_delay) from err
            ctx._seen.pop(uid, None)
            if active:
                logger.info(f"cancelled {len(active)} job(s): {', '.join(j.job_name for j in active)}")

        return on_delete

    for kind, plural in PLURALS.items():
        fn = make_reconcile(kind)
        for decorator in (kopf.on.resume, kopf.on.create, kopf.on.update):
            decorator(GROUP, VERSION, plural, id=f"reconcile-{decorator.__name__}", registry=registry)(fn)
        # The first poll comes one interval after the object appears: on.create/on.resume reconcile
        # it at once, and a timer firing at the same moment would only repeat that reconcile.
        kopf.timer(GROUP, VERSION, plural, id="poll", interval=ctx.settings.poll_interval,
                   initial_delay=ctx.settings.poll_interval, registry=registry)(fn)  # fmt: skip
        kopf.on.delete(GROUP, VERSION, plural, id="cancel-jobs", registry=registry)(make_delete(kind))
    return registry


# ---------------------------------------------------------------------------- running


async def operate(
    namespaces: Collection[str] | None = None,
    *,
    liveness: str | None = None,
    metrics_port: int | None = None,
    standalone: bool = True,
    settings: OperatorSettings | None = None,
    context: OperatorContext | None = None,
    stop_flag: threading.Event | asyncio.Event | None = None,
    ready_flag: threading.Event | asyncio.Event | None = None,
) -> None:
    """Run the operator in the current event loop until ``stop_flag`` is set (or cancelled)."""
    ctx = context or make_context(settings)
    server = metrics.serve(metrics_port) if metrics_port else None
    try:
        await kopf.operator(
            registry=build_registry(ctx),
            standalone=standalone,
            namespaces=list(namespaces or []),
            clusterwide=not namespaces,
            liveness_endpoint=liveness,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        if server is not None:
            server.shutdown()
        if ctx._executor is not None:
            ctx._executor.shutdown(wait=False, cancel_futures=True)
            ctx._executor = None
        ctx.launcher.close()


def run_operator(
    namespaces: list[str] | None = None,
    liveness: str | None = None,
    metrics_port: int | None = None,
    standalone: bool = True,
    settings: OperatorSettings | None = None,
) -> None:
    """Blocking entry point of ``exfm operator``: all namespaces when ``namespaces`` is empty.

    ``liveness``: kopf's endpoint, e.g. ``http://0.0.0.0:8080/healthz``; ``metrics_port``: Prometheus.
    """
    asyncio.run(
        operate(
            namespaces, liveness=liveness, metrics_port=metrics_port, standalone=standalone, settings=settings
        )
    )
