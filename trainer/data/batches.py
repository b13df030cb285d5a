"""Model batches from windowed Parquet: dense tensor, torchrec KeyedJaggedTensor, labels.

Bad-row policy: rows with a null label (``null_label``), a label outside {0, 1} (``bad_label``),
a NaN/inf dense feature (``nan_dense``; the importers turn NaN spellings such as ``nan``, ``n/a``,
``NA``, ``null`` into NaN), or (when the FM logit is requested) a null/NaN/inf ``fm_logit``
(``bad_fm_logit``) are skipped and counted in :class:`RowStats`. Rows the importer could not parse
(``bad_dense``: a dense value that is not a number) were dropped at import; their count, recorded
in the window's ``_SUCCESS``, is added here (without a vertical filter) so the same limit covers
them. The trainer fails a window whose skipped fraction exceeds the job's
``max_bad_row_fraction`` (:func:`check_bad_fraction`). A *null* dense value is a missing
value, not a bad row: it becomes 0 after the transform.

Dense transform: ``x -> sign(x) * log1p(|x|)`` (fixed, no statistics), so heavy-tailed counts
such as Criteo's I1..I13 are on a usable scale.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from exfm_trainer.data.hashing import HashingError, encode_column
from exfm_trainer.data.windows import DataError, as_storage, iter_record_batches, window_summary
from exfm_trainer.jobs import DatasetRef
from exfm_trainer.layout import FM_LOGIT_COLUMN
from exfm_trainer.schema import FeatureSchema

SKIP_REASONS = ("null_label", "bad_label", "nan_dense", "bad_dense", "bad_fm_logit")
UPSTREAM_REASONS = ("bad_dense",)  # counted by the importer (rows dropped there), read from _SUCCESS


@dataclass
class RowStats:
    """Row accounting of one window for one rank.

    ``rows_read``: rows of this rank's share that belong to the requested vertical (all rows
    without a vertical filter); ``rows_used`` = ``rows_read - rows_skipped``. Rows of other
    verticals are counted in ``rows_other_vertical`` and are not "bad".
    """

    rows_read: int = 0
    rows_used: int = 0
    rows_other_vertical: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    examples: dict[str, str] = field(default_factory=dict)  # first offending line per reason (import)

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped_by_reason.values())

    @property
    def skipped_fraction(self) -> float:
        return self.rows_skipped / self.rows_read if self.rows_read else 0.0

    def merge(self, other: RowStats) -> RowStats:
        """Add another rank's/window's counts into this one (returns self)."""
        self.rows_read += other.rows_read
        self.rows_used += other.rows_used
        self.rows_other_vertical += other.rows_other_vertical
        for k, v in other.skipped_by_reason.items():
            self.skipped_by_reason[k] = self.skipped_by_reason.get(k, 0) + v
        for k, v in other.examples.items():
            self.examples.setdefault(k, v)
        return self

    def add_upstream(self, summary: dict) -> None:
        """Add the rows an importer dropped (``import_skipped`` of a window's ``_SUCCESS``) and its
        first offending lines, so the window's bad fraction covers them."""
        skipped = summary.get("import_skipped") or {}
        for reason in UPSTREAM_REASONS:
            n = int(skipped.get(reason, 0) or 0)
            self.rows_read += n
            self.skipped_by_reason[reason] = self.skipped_by_reason.get(reason, 0) + n
        for k, v in (summary.get("import_examples") or {}).items():
            self.examples.setdefault(str(k), str(v))

    def as_dict(self) -> dict[str, int | float | dict[str, int]]:
        return {
            "rows_read": self.rows_read,
            "rows_used": self.rows_used,
            "rows_skipped": self.rows_skipped,
            "rows_other_vertical": self.rows_other_vertical,
            "skipped_by_reason": dict(self.skipped_by_reason),
        }


MAX_BAD_ROW_FIELD = "spec.training.maxBadRowFraction"


def check_bad_fraction(
    stats: RowStats, max_fraction: float, window: int, setting: str = MAX_BAD_ROW_FIELD
) -> None:
    """Raise DataError when more than ``max_fraction`` of the window's rows were skipped as bad.

    ``setting`` names the manifest field that sets the limit (the DAS's is ``spec.maxBadRowFraction``)."""
    if stats.rows_read and stats.skipped_fraction > max_fraction:
        reasons = {k: v for k, v in stats.skipped_by_reason.items() if v}
        examples = [stats.examples[k] for k in reasons if k in stats.examples]
        first = f" (first: {'; '.join(examples)})" if examples else ""
        raise DataError(
            f"window {window}: {stats.rows_skipped} of {stats.rows_read} rows "
            f"({stats.skipped_fraction:.2%}) were skipped as bad {reasons}{first}, more than "
            f"max_bad_row_fraction={max_fraction}: fix those rows in the source data, or raise {setting}"
        )


@dataclass
class Batch:
    """One model batch of ``B`` rows."""

    dense: torch.Tensor  # [B, n_dense] float32, transformed
    sparse: KeyedJaggedTensor  # keys = schema sparse names, ids in [0, num_rows)
    labels: torch.Tensor  # [B] float32 in {0, 1}
    fm_logit: torch.Tensor | None = None  # [B] float32 when requested
    verticals: list[str] | None = None  # per row, when the schema has a vertical column

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        dev = torch.device(device)
        return Batch(
            dense=self.dense.to(dev, non_blocking=non_blocking),
            sparse=self.sparse.to(dev, non_blocking=non_blocking),
            labels=self.labels.to(dev, non_blocking=non_blocking),
            fm_logit=None if self.fm_logit is None else self.fm_logit.to(dev, non_blocking=non_blocking),
            verticals=self.verticals,
        )


def dense_transform(x: np.ndarray) -> np.ndarray:
    """The fixed dense transform ``sign(x) * log1p(|x|)``."""
    return np.sign(x) * np.log1p(np.abs(x))


def _float_col(table: pa.Table, name: str, window: int) -> pa.Array:
    col = table[name]
    try:
        return pc.cast(col, pa.float64()).combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise DataError(
            f"window {window}: column {name!r} has type {col.type}, which is not numeric ({err}): "
            "write it as int/float or move it to the sparse features"
        ) from None


def _not_finite(arr: pa.Array) -> np.ndarray:
    """True where the value is NaN/inf (nulls are False)."""
    return pc.fill_null(pc.invert(pc.is_finite(arr)), False).to_numpy(zero_copy_only=False)


def drop_bad_rows(
    table: pa.Table, schema: FeatureSchema, with_fm_logit: bool, stats: RowStats, window: int
) -> pa.Table:
    """The rows of ``table`` that pass the bad-row policy; the others are counted in ``stats``.

    Public so the DAS applies exactly the policy the trainer applies.
    """
    n = table.num_rows
    label = _float_col(table, schema.label, window)
    null_label = pc.is_null(label).to_numpy(zero_copy_only=False)
    values = label.to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        bad_label = ~null_label & ~((values == 0.0) | (values == 1.0))
    nan_dense = np.zeros(n, dtype=bool)
    for name in schema.dense:
        nan_dense |= _not_finite(_float_col(table, name, window))
    bad_fm = np.zeros(n, dtype=bool)
    if with_fm_logit:
        fm = _float_col(table, FM_LOGIT_COLUMN, window)
        bad_fm = pc.is_null(fm).to_numpy(zero_copy_only=False) | _not_finite(fm)
    bad = np.zeros(n, dtype=bool)
    reasons = ("null_label", "bad_label", "nan_dense", "bad_fm_logit")
    for reason, mask in zip(reasons, (null_label, bad_label, nan_dense, bad_fm), strict=True):
        new = mask & ~bad
        stats.skipped_by_reason[reason] = stats.skipped_by_reason.get(reason, 0) + int(new.sum())
        bad |= mask
    stats.rows_used += int(n - bad.sum())
    return table.filter(pa.array(~bad)) if bad.any() else table


def to_batch(table: pa.Table, schema: FeatureSchema, with_fm_logit: bool = False, window: int = -1) -> Batch:
    """Convert clean rows (see the bad-row policy) to a :class:`Batch`."""
    n = table.num_rows
    if schema.dense:
        cols = [
            pc.fill_null(_float_col(table, name, window), 0.0).to_numpy(zero_copy_only=False)
            for name in schema.dense
        ]
        dense_np = dense_transform(np.stack(cols, axis=1)).astype(np.float32)
    else:
        dense_np = np.zeros((n, 0), dtype=np.float32)
    ids, lengths = [], []
    for feat in schema.sparse:
        try:
            v, ln = encode_column(table[feat.name], feat)
        except HashingError as err:
            raise DataError(f"window {window}: sparse feature {feat.name!r}: {err}") from None
        ids.append(v)
        lengths.append(ln)
    values = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
    lens = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int32)
    sparse = KeyedJaggedTensor(
        keys=schema.sparse_names,
        values=torch.from_numpy(values),
        lengths=torch.from_numpy(lens),
        stride=n,
    )
    labels = _float_col(table, schema.label, window).to_numpy(zero_copy_only=False).astype(np.float32)
    fm_logit = None
    if with_fm_logit:
        fm_np = _float_col(table, FM_LOGIT_COLUMN, window).to_numpy(zero_copy_only=False)
        fm_logit = torch.from_numpy(fm_np.astype(np.float32))
    verticals = None
    if schema.vertical:
        verticals = [str(v) for v in table[schema.vertical].to_pylist()]
    return Batch(
        dense=torch.from_numpy(dense_np),
        sparse=sparse,
        labels=torch.from_numpy(labels),
        fm_logit=fm_logit,
        verticals=verticals,
    )


