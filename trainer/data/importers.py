"""Importers: raw files -> windowed Parquet datasets, streamed in blocks (never whole-file pandas).

* :func:`import_criteo`: Criteo TSV (``label, I1..I13, C1..C26``; empty fields are missing),
  cut into windows of ``rows_per_window`` rows in file order (file order = time order).
* :func:`import_table`: CSV or Parquet with a declared :class:`FeatureSchema` and a timestamp
  column, cut into windows of ``window_seconds`` by event time.

Both infer vocabularies (:mod:`exfm_trainer.data.vocab`): a hashed categorical column with at most
``vocabulary_threshold`` distinct values over the imported data gets a declared vocabulary (no id
collisions); the resulting schema and its fingerprint are stored in ``dataset.json`` and returned
in the :class:`DatasetRef`, so training, the DAS and serving map ids identically.

Each window becomes visible (``_SUCCESS``) only when it is complete. No torch import here.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from exfm_trainer.data.vocab import DEFAULT_VOCABULARY_THRESHOLD, VocabularyCounter, adopt_vocabularies
from exfm_trainer.data.windows import (
    DEFAULT_ROWS_PER_FILE,
    DataError,
    WindowWriter,
    as_storage,
    is_window_ready,
    read_dataset_info,
    write_dataset_info,
)
from exfm_trainer.jobs import DatasetRef
from exfm_trainer.schema import FeatureSchema, SparseFeature
from exfm_trainer.storage import Storage, open_storage

CRITEO_DENSE = [f"I{i}" for i in range(1, 14)]
CRITEO_SPARSE = [f"C{i}" for i in range(1, 27)]
CRITEO_COLUMNS = ["label", *CRITEO_DENSE, *CRITEO_SPARSE]
BLOCK_BYTES = 16 << 20
NAN_SPELLINGS = ("nan", "-nan", "+nan", "n/a", "na", "#n/a", "null", "none", "nil", "-")
"""Dense text values (case-insensitive) that mean "not a number": kept as NaN, counted ``nan_dense``."""
_NUMBER = r"^[+-]?(([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][+-]?[0-9]+)?|inf|infinity)$"


class DenseParse:
    """Dense text columns of one block parsed to float64, with the rows that are not numbers.

    Empty text is a missing value (null, imputed as 0 by the trainer). A NaN spelling
    (:data:`NAN_SPELLINGS`) becomes NaN: the row is kept and the trainer/DAS count it as
    ``nan_dense``. Anything else unparsable (``'unknown'``) marks the row ``bad_dense``: the
    importer drops it and records the count in the window's ``_SUCCESS``. ``examples`` holds the
    first offending ``line N, column 'c': 'value'`` per reason.
    """

    def __init__(self, table: pa.Table, columns: list[str], first_line: int) -> None:
        n = table.num_rows
        self.nan = np.zeros(n, dtype=bool)
        self.bad = np.zeros(n, dtype=bool)
        self.examples: dict[str, tuple[int, str]] = {}
        self.columns: dict[str, pa.Array] = {}
        for name in columns:
            col = table[name].combine_chunks() if isinstance(table[name], pa.ChunkedArray) else table[name]
            if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
                self.columns[name] = pc.cast(col, pa.float64())  # Parquet: already numeric
                continue
            text = pc.utf8_trim_whitespace(col)
            empty = pc.fill_null(pc.equal(text, ""), True)
            nan = pc.and_(pc.invert(empty), pc.is_in(pc.utf8_lower(text), pa.array(NAN_SPELLINGS)))
            number = pc.fill_null(pc.match_substring_regex(text, _NUMBER, ignore_case=True), False)
            bad = pc.and_(pc.and_(pc.invert(empty), pc.invert(nan)), pc.invert(number))
            values = pc.cast(pc.if_else(number, text, pa.scalar(None, pa.string())), pa.float64())
            nan_np = pc.fill_null(nan, False).to_numpy(zero_copy_only=False)
            bad_np = bad.to_numpy(zero_copy_only=False)
            values = pc.if_else(pa.array(nan_np), pa.scalar(float("nan")), values)
            self.columns[name] = values
            for reason, mask in (("nan_dense", nan_np), ("bad_dense", bad_np)):
                hits = np.flatnonzero(mask)
                if hits.size:
                    line = first_line + int(hits[0])
                    if reason not in self.examples or line < self.examples[reason][0]:
                        value = text[int(hits[0])].as_py()
                        self.examples[reason] = (line, f"line {line}, column {name!r}: {value!r}")
            self.nan |= nan_np
            self.bad |= bad_np

    def apply(self, table: pa.Table) -> pa.Table:
        """``table`` with the parsed dense columns."""
        for name, values in self.columns.items():
            table = table.set_column(table.schema.get_field_index(name), name, values)
        return table


class ImportStats:
    """Rows the importer dropped or flagged, per window, with the first example of each reason."""

    def __init__(self) -> None:
        self.skipped: dict[int, dict[str, int]] = {}
        self.examples: dict[int, dict[str, tuple[int, str]]] = {}

    def add(self, window: int, reason: str, count: int, example: tuple[int, str] | None) -> None:
        if count:
            per = self.skipped.setdefault(window, {})
            per[reason] = per.get(reason, 0) + count
        if example is not None:
            ex = self.examples.setdefault(window, {})
            if reason not in ex or example[0] < ex[reason][0]:
                ex[reason] = example

    def summary(self, window: int) -> dict:
        """Extra ``_SUCCESS`` fields of ``window``."""
        out: dict = {}
        if self.skipped.get(window):
            out["import_skipped"] = dict(self.skipped[window])
        if self.examples.get(window):
            out["import_examples"] = {k: v[1] for k, v in self.examples[window].items()}
        return out

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for per in self.skipped.values():
            for k, v in per.items():
                out[k] = out.get(k, 0) + v
        return out


def _split_rows(
    table: pa.Table, wins: np.ndarray, dense: DenseParse, stats: ImportStats, first_line: int
) -> Iterator[tuple[int, pa.Table]]:
    """``(window, rows)`` of a parsed block: ``bad_dense`` rows dropped and counted per window, NaN
    rows kept and their first line recorded."""
    for reason, mask in (("bad_dense", dense.bad), ("nan_dense", dense.nan)):
        if not mask.any():
            continue
        for w in np.unique(wins[mask]):
            in_w = mask & (wins == w)
            first = int(np.flatnonzero(in_w)[0])
            example = dense.examples.get(reason)
            text = example[1] if example is not None and example[0] == first_line + first else None
            if text is None:  # the first hit in this window is in another column: name the line
                text = f"line {first_line + first}"
            stats.add(int(w), reason, int(in_w.sum()) if reason == "bad_dense" else 0,
                      (first_line + first, text))  # fmt: skip
    keep = ~dense.bad
    table = dense.apply(table)
    if not keep.all():
        table, wins = table.filter(pa.array(keep)), wins[keep]
    order = np.argsort(wins, kind="stable")
    cuts = np.flatnonzero(np.diff(wins[order])) + 1
    for idx in np.split(order, cuts):
        if idx.size:
            yield int(wins[idx[0]]), table.take(pa.array(idx))


def criteo_schema(hash_buckets: int = 100_000, embedding_dim: int = 16) -> FeatureSchema:
    """Schema of an imported Criteo dataset: 13 dense, 26 hashed categorical features."""
    sparse = [
        SparseFeature(name=c, hash_buckets=hash_buckets, embedding_dim=embedding_dim) for c in CRITEO_SPARSE
    ]
    return FeatureSchema(label="label", dense=CRITEO_DENSE, sparse=sparse)


@contextlib.contextmanager
def local_input(src: str | os.PathLike[str]) -> Iterator[Path]:
    """A local path for an input file given as a path or a storage URI (downloaded if remote)."""
    text = os.fspath(src)
    if text.startswith("s3://"):
        parent, _, name = text.rpartition("/")
        with open_storage(parent).local_copy(name) as path:
            yield path
        return
    path = Path(text.removeprefix("file://"))
    if not path.is_file():
        raise DataError(f"input file {text} does not exist")
    yield path


def _ref(out: str | os.PathLike[str] | Storage, schema: FeatureSchema) -> DatasetRef:
    return DatasetRef(uri=out.root_uri if isinstance(out, Storage) else os.fspath(out), schema=schema)


def _schema_info(declared: FeatureSchema, counter: VocabularyCounter) -> tuple[FeatureSchema, dict]:
    """The imported dataset's schema (declared + inferred vocabularies) and its ``dataset.json`` keys."""
    schema = counter.apply(declared)
    info = {
        "schema": schema.model_dump(mode="json"),
        "schema_fingerprint": schema.fingerprint(),
        "vocabulary_threshold": counter.threshold,
        "inferred_vocabularies": sorted(counter.vocabularies()),
    }
    return schema, info


