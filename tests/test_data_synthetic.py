"""The synthetic multi-vertical stream: determinism, schema, no oracle features, truth, structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exfm_trainer.data.batches import RowStats, iter_batches
from exfm_trainer.data.hashing import encode_column
from exfm_trainer.data.synthetic import (
    HISTORY_DENSE,
    SyntheticConfig,
    bayes_ne,
    generate,
    generate_window,
    normalized_entropy,
    student_features,
    synthetic_schema,
    window_table,
)
from exfm_trainer.data.synthetic_world import stream
from exfm_trainer.data.windows import DataError, list_ready_windows, read_dataset_info

SMALL = SyntheticConfig(windows=6, rows_per_window=4000, verticals=3, seed=7)
HISTORY = [*HISTORY_DENSE, "user_hist_categories"]


def _read(root: Path, window: int) -> pa.Table:
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
    assert set(HISTORY_DENSE) <= set(schema.dense)
    assert [f.name for f in schema.sparse if f.multi_valued] == ["user_hist_categories"]
    t = _read(tmp_path, 2)
    assert set(t.column_names) == set(schema.feature_columns()) | {"timestamp"}  # no truth column
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
    assert read_dataset_info(tmp_path / "a") == read_dataset_info(tmp_path / "b")


def test_generate_is_idempotent_and_refuses_another_config(tmp_path: Path) -> None:
    generate(tmp_path, SMALL)
    before = (tmp_path / "window=00001" / "part-00000.parquet").stat().st_mtime_ns
    truth = read_dataset_info(tmp_path)["truth"]
    generate(tmp_path, SMALL)
    assert (tmp_path / "window=00001" / "part-00000.parquet").stat().st_mtime_ns == before
    assert read_dataset_info(tmp_path)["truth"] == truth
    other = SMALL.model_copy(update={"windows": 2})
    with pytest.raises(DataError, match="another config"):
        generate(tmp_path, other)
    generate(tmp_path, other, overwrite=True)
    assert list_ready_windows(tmp_path) == [0, 1]
    assert sorted(bayes_ne(tmp_path)) == [0, 1]


def test_history_features_depend_only_on_earlier_labels() -> None:
    """No oracle features: flipping window t's labels leaves windows <= t unchanged, changes t+1."""
    cfg = SyntheticConfig(windows=5, rows_per_window=3000, verticals=2, seed=5)
    t = 2

    def flip(w: int, y: np.ndarray) -> np.ndarray:
        return 1 - y if w == t else y

    base = [window_table(cfg, d) for d in stream(cfg)]
    flipped = [window_table(cfg, d) for d in stream(cfg, label_hook=flip)]
    for w in range(t + 1):
        for col in HISTORY:
            assert base[w][col].equals(flipped[w][col]), (w, col)
    for col in [c for c in HISTORY if not c.endswith("impressions")]:  # counts of clicks, not views
        assert not base[t + 1][col].equals(flipped[t + 1][col]), col
    # window 0 has no past: every row sees the same prior, and no history categories
    w0 = base[0]
    for col in HISTORY_DENSE:
        assert len(np.unique(w0[col].to_numpy())) == 1, col
    assert pa.compute.sum(pa.compute.list_value_length(w0["user_hist_categories"])).as_py() == 0


def test_history_features_carry_signal() -> None:
    """The counters are informative: later rows' CTR lifts track their true probability."""
    cfg = SyntheticConfig(windows=6, rows_per_window=20_000, verticals=2, seed=1)
    table, prob = generate_window(cfg, 5)
    for col in ("ad_ctr_lift", "user_cat_lift", "user_ctr_lift", "user_xv_lift"):
        assert np.corrcoef(table[col].to_numpy(), np.log(prob))[0, 1] > 0.1, col
    lengths = pa.compute.list_value_length(table["user_hist_categories"]).to_numpy()
    assert lengths.mean() > 2


def test_bayes_ne_stored_and_sane(tmp_path: Path) -> None:
    generate(tmp_path, SMALL)
    truth = read_dataset_info(tmp_path)["truth"]
    ne = bayes_ne(tmp_path)
    assert sorted(ne) == list(range(SMALL.windows))
    for w, per in ne.items():
        assert set(per) == set(SMALL.vertical_names)
        labels = _read(tmp_path, w)["label"].to_numpy()
        assert truth[str(w)]["all"]["ctr"] == pytest.approx(labels.mean())
        for v, value in per.items():
            assert value is not None and 0.3 < value < 1.0, (w, v, value)  # a constant predictor scores 1
            assert truth[str(w)][v]["true_ctr"] == pytest.approx(truth[str(w)][v]["ctr"], abs=0.02)
    _, prob = generate_window(SMALL, 3)
    t = _read(tmp_path, 3)
    assert truth["3"]["all"]["bayes_ne"] == pytest.approx(normalized_entropy(prob, t["label"].to_numpy()))


