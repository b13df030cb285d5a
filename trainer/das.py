"""Data Augmentation System (DAS): FM inference once per example, written next to the features.

For each window ``t`` of the job's range the DAS

1. picks the newest committed FM checkpoint whose trained windows are all ``< t`` (the FM never
   saw ``t``), enforcing ``max_staleness``; a lease on that version keeps retention off it;
2. streams the input window's RecordBatches (all original columns), converts the same rows to
   model batches with the FM's feature schema and runs FM inference in batches;
3. writes Parquet with every original column plus ``fm_logit`` and the lineage columns
   ``fm_version``/``fm_last_window`` under ``das/<ns>/<name>/window=NNNNN`` through the commit
   protocol, with a :class:`~exfm_trainer.layout.DASWindowManifest`.

Bad rows (the data layer's policy: null/invalid label, NaN/inf dense value) are kept in the
output with a *null* ``fm_logit`` and counted (``skipped_rows`` in the manifest); a window with
more than ``max_bad_row_fraction`` bad rows fails. One augmented window serves every vertical
model: each VM filters its own vertical when it reads. Committed windows are skipped, so a
re-run is a no-op and a killed job redoes only the window it was writing.

Run: ``python -m exfm_trainer.das --config job.json`` (one JSON progress line per window).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from exfm_trainer import layout
from exfm_trainer.data.windows import (
    DEFAULT_ROWS_PER_FILE,
    DataError,
    as_storage,
    iter_record_batches,
    list_ready_windows,
    window_info,
    window_parts,
    window_summary,
)
from exfm_trainer.errors import report_error
from exfm_trainer.jobs import DASJob, JobConfigError, load_job
from exfm_trainer.layout import FM_LOGIT_COLUMN, FM_VERSION_COLUMN, FM_WINDOW_COLUMN, DASWindowManifest
from exfm_trainer.schema import FeatureSchema
from exfm_trainer.storage import Storage, StorageError, open_storage
from exfm_trainer.storage.commit import commit_artifact, is_committed, list_committed, read_manifest
from exfm_trainer.storage.retention import acquire_lease, release_lease

BAD_ROW_POLICY = "kept-with-null-fm_logit"
DAS_BAD_ROW_FIELD = "spec.maxBadRowFraction"
LINEAGE_COLUMNS = (FM_LOGIT_COLUMN, FM_VERSION_COLUMN, FM_WINDOW_COLUMN)
ROWS_PER_FILE_ENV = "EXFM_DAS_ROWS_PER_FILE"
_ROW_INDEX = "__exfm_das_row__"


class DASError(RuntimeError):
    """The DAS cannot augment a window; the message names the artifact, the cause and the fix."""


@dataclass(frozen=True)
class FMChoice:
    """The FM checkpoint used for one window."""

    version: str
    prefix: str
    uri: str
    windows: tuple[int, ...]
    last_window: int
    staleness: int


READ_CHUNK_ROWS = 65_536  # rows read, augmented and written per step


def _fm_versions(storage: Storage, ns: str, name: str) -> list[tuple[str, list[int]]]:
    """``(version, trained windows)`` of every committed FM checkpoint, oldest first."""
    parent = layout.fm_checkpoints(ns, name)
    out = []
    for version in list_committed(storage, parent):
        manifest = read_manifest(storage, f"{parent}/{version}")
        out.append((version, sorted(int(w) for w in manifest.get("windows", []))))
    return out


def choose_fm(
    storage: Storage, namespace: str, name: str, window: int, max_staleness: int | None = None
) -> FMChoice:
    """The newest committed FM checkpoint that never trained on ``window`` or later.

    Raises DASError naming the FM, the window and the checkpoints that exist when none qualifies
    or the best one is staler than ``max_staleness``.
    """
    parent = layout.fm_checkpoints(namespace, name)
    versions = _fm_versions(storage, namespace, name)
    usable = [(v, ws) for v, ws in versions if ws and max(ws) < window]
    fm_id = f"FM {namespace}/{name} ({storage.uri(parent)})"
    if not usable:
        have = ", ".join(
            f"{v} (windows {ws[0]}..{ws[-1]})" if ws else f"{v} (no windows)" for v, ws in versions
        )
        raise DASError(
            f"no committed checkpoint of {fm_id} is usable for window {window}: a DAS window needs an FM "
            f"trained only on windows < {window}. Existing checkpoints: {have or 'none'}. Train the FM "
            f"on earlier windows first (or start the DAS at a later window)."
        )
    version, ws = max(usable, key=lambda item: (max(item[1]), item[0]))
    stale = layout.staleness(window, max(ws))
    if max_staleness is not None and stale > max_staleness:
        raise DASError(
            f"newest usable checkpoint {version} of {fm_id} last trained on window {max(ws)}, which is "
            f"{stale} windows stale for window {window} (max_staleness={max_staleness}); wait for the FM "
            f"to train window {window - max_staleness - 1} or later, or raise max_staleness"
        )
    prefix = f"{parent}/{version}"
    return FMChoice(version, prefix, storage.uri(prefix), tuple(ws), max(ws), stale)


def check_schema_compat(
    fm_schema: FeatureSchema, data_schema: FeatureSchema, fm_uri: str, data_uri: str
) -> None:
    """Raise DASError when the dataset's features differ from what the FM was trained on."""
    problems = []
    if fm_schema.label != data_schema.label:
        problems.append(f"label column {fm_schema.label!r} (dataset: {data_schema.label!r})")
    missing_dense = [c for c in fm_schema.dense if c not in data_schema.dense]
    if missing_dense:
        problems.append(f"dense features {missing_dense} missing from the dataset schema")
    data_sparse = {f.name: f for f in data_schema.sparse}
    for feat in fm_schema.sparse:
        other = data_sparse.get(feat.name)
        if other is None:
            problems.append(f"sparse feature {feat.name!r} missing from the dataset schema")
        elif other.id_mapping() != feat.id_mapping():
            problems.append(
                f"sparse feature {feat.name!r}: FM maps ids by {feat.encoding} into {feat.num_rows} rows "
                f"(multi_valued={feat.multi_valued}); dataset by {other.encoding} into {other.num_rows} "
                f"rows (multi_valued={other.multi_valued})"
            )
    if problems:
        raise DASError(
            f"schema mismatch between the FM checkpoint {fm_uri} and the dataset {data_uri}: "
            + "; ".join(problems)
            + ". Point the DAS at the dataset the FM was trained on, or retrain the FM on this schema."
        )


