"""The synthetic multi-vertical stream: determinism, schema, and its structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from exfm_trainer.data.batches import RowStats, iter_batches
from exfm_trainer.data.synthetic import SyntheticConfig, generate, generate_window, synthetic_schema
from exfm_trainer.data.windows import DataError, list_ready_windows

SMALL = SyntheticConfig(windows=6, rows_per_window=4000, verticals=3, seed=7)


def _read(root: Path, window: int):
    return pq.read_table(root / f"window={window:05d}" / "part-00000.parquet")


def test_generate_writes_ready_windows_matching_the_schema(tmp_path: Path) -> None:
    ref = generate(tmp_path, SMALL)
    assert list_ready_windows(tmp_path) == list(range(6))
    schema = synthetic_schema(SMALL)
    assert ref.feature_schema == schema
    assert schema.vertical == "vertical" and schema.timestamp == "timestamp"
    assert {"user_id", "ad_id", "advertiser_id", "category_id", "position", "user_hist_categories"} <= set(
        schema.sparse_names
    )
    assert [f.name for f in schema.sparse if f.multi_valued] == ["user_hist_categories"]
    t = _read(tmp_path, 2)
    assert set(t.column_names) >= set(schema.feature_columns()) | {"timestamp"}
    ts = t["timestamp"].to_numpy()
    start = SMALL.start_timestamp + 2 * SMALL.window_seconds
    assert ts.min() >= start and ts.max() < start + SMALL.window_seconds and np.all(np.diff(ts) >= 0)
    assert set(t["vertical"].to_pylist()) == {"feed", "video", "search"}
    stats = RowStats()
    assert sum(len(b) for b in iter_batches(ref, 2, 1024, stats=stats)) == 4000
    assert stats.rows_skipped == 0


def test_deterministic_per_seed(tmp_path: Path) -> None:
    generate(tmp_path / "a", SMALL)
    generate(tmp_path / "b", SMALL)
    generate(tmp_path / "c", SMALL.model_copy(update={"seed": 8}))
    for w in (0, 5):
        assert _read(tmp_path / "a", w).equals(_read(tmp_path / "b", w))
        assert not _read(tmp_path / "a", w).equals(_read(tmp_path / "c", w))


def test_generate_is_idempotent_and_refuses_another_config(tmp_path: Path) -> None:
    generate(tmp_path, SMALL)
    before = (tmp_path / "window=00001" / "part-00000.parquet").stat().st_mtime_ns
    generate(tmp_path, SMALL)
    assert (tmp_path / "window=00001" / "part-00000.parquet").stat().st_mtime_ns == before
    other = SMALL.model_copy(update={"windows": 2})
    with pytest.raises(DataError, match="another config"):
        generate(tmp_path, other)
    generate(tmp_path, other, overwrite=True)
    assert list_ready_windows(tmp_path) == [0, 1]


def test_base_ctr_and_label_honesty() -> None:
    cfg = SyntheticConfig(windows=3, rows_per_window=20_000, seed=1)
    for w in range(3):
        table, prob = generate_window(cfg, w)
        ctr = np.mean(table["label"].to_numpy())
        assert 0.03 <= ctr <= 0.10
        assert abs(ctr - prob.mean()) < 0.01  # labels are Bernoulli(prob)


def test_users_are_shared_across_verticals_and_traffic_is_skewed() -> None:
    table, _ = generate_window(SyntheticConfig(windows=1, rows_per_window=20_000, verticals=4, seed=2), 0)
    users = table["user_id"].to_numpy()
    verts = np.asarray(table["vertical"].to_pylist())
    counts = {v: int((verts == v).sum()) for v in np.unique(verts)}
    assert counts["feed"] > counts["video"] > counts["search"] > counts["shop"]
    small = set(users[verts == "shop"])
    others = set(users[verts != "shop"])
    assert len(small & others) / len(small) > 0.8
    ads = table["ad_id"].to_numpy()
    assert not set(ads[verts == "feed"]) & set(ads[verts == "shop"])  # each vertical has its own ads


def test_churn_new_ids_appear_and_old_ones_retire(tmp_path: Path) -> None:
    cfg = SyntheticConfig(windows=10, rows_per_window=5000, seed=3)
    first, _ = generate_window(cfg, 0)
    last, _ = generate_window(cfg, 9)
    for col, min_new in (("user_id", 0.2), ("ad_id", 0.5)):
        a, b = set(first[col].to_pylist()), set(last[col].to_pylist())
        assert len(b - a) / len(b) > min_new, col  # newcomers
        assert len(a - b) / len(a) > min_new, col  # retired (or unseen)
    assert max(first["ad_age"].to_pylist()) == 0 and max(last["ad_age"].to_pylist()) > 0


def test_drift_changes_ctr_over_windows() -> None:
    def window_ctrs(drift: bool) -> np.ndarray:
        cfg = SyntheticConfig(windows=12, rows_per_window=3000, seed=4, drift=drift, user_churn=0, ad_churn=0)
        return np.array([generate_window(cfg, w)[1].mean() for w in range(12)])

    def category_shift(drift: bool) -> float:
        cfg = SyntheticConfig(
            windows=12, rows_per_window=20_000, seed=4, drift=drift, user_churn=0, ad_churn=0
        )
        rates = []
        for w in (0, 11):
            table, prob = generate_window(cfg, w)
            cat = table["category_id"].to_numpy()
            rates.append({c: prob[cat == c].mean() for c in np.unique(cat)})
        common = sorted(set(rates[0]) & set(rates[1]))
        return float(np.mean([abs(np.log(rates[1][c] / rates[0][c])) for c in common]))

    assert np.ptp(window_ctrs(True)) > 2 * np.ptp(window_ctrs(False))
    assert category_shift(True) > 2 * category_shift(False)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unique"):
        SyntheticConfig(verticals=["a", "a"])
    with pytest.raises(ValueError):
        SyntheticConfig(rows_per_window=0)
    assert SyntheticConfig(verticals=["x", "y"]).vertical_names == ["x", "y"]