def _csv_error(err: Exception, path: Path) -> DataError:
    return DataError(f"{path} could not be parsed as CSV/TSV ({err}): fix or drop the offending rows")


class _Windower:
    """Keeps one WindowWriter per window and closes them in window order."""

    def __init__(self, storage: Storage, rows_per_file: int, overwrite: bool) -> None:
        self.storage, self.rows_per_file, self.overwrite = storage, rows_per_file, overwrite
        self.writers: dict[int, WindowWriter] = {}
        self.stats = ImportStats()

    def write(self, window: int, table: pa.Table) -> None:
        if window not in self.writers:
            self.writers[window] = WindowWriter(self.storage, window, self.rows_per_file, self.overwrite)
        self.writers[window].write(table)

    def close(self, fill_gaps: bool = True) -> dict[int, int]:
        """Finish every window (empty ones for gaps when ``fill_gaps``); returns rows per window.

        A gap already holding a ready window (an earlier import into the same root) is left alone.
        """
        for w in set(self.stats.skipped) | set(self.stats.examples):
            if w not in self.writers:  # every row of the window was dropped: keep its count
                self.writers[w] = WindowWriter(self.storage, w, self.rows_per_file, self.overwrite)
        last = max(self.writers, default=-1)
        if fill_gaps:
            for w in range(last + 1):
                if w not in self.writers and not is_window_ready(self.storage, w):
                    self.writers[w] = WindowWriter(self.storage, w, self.rows_per_file, self.overwrite)
        for w, writer in self.writers.items():
            writer.extra = self.stats.summary(w)
        return {w: self.writers[w].close() for w in sorted(self.writers)}

    def abort(self) -> None:
        for writer in self.writers.values():
            if not writer.closed:
                writer.abort()