def test_bayes_ne_needs_a_finished_synthetic_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no `truth`"):
        bayes_ne(tmp_path)


def test_small_columns_have_zero_collisions() -> None:
    """Distinct raw values of every declared-encoding column land on distinct embedding rows."""
    cfg = SyntheticConfig(windows=3, rows_per_window=20_000, verticals=4, users=1500, seed=2)
    table, _ = generate_window(cfg, 2)
    schema = synthetic_schema(cfg)
    small = [f for f in schema.sparse if f.encoding != "hash"]
    assert {f.name for f in small} == {
        "advertiser_id",
        "category_id",
        "user_hist_categories",
        "position",
        "device",
        "hour",
        "vertical",
    }
    for f in small:
        col = table[f.name].combine_chunks()
        ids, _ = encode_column(col, f)
        raw = pa.compute.list_flatten(col) if f.multi_valued else col
        values = np.asarray(raw.to_pylist(), dtype=object)
        assert len(values) == len(ids)
        pairs = set(zip(values.tolist(), ids.tolist(), strict=True))
        distinct = {v for v, _ in pairs}
        assert len(pairs) == len(distinct) == len({i for _, i in pairs}), f.name  # a bijection
        assert 0 not in {i for _, i in pairs}, f.name  # nothing falls into the OOV row
    assert {f.name for f in schema.sparse if f.encoding == "hash"} == {"user_id", "ad_id"}


def test_student_features_leave_out_history() -> None:
    schema = synthetic_schema(SMALL)
    feats = student_features(SMALL)
    assert set(feats) < set(schema.dense) | set(schema.sparse_names)
    assert not set(feats) & set(HISTORY)
    assert {"user_id", "ad_id", "position", "device"} <= set(feats)


def test_base_ctr_and_label_honesty() -> None:
    cfg = SyntheticConfig(windows=3, rows_per_window=20_000, seed=1)
    for d in stream(cfg):
        ctr = d.label.mean()
        assert 0.03 <= ctr <= 0.10
        assert abs(ctr - d.prob.mean()) < 0.01  # labels are Bernoulli(prob)
    assert abs(next(iter(stream(cfg))).prob.mean() - cfg.base_ctr) < 1e-3


