"""Model batches: dense transform, KJT ids, bad-row accounting, rank split, vertical filter."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from torchrec import EmbeddingBagCollection
from torchrec.modules.embedding_configs import EmbeddingBagConfig

from exfm_trainer.data.batches import Batch, RowStats, check_bad_fraction, iter_batches
from exfm_trainer.data.hashing import hash_values
from exfm_trainer.data.windows import DataError, write_window
from exfm_trainer.jobs import DatasetRef
from exfm_trainer.layout import FM_LOGIT_COLUMN
from exfm_trainer.schema import FeatureSchema, SparseFeature

SCHEMA = FeatureSchema(
    label="y",
    dense=["d0", "d1"],
    sparse=[
        SparseFeature(name="user", hash_buckets=50, embedding_dim=4),
        SparseFeature(name="hist", hash_buckets=20, embedding_dim=4, multi_valued=True),
    ],
    vertical="vert",
)


def _table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "y": rng.integers(0, 2, n),
            "d0": rng.integers(0, 1000, n).astype(float),
            "d1": rng.normal(size=n),
            "user": [f"u{i}" for i in range(n)],
            "hist": pa.array([list(range(i % 4)) for i in range(n)], type=pa.list_(pa.int64())),
            "vert": ["a" if i % 3 else "b" for i in range(n)],
            FM_LOGIT_COLUMN: rng.normal(size=n),
            "row": np.arange(n),
        }
    )


def _ref(root: Path) -> DatasetRef:
    return DatasetRef(uri=str(root), schema=SCHEMA)


def test_exact_batch_sizes_and_contents(tmp_path: Path) -> None:
    table = _table(1000)
    write_window(tmp_path, 0, table, rows_per_file=333)
    stats = RowStats()
    batches = list(iter_batches(_ref(tmp_path), 0, 128, stats=stats, read_size=100))
    assert [len(b) for b in batches] == [128] * 7 + [104]
    assert stats.rows_read == stats.rows_used == 1000 and stats.rows_skipped == 0
    first = batches[0]
    assert first.dense.dtype == torch.float32 and first.dense.shape == (128, 2)
    d0 = np.asarray(table["d0"][:128])
    assert np.allclose(first.dense[:, 0].numpy(), np.sign(d0) * np.log1p(np.abs(d0)), atol=1e-5)
    assert torch.equal(first.labels, torch.tensor(table["y"][:128].to_pylist(), dtype=torch.float32))
    assert first.sparse.keys() == ["user", "hist"]
    assert first.sparse["user"].values().tolist() == hash_values(table["user"][:128], 50, "user").tolist()
    assert first.sparse["hist"].lengths().tolist() == [i % 4 for i in range(128)]
    assert first.verticals[:3] == ["b", "a", "a"] and first.fm_logit is None


def test_batches_feed_a_torchrec_embedding_bag_collection(tmp_path: Path) -> None:
    write_window(tmp_path, 0, _table(64))
    batch = next(iter_batches(_ref(tmp_path), 0, 64, with_fm_logit=True)).to("cpu")
    ebc = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name=f"t_{f.name}", embedding_dim=4, num_embeddings=f.hash_buckets, feature_names=[f.name]
            )
            for f in SCHEMA.sparse
        ]
    )
    out = ebc(batch.sparse)
    assert out.values().shape == (64, 8)
    assert batch.fm_logit is not None and batch.fm_logit.shape == (64,)


def test_vertical_filter(tmp_path: Path) -> None:
    write_window(tmp_path, 0, _table(300))
    stats = RowStats()
    batches = list(iter_batches(_ref(tmp_path), 0, 64, vertical="b", stats=stats))
    assert sum(len(b) for b in batches) == 100
    assert all(v == "b" for b in batches for v in b.verticals)
    assert stats.rows_read == 100 and stats.rows_other_vertical == 200
    nothing = DatasetRef(uri=str(tmp_path), schema=SCHEMA.model_copy(update={"vertical": None}))
    with pytest.raises(DataError, match="no vertical column"):
        list(iter_batches(nothing, 0, 64, vertical="b"))


def test_rank_split_disjoint_and_complete(tmp_path: Path) -> None:
    write_window(tmp_path, 0, _table(1003), rows_per_file=200)
    users: list[int] = []
    for rank in range(3):
        for b in iter_batches(_ref(tmp_path), 0, 50, rank=rank, world_size=3):
            users.extend(b.sparse["user"].values().tolist())
    expected = hash_values(pa.array([f"u{i}" for i in range(1003)]), 50, "user")
    assert len(users) == 1003
    assert sorted(users) == sorted(expected.tolist())


def test_bad_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    t = _table(100)
    y = t["y"].to_pylist()
    d1 = t["d1"].to_pylist()
    d0 = t["d0"].to_pylist()
    y[0], y[1], y[2] = 2, None, -1  # bad, null, bad
    d1[3], d1[4] = math.nan, math.inf  # nan_dense
    d0[5] = None  # missing value: kept, becomes 0
    t = t.set_column(0, "y", pa.array(y, type=pa.float64()))
    t = t.set_column(t.schema.get_field_index("d1"), "d1", pa.array(d1))
    t = t.set_column(t.schema.get_field_index("d0"), "d0", pa.array(d0, type=pa.float64()))
    write_window(tmp_path, 0, t)
    stats = RowStats()
    batches = list(iter_batches(_ref(tmp_path), 0, 1000, stats=stats))
    assert stats.rows_read == 100 and stats.rows_used == 95 and stats.rows_skipped == 5
    assert stats.skipped_by_reason == {
        "null_label": 1,
        "bad_label": 2,
        "nan_dense": 2,
        "bad_dense": 0,
        "bad_fm_logit": 0,
    }
    (batch,) = batches
    assert len(batch) == 95 and torch.isfinite(batch.dense).all()
    assert batch.dense[0, 0].item() == 0.0  # row 5 is the first kept row; its missing d0 is 0
    check_bad_fraction(stats, 0.05, window=0)
    with pytest.raises(DataError, match=r"window 0: 5 of 100 rows .*max_bad_row_fraction=0\.01"):
        check_bad_fraction(stats, 0.01, window=0)


def test_bad_fm_logit_counted_only_when_requested(tmp_path: Path) -> None:
    t = _table(10)
    fm = t[FM_LOGIT_COLUMN].to_pylist()
    fm[0] = None
    t = t.set_column(t.schema.get_field_index(FM_LOGIT_COLUMN), FM_LOGIT_COLUMN, pa.array(fm))
    write_window(tmp_path, 0, t)
    stats = RowStats()
    assert len(next(iter_batches(_ref(tmp_path), 0, 100, with_fm_logit=True, stats=stats))) == 9
    assert stats.skipped_by_reason["bad_fm_logit"] == 1
    assert len(next(iter_batches(_ref(tmp_path), 0, 100))) == 10


def test_missing_fm_logit_column_is_a_clear_error(tmp_path: Path) -> None:
    write_window(tmp_path, 0, _table(10).drop_columns([FM_LOGIT_COLUMN]))
    with pytest.raises(DataError, match=r"fm_logit.*part-00000\.parquet"):
        list(iter_batches(_ref(tmp_path), 0, 4, with_fm_logit=True))


def test_empty_window_yields_nothing(tmp_path: Path) -> None:
    write_window(tmp_path, 0, _table(0))
    stats = RowStats()
    assert list(iter_batches(_ref(tmp_path), 0, 8, stats=stats)) == []
    assert stats.rows_read == 0 and stats.skipped_fraction == 0.0
    check_bad_fraction(stats, 0.0, window=0)


def test_non_numeric_dense_column_is_a_clear_error(tmp_path: Path) -> None:
    t = _table(5)
    t = t.set_column(t.schema.get_field_index("d0"), "d0", pa.array(["x"] * 5))
    write_window(tmp_path, 0, t)
    with pytest.raises(DataError, match=r"'d0'.*not numeric"):
        list(iter_batches(_ref(tmp_path), 0, 4))


def test_batch_to_device_keeps_everything() -> None:
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    kjt = KeyedJaggedTensor(
        keys=["a"], values=torch.tensor([1, 2]), lengths=torch.tensor([1, 1], dtype=torch.int32)
    )
    b = Batch(dense=torch.zeros(2, 1), sparse=kjt, labels=torch.ones(2), verticals=["x", "y"])
    moved = b.to("cpu")
    assert len(moved) == 2 and moved.verticals == ["x", "y"] and moved.fm_logit is None
