"""Windowed Parquet datasets: ``<root>/window=NNNNN/part-NNNNN.parquet`` plus a ready marker.

A window is *ready* when it carries ``_SUCCESS`` (written last by :func:`write_window`) or the
commit protocol's ``_COMMITTED`` marker (DAS outputs). Both are the window's manifest: rows and
``files`` (size + sha256 of each part), checked while reading — a damaged part is a DataError
naming the file, never silently trained on. Readers never look at a window without a
marker. Every access goes through :class:`~exfm_trainer.storage.Storage`, so the same code reads
local paths and ``s3://`` URIs; on S3 one part file at a time is downloaded to a temp file.
No torch import here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from exfm_trainer.layout import DATA_SUCCESS, parse_window_dir, window_dir
from exfm_trainer.storage import Storage, open_storage
from exfm_trainer.storage.commit import COMMITTED, MANIFEST

DEFAULT_ROWS_PER_FILE = 250_000
DATASET_INFO = "dataset.json"
ROW_GROUP_ROWS = 65_536  # bounds reader memory and the granularity of rank splits
READY_MARKERS = (DATA_SUCCESS, COMMITTED)


class DataError(ValueError):
    """Input data is unusable; the message names the window/file/column and the fix."""


def as_storage(uri_or_storage: str | os.PathLike[str] | Storage) -> Storage:
    """A Storage for a URI/path, or the storage itself."""
    if isinstance(uri_or_storage, Storage):
        return uri_or_storage
    return open_storage(uri_or_storage)


def is_window_ready(storage: Storage, window: int) -> bool:
    """True when ``window`` carries ``_SUCCESS`` or ``_COMMITTED``."""
    return any(storage.exists(f"{window_dir(window)}/{m}") for m in READY_MARKERS)


def list_ready_windows(uri: str | os.PathLike[str] | Storage) -> list[int]:
    """Indices of the ready windows under ``uri``, ascending (half-written ones are invisible)."""
    storage = as_storage(uri)
    windows = []
    for name in storage.list_dirs(""):
        idx = parse_window_dir(name)
        if idx is not None and is_window_ready(storage, idx):
            windows.append(idx)
    return sorted(windows)


def window_parts(storage: Storage, window: int) -> list[str]:
    """Keys of a ready window's Parquet parts (sorted); raises DataError when it is not ready."""
    wdir = window_dir(window)
    if not is_window_ready(storage, window):
        raise DataError(
            f"window {window} at {storage.uri(wdir)} is not ready (no {DATA_SUCCESS} or {COMMITTED} "
            "marker): it is missing or still being written; wait for it or pick a ready window "
            "(list_ready_windows)"
        )
    keys = storage.list(wdir + "/")
    return [k for k in keys if k.endswith(".parquet") and not k.rsplit("/", 1)[-1].startswith(("_", "."))]


def window_summary(storage: Storage, window: int) -> dict:
    """The ready window's summary: ``_SUCCESS`` (import/synthetic windows) or ``MANIFEST.json`` (DAS
    outputs); ``{}`` when it holds none (an older writer) or is unreadable."""
    wdir = window_dir(window)
    for marker in (DATA_SUCCESS, MANIFEST):
        key = f"{wdir}/{marker}"
        if storage.exists(key):
            with contextlib.suppress(ValueError, TypeError, FileNotFoundError):
                data = json.loads(storage.get_bytes(key) or b"{}")
                if isinstance(data, dict):
                    return data
    return {}