def import_criteo(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str] | Storage,
    rows_per_window: int,
    *,
    max_rows: int | None = None,
    hash_buckets: int = 100_000,
    embedding_dim: int = 16,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    overwrite: bool = False,
    block_bytes: int = BLOCK_BYTES,
    vocabulary_threshold: int = DEFAULT_VOCABULARY_THRESHOLD,
) -> tuple[DatasetRef, dict[int, int]]:
    """Import a Criteo TSV (optionally .gz/.bz2) into windows of ``rows_per_window`` rows.

    Columns ``C1..C26`` with at most ``vocabulary_threshold`` distinct values get a vocabulary; the
    others hash into ``hash_buckets``. Returns the dataset ref and the rows of each window (the
    last window may be shorter).
    """
    if rows_per_window < 1:
        raise DataError(f"rows_per_window must be >= 1, got {rows_per_window}")
    storage = as_storage(out)
    declared = criteo_schema(hash_buckets, embedding_dim)
    counter = VocabularyCounter(declared, vocabulary_threshold)
    types = {
        "label": pa.float64(),
        **dict.fromkeys(CRITEO_DENSE, pa.string()),  # parsed by DenseParse: bad values are counted rows
        **dict.fromkeys(CRITEO_SPARSE, pa.string()),
    }
    windower = _Windower(storage, rows_per_file, overwrite)
    row = 0
    try:
        with local_input(src) as path, pa.input_stream(str(path), compression="detect") as stream:
            try:
                reader = pacsv.open_csv(
                    stream,
                    read_options=pacsv.ReadOptions(column_names=CRITEO_COLUMNS, block_size=block_bytes),
                    parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
                    convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=False),
                )
                for batch in reader:
                    table = pa.Table.from_batches([batch])
                    if max_rows is not None:
                        table = table.slice(0, max(0, max_rows - row))
                    counter.update(table)
                    wins = (row + np.arange(table.num_rows, dtype=np.int64)) // rows_per_window
                    dense = DenseParse(table, CRITEO_DENSE, first_line=row + 1)
                    for w, part in _split_rows(table, wins, dense, windower.stats, row + 1):
                        windower.write(w, part)
                    row += table.num_rows
                    if max_rows is not None and row >= max_rows:
                        break
            except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
                raise _csv_error(err, path) from None
        if row == 0:
            raise DataError(f"{src} holds no rows: nothing to import")
        rows = windower.close()
    except BaseException:
        windower.abort()
        raise
    schema, schema_info = _schema_info(declared, counter)
    write_dataset_info(
        storage,
        {
            "source": os.fspath(src),
            "importer": "criteo",
            "rows_per_window": rows_per_window,
            **schema_info,
            "last_window": max(rows, default=None),
            "complete": True,
            **({"import_skipped": windower.stats.totals()} if windower.stats.totals() else {}),
        },
    )
    return _ref(out, schema), rows


