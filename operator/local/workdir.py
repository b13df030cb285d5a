"""The local-mode state directory (``--workdir``, default ``./.exfm``).

Layout::

    <workdir>/storage/            artifact root (local filesystem storage, unless --storage/S3 is given)
    <workdir>/jobs/               the launcher's job registry and TorchX local_cwd logs
    <workdir>/status/<kind>/<name>.json   last status of each resource (same model as the operator)
    <workdir>/manifests.json      the resources of the last ``exfm run`` (validated, as JSON)
    <workdir>/events.jsonl        run events (job submitted/finished, window committed, ...)
    <workdir>/run.json            storage URI and options of the last run

Every JSON file is written atomically (temp file + rename) so an interrupted run never leaves a
half-written status behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATUS_DIR = "status"
LOCK_FILE = ".run.lock"


class WorkdirBusy(RuntimeError):
    """Another ``exfm run`` holds the workdir's lock."""


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temp file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class ResourceStatus:
    """The persisted status of one resource: its identity, spec summary and operator status."""

    kind: str
    namespace: str
    name: str
    status: dict[str, Any]
    created: float
    updated: float
    spec: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "status": self.status,
            "created": self.created,
            "updated": self.updated,
            "spec": self.spec,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ResourceStatus:
        return cls(
            kind=data["kind"],
            namespace=data.get("namespace", "default"),
            name=data["name"],
            status=data.get("status") or {},
            created=float(data.get("created", 0.0)),
            updated=float(data.get("updated", 0.0)),
            spec=data.get("spec") or {},
        )


class Workdir:
    """Paths and persisted state of one local-mode workdir."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self._lock_depth = 0

    @contextlib.contextmanager
    def locked(self) -> Iterator[Workdir]:
        """Hold ``<workdir>/.run.lock`` (one ``exfm run`` per workdir); re-entrant for this object.

        Only the workdir folder itself is created before the lock is taken, so a refused run
        writes nothing. Raises :class:`WorkdirBusy` when another process holds it."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield self
            finally:
                self._lock_depth -= 1
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = ""
                with contextlib.suppress(OSError):
                    fh.seek(0)
                    holder = fh.read().strip()
                raise WorkdirBusy(
                    f"another `exfm run` (pid {holder or '?'}) is using {self.root}; wait for it or pick "
                    "another --workdir (nothing was written)"
                ) from None
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            self._lock_depth = 1
            try:
                yield self
            finally:
                self._lock_depth = 0
                fcntl.flock(fh, fcntl.LOCK_UN)

    @property
    def storage_dir(self) -> Path:
        return self.root / "storage"

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    @property
    def configs_dir(self) -> Path:
        return self.root / "configs"

    @property
    def events_path(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def manifests_path(self) -> Path:
        return self.root / "manifests.json"

    @property
    def run_path(self) -> Path:
        return self.root / "run.json"

    def exists(self) -> bool:
        return self.root.is_dir()

    def ensure(self) -> Workdir:
        for path in (self.root, self.storage_dir, self.jobs_dir, self.configs_dir):
            path.mkdir(parents=True, exist_ok=True)
        return self

    # --- run options -------------------------------------------------------------------------
    def save_run(self, info: dict[str, Any]) -> None:
        write_json_atomic(self.run_path, info)

    def load_run(self) -> dict[str, Any]:
        if not self.run_path.is_file():
            return {}
        return json.loads(self.run_path.read_text())

    def storage_uri(self) -> str:
        """The storage URI of the last run (defaults to ``<workdir>/storage``)."""
        return self.load_run().get("storage") or str(self.storage_dir)

    # --- manifests ---------------------------------------------------------------------------
    def save_manifests(self, docs: list[dict[str, Any]]) -> None:
        write_json_atomic(self.manifests_path, docs)

    def load_manifests(self) -> list[dict[str, Any]]:
        if not self.manifests_path.is_file():
            return []
        return json.loads(self.manifests_path.read_text())

    # --- statuses ----------------------------------------------------------------------------
    def status_path(self, kind: str, namespace: str, name: str) -> Path:
        return self.root / STATUS_DIR / kind / f"{namespace}.{name}.json"

    def save_status(
        self, kind: str, namespace: str, name: str, status: dict[str, Any], spec: dict[str, Any]
    ) -> ResourceStatus:
        """Persist a resource's status, keeping its first-seen time (the AGE column)."""
        path = self.status_path(kind, namespace, name)
        now = time.time()
        created = now
        if path.is_file():
            try:
                created = float(json.loads(path.read_text()).get("created", now))
            except (ValueError, OSError):
                created = now
        record = ResourceStatus(kind, namespace, name, status, created, now, spec)
        write_json_atomic(path, record.to_json())
        return record

    def load_statuses(self) -> list[ResourceStatus]:
        base = self.root / STATUS_DIR
        if not base.is_dir():
            return []
        records = [ResourceStatus.from_json(json.loads(p.read_text())) for p in sorted(base.glob("*/*.json"))]
        return records

    # --- events ------------------------------------------------------------------------------
    def append_event(self, event: dict[str, Any]) -> None:
        self.events_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.events_path, "a") as fh:
            fh.write(json.dumps(event, sort_keys=True, default=str) + "\n")

    def load_events(self) -> list[dict[str, Any]]:
        if not self.events_path.is_file():
            return []
        events = []
        for line in self.events_path.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue  # a line cut short by a crash
        return events