def _check_columns(table_schema: pa.Schema, fm_schema: FeatureSchema, window_uri: str, fm_uri: str) -> None:
    names = set(table_schema.names)
    needed = [fm_schema.label, *fm_schema.dense, *fm_schema.sparse_names]
    if fm_schema.vertical:
        needed.append(fm_schema.vertical)
    missing = [c for c in needed if c not in names]
    if missing:
        raise DASError(
            f"schema mismatch: window {window_uri} lacks column(s) {missing} that the FM checkpoint {fm_uri} "
            f"reads (window has {sorted(names)}); rewrite the window with these columns or use a matching FM"
        )
    clash = [c for c in LINEAGE_COLUMNS if c in names]
    if clash:
        raise DASError(
            f"window {window_uri} already has column(s) {clash} that the DAS writes: it looks like a DAS "
            "output; point the DAS at the raw dataset"
        )


def _good_rows(
    table: pa.Table, schema: FeatureSchema, stats: Any, window: int
) -> tuple[pa.Table, np.ndarray]:
    """The rows that pass the data layer's bad-row policy, and their indices in ``table``."""
    from exfm_trainer.data.batches import drop_bad_rows  # the data layer's policy, reused as is

    indexed = table.append_column(_ROW_INDEX, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    kept = drop_bad_rows(indexed, schema, False, stats, window)
    idx = kept[_ROW_INDEX].to_numpy()
    return kept.drop_columns([_ROW_INDEX]), idx


class _FMCache:
    """The loaded FM (one version at a time)."""

    def __init__(self, storage: Storage, device: str) -> None:
        self.storage = storage
        self.device = device
        self.version: str | None = None
        self.loaded: tuple[Callable[[Any], Any], FeatureSchema, Any] | None = None

    def get(self, choice: FMChoice) -> tuple[Callable[[Any], Any], FeatureSchema, Any]:
        if self.version != choice.version or self.loaded is None:
            from exfm_trainer.models.checkpoint import load_fm_for_inference

            self.loaded = None
            self.loaded = load_fm_for_inference(self.storage, choice.prefix, device=self.device)
            self.version = choice.version
        return self.loaded


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class DASRunner:
    """Augments the windows of one :class:`DASJob`; see the module docstring."""

    def __init__(
        self,
        job: DASJob,
        out: TextIO | None = None,
        rows_per_file: int | None = None,
        lease_ttl_s: float = 6 * 3600.0,
    ) -> None:
        self.job = job
        self.out = out if out is not None else sys.stdout
        self.rows_per_file = rows_per_file or int(os.environ.get(ROWS_PER_FILE_ENV) or DEFAULT_ROWS_PER_FILE)
        if self.rows_per_file < 1:
            raise DASError(f"{ROWS_PER_FILE_ENV} must be >= 1, got {self.rows_per_file}")
        self.lease_ttl_s = lease_ttl_s
        self.storage = open_storage(job.storage)
        self.data = as_storage(job.dataset.uri)
        self.holder = f"das/{job.namespace}/{job.name}/{socket.gethostname()}-{os.getpid()}"
        self.fm_cache = _FMCache(self.storage, _resolve_device(job.device))

    def windows(self) -> list[int]:
        """The job's windows: ``[start, end)``, or every ready input window from ``start`` on."""
        rng = self.job.windows
        if rng.end is not None:
            return list(range(rng.start, rng.end))
        return [w for w in list_ready_windows(self.data) if rng.contains(w)]

    def run(self) -> list[dict[str, Any]]:
        """Augment every window of the job; returns the progress records (also printed)."""
        records = []
        try:
            windows = self.windows()
            self.check_input(windows)
            for window in windows:
                records.append(self.augment(window))
        finally:
            with contextlib.suppress(StorageError):
                release_lease(self.storage, "fm", self.job.fm.namespace, self.job.fm.name, self.holder)
        return records

    def check_input(self, windows: list[int]) -> None:
        """Fail when the job's input windows hold no row at all and no earlier output window had
        one (an empty or mis-pointed dataset), instead of committing empty augmented windows."""
        job = self.job
        todo = [
            w
            for w in windows
            if not is_committed(self.storage, layout.das_window(job.namespace, job.name, w))
        ]
        ready = set(list_ready_windows(self.data))
        if not todo or any(window_info(self.data, w).rows for w in todo if w in ready):
            return
        parent = layout.das_output(job.namespace, job.name)
        for name in list_committed(self.storage, parent):
            with contextlib.suppress(StorageError, ValueError, TypeError):
                if int(read_manifest(self.storage, f"{parent}/{name}").get("rows", 0)) > 0:
                    return
        raise DASError(
            f"no rows in windows [{todo[0]}, {todo[-1] + 1}) of {self.data.uri()}: every input window of "
            "the job is empty; check the dataset (its import or generator), or start spec.windows at the "
            "first window with data"
        )

    def _emit(self, record: dict[str, Any]) -> dict[str, Any]:
        self.out.write(json.dumps(record, sort_keys=True) + "\n")
        self.out.flush()
        return record

    def _lease_fm(self, window: int) -> FMChoice:
        """Choose the FM for ``window`` and lease it; re-choose if retention removed it meanwhile."""
        fm = self.job.fm
        for _ in range(3):
            choice = choose_fm(self.storage, fm.namespace, fm.name, window, self.job.max_staleness)
            acquire_lease(
                self.storage, "fm", fm.namespace, fm.name, self.holder, [choice.version], self.lease_ttl_s
            )
            if is_committed(self.storage, choice.prefix):
                return choice
        raise DASError(f"FM checkpoint {choice.uri} keeps disappearing (retention racing the DAS?)")

    def augment(self, window: int) -> dict[str, Any]:
        """Augment one window (or skip it when already committed); returns its progress record."""
        job = self.job
        prefix = layout.das_window(job.namespace, job.name, window)
        base = {"event": "das-window", "das": f"{job.namespace}/{job.name}", "window": window}
        if is_committed(self.storage, prefix):
            manifest = DASWindowManifest.model_validate(read_manifest(self.storage, prefix))
            return self._emit(
                {**base, "status": "skipped", "rows": manifest.rows, "fm_version": manifest.fm_version}
            )
        start = time.perf_counter()
        choice = self._lease_fm(window)
        module, fm_schema, _ = self.fm_cache.get(choice)
        check_schema_compat(fm_schema, job.dataset.feature_schema, choice.uri, job.dataset.uri)
        with tempfile.TemporaryDirectory(prefix="exfm-das-") as tmp:
            parts, rows, stats, columns, infer_s = self._write_parts(
                window, choice, module, fm_schema, Path(tmp)
            )
            from exfm_trainer.data.batches import check_bad_fraction

            check_bad_fraction(stats, job.max_bad_row_fraction, window, DAS_BAD_ROW_FIELD)
            manifest = DASWindowManifest(
                window=window,
                input_uri=self.data.uri(layout.window_dir(window)),
                fm_namespace=job.fm.namespace,
                fm_name=job.fm.name,
                fm_version=choice.version,
                fm_uri=choice.uri,
                fm_last_window=choice.last_window,
                staleness=choice.staleness,
                rows=rows,
                skipped_rows=stats.rows_skipped,
                columns=columns,
            )
            meta = {
                **layout.manifest_metadata(manifest),
                "fm_windows": list(choice.windows),
                "skipped_by_reason": {k: v for k, v in stats.skipped_by_reason.items() if v},
                "bad_row_policy": BAD_ROW_POLICY,
                "schema": job.dataset.feature_schema.model_dump(mode="json"),
                "schema_fingerprint": job.dataset.feature_schema.fingerprint(),
                "job": {"namespace": job.namespace, "name": job.name},
            }
            commit_artifact(self.storage, prefix, parts, meta)
        seconds = time.perf_counter() - start
        return self._emit(
            {
                **base,
                "status": "done",
                "rows": rows,
                "skipped_rows": stats.rows_skipped,
                "fm_version": choice.version,
                "fm_last_window": choice.last_window,
                "staleness": choice.staleness,
                "seconds": round(seconds, 3),
                "rows_per_s": round(rows / seconds, 1) if seconds > 0 else None,
                "inference_s": round(infer_s, 3),
                "uri": self.storage.uri(prefix),
            }
        )

    def _write_parts(
        self, window: int, choice: FMChoice, module: Callable[[Any], Any], fm_schema: FeatureSchema, tmp: Path
    ) -> tuple[dict[str, Path], int, Any, list[str], float]:
        from exfm_trainer.data.batches import RowStats, to_batch

        stats = RowStats()
        stats.add_upstream(window_summary(self.data, window))  # rows the importer dropped (bad_dense)
        window_uri = self.data.uri(layout.window_dir(window))
        parts: dict[str, Path] = {}
        writer: pq.ParquetWriter | None = None
        out_schema: pa.Schema | None = None
        file_rows = rows = 0
        infer_s = 0.0
        version_value = pa.scalar(choice.version, pa.string())

        def open_part() -> pq.ParquetWriter:
            path = tmp / f"part-{len(parts):05d}.parquet"
            parts[path.name] = path
            assert out_schema is not None
            return pq.ParquetWriter(path, out_schema, compression="snappy")

        # Read and write in large chunks (few Parquet row groups, little per-batch overhead) and run
        # the FM on `batch_size` rows at a time.
        bs = self.job.batch_size
        for rb in iter_record_batches(self.data, window, None, max(bs, READ_CHUNK_ROWS)):
            table = pa.Table.from_batches([rb])
            if out_schema is None:
                _check_columns(table.schema, fm_schema, window_uri, choice.uri)
            stats.rows_read += table.num_rows
            good, idx = _good_rows(table, fm_schema, stats, window)
            logits = np.zeros(table.num_rows, dtype=np.float32)
            valid = np.zeros(table.num_rows, dtype=bool)
            t0 = time.perf_counter()
            for start in range(0, good.num_rows, bs):
                batch = to_batch(good.slice(start, bs), fm_schema, False, window)
                logits[idx[start : start + bs]] = module(batch).detach().float().cpu().numpy()
            infer_s += time.perf_counter() - t0
            valid[idx] = True
            table = table.append_column(
                pa.field(FM_LOGIT_COLUMN, pa.float32()), pa.array(logits, mask=~valid, type=pa.float32())
            )
            table = table.append_column(
                pa.field(FM_VERSION_COLUMN, pa.string()), pa.repeat(version_value, table.num_rows)
            )
            table = table.append_column(
                pa.field(FM_WINDOW_COLUMN, pa.int64()),
                pa.array(np.full(table.num_rows, choice.last_window, dtype=np.int64)),
            )
            if out_schema is None:
                out_schema = table.schema
            offset = 0
            while offset < table.num_rows:
                if writer is None:
                    writer, file_rows = open_part(), 0
                take = min(self.rows_per_file - file_rows, table.num_rows - offset)
                writer.write_table(table.slice(offset, take))
                offset, file_rows, rows = offset + take, file_rows + take, rows + take
                if file_rows >= self.rows_per_file:
                    writer.close()
                    writer = None
        if writer is not None:
            writer.close()
        if out_schema is None:  # an empty window: keep its columns in one empty part
            out_schema = self._empty_schema(window)
            _check_columns(out_schema, fm_schema, window_uri, choice.uri)
            for name, typ in ((FM_LOGIT_COLUMN, pa.float32()), (FM_VERSION_COLUMN, pa.string())):
                out_schema = out_schema.append(pa.field(name, typ))
            out_schema = out_schema.append(pa.field(FM_WINDOW_COLUMN, pa.int64()))
            writer = open_part()
            writer.write_table(out_schema.empty_table())
            writer.close()
        stats.rows_used = stats.rows_read - stats.rows_skipped
        return parts, rows, stats, list(out_schema.names), infer_s

    def _empty_schema(self, window: int) -> pa.Schema:
        keys = window_parts(self.data, window)
        if not keys:
            raise DataError(
                f"window {window} at {self.data.uri(layout.window_dir(window))} has no Parquet parts"
            )
        with self.data.open_read(keys[0]) as fh:
            return pq.read_schema(fh)


def run_das(job: DASJob, out: TextIO | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Run a DAS job; returns one progress record per window (also printed as JSON lines)."""
    return DASRunner(job, out, **kwargs).run()


def main(argv: list[str] | None = None) -> int:
    """``python -m exfm_trainer.das --config job.json``; exit code 0 on success, 1 on a clear error."""
    parser = argparse.ArgumentParser(
        prog="exfm_trainer das", description="Run a DAS (data augmentation) job."
    )
    parser.add_argument("--config", required=True, help="DAS job config (JSON, job: das)")
    args = parser.parse_args(argv)
    try:
        job = load_job(args.config)
        if not isinstance(job, DASJob):
            raise JobConfigError(f"{args.config} is a {job.job!r} job, not a 'das' job")
        run_das(job)
    except JobConfigError as err:
        return report_error("InvalidConfig", f"exfm das: {err}", 1)
    except DataError as err:
        return report_error("BadInputData", f"exfm das: bad input data: {err}", 1)
    except DASError as err:
        return report_error("AugmentationFailed", f"exfm das: {err}", 1)
    except StorageError as err:
        return report_error("StorageError", f"exfm das: {err}", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