def _detect_format(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    suffixes = [s.lower() for s in path.suffixes]
    if ".parquet" in suffixes or ".pq" in suffixes:
        return "parquet"
    return "tsv" if ".tsv" in suffixes else "csv"


def _csv_header(path: Path, delimiter: str) -> list[str]:
    with pa.input_stream(str(path), compression="detect") as stream:
        first = io.TextIOWrapper(stream, encoding="utf-8").readline()
    return next(csv.reader([first], delimiter=delimiter), [])


def _timestamps(arr: pa.Array | pa.ChunkedArray, column: str, path: Path) -> np.ndarray:
    """Event times as int64 epoch seconds; raises DataError on nulls or unusable types."""
    t = arr.type
    if pa.types.is_timestamp(t):
        arr = pc.cast(pc.cast(arr, pa.timestamp("s", tz=t.tz)), pa.int64())
    elif pa.types.is_date(t):
        arr = pc.cast(pc.cast(arr, pa.timestamp("s")), pa.int64())
    elif pa.types.is_floating(t):
        arr = pc.cast(pc.floor(arr), pa.int64())
    elif not pa.types.is_integer(t):
        raise DataError(
            f"timestamp column {column!r} of {path} has type {t}: use epoch seconds (int) or ISO-8601 "
            "date-times"
        )
    if arr.null_count:
        raise DataError(
            f"timestamp column {column!r} of {path} has {arr.null_count} empty values: every row needs "
            "an event time to be placed in a window; fill or drop those rows"
        )
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.int64)


def _table_batches(
    path: Path, fmt: str, columns: list[str], types: dict[str, pa.DataType], block_bytes: int
) -> Iterator[pa.Table]:
    if fmt == "parquet":
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{path} is not a readable Parquet file ({err})") from None
        for batch in pf.iter_batches(batch_size=65_536, columns=columns):
            yield pa.Table.from_batches([batch])
        return
    delimiter = "\t" if fmt == "tsv" else ","
    with pa.input_stream(str(path), compression="detect") as stream:
        try:
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(block_size=block_bytes),
                parse_options=pacsv.ParseOptions(delimiter=delimiter),
                convert_options=pacsv.ConvertOptions(
                    include_columns=columns,
                    column_types={c: t for c, t in types.items() if c in columns},
                    strings_can_be_null=False,
                ),
            )
            for batch in reader:
                yield pa.Table.from_batches([batch])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise _csv_error(err, path) from None


