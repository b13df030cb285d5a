"""Small learnable windowed datasets for the trainer tests (written with the data layer's writer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from exfm_trainer.data.windows import write_window
from exfm_trainer.jobs import DatasetRef
from exfm_trainer.layout import FM_LOGIT_COLUMN, FM_VERSION_COLUMN
from exfm_trainer.schema import FeatureSchema, SparseFeature

SCHEMA = FeatureSchema(
    dense=["d0", "d1"],
    sparse=[
        SparseFeature(name="user", hash_buckets=200),
        SparseFeature(name="item", hash_buckets=100),
        SparseFeature(name="tags", hash_buckets=50, multi_valued=True),
    ],
    vertical="vertical",
)


def window_table(window: int, rows: int, seed: int = 0, fm: bool = False) -> pa.Table:
    """Rows whose click probability depends on user, item and d0 (so models can learn)."""
    rng = np.random.default_rng(seed * 1000 + window)
    user = rng.integers(0, 50, rows)
    item = rng.integers(0, 30, rows)
    d0 = rng.normal(size=rows)
    logit = 1.5 * np.sin(user) + np.cos(item) + 0.8 * d0 - 1.0
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    cols: dict[str, Any] = {
        "label": label,
        "d0": d0,
        "d1": rng.exponential(size=rows),
        "user": user,
        "item": item,
        "tags": [list(rng.integers(0, 20, rng.integers(0, 4))) for _ in range(rows)],
        "vertical": np.where(rng.random(rows) < 0.5, "ads", "shop"),
    }
    if fm:
        cols[FM_LOGIT_COLUMN] = (logit + rng.normal(scale=0.3, size=rows)).astype(np.float32)
        cols[FM_VERSION_COLUMN] = [f"{max(window - 1, 0):05d}"] * rows
    return pa.table(cols)


def make_dataset(
    root: Path, windows: range | list[int], rows: int = 256, fm: bool = False, seed: int = 0
) -> DatasetRef:
    for w in windows:
        write_window(str(root), w, window_table(w, rows, seed, fm))
    return DatasetRef(uri=str(root), schema=SCHEMA)


def fm_job(tmp: Path, dataset: DatasetRef, **kw: Any) -> dict[str, Any]:
    return {
        "job": "fm-train",
        "storage": str(tmp / "store"),
        "name": "fm1",
        "dataset": dataset.model_dump(mode="json", by_alias=True),
        "preset": "tiny",
        "batch_size": 64,
        "device": "cpu",
        **kw,
    }


def vm_job(tmp: Path, dataset: DatasetRef, **kw: Any) -> dict[str, Any]:
    return {
        "job": "vm-train",
        "storage": str(tmp / "store"),
        "name": "vm1",
        "dataset": dataset.model_dump(mode="json", by_alias=True),
        "preset": "tiny",
        "batch_size": 64,
        "device": "cpu",
        **kw,
    }
