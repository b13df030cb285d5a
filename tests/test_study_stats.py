"""Study statistics on small deterministic inputs: paired bootstrap CIs, ratios, collapses."""

from __future__ import annotations

import math

import numpy as np
import pytest

from exfm_trainer import study_stats as S


def _cell(values: list[list[list[float]]]) -> list[np.ndarray]:
    return S.as_cell(values)


def test_constant_paired_gain_has_a_point_interval() -> None:
    none = _cell([[[1.0, 1.0, 1.0]] * 3, [[1.0, 1.0]] * 2])  # 2 data seeds, different shapes
    mode = _cell([[[0.99, 0.99, 0.99]] * 3, [[0.99, 0.99]] * 2])
    r = S.gain_ci(none, mode)
    assert r["gain_pct"] == pytest.approx(1.0)
    assert r["ci95"] == pytest.approx([1.0, 1.0])
    assert r["significant"] == 1 and r["n_units"] == 13


def test_bootstrap_ci_covers_the_mean_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    diffs = rng.normal(0.5, 1.0, size=(5, 40))  # 5 seeds x 40 windows, true mean 0.5
    base = [np.full((5, 40), 10.0)]
    other = [base[0] - diffs]
    r1 = S.bootstrap({"a": base, "b": other}, lambda m: m["a"] - m["b"])
    r2 = S.bootstrap({"a": base, "b": other}, lambda m: m["a"] - m["b"])
    assert r1 == r2
    assert r1["value"] == pytest.approx(diffs.mean())
    lo, hi = r1["ci95"]
    assert lo < diffs.mean() < hi
    # the standard error of a mean of 200 unit-variance draws is ~0.07: the interval is about +-0.14
    assert 0.1 < hi - lo < 0.5
    assert lo > 0  # 0.5 is many standard errors away from 0


def test_window_effects_shared_by_all_seeds_widen_the_interval() -> None:
    """A difference that varies only by window (identical across seeds) is still uncertain: the
    bootstrap draws windows, not only seeds."""
    per_window = np.array([0.2, -0.1, 0.4, 0.0, 0.3, -0.2])
    none = [np.full((4, 6), 1.0)]
    mode = [none[0] - per_window[None, :]]
    lo, hi = S.bootstrap({"n": none, "m": mode}, lambda m: m["n"] - m["m"])["ci95"]
    assert hi - lo > 0.1
    assert lo < per_window.mean() < hi


def test_pairing_drops_units_missing_in_any_cell() -> None:
    none = _cell([[[1.0, 1.0, None], [1.0, 1.0, 1.0]]])
    mode = _cell([[[0.9, 0.9, 0.1], [0.9, None, 0.9]]])
    r = S.gain_ci(none, mode)
    assert r["n_units"] == 4  # (0,0) (0,1) (1,0) (1,2)
    assert r["gain_pct"] == pytest.approx(10.0)


def test_paired_differences_and_shape_errors() -> None:
    a, b = _cell([[[1.0, 2.0]]]), _cell([[[0.5, 2.5]]])
    (d,) = S.paired_differences(a, b)
    assert d.tolist() == [[0.5, -0.5]]
    with pytest.raises(ValueError, match="same model seeds and windows"):
        S.gain_ci(_cell([[[1.0, 2.0]]]), _cell([[[1.0, 2.0, 3.0]]]))
    with pytest.raises(ValueError, match="data seeds"):
        S.gain_ci(_cell([[[1.0]]]), _cell([[[1.0]], [[1.0]]]))


def test_recovery_ratio() -> None:
    aux_k = _cell([[[1.00, 1.00], [1.00, 1.00]]])
    sa_k = _cell([[[0.95, 0.95], [0.95, 0.95]]])
    aux_0 = _cell([[[0.90, 0.90], [0.90, 0.90]]])
    r = S.recovery_ci(aux_k, sa_k, aux_0)
    assert r["recovered"] == pytest.approx(0.5)
    assert r["ci95"] == pytest.approx([0.5, 0.5])
    assert r["adapter_gain_ne"] == pytest.approx(0.05) and r["staleness_cost_ne"] == pytest.approx(0.1)


def test_recovery_ratio_interval_from_noisy_runs() -> None:
    rng = np.random.default_rng(1)
    aux_0 = 0.9 + rng.normal(0, 0.002, (5, 20))
    aux_k = aux_0 + 0.02 + rng.normal(0, 0.002, (5, 20))
    sa_k = aux_k - 0.01 + rng.normal(0, 0.002, (5, 20))
    r = S.recovery_ci([aux_k], [sa_k], [aux_0])
    assert r["ci95"][0] < r["recovered"] < r["ci95"][1]
    assert r["recovered"] == pytest.approx((aux_k - sa_k).mean() / (aux_k - aux_0).mean())
    assert r["ci95"][0] > 0.3 and r["ci95"][1] < 0.7


def test_transfer_ratio_broadcasts_the_fm_over_seeds() -> None:
    none = _cell([[[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]])
    mode = _cell([[[0.98, 0.98, 0.98], [0.98, 0.98, 0.98]]])
    fm = _cell([[[0.9, 0.9, 0.9]]])  # one row per data seed: the FM does not depend on the VM seed
    r = S.transfer_ratio_ci(none, mode, fm)
    assert r["ratio"] == pytest.approx(0.2)
    assert r["ci95"] == pytest.approx([0.2, 0.2])


def test_significance_and_collapses() -> None:
    assert S.significance([0.1, 0.3]) == 1
    assert S.significance([-0.3, -0.1]) == -1
    assert S.significance([-0.1, 0.1]) == 0
    assert S.significance([math.nan, 0.1]) == 0
    runs = [
        {"id": "ok", "ne": 0.900, "ne_none": 0.90},
        {"id": "just inside", "ne": 0.9089, "ne_none": 0.90},
        {"id": "collapsed", "ne": 0.95, "ne_none": 0.90},
        {"id": "better", "ne": 0.85, "ne_none": 0.90},
    ]
    n, bad = S.collapses(runs)
    assert n == 1 and [b["id"] for b in bad] == ["collapsed"]
    assert S.outliers({"0": 0.89, "1": 0.891, "2": 0.98, "3": 0.889}) == ["2"]


def test_a_zero_denominator_gives_nan_not_an_error() -> None:
    same = _cell([[[0.9, 0.9], [0.9, 0.9]]])
    r = S.recovery_ci(same, _cell([[[0.8, 0.8], [0.8, 0.8]]]), same)
    assert math.isinf(r["recovered"]) and r["staleness_cost_ne"] == 0.0
    assert all(math.isnan(x) for x in r["ci95"]) and r["nonfinite_replicates"] == S.N_BOOT
