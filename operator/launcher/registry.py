"""A small JSON registry for ``local_cwd`` jobs: deterministic job name → TorchX handle.

``local_cwd`` app ids are random and its scheduler keeps state in memory, so a restarted operator
reads this file to find its jobs (pid, log dir, exit-code file) instead of launching duplicates.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class LocalJobRecord:
    job_name: str
    handle: str
    kind: str
    labels: dict[str, str] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)
    log_dir: str = ""
    exit_code_file: str = ""
    config_file: str = ""
    submitted_at: float = field(default_factory=time.time)
    cancelled: bool = False


class LocalJobRegistry:
    """``<state_dir>/jobs.json`` guarded by an flock, so concurrent launchers stay consistent."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.state_dir / "jobs.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, dict]]:
        with open(self.state_dir / ".jobs.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = json.loads(self.path.read_text()) if self.path.exists() else {}
                yield data
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
                os.replace(tmp, self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def get(self, job_name: str) -> LocalJobRecord | None:
        with self._locked() as data:
            raw = data.get(job_name)
        return LocalJobRecord(**raw) if raw else None

    def put(self, record: LocalJobRecord) -> None:
        with self._locked() as data:
            data[record.job_name] = asdict(record)

    def update(self, job_name: str, **changes: object) -> None:
        with self._locked() as data:
            if job_name in data:
                data[job_name].update(changes)

    def remove(self, job_name: str) -> None:
        with self._locked() as data:
            data.pop(job_name, None)

    def all(self) -> list[LocalJobRecord]:
        with self._locked() as data:
            return [LocalJobRecord(**raw) for raw in data.values()]

    def job_dir(self, job_name: str) -> Path:
        path = self.state_dir / "jobs" / job_name
        path.mkdir(parents=True, exist_ok=True)
        return path
