"""The local run loop: ``{observe → plan → apply}`` with the operator's planner, jobs on TorchX ``local_cwd``.

There is no second pipeline implementation here. Each pass observes every resource exactly as the
operator does (:func:`exfm_operator.observe.observe_world`), asks the same planner functions for a
plan, executes it with :func:`exfm_operator.observe.apply`, and stores the plan's status (the
operator would PATCH it into the CR; here it goes to ``<workdir>/status``). Upstream status feeds
downstream planning within the pass (FM → DAS → VM), as the watch would in a cluster.

**Done**: a pass in which no resource has an active job, no job was submitted or held back, and no
resource waits for a retry backoff. Then every ready window has been processed, or a resource
failed (exit 1), or ready windows are left that nothing will process (exit 3, ``EXIT_STALLED``: an
open range waiting for a full ``cadence.windowsPerJob`` chunk, a window missing its ``_SUCCESS``
in the middle of a range); the summary says which and why.

**Known-complete streams**: an imported dataset records its last window (``dataset.json``:
``complete``, ``last_window``). An open-ended FM/DAS range over it is planned as if it ended
there, so the last, shorter chunk runs instead of waiting for windows that will never come.

**Interrupt** (SIGINT/SIGTERM, or ``--max-minutes``): one more pass plans every resource as if
``spec.suspend`` were true, so the planner itself cancels the active jobs (CancelJob → launcher),
and the suspended statuses are stored. Committed windows stay committed; a re-run resumes after
them (the planner starts after the newest checkpoint / committed DAS window).

**Parallelism**: at most ``max_parallel`` jobs run at once (local CPUs are the quota). A plan whose
SubmitJob does not fit is not applied and its status not stored; the next pass plans it again.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from exfm_operator.api import SHORT_NAMES, DataAugmentation, FoundationModel, VerticalModel
from exfm_operator.launcher import Launcher, make_launcher
from exfm_operator.local.manifests import Bundle, resource_label
from exfm_operator.local.progress import ProgressRow, Reporter
from exfm_operator.local.workdir import Workdir
from exfm_operator.observe import GpuQuota, StorageObserver, apply, observe_world
from exfm_operator.planner import (
    Plan,
    SubmitJob,
    World,
    plan_resource,
)
from exfm_operator.planner.common import spans

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_STALLED = 3  # ready windows are left that nothing will process (see _stalled)
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130


def unprocessed_windows(res: Any, world: World) -> list[int]:
    """Ready, in-range input windows of ``res`` that it has not processed (and could)."""
    rng = res.spec.windows
    if isinstance(res, FoundationModel):
        done = {w for c in world.fm_checkpoints for w in c.windows}
        return sorted(w for w in world.data_windows if rng.contains(w) and w not in done)
    if isinstance(res, DataAugmentation):
        done = {d.window for d in world.das_windows}
        first_ckpt = min((c.last_window for c in world.fm_checkpoints), default=None)
        lowest = min(world.data_windows, default=0)  # never augmentable: no FM is older than it
        floor = first_ckpt + 1 if first_ckpt is not None else lowest + 1
        return sorted(w for w in world.data_windows if rng.contains(w) and w >= floor and w not in done)
    done = {w for c in world.vm_checkpoints for w in c.windows}
    return sorted(d.window for d in world.das_windows if rng.contains(d.window) and d.window not in done)


@dataclass
class RunOptions:
    poll_s: float = 1.0
    max_minutes: float | None = None
    max_parallel: int = 2
    job_env: dict[str, str] = field(default_factory=dict)
    cancel_timeout_s: float = 30.0


@dataclass
class PassResult:
    active_jobs: int = 0
    submitted: int = 0
    held_back: int = 0
    backing_off: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return not (self.active_jobs or self.submitted or self.held_back or self.backing_off)


@dataclass
class RunResult:
    exit_code: int
    reason: str
    statuses: dict[str, dict[str, Any]]
    seconds: float
    jobs: int


@dataclass
class _JobSeen:
    name: str
    resource: str
    kind: str
    windows: tuple[int, int]
    state: str
    first_seen: float
    started_at: float | None


class LocalRunner:
    """Runs a localized :class:`Bundle` to completion in ``workdir``."""

    def __init__(
        self,
        bundle: Bundle,
        workdir: Workdir,
        reporter: Reporter,
        options: RunOptions | None = None,
        launcher: Launcher | None = None,
    ) -> None:
        self.bundle = bundle
        self.workdir = workdir
        self.reporter = reporter
        self.options = options or RunOptions()
        self.launcher = launcher or make_launcher(
            "local_cwd", state_dir=str(workdir.jobs_dir), env=self.options.job_env
        )
        self.observer = StorageObserver()
        self.quota = GpuQuota(budget=None)
        self.stop_reason: str | None = None
        self._jobs: dict[str, _JobSeen] = {}
        self._active: dict[str, int] = {}
        self._das_total: dict[tuple[str, str], int] = {}
        self.submitted = 0
        self._known_end = self._complete_stream_ends()
        self._restore_statuses()

    def _complete_stream_ends(self) -> dict[str, int]:
        """``label → end`` for open-ended FM/DAS ranges over a dataset known to be complete."""
        from exfm_trainer.data.windows import read_dataset_info

        ends: dict[str, int] = {}
        for res in self.bundle.resources:
            if isinstance(res, VerticalModel) or res.spec.windows.end is not None:
                continue
            ds = res.spec.dataset
            if ds is None and isinstance(res, DataAugmentation):
                fm = self._upstream(res)[0]
                ds = fm.spec.dataset if fm is not None else None
            if ds is None:
                continue
            try:
                info = read_dataset_info(ds.uri) or {}
            except (OSError, ValueError, RuntimeError):
                continue
            if info.get("complete") and isinstance(info.get("last_window"), int):
                ends[resource_label(res)] = max(info["last_window"] + 1, res.spec.windows.start)
        return ends

    # ------------------------------------------------------------------ status persistence

    def _restore_statuses(self) -> None:
        """Start from the statuses of the previous run (like a CR keeps its status), same spec only."""
        saved = {(s.kind, s.namespace, s.name): s for s in self.workdir.load_statuses()}
        for res in self.bundle.resources:
            rec = saved.get((res.kind, res.metadata.namespace, res.metadata.name))
            if rec is None or rec.spec != res.to_json()["spec"]:
                continue
            with contextlib.suppress(ValueError):
                res.status = type(res.status).model_validate(rec.status)

    def _store(self, res: Any, plan: Plan) -> None:
        res.status = plan.status
        self.workdir.save_status(
            res.kind, res.metadata.namespace, res.metadata.name, plan.status.to_json(), res.to_json()["spec"]
        )

    # ------------------------------------------------------------------ one pass

    def _upstream(self, res: Any) -> tuple[Any, Any]:
        ns = res.metadata.namespace
        if isinstance(res, DataAugmentation):
            return self.bundle.find("FoundationModel", ns, res.spec.fm_ref.name), None
        if isinstance(res, VerticalModel):
            return None, self.bundle.find("DataAugmentation", ns, res.spec.das_ref.name)
        return None, None

    def observe(self, res: Any) -> World:
        """The planner's world of ``res``, observed exactly as the operator does."""
        fm, das = self._upstream(res)
        return observe_world(
            res, observer=self.observer, launcher=self.launcher, quota=self.quota, fm=fm, das=das
        )

    def plan(self, res: Any, world: World, suspend: bool = False) -> Plan:
        """The operator's planner for ``res`` (optionally as if ``spec.suspend`` were true)."""
        update: dict[str, Any] = {"suspend": True} if suspend else {}
        end = self._known_end.get(resource_label(res))
        if end is not None:
            update["windows"] = res.spec.windows.model_copy(update={"end": end})
        target = res
        if update:
            target = res.model_copy(update={"spec": res.spec.model_copy(update=update)})
        return plan_resource(target, world, *self._upstream(res))

    def run_pass(self, suspend: bool = False) -> tuple[PassResult, list[ProgressRow]]:
        """Observe, plan and apply every resource once (FM, then DAS, then VM)."""
        result = PassResult()
        rows: list[ProgressRow] = []
        now = datetime.now(tz=UTC)
        self._claim_signals()
        for res in self.bundle.resources:
            label = resource_label(res)
            world = self.observe(res)
            self._track_jobs(res, world)
            observed = sum(1 for j in world.jobs if j.active)
            self._active[label] = observed
            result.active_jobs += observed
            plan = self.plan(res, world, suspend=suspend)
            submits = plan.of_type(SubmitJob)
            if submits and sum(self._active.values()) + len(submits) > self.options.max_parallel:
                result.held_back += 1  # not applied, status not stored: planned again next pass
                rows.append(self._row(res, world, res.status, held=True))
                continue
            self._apply(res, plan, result)
            self._claim_signals()
            self._active[label] += len(submits)
            result.submitted += len(submits)
            self._store(res, plan)
            rows.append(self._row(res, world, plan.status))
            retry_at = plan.status.next_retry_time
            if plan.status.phase == "Degraded" and retry_at is not None and retry_at > now:
                result.backing_off += 1
        return result, rows

    def _apply(self, res: Any, plan: Plan, result: PassResult) -> None:
        label = resource_label(res)

        def on_submit(action: SubmitJob, handle: str) -> None:
            self.submitted += 1
            w = action.windows
            self.reporter.event(
                "job_submitted", job=action.job_name, resource=label, kind=action.job_kind,
                windows=list(w), detail=f"windows [{w[0]}, {w[1]})",
            )  # fmt: skip

        def emit(type_: str, reason: str, message: str) -> None:
            if type_ == "Warning":
                self.reporter.event("warning", resource=label, reason=reason, message=f"{label}: {message}")
            else:
                self.reporter.event("k8s_event", resource=label, reason=reason, detail=message)

        applied = apply(
            plan,
            launcher=self.launcher,
            namespace=res.metadata.namespace,
            owner=None,
            emit=emit,
            on_submit=on_submit,
        )
        for handle in applied.cancelled:
            self.reporter.event("job_cancelled", job=handle.rsplit("/", 1)[-1], resource=label)
        result.errors.extend(applied.errors)

    # ------------------------------------------------------------------ jobs and progress

    def _track_jobs(self, res: Any, world: World) -> None:
        """Emit ``job_finished`` (with its duration) when a job is first seen terminal after running."""
        label = resource_label(res)
        now = time.time()
        for job in world.jobs:
            started = job.started_at.timestamp() if job.started_at else None
            seen = self._jobs.get(job.name)
            if seen is None:
                self._jobs[job.name] = _JobSeen(
                    job.name, label, job.kind, job.windows, job.state, now, started
                )
                continue  # a finished one was reported by the run that saw it finish
            if seen.state != job.state:
                was_active = seen.state in ("PENDING", "RUNNING", "UNKNOWN")
                seen.state = job.state
                if was_active and not job.active:
                    start = seen.started_at or seen.first_seen
                    fields = {
                        "job": job.name, "resource": label, "kind": job.kind, "state": job.state,
                        "windows": list(job.windows), "duration_s": round(now - start, 2),
                    }  # fmt: skip
                    if job.state == "FAILED" and job.message:
                        fields["message"] = job.message
                    self.reporter.event("job_finished", **fields)
                    self.workdir.append_event({"event": "job_finished", "time": now, **fields})

    def _row(self, res: Any, world: World, status: Any, held: bool = False) -> ProgressRow:
        rng = res.spec.windows
        if isinstance(res, FoundationModel):
            total = len([w for w in world.data_windows if rng.contains(w)])
        elif isinstance(res, DataAugmentation):
            data = sorted(w for w in world.data_windows if rng.contains(w))
            total = len(data[1:]) if data and data[0] == min(world.data_windows, default=0) else len(data)
        else:
            das = self._upstream(res)[1]
            total = self._das_total.get((das.metadata.namespace, das.metadata.name), 0) if das else 0
        if isinstance(res, DataAugmentation):
            self._das_total[(res.metadata.namespace, res.metadata.name)] = total
        done = status.counters.windows_processed
        active = status.active_job
        job = f"{active.name} ({active.state.lower()})" if active is not None else ""
        phase = "Queued" if held else status.phase
        return ProgressRow(
            kind=SHORT_NAMES[res.kind],
            name=res.metadata.name,
            done=done,
            total=max(total, done),
            phase=phase,
            job=job,
        )

    # ------------------------------------------------------------------ the loop

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stop_reason is not None:
            raise KeyboardInterrupt  # second Ctrl-C: stop waiting for the jobs
        self.stop_reason = "interrupted"

    def _claim_signals(self) -> None:
        """(Re)install our SIGINT/SIGTERM handler: TorchX's local scheduler installs its own (raising
        an exception wherever the main thread is) when it is first created."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) != self._on_signal:
                    signal.signal(sig, self._on_signal)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        self._claim_signals()
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _sleep(self, seconds: float, deadline: float | None) -> None:
        end = time.monotonic() + seconds
        while self.stop_reason is None and time.monotonic() < end:
            if deadline is not None and time.monotonic() > deadline:
                self.stop_reason = "time limit"
                return
            time.sleep(0.05)

    def run(self) -> RunResult:
        """Loop until done, interrupted or out of time; returns the exit code and final statuses."""
        start = time.monotonic()
        deadline = start + self.options.max_minutes * 60 if self.options.max_minutes else None
        with self.workdir.locked(), self._signals():
            code, reason = EXIT_OK, "done"
            errors_seen: set[str] = set()
            while True:
                result, rows = self.run_pass()
                self.reporter.update(rows)
                for err in result.errors:
                    if err not in errors_seen:
                        errors_seen.add(err)
                        self.reporter.error(f"error: {err}")
                if self.stop_reason is None and deadline is not None and time.monotonic() > deadline:
                    self.stop_reason = "time limit"
                if self.stop_reason is not None:
                    code, reason = self._stop()
                    break
                if result.done:
                    code, reason = self._outcome()
                    break
                self._sleep(self.options.poll_s, deadline)
        statuses = {resource_label(r): r.status.to_json() for r in self.bundle.resources}
        return RunResult(code, reason, statuses, time.monotonic() - start, self.submitted)

    def _outcome(self) -> tuple[int, str]:
        bad = [r for r in self.bundle.resources if r.status.phase in ("Failed", "Degraded")]
        if bad:
            names = ", ".join(f"{resource_label(r)} ({r.status.phase}: {r.status.last_error})" for r in bad)
            return EXIT_FAILED, f"failed: {names}"
        stalled = self._stalled()
        if stalled:
            return EXIT_STALLED, "nothing more can run: " + "; ".join(stalled)
        return EXIT_OK, "done: every ready window is processed"

    def _stalled(self) -> list[str]:
        """One line per resource that leaves ready input windows unprocessed, with the planner's why."""
        out = []
        for res in self.bundle.resources:
            if res.status.phase in ("Succeeded", "Failed", "Suspended"):
                continue
            left = unprocessed_windows(res, self.observe(res))
            if not left:
                continue
            cond = res.status.condition("Progressing")
            why = (cond.message if cond is not None and cond.message else "") or res.status.phase
            shown = ", ".join(f"[{s.start}, {s.end})" for s in spans(left))
            out.append(f"{resource_label(res)}: {len(left)} ready window(s) {shown} not processed: {why}")
        return out

    def _stop(self) -> tuple[int, str]:
        """Suspend every resource through the planner (cancelling its job) and wait for the jobs."""
        reason = self.stop_reason or "interrupted"
        active = [j for j in self._jobs.values() if j.state in ("PENDING", "RUNNING", "UNKNOWN")]
        self.reporter.event("interrupted", reason=reason, jobs=len(active))
        deadline = time.monotonic() + self.options.cancel_timeout_s
        while True:
            result, rows = self.run_pass(suspend=True)
            self.reporter.update(rows)
            if result.active_jobs == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if reason == "time limit":
            return (
                EXIT_TIMEOUT,
                f"stopped at the --max-minutes limit ({self.options.max_minutes}); re-run to resume",
            )
        return EXIT_INTERRUPTED, "interrupted; re-run the same command to resume"