def file_digest(path: str | os.PathLike[str]) -> tuple[str, int]:
    """Hex sha256 and size of a local file, streamed in 8 MiB chunks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(8 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def verify_part(path: Path, expected: dict | None, uri: str) -> None:
    """Raise DataError when a part's size or sha256 differs from its window manifest's entry."""
    if not expected or "sha256" not in expected:
        return  # written before checksums were recorded
    sha, size = file_digest(path)
    if sha != expected["sha256"] or ("size" in expected and size != int(expected["size"])):
        raise DataError(
            f"{uri} does not match the checksum recorded when its window was written ({size} bytes, "
            f"sha256 {sha[:12]}…; recorded {expected.get('size')} bytes, sha256 "
            f"{str(expected['sha256'])[:12]}…): the file is damaged; rewrite the window (re-run the "
            "import/DAS for it). Nothing was trained on it."
        )


@contextlib.contextmanager
def _local_file(storage: Storage, key: str) -> Iterator[Path]:
    """The part as a local file: the file itself on local storage, a temp download elsewhere."""
    local_path = getattr(storage, "local_path", None)
    if callable(local_path):
        yield Path(local_path(key))
    else:
        with storage.local_copy(key) as path:
            yield path


def _open_parquet(path: Path, uri: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(
            f"{uri} is not a readable Parquet file ({err}); the window is corrupt: rewrite it "
            "(re-run the import/DAS for this window). Nothing was trained on it."
        ) from None


def _check_columns(pf: pq.ParquetFile, columns: Sequence[str] | None, uri: str) -> None:
    if columns is None:
        return
    have = set(pf.schema_arrow.names)
    missing = [c for c in columns if c not in have]
    if missing:
        raise DataError(
            f"column(s) {missing} named in the feature schema are missing from {uri} "
            f"(file has {sorted(have)}): fix the dataset schema or rewrite the window with these columns"
        )


@dataclass
class PartInfo:
    key: str
    rows: int


@dataclass
class WindowInfo:
    """Parts of a ready window and their row counts (from ``_SUCCESS`` or Parquet footers)."""

    window: int
    parts: list[PartInfo] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.parts)


def window_info(uri: str | os.PathLike[str] | Storage, window: int) -> WindowInfo:
    """Row counts per part; uses the ``_SUCCESS`` summary when present, else the Parquet footers."""
    storage = as_storage(uri)
    keys = window_parts(storage, window)
    counts: dict[str, int] = {}
    success = f"{window_dir(window)}/{DATA_SUCCESS}"
    if storage.exists(success):
        with contextlib.suppress(ValueError, TypeError):
            summary = json.loads(storage.get_bytes(success) or b"{}")
            counts = {f"{window_dir(window)}/{k}": int(v) for k, v in summary.get("parts", {}).items()}
    parts = []
    for key in keys:
        if key not in counts:
            with _local_file(storage, key) as path:
                counts[key] = _open_parquet(path, storage.uri(key)).metadata.num_rows
        parts.append(PartInfo(key, counts[key]))
    return WindowInfo(window, parts)


def _iter_part(
    storage: Storage,
    key: str,
    columns: Sequence[str] | None,
    batch_size: int,
    row_range: tuple[int, int] | None,
    expected: dict | None = None,
) -> Iterator[pa.RecordBatch]:
    """Batches of one part, optionally only rows ``[lo, hi)`` of it (row groups outside skipped).

    ``expected`` (``{"size", "sha256"}`` from the window's manifest) is checked before any row is read."""
    uri = storage.uri(key)
    with _local_file(storage, key) as path:
        verify_part(path, expected, uri)
        pf = _open_parquet(path, uri)
        _check_columns(pf, columns, uri)
        groups = list(range(pf.metadata.num_row_groups))
        skip = 0
        lo, hi = row_range if row_range is not None else (0, pf.metadata.num_rows)
        if row_range is not None:
            chosen, start = [], 0
            for g in groups:
                n = pf.metadata.row_group(g).num_rows
                if start + n > lo and start < hi:
                    if not chosen:
                        skip = lo - start
                    chosen.append(g)
                start += n
            groups = chosen
        if not groups:
            return
        remaining = hi - lo
        try:
            for batch in pf.iter_batches(batch_size=batch_size, row_groups=groups, columns=columns):
                if skip:
                    cut = min(skip, batch.num_rows)
                    batch, skip = batch.slice(cut), skip - cut
                if batch.num_rows > remaining:
                    batch = batch.slice(0, remaining)
                if batch.num_rows:
                    remaining -= batch.num_rows
                    yield batch
                if remaining <= 0:
                    return
        except (pa.ArrowException, OSError) as err:
            raise DataError(
                f"{uri} could not be read ({err}); the window is corrupt: rewrite it "
                "(re-run the import/DAS for this window). The job fails rather than train on it."
            ) from None


def rank_row_range(total_rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous rows ``[lo, hi)`` of a window for ``rank``: shares differ by at most one row."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return total_rows * rank // world_size, total_rows * (rank + 1) // world_size


def iter_record_batches(
    uri: str | os.PathLike[str] | Storage,
    window: int,
    columns: Sequence[str] | None = None,
    batch_size: int = 65_536,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[pa.RecordBatch]:
    """Stream a ready window as RecordBatches of at most ``batch_size`` rows, in bounded memory.

    Parts are read one at a time (``ParquetFile.iter_batches``). With ``world_size > 1`` only
    this rank's contiguous share of the window's rows is read (see :func:`rank_row_range`).
    Raises DataError for a window that is not ready, a missing column or an unreadable file.
    """
    storage = as_storage(uri)
    cols = list(columns) if columns is not None else None
    files = window_summary(storage, window).get("files") or {}
    prefix = window_dir(window) + "/"

    def expected(key: str) -> dict | None:
        entry = files.get(key.removeprefix(prefix)) if isinstance(files, dict) else None
        return entry if isinstance(entry, dict) else None

    if world_size == 1:
        for key in window_parts(storage, window):
            yield from _iter_part(storage, key, cols, batch_size, None, expected(key))
        return
    info = window_info(storage, window)
    lo, hi = rank_row_range(info.rows, rank, world_size)
    start = 0
    for part in info.parts:
        end = start + part.rows
        if end > lo and start < hi:
            span = (max(lo, start) - start, min(hi, end) - start)
            yield from _iter_part(storage, part.key, cols, batch_size, span, expected(part.key))
        start = end


class WindowWriter:
    """Writes one window: part files of ``rows_per_file`` rows, then ``_SUCCESS`` on :meth:`close`.

    Leftovers of an earlier unfinished write are removed first. A finished window (with a ready
    marker) is only replaced when ``overwrite`` is true. On error nothing becomes visible.
    """

    def __init__(
        self,
        uri_or_storage: str | os.PathLike[str] | Storage,
        window: int,
        rows_per_file: int = DEFAULT_ROWS_PER_FILE,
        overwrite: bool = False,
    ) -> None:
        if rows_per_file < 1:
            raise ValueError(f"rows_per_file must be >= 1, got {rows_per_file}")
        self.storage = as_storage(uri_or_storage)
        self.window = window
        self.rows_per_file = rows_per_file
        self.prefix = window_dir(window)
        if is_window_ready(self.storage, window) and not overwrite:
            raise DataError(
                f"window {window} at {self.storage.uri(self.prefix)} already exists; windows are "
                "immutable: write to a new dataset root or pass overwrite=True"
            )
        for marker in READY_MARKERS:  # the marker goes first, so readers stop seeing the old window
            self.storage.delete(f"{self.prefix}/{marker}")
        self.storage.delete_prefix(self.prefix + "/")
        self._tmp = tempfile.TemporaryDirectory(prefix="exfm-window-")
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._path: Path | None = None
        self._file_rows = 0
        self.parts: dict[str, int] = {}
        self.files: dict[str, dict[str, int | str]] = {}
        self.extra: dict = {}  # more summary fields (e.g. the importer's skipped rows)
        self.closed = False

    def write(self, data: pa.RecordBatch | pa.Table) -> None:
        """Append rows (same schema as the first write)."""
        table = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
        if self._schema is None:
            self._schema = table.schema
        elif not table.schema.equals(self._schema, check_metadata=False):
            raise DataError(
                f"window {self.window}: rows with schema {table.schema} differ from the first rows' "
                f"schema {self._schema}; every part of a window must have the same columns and types"
            )
        offset = 0
        while offset < table.num_rows:
            if self._writer is None:
                self._open_part()
            take = min(self.rows_per_file - self._file_rows, table.num_rows - offset)
            assert self._writer is not None
            self._writer.write_table(table.slice(offset, take), row_group_size=ROW_GROUP_ROWS)
            self._file_rows += take
            offset += take
            if self._file_rows >= self.rows_per_file:
                self._flush_part()

    def _open_part(self) -> None:
        name = f"part-{len(self.parts):05d}.parquet"
        self._path = Path(self._tmp.name) / name
        assert self._schema is not None
        self._writer = pq.ParquetWriter(self._path, self._schema, compression="zstd")
        self._file_rows = 0

    def _flush_part(self) -> None:
        assert self._writer is not None and self._path is not None
        self._writer.close()
        sha, size = file_digest(self._path)
        self.storage.put_file(f"{self.prefix}/{self._path.name}", self._path)
        self.parts[self._path.name] = self._file_rows
        self.files[self._path.name] = {"size": size, "sha256": sha}
        self._path.unlink()
        self._writer, self._path = None, None

    def close(self) -> int:
        """Flush the last part and write ``_SUCCESS``; returns the window's row count."""
        if self.closed:
            return sum(self.parts.values())
        if self._writer is not None:
            self._flush_part()
        if not self.parts and self._schema is not None:  # 0 rows: keep the columns in one empty part
            self._open_part()
            assert self._writer is not None
            self._writer.write_table(self._schema.empty_table())
            self._flush_part()
        rows = sum(self.parts.values())
        summary = {
            **self.extra,
            "rows": rows,
            "parts": self.parts,
            "files": self.files,
            "columns": self._schema.names if self._schema else [],
        }
        self.storage.put_bytes(f"{self.prefix}/{DATA_SUCCESS}", json.dumps(summary, indent=1).encode())
        self.closed = True
        self._tmp.cleanup()
        return rows

    def abort(self) -> None:
        """Drop everything written so far (nothing becomes visible)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        self._writer = None
        self.storage.delete_prefix(self.prefix + "/")
        self._tmp.cleanup()
        self.closed = True

    def __enter__(self) -> WindowWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_window(
    uri_or_storage: str | os.PathLike[str] | Storage,
    window: int,
    table_or_batches: pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch],
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    overwrite: bool = False,
) -> int:
    """Write one window (parts, then ``_SUCCESS``) and return its row count.

    Half-written leftovers at the window are removed first; a ready window raises DataError
    unless ``overwrite``.
    """
    with WindowWriter(uri_or_storage, window, rows_per_file, overwrite) as writer:
        if isinstance(table_or_batches, (pa.Table, pa.RecordBatch)):
            writer.write(table_or_batches)
        else:
            for batch in table_or_batches:
                writer.write(batch)
    return sum(writer.parts.values())


def write_dataset_info(uri_or_storage: str | os.PathLike[str] | Storage, info: dict) -> None:
    """Write ``dataset.json`` (feature schema and provenance) at the dataset root."""
    as_storage(uri_or_storage).put_bytes(DATASET_INFO, json.dumps(info, indent=2, sort_keys=True).encode())


def read_dataset_info(uri_or_storage: str | os.PathLike[str] | Storage) -> dict | None:
    """The dataset root's ``dataset.json``, or None when there is none."""
    storage = as_storage(uri_or_storage)
    if not storage.exists(DATASET_INFO):
        return None
    return json.loads(storage.get_bytes(DATASET_INFO))