def import_table(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str] | Storage,
    schema: FeatureSchema,
    *,
    window_seconds: int = 86_400,
    origin: int | None = None,
    fmt: str | None = None,
    multi_value_sep: str = "|",
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    overwrite: bool = False,
    block_bytes: int = BLOCK_BYTES,
    vocabulary_threshold: int = DEFAULT_VOCABULARY_THRESHOLD,
) -> tuple[DatasetRef, dict[int, int]]:
    """Import a CSV/TSV/Parquet file into windows of ``window_seconds`` by its timestamp column.

    Hashed sparse columns with at most ``vocabulary_threshold`` distinct values get a vocabulary
    (0: none); declared vocabulary/identity encodings are kept. Importing into a root that already
    holds an imported dataset (a later file, or a re-import) keeps the vocabularies stored there,
    so ids map to the same rows for the life of the root (new values land on the OOV row). The
    returned ref's schema is the one stored with the dataset.

    Windows are aligned to multiples of ``window_seconds`` since the epoch (UTC midnight for a
    day); window 0 is the bucket of the earliest timestamp unless ``origin`` (epoch seconds)
    is given. Gaps become empty windows. In CSV, a multi-valued feature is a string of ids
    separated by ``multi_value_sep``. Timestamps are stored as int64 epoch seconds.
    """
    if window_seconds < 1:
        raise DataError(f"window_seconds must be >= 1, got {window_seconds}")
    ts_col = schema.timestamp
    if not ts_col:
        raise DataError(
            "the schema declares no `timestamp` column: set it to cut the file into windows by time"
        )
    columns = list(dict.fromkeys([*schema.feature_columns(), ts_col]))
    types: dict[str, pa.DataType] = {
        schema.label: pa.float64(),
        **dict.fromkeys(schema.dense, pa.string()),  # parsed by DenseParse: bad values are counted rows
        **dict.fromkeys(schema.sparse_names, pa.string()),
    }
    if schema.vertical:
        types[schema.vertical] = pa.string()
    storage = as_storage(out)
    declared, prior = schema, read_dataset_info(storage) or {}
    if prior.get("importer") == "table" and "schema" in prior:  # keep this root's vocabularies
        schema = adopt_vocabularies(schema, FeatureSchema.model_validate(prior["schema"]))
    counter = VocabularyCounter(schema, vocabulary_threshold)
    windower = _Windower(storage, rows_per_file, overwrite)
    verticals: set[str] = set()
    try:
        with local_input(src) as path:
            kind = _detect_format(path, fmt)
            if kind == "parquet":
                try:
                    have = pq.ParquetFile(path).schema_arrow.names
                except (pa.ArrowException, OSError) as err:
                    raise DataError(f"{path} is not a readable Parquet file ({err})") from None
            else:
                have = _csv_header(path, "\t" if kind == "tsv" else ",")
            missing = [c for c in columns if c not in have]
            if missing:
                raise DataError(
                    f"column(s) {missing} declared in the schema are missing from {src} (it has {have}): "
                    "fix the schema or the file"
                )
            if origin is None:
                lo = min(
                    (
                        int(_timestamps(t[ts_col], ts_col, path).min())
                        for t in _table_batches(path, kind, [ts_col], types, block_bytes)
                        if t.num_rows
                    ),
                    default=None,
                )
                if lo is None:
                    raise DataError(f"{src} holds no rows: nothing to import")
                origin = lo // window_seconds * window_seconds
            line = 1 if kind == "parquet" else 2  # CSV: line 1 is the header
            for table in _table_batches(path, kind, columns, types, block_bytes):
                if table.num_rows == 0:
                    continue
                ts = _timestamps(table[ts_col], ts_col, path)
                if ts.min() < origin:
                    raise DataError(
                        f"{src} has rows before the origin {origin} (earliest {int(ts.min())}): "
                        "pass an earlier origin"
                    )
                dense = DenseParse(table, schema.dense, first_line=line)
                table = _normalise(table, schema, ts, multi_value_sep, kind)
                counter.update(table)
                if schema.vertical:
                    verticals.update(
                        str(v) for v in pc.unique(table[schema.vertical]).to_pylist() if v is not None
                    )
                wins = (ts - origin) // window_seconds
                for w, part in _split_rows(table, wins, dense, windower.stats, line):
                    windower.write(w, part)
                line += table.num_rows
        rows = windower.close()
    except BaseException:
        windower.abort()
        raise
    stored, schema_info = _schema_info(schema, counter)
    write_dataset_info(
        storage,
        {
            "source": os.fspath(src),
            "importer": "table",
            "window_seconds": window_seconds,
            "origin": origin,
            "declared_schema": declared.model_dump(mode="json"),
            **schema_info,
            "vocabularies_kept_from": prior.get("schema_fingerprint") if declared != schema else None,
            "last_window": max(rows, default=None),
            "complete": True,
            **({"verticals": sorted(verticals)} if schema.vertical else {}),
            **({"import_skipped": windower.stats.totals()} if windower.stats.totals() else {}),
        },
    )
    return _ref(out, stored), rows


def _normalise(table: pa.Table, schema: FeatureSchema, ts: np.ndarray, sep: str, kind: str) -> pa.Table:
    """Schema column order, int64 timestamps, CSV multi-valued strings split into lists."""
    cols: dict[str, pa.ChunkedArray | pa.Array] = {}
    for name in dict.fromkeys([*schema.feature_columns()]):
        col = table[name]
        feat = next((f for f in schema.sparse if f.name == name), None)
        if feat is not None and feat.multi_valued and kind != "parquet":
            text = pc.cast(col, pa.string())
            split = pc.split_pattern(text, sep)
            lists = pc.if_else(pc.equal(text, ""), pa.scalar([], type=split.type), split)
            col = lists
        cols[name] = col
    assert schema.timestamp is not None
    cols[schema.timestamp] = pa.array(ts, type=pa.int64())
    return pa.table(cols)
