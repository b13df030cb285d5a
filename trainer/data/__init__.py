"""Data layer: windowed Parquet datasets, hashing, model batches, synthetic stream, importers.

Importing this package does not import torch; the torch-side names (``Batch``, ``iter_batches``,
``RowStats``, ``check_bad_fraction``) load :mod:`exfm_trainer.data.batches` on first access.
"""

from __future__ import annotations

from typing import Any

from exfm_trainer.data.hashing import hash_column, hash_values
from exfm_trainer.data.synthetic import (
    SyntheticConfig,
    bayes_ne,
    generate,
    student_features,
    synthetic_schema,
)
from exfm_trainer.data.windows import (
    DataError,
    iter_record_batches,
    list_ready_windows,
    window_info,
    write_window,
)

_TORCH_SIDE = {"Batch", "RowStats", "check_bad_fraction", "iter_batches", "batch_columns"}

__all__ = [
    "Batch",
    "DataError",
    "RowStats",
    "SyntheticConfig",
    "batch_columns",
    "bayes_ne",
    "check_bad_fraction",
    "generate",
    "hash_column",
    "hash_values",
    "iter_batches",
    "iter_record_batches",
    "list_ready_windows",
    "student_features",
    "synthetic_schema",
    "window_info",
    "write_window",
]


def __getattr__(name: str) -> Any:
    if name in _TORCH_SIDE:
        from exfm_trainer.data import batches

        return getattr(batches, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
