"""Materialise the datasets a local run reads, before any job starts.

Sources, in order: ``Dataset`` documents (an import, synthetic parameters, or an existing root) and
every ``spec.dataset.synthetic`` of a FoundationModel/DataAugmentation not covered by one. The
work runs in a subprocess (``python -m exfm_trainer synth|import``) so this process never imports
the training stack. Both are idempotent: a re-run keeps windows that are already complete.

An import infers vocabularies for low-cardinality columns and stores the resulting schema in the
dataset's ``dataset.json``; every resource reading that URI adopts those vocabularies (see
:func:`adopt_stored_schema`), so the FM, the DAS and the VMs map ids as the dataset does.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exfm_operator.local.manifests import Bundle, DatasetDoc, vm_vertical_problems
from exfm_operator.local.progress import Reporter
from exfm_trainer.errors import find_error_event
from exfm_trainer.schema import FeatureSchema
from exfm_trainer.storage import open_storage
from exfm_trainer.storage.commit import sha256_file

IMPORT_MARKER = "_IMPORTED.json"
IMPORT_LOCK = ".import.lock"


class DatasetError(RuntimeError):
    """A dataset could not be materialised; the message names the dataset and the cause."""


@dataclass(frozen=True)
class DatasetTask:
    """One dataset to make ready: ``source`` is ``synthetic``, ``import`` or ``existing``."""

    label: str
    uri: str
    source: str
    synthetic: dict[str, Any] | None = None
    import_path: Path | None = None
    import_options: dict[str, Any] | None = None
    schema: FeatureSchema | None = None


def plan_datasets(bundle: Bundle) -> list[DatasetTask]:
    """The datasets of a (localized) bundle, one task per distinct URI."""
    tasks: dict[str, DatasetTask] = {}
    schemas: dict[str, FeatureSchema] = {}
    for res in bundle.resources:
        ds = getattr(res.spec, "dataset", None)
        if ds is not None and ds.feature_schema is not None:
            schemas.setdefault(ds.uri.rstrip("/"), ds.feature_schema)
    for doc in bundle.datasets:
        tasks[doc.spec.uri.rstrip("/")] = _doc_task(doc, schemas)
    for res in bundle.resources:
        ds = getattr(res.spec, "dataset", None)
        if ds is None or ds.synthetic is None or ds.uri.rstrip("/") in tasks:
            continue
        label = f"{res.kind} {res.metadata.name} spec.dataset"
        tasks[ds.uri.rstrip("/")] = DatasetTask(
            label=label, uri=ds.uri, source="synthetic", synthetic=ds.synthetic
        )
    return list(tasks.values())


def _doc_task(doc: DatasetDoc, schemas: dict[str, FeatureSchema]) -> DatasetTask:
    label = f'Dataset "{doc.metadata.name}"'
    spec = doc.spec
    if spec.synthetic is not None:
        return DatasetTask(label=label, uri=spec.uri, source="synthetic", synthetic=spec.synthetic)
    if spec.import_ is not None:
        schema = spec.feature_schema or schemas.get(spec.uri.rstrip("/"))
        if schema is None:
            raise DatasetError(
                f"{label}: spec.schema is not set and no FoundationModel/DataAugmentation reads "
                f"{spec.uri} with a schema; set spec.schema (with a `timestamp` column)"
            )
        imp = spec.import_
        options = {
            "window_seconds": imp.window_seconds,
            "origin": imp.origin,
            "format": imp.format,
            "vocabulary_threshold": imp.vocabulary_threshold,
        }
        return DatasetTask(
            label=label,
            uri=spec.uri,
            source="import",
            import_path=(Path(doc.source_dir) / imp.path).resolve(),
            import_options=options,
            schema=schema,
        )
    return DatasetTask(label=label, uri=spec.uri, source="existing")


def _ready_windows(uri: str) -> list[int]:
    from exfm_trainer.data.windows import list_ready_windows

    return list_ready_windows(open_storage(uri))


def _run(argv: list[str], label: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "exfm_trainer", *argv], capture_output=True, text=True, env=os.environ.copy()
    )
    if proc.returncode != 0:
        event = find_error_event(proc.stdout.splitlines())
        if event is not None:
            raise DatasetError(f"{label}: {argv[0]} failed: {event['message']}")
        err = (proc.stderr.strip() or proc.stdout.strip() or f"exit code {proc.returncode}").splitlines()
        raise DatasetError(f"{label}: {' '.join(argv[:1])} failed: {' | '.join(err[-5:])}")


def _synthesize(task: DatasetTask, reporter: Reporter) -> None:
    assert task.synthetic is not None
    windows = task.synthetic.get("windows", "?")
    reporter.event("dataset_generating", name=task.label, windows=windows, uri=task.uri)
    with tempfile.TemporaryDirectory(prefix="exfm-synth-") as tmp:
        cfg = Path(tmp) / "synthetic.json"
        cfg.write_text(json.dumps(task.synthetic))
        _run(["synth", "--out", task.uri, "--config", str(cfg)], task.label)


@contextlib.contextmanager
def import_lock(uri: str) -> Iterator[None]:
    """Serialise imports into one dataset root (a blocking ``flock`` on ``<root>/.import.lock``), so
    the marker check and the import are one step: a second import of another source into the same
    root waits, then finds the first one's marker and is refused. S3 roots have no lock primitive
    in the storage API: there, give each dataset its own ``spec.uri``."""
    storage = open_storage(uri)
    local_path = getattr(storage, "local_path", None)
    if not callable(local_path):
        yield
        return
    root = Path(local_path(""))
    root.mkdir(parents=True, exist_ok=True)
    with open(root / IMPORT_LOCK, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _import(task: DatasetTask, reporter: Reporter) -> None:
    assert task.import_path is not None
    with import_lock(task.uri):
        _import_locked(task, reporter)


def _import_locked(task: DatasetTask, reporter: Reporter) -> None:
    assert task.import_path is not None and task.schema is not None and task.import_options is not None
    storage = open_storage(task.uri)
    marker = {
        "source": str(task.import_path),
        "sha256": sha256_file(task.import_path),
        "options": task.import_options,
        "schema": task.schema.model_dump(mode="json"),
    }
    if storage.exists(IMPORT_MARKER):
        if json.loads(storage.get_bytes(IMPORT_MARKER)) == marker:
            return
        raise DatasetError(
            f"{task.label}: {task.uri} already holds windows imported from another file or with other "
            "options; use a new spec.uri, or delete that folder to re-import"
        )
    reporter.event("dataset_importing", name=task.label, source=str(task.import_path))
    opts = task.import_options
    with tempfile.TemporaryDirectory(prefix="exfm-import-") as tmp:
        schema_file = Path(tmp) / "schema.json"
        schema_file.write_text(task.schema.model_dump_json())
        argv = ["import", "table", "--input", str(task.import_path), "--out", task.uri]
        argv += ["--schema", str(schema_file), "--window-seconds", str(opts["window_seconds"]), "--overwrite"]
        if opts.get("origin") is not None:
            argv += ["--origin", str(opts["origin"])]
        argv += ["--vocabulary-threshold", str(opts["vocabulary_threshold"])]
        if opts.get("format"):
            argv += ["--format", str(opts["format"])]
        _run(argv, task.label)
    storage.put_bytes(IMPORT_MARKER, json.dumps(marker, indent=1, sort_keys=True).encode())


def adopt_stored_schema(bundle: Bundle, uri: str) -> None:
    """Give every resource reading ``uri`` the vocabularies its stored schema (``dataset.json``) declares."""
    from exfm_trainer.data.vocab import adopt_vocabularies
    from exfm_trainer.data.windows import read_dataset_info

    info = read_dataset_info(open_storage(uri)) or {}
    if "schema" not in info:
        return
    stored = FeatureSchema.model_validate(info["schema"])
    for res in bundle.resources:
        ds = getattr(res.spec, "dataset", None)
        if ds is not None and ds.feature_schema is not None and ds.uri.rstrip("/") == uri.rstrip("/"):
            ds.feature_schema = adopt_vocabularies(ds.feature_schema, stored)


def materialise(bundle: Bundle, reporter: Reporter) -> dict[str, list[int]]:
    """Make every dataset of the bundle ready; returns its ready windows by URI."""
    ready: dict[str, list[int]] = {}
    for task in plan_datasets(bundle):
        if task.source == "synthetic":
            _synthesize(task, reporter)
        elif task.source == "import":
            _import(task, reporter)
            adopt_stored_schema(bundle, task.uri)
        windows = _ready_windows(task.uri)
        if not windows:
            raise DatasetError(
                f"{task.label}: no ready windows (window=NNNNN/ with _SUCCESS) at {task.uri}; "
                "write the data there first or add spec.import / spec.synthetic"
            )
        reporter.event("dataset_ready", name=task.label, windows=len(windows), uri=task.uri)
        ready[task.uri] = windows
    return ready


def dataset_verticals(uri: str) -> tuple[str | None, list[str] | None]:
    """The vertical column of a materialised dataset and its values, from its ``dataset.json``
    (an import records the values it saw; a generated dataset declares them in its schema)."""
    from exfm_trainer.data.windows import read_dataset_info

    try:
        info = read_dataset_info(uri) or {}
    except (OSError, ValueError):
        return None, None
    schema = info.get("schema")
    if not isinstance(schema, dict) or not schema.get("vertical"):
        return None, None
    values = info.get("verticals")
    if values is None:
        try:
            values = FeatureSchema.model_validate(schema).vertical_values()
        except ValueError:
            values = None
    return str(schema["vertical"]), (sorted(str(v) for v in values) if values is not None else None)


def check_dataset_values(bundle: Bundle) -> list[str]:
    """Each VM whose ``spec.vertical`` is not among the verticals its materialised dataset holds."""

    def materialised(ds: Any) -> tuple[str | None, list[str] | None] | None:
        column, values = dataset_verticals(ds.uri)
        return None if column is None else (column, values)

    return vm_vertical_problems(bundle, materialised)
