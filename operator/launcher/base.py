"""The launcher interface: one API, two TorchX backends (``local_cwd`` and ``kubernetes``)."""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass, field
from typing import Any

from torchx.specs import AppState

JOB_STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "UNKNOWN")
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
RUNNER_NAME = "torchx"  # TorchX default session name; handles embed it

_APPSTATE = {
    AppState.UNSUBMITTED: "PENDING",
    AppState.SUBMITTED: "PENDING",
    AppState.PENDING: "PENDING",
    AppState.RUNNING: "RUNNING",
    AppState.SUCCEEDED: "SUCCEEDED",
    AppState.FAILED: "FAILED",
    AppState.CANCELLED: "CANCELLED",
    AppState.UNKNOWN: "UNKNOWN",
}


def state_name(state: AppState) -> str:
    """A TorchX ``AppState`` as the planner's job state string."""
    return _APPSTATE.get(state, "UNKNOWN")


@dataclass(frozen=True)
class JobStatus:
    state: str
    message: str = ""

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class JobRef:
    """A job the launcher knows, with its current state."""

    job_name: str
    handle: str
    kind: str
    state: str
    message: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    submitted_at: float | None = None


class LauncherError(RuntimeError):
    """Submitting or querying a job failed (transient: the caller retries)."""


class Launcher(abc.ABC):
    """Submit, find, poll, cancel and read logs of trainer jobs through a TorchX runner.

    Every method is thread-safe (kopf handlers call it from worker threads). ``submit`` is
    idempotent by ``job_name``: a job that already exists is returned, never launched twice.
    """

    scheduler: str

    def __init__(self) -> None:
        self._lock = threading.RLock()

    @abc.abstractmethod
    def submit(
        self, action: Any, namespace: str | None = None, extra_labels: dict[str, str] | None = None
    ) -> str:
        """Launch ``action`` (a planner ``SubmitJob``) unless its job exists; returns the handle.

        ``extra_labels`` (e.g. the owner resource) are added to the job's labels."""

    @abc.abstractmethod
    def find(self, job_name: str, namespace: str | None = None) -> str | None:
        """The handle of the job named ``job_name``, or None."""

    @abc.abstractmethod
    def status(self, handle: str) -> JobStatus:
        """The job's state (``JOB_STATES``) and a message (the failure reason when failed)."""

    @abc.abstractmethod
    def list_jobs(self, labels: dict[str, str], namespace: str | None = None) -> list[JobRef]:
        """Every job whose labels include ``labels``, with its state."""

    @abc.abstractmethod
    def cancel(self, handle: str) -> None:
        """Stop the job (no-op when finished or gone)."""

    @abc.abstractmethod
    def logs(self, handle: str, tail: int = 100) -> list[str]:
        """The last ``tail`` log lines of replica 0 (best effort)."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release the runner (local jobs keep running: they live in their own sessions)."""