def test_users_are_dense_and_shared_across_verticals_and_traffic_is_skewed() -> None:
    cfg = SyntheticConfig(windows=4, rows_per_window=20_000, verticals=4, seed=2)
    table, _ = generate_window(cfg, 3)
    users = table["user_id"].to_numpy()
    verts = np.asarray(table["vertical"].to_pylist())
    counts = {v: int((verts == v).sum()) for v in np.unique(verts)}
    assert counts["feed"] > counts["video"] > counts["search"] > counts["shop"]
    small = set(users[verts == "shop"])
    others = set(users[verts != "shop"])
    assert len(small & others) / len(small) > 0.8
    ads = table["ad_id"].to_numpy()
    assert not set(ads[verts == "feed"]) & set(ads[verts == "shop"])  # each vertical has its own ads
    # hundreds of impressions per user over the stream (by default), heavy-tailed activity
    per_user = np.bincount(users) * cfg.windows
    per_user = per_user[per_user > 0]
    assert np.mean(per_user) > 100 and np.percentile(per_user, 90) > 2.5 * np.median(per_user)
    # ad popularity: a long tail (the top 10 % of shown ads take a large share of impressions)
    feed_ads = np.sort(np.bincount(ads[verts == "feed"]))[::-1]
    feed_ads = feed_ads[feed_ads > 0]
    assert feed_ads[: len(feed_ads) // 10].sum() > 0.4 * feed_ads.sum()


def test_vertical_share_knob() -> None:
    cfg = SyntheticConfig(verticals=4, vertical_share={"shop": 0.4})
    shares = dict(zip(cfg.vertical_names, cfg.vertical_shares(), strict=True))
    assert shares["shop"] == pytest.approx(0.4) and sum(shares.values()) == pytest.approx(1)
    assert shares["feed"] > shares["video"] > shares["search"]
    table, _ = generate_window(cfg.model_copy(update={"rows_per_window": 10_000, "windows": 1}), 0)
    assert np.mean(np.asarray(table["vertical"].to_pylist()) == "shop") == pytest.approx(0.4, abs=0.02)
    with pytest.raises(ValueError, match="unknown verticals"):
        SyntheticConfig(verticals=2, vertical_share={"shop": 0.2})
    with pytest.raises(ValueError, match="leave traffic"):
        SyntheticConfig(verticals=3, vertical_share={"feed": 0.6, "video": 0.5})


def test_churn_new_ids_appear_and_old_ones_retire() -> None:
    cfg = SyntheticConfig(windows=10, rows_per_window=5000, seed=3, user_churn=0.05, ad_churn=0.2)
    tables = [window_table(cfg, d) for d in stream(cfg)]
    first, last = tables[0], tables[9]
    for col, min_new in (("user_id", 0.2), ("ad_id", 0.5)):
        a, b = set(first[col].to_pylist()), set(last[col].to_pylist())
        assert len(b - a) / len(b) > min_new, col  # newcomers
        assert len(a - b) / len(a) > min_new, col  # retired (or unseen)
    # ages are stationary (the initial cohort was born before the stream), newborns start at 0
    for col in ("user_age", "ad_age"):
        a0, a9 = first[col].to_numpy(), last[col].to_numpy()
        assert a0.max() > 0 and (a9 == 0).any(), col
        assert abs(np.log(a9.mean() / a0.mean())) < 0.5, col


def _window_ctrs(**update: object) -> tuple[np.ndarray, np.ndarray, list]:
    cfg = SyntheticConfig(
        windows=12, rows_per_window=20_000, verticals=3, seed=4, user_churn=0, ad_churn=0, **update
    )
    ctr, by_vert, by_cat = [], [], []
    for d in stream(cfg):
        ctr.append(d.prob.mean())
        v, c = d.columns["vert"], d.columns["category_id"]
        by_vert.append([d.prob[v == i].mean() for i in range(3)])
        by_cat.append({k: d.prob[c == k].mean() for k in np.unique(c) if (c == k).sum() >= 300})
    return np.array(ctr), np.array(by_vert), by_cat


def test_drift_moves_the_level_the_verticals_and_the_clusters() -> None:
    ctr, vert, cat = _window_ctrs()
    ctr0, vert0, cat0 = _window_ctrs(drift=False)
    assert np.ptp(np.log(ctr)) > 2 * np.ptp(np.log(ctr0))
    rel = np.log(vert) - np.log(ctr)[:, None]  # vertical levels relative to the global level
    rel0 = np.log(vert0) - np.log(ctr0)[:, None]
    assert np.ptp(rel, axis=0).mean() > 2 * np.ptp(rel0, axis=0).mean()

    def cat_shift(series: list) -> float:
        common = sorted(set(series[0]) & set(series[-1]))
        return float(np.mean([abs(np.log(series[-1][c] / series[0][c])) for c in common]))

    assert cat_shift(cat) > 2 * cat_shift(cat0)
    # only the global share: verticals move together
    _, vert_g, _ = _window_ctrs(drift_global=1.0, drift_vertical=0.0, drift_cluster=0.0, weekly_amplitude=0)
    _, vert_v, _ = _window_ctrs(drift_global=0.0, drift_vertical=1.0, drift_cluster=0.0, weekly_amplitude=0)
    spread = lambda v: np.ptp(np.log(v) - np.log(v).mean(axis=1, keepdims=True), axis=0).mean()  # noqa: E731
    assert spread(vert_v) > 2 * spread(vert_g)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unique"):
        SyntheticConfig(verticals=["a", "a"])
    with pytest.raises(ValueError):
        SyntheticConfig(rows_per_window=0)
    with pytest.raises(ValueError, match="drift shares must sum to 1"):
        SyntheticConfig(drift_global=0.5)
    with pytest.raises(ValueError, match="outside the stream"):
        generate_window(SMALL, SMALL.windows)
    assert SyntheticConfig(verticals=["x", "y"]).vertical_names == ["x", "y"]


def test_cli_pins_a_vertical_share(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from exfm_trainer.data.cli import main_synth

    argv = ["--out", str(tmp_path), "--windows", "2", "--rows-per-window", "500", "--verticals", "feed,shop"]
    assert main_synth([*argv, "--vertical-share", "shop=0.3"]) == 0
    assert read_dataset_info(tmp_path)["config"]["vertical_share"] == {"shop": 0.3}
    assert sorted(bayes_ne(tmp_path)) == [0, 1]
    assert main_synth([*argv, "--vertical-share", "news=0.3", "--overwrite"]) == 2
    assert "unknown verticals ['news']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main_synth([*argv, "--vertical-share", "shop"])
