"""``local_cwd`` backend: trainer jobs as local process groups, tracked in a JSON registry."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections import deque
from pathlib import Path
from typing import Any

from torchx.runner import get_runner
from torchx.specs import parse_app_handle

from exfm_operator.launcher.appdef import build_appdef, dns_name, job_labels
from exfm_operator.launcher.base import JobRef, JobStatus, Launcher, LauncherError, state_name
from exfm_operator.launcher.registry import LocalJobRecord, LocalJobRegistry
from exfm_trainer.errors import error_summary, find_error_event

SCHEDULER = "local_cwd"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as dead
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class LocalLauncher(Launcher):
    """Runs jobs with TorchX ``local_cwd`` from the current directory, one process group per job.

    ``state_dir`` holds ``jobs.json`` (job name → handle, pids, exit-code file), the job configs
    and the TorchX log directories, so a restarted launcher finds and polls earlier jobs.
    """

    scheduler = SCHEDULER

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        python: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.registry = LocalJobRegistry(state_dir)
        self.python = python or sys.executable
        self.env = dict(env or {})
        self._runner = get_runner()

    # -- submit / find -------------------------------------------------------------------------
    def submit(
        self, action: Any, namespace: str | None = None, extra_labels: dict[str, str] | None = None
    ) -> str:
        name = dns_name(action.job_name)
        with self._lock:
            existing = self.registry.get(name)
            if existing is not None:
                return existing.handle
            job_dir = self.registry.job_dir(name)
            config_file = job_dir / "config.json"
            config_file.write_text(json.dumps(action.config, indent=1, sort_keys=True))
            exit_file = job_dir / "exitcode"
            exit_file.unlink(missing_ok=True)
            app = build_appdef(
                action,
                config_path=str(config_file),
                python=self.python,
                env=self.env,
                exit_code_file=str(exit_file),
            )
            cfg = {"log_dir": str(self.registry.state_dir / "logs")}
            try:
                info = self._runner.dryrun(app, SCHEDULER, cfg=cfg)
                handle = self._runner.schedule(info)
            except Exception as err:
                raise LauncherError(f"local_cwd could not start job {name}: {err}") from err
            app_id = parse_app_handle(handle).app_id
            local_app = self._scheduler()._apps[app_id]
            self.registry.put(
                LocalJobRecord(
                    job_name=name,
                    handle=handle,
                    kind=str(action.job_kind),
                    labels={**job_labels(action), **(extra_labels or {})},
                    pids=[r.proc.pid for reps in local_app.role_replicas.values() for r in reps],
                    log_dir=local_app.log_dir,
                    exit_code_file=str(exit_file),
                    config_file=str(config_file),
                )
            )
            return handle

    def find(self, job_name: str, namespace: str | None = None) -> str | None:
        record = self.registry.get(dns_name(job_name))
        return record.handle if record else None

    def _scheduler(self) -> Any:
        return self._runner._scheduler(SCHEDULER)

    def _record(self, handle: str) -> LocalJobRecord | None:
        return next((r for r in self.registry.all() if r.handle == handle), None)

    # -- status --------------------------------------------------------------------------------
    def status(self, handle: str) -> JobStatus:
        with self._lock:
            record = self._record(handle)
            try:
                live = self._runner.status(handle)
            except Exception:  # a handle from another session or scheduler
                live = None
            if live is not None:
                state = state_name(live.state)
                if record is not None and record.cancelled and state == "FAILED":
                    state = "CANCELLED"
                message = "" if state != "FAILED" else self._failure_message(handle, record)
                return JobStatus(state, message)
            return self._recovered_status(handle, record)

    def _recovered_status(self, handle: str, record: LocalJobRecord | None) -> JobStatus:
        """State of a job this process did not start (operator restart), from pids + exit file."""
        if record is None:
            return JobStatus("UNKNOWN", f"job {handle} is not in the registry")
        if record.cancelled:
            return JobStatus("CANCELLED", "cancelled")
        exit_file = Path(record.exit_code_file)
        if exit_file.exists():
            text = exit_file.read_text().strip()
            if text == "0":
                return JobStatus("SUCCEEDED")
            return JobStatus("FAILED", self._failure_message(handle, record, f"exit code {text}"))
        if any(_alive(pid) for pid in record.pids):
            return JobStatus("RUNNING")
        return JobStatus("FAILED", f"job {record.job_name} exited without recording an exit code")

    def _failure_message(self, handle: str, record: LocalJobRecord | None, prefix: str = "") -> str:
        """The job's reason first: its final error event, else its last stderr lines, then the exit code."""
        event = find_error_event(self.logs(handle, tail=200, streams=("stdout.log",)))
        if event is not None:
            code = event.get("exit_code")
            return (error_summary(event) + (f" (exit code {code})" if code is not None else ""))[:2000]
        tail = [line.rstrip() for line in self.logs(handle, tail=5, streams=("stderr.log",)) if line.strip()]
        tail = tail or [line.rstrip() for line in self.logs(handle, tail=5) if line.strip()]
        parts = [p for p in (" | ".join(tail), prefix) if p]
        return "; ".join(parts)[:2000] or "job failed"

    # -- list / cancel / logs ------------------------------------------------------------------
    def list_jobs(self, labels: dict[str, str], namespace: str | None = None) -> list[JobRef]:
        refs = []
        for record in self.registry.all():
            if all(record.labels.get(k) == v for k, v in labels.items()):
                st = self.status(record.handle)
                refs.append(
                    JobRef(
                        job_name=record.job_name,
                        handle=record.handle,
                        kind=record.kind,
                        state=st.state,
                        message=st.message,
                        labels=record.labels,
                        submitted_at=record.submitted_at,
                    )
                )
        return refs

    def cancel(self, handle: str) -> None:
        with self._lock:
            record = self._record(handle)
            if record is not None:
                if self.status(handle).terminal:
                    return
                self.registry.update(record.job_name, cancelled=True)
            try:
                known = self._runner.status(handle) is not None
            except Exception:
                known = False
            if known:
                self._runner.cancel(handle)
            elif record is not None:
                for pid in record.pids:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGTERM)

    def logs(
        self, handle: str, tail: int = 100, streams: tuple[str, ...] = ("stdout.log", "stderr.log")
    ) -> list[str]:
        record = self._record(handle)
        if record is None or not record.log_dir:
            return []
        replica = Path(record.log_dir) / "trainer" / "0"
        lines: deque[str] = deque(maxlen=tail)
        for name in streams:
            path = replica / name
            if path.exists():
                with open(path, errors="replace") as fh:
                    lines.extend(fh)
        return list(lines)

    def forget(self, job_name: str) -> None:
        """Drop a finished job from the registry (a later submit of that name launches anew)."""
        self.registry.remove(dns_name(job_name))

    def close(self) -> None:
        # Detach instead of killing: jobs run in their own sessions and outlive the operator.
        with self._lock:
            sched = self._runner._scheduler_instances.get(SCHEDULER)
            if sched is not None:
                sched._apps.clear()