def batch_columns(schema: FeatureSchema, with_fm_logit: bool = False) -> list[str]:
    """Columns :func:`iter_batches` reads (each once)."""
    cols = [schema.label, *schema.dense, *schema.sparse_names]
    if schema.vertical:
        cols.append(schema.vertical)
    if with_fm_logit:
        cols.append(FM_LOGIT_COLUMN)
    return list(dict.fromkeys(cols))


def iter_batches(
    dataset: DatasetRef,
    window: int,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    vertical: str | None = None,
    with_fm_logit: bool = False,
    stats: RowStats | None = None,
    read_size: int = 65_536,
) -> Iterator[Batch]:
    """Stream one ready window as batches of exactly ``batch_size`` rows (the last may be short).

    Rank split: the window's rows (in file order) are cut into ``world_size`` contiguous ranges
    whose sizes differ by at most one row; rank ``r`` reads only range ``r``. Filtering (vertical,
    bad rows) happens after the split, so ranks can end up with different batch counts: a
    multi-rank trainer must agree on the step count (e.g. all-reduce a "has batch" flag).
    An empty window yields nothing (``stats.rows_read == 0``). Counts go into ``stats``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    schema = dataset.feature_schema
    if vertical is not None and not schema.vertical:
        raise DataError(
            f"a vertical filter ({vertical!r}) was requested but the schema of {dataset.uri} declares "
            "no vertical column: set `vertical` in the dataset schema or drop the filter"
        )
    stats = stats if stats is not None else RowStats()
    if vertical is None and rank == 0:
        stats.add_upstream(window_summary(as_storage(dataset.uri), window))
    cols = batch_columns(schema, with_fm_logit)
    pending: list[pa.Table] = []
    pending_rows = 0
    for rb in iter_record_batches(
        dataset.uri, window, cols, max(read_size, 1), rank=rank, world_size=world_size
    ):
        table = pa.Table.from_batches([rb])
        if vertical is not None:
            keep = pc.fill_null(pc.equal(pc.cast(table[schema.vertical], pa.string()), vertical), False)
            kept = table.filter(keep)
            stats.rows_other_vertical += table.num_rows - kept.num_rows
            table = kept
        stats.rows_read += table.num_rows
        table = drop_bad_rows(table, schema, with_fm_logit, stats, window)
        if table.num_rows == 0:
            continue
        pending.append(table)
        pending_rows += table.num_rows
        if pending_rows < batch_size:
            continue
        merged = pa.concat_tables(pending)
        offset = 0
        while merged.num_rows - offset >= batch_size:
            yield to_batch(merged.slice(offset, batch_size), schema, with_fm_logit, window)
            offset += batch_size
        rest = merged.slice(offset)
        pending, pending_rows = ([rest], rest.num_rows) if rest.num_rows else ([], 0)
    if pending_rows:
        yield to_batch(pa.concat_tables(pending), schema, with_fm_logit, window)
