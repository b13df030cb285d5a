"""Statistics of the transfer study: paired differences, a windows x seeds cluster bootstrap, ratios.

Data layout: one study *cell* (a vertical and a mode of one section) is a list over data seeds of
``[model seeds, windows]`` arrays of per-window progressive NE (NaN where a window has no metric).
Runs of the same data seed see the same windows, so two cells are *paired* unit by unit: same
data seed, same model seed, same window.

The bootstrap is stratified by data seed and two-way within it: each replicate draws the model
seeds with replacement and, independently, the windows with replacement (a "pigeonhole"
bootstrap for crossed seed and window effects), per data seed, and pools the drawn units of all
data seeds. Statistics are functions of the pooled means of the cells over the drawn units
(ratios of means, never means of ratios), so the point estimate is the same function of the
plain means. The interval is the percentile interval of ``n_boot`` replicates from a fixed RNG seed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

Cell = Sequence[np.ndarray]  # per data seed: [model seeds, windows]
N_BOOT = 2000
RNG_SEED = 20250217


def as_cell(per_data_seed: Sequence[Sequence[Sequence[float | None]]]) -> list[np.ndarray]:
    """A cell from nested lists ``[data seed][model seed][window]`` (None -> NaN)."""
    out = []
    for runs in per_data_seed:
        arr = np.array([[np.nan if x is None else float(x) for x in r] for r in runs], dtype=np.float64)
        if arr.ndim != 2:
            raise ValueError("every run of one data seed must cover the same windows")
        out.append(arr)
    return out


def broadcast_seeds(cell: Cell, like: Cell) -> list[np.ndarray]:
    """Repeat a per-window cell with one row per data seed (e.g. the FM's NE) over ``like``'s seeds."""
    return [
        np.broadcast_to(np.asarray(c, dtype=np.float64)[:1], lk.shape)
        for c, lk in zip(cell, like, strict=True)
    ]


def _check(cells: Mapping[str, Cell]) -> tuple[list[str], int]:
    names = list(cells)
    if not names:
        raise ValueError("no cells to bootstrap")
    n_data = len(cells[names[0]])
    for name in names:
        if len(cells[name]) != n_data:
            raise ValueError(f"cell {name!r} has {len(cells[name])} data seeds, expected {n_data}")
        for d, arr in enumerate(cells[name]):
            if arr.shape != cells[names[0]][d].shape:
                raise ValueError(
                    f"cell {name!r}, data seed #{d}: shape {arr.shape} != {cells[names[0]][d].shape} "
                    "(paired cells need the same model seeds and windows)"
                )
    return names, n_data


def _counts(draws: np.ndarray, n: int) -> np.ndarray:
    """``[replicates, n]`` multiplicities of each index in each replicate's draws."""
    out = np.zeros((draws.shape[0], n))
    np.add.at(out, (np.repeat(np.arange(draws.shape[0]), draws.shape[1]), draws.ravel()), 1.0)
    return out


def bootstrap(
    cells: Mapping[str, Cell],
    stat: Callable[[Mapping[str, Any]], Any],
    n_boot: int = N_BOOT,
    seed: int = RNG_SEED,
) -> dict[str, Any]:
    """Point estimate and 95 % percentile interval of ``stat(means)`` (``means``: cell -> pooled mean).

    A unit (data seed, model seed, window) counts only where every cell is finite (pairing).
    ``stat`` receives scalars for the estimate and ``[n_boot]`` arrays for the replicates.
    Returns ``{"value", "ci95": [lo, hi], "n_units", "n_boot", "nonfinite_replicates"}``.
    """
    names, n_data = _check(cells)
    rng = np.random.default_rng(seed)
    sums = {n: np.zeros(n_boot) for n in names}
    counts = np.zeros(n_boot)
    point_sum = dict.fromkeys(names, 0.0)
    point_n = 0.0
    for d in range(n_data):
        stack = np.stack([np.asarray(cells[n][d], dtype=np.float64) for n in names])  # [cells, S, W]
        mask = np.isfinite(stack).all(axis=0).astype(np.float64)
        vals = np.where(mask > 0, stack, 0.0)
        n_s, n_w = mask.shape
        for i, n in enumerate(names):
            point_sum[n] += float(vals[i].sum())
        point_n += float(mask.sum())
        cs = _counts(rng.integers(0, n_s, (n_boot, n_s)), n_s)
        cw = _counts(rng.integers(0, n_w, (n_boot, n_w)), n_w)
        counts += np.einsum("bs,sw,bw->b", cs, mask, cw)
        for i, n in enumerate(names):
            sums[n] += np.einsum("bs,sw,bw->b", cs, vals[i], cw)
    if point_n == 0:
        raise ValueError("no unit where every cell has a finite value")
    with np.errstate(divide="ignore", invalid="ignore"):
        value = float(stat({n: np.float64(point_sum[n] / point_n) for n in names}))  # x/0: inf or nan
        reps = np.asarray(stat({n: sums[n] / counts for n in names}), dtype=np.float64)
    ok = reps[np.isfinite(reps)]
    lo, hi = (float(np.percentile(ok, 2.5)), float(np.percentile(ok, 97.5))) if ok.size else (np.nan, np.nan)
    return {
        "value": value,
        "ci95": [lo, hi],
        "n_units": int(point_n),
        "n_boot": n_boot,
        "nonfinite_replicates": int(n_boot - ok.size),
    }


def paired_differences(base: Cell, other: Cell) -> list[np.ndarray]:
    """Per-unit differences ``base - other`` (positive: ``other`` has the lower, better NE)."""
    _check({"base": base, "other": other})
    return [
        np.asarray(b, dtype=np.float64) - np.asarray(o, dtype=np.float64)
        for b, o in zip(base, other, strict=True)
    ]


def gain_ci(none: Cell, mode: Cell, **kw: Any) -> dict[str, Any]:
    """``gain_pct = 100 * (NE_none - NE_mode) / NE_none`` over paired units, with its 95 % interval.

    ``significant`` is +1 (interval above 0), -1 (below 0) or 0 (contains 0).
    """
    r = bootstrap({"none": none, "mode": mode}, lambda m: 100.0 * (m["none"] - m["mode"]) / m["none"], **kw)
    return {
        "gain_pct": r["value"],
        "ci95": r["ci95"],
        "significant": significance(r["ci95"]),
        "n_units": r["n_units"],
    }


def recovery_ci(aux_k: Cell, aux_sa_k: Cell, aux_0: Cell, **kw: Any) -> dict[str, Any]:
    """Adapter recovery at staleness k: ``(NE_aux,k - NE_aux_sa,k) / (NE_aux,k - NE_aux,0)``.

    The numerator is what the adapter gains, the denominator what staleness costs aux; both are
    bootstrapped together (the ratio of the replicates' means). A denominator near 0 (staleness
    costs nothing) makes the ratio unstable, so its parts are reported too.
    """
    cells = {"aux_k": aux_k, "sa_k": aux_sa_k, "aux_0": aux_0}
    r = bootstrap(cells, lambda m: (m["aux_k"] - m["sa_k"]) / (m["aux_k"] - m["aux_0"]), **kw)
    num = bootstrap(cells, lambda m: m["aux_k"] - m["sa_k"], **kw)
    den = bootstrap(cells, lambda m: m["aux_k"] - m["aux_0"], **kw)
    return {
        "recovered": r["value"],
        "ci95": r["ci95"],
        "adapter_gain_ne": num["value"],
        "adapter_gain_ne_ci95": num["ci95"],
        "staleness_cost_ne": den["value"],
        "staleness_cost_ne_ci95": den["ci95"],
        "nonfinite_replicates": r["nonfinite_replicates"],
    }


def transfer_ratio_ci(none: Cell, mode: Cell, fm: Cell, **kw: Any) -> dict[str, Any]:
    """``(NE_none - NE_mode) / (NE_none - NE_FM)``: the share of the FM's lead over the student that
    distillation transfers (``fm``: the FM's NE on the same rows, broadcast over model seeds)."""
    fm_b = broadcast_seeds(fm, none) if any(f.shape != n.shape for f, n in zip(fm, none, strict=True)) else fm
    cells = {"none": none, "mode": mode, "fm": fm_b}
    r = bootstrap(cells, lambda m: (m["none"] - m["mode"]) / (m["none"] - m["fm"]), **kw)
    return {"ratio": r["value"], "ci95": r["ci95"]}


def significance(ci: Sequence[float]) -> int:
    """+1 when the interval lies above 0, -1 below 0, else 0 (NaN bounds: 0)."""
    lo, hi = ci
    if lo > 0:
        return 1
    if hi < 0:
        return -1
    return 0


def collapses(runs: Sequence[Mapping[str, Any]], tolerance: float = 0.01) -> tuple[int, list[dict[str, Any]]]:
    """Runs whose NE is more than ``tolerance`` (relative) worse than the same seed's ``none``.

    ``runs``: dicts with ``ne`` (the run's evaluated-window mean) and ``ne_none`` (its paired
    baseline's) plus any identifying keys; returns the count and the offending runs.
    """
    bad = [dict(r) for r in runs if r["ne"] > (1.0 + tolerance) * r["ne_none"]]
    return len(bad), bad


def outliers(values: Mapping[str, float], tolerance: float = 0.01) -> list[str]:
    """Keys whose value is more than ``tolerance`` (relative) above the median of all values
    (a ``none`` run far worse than its sibling seeds: a collapsed baseline inflates every gain)."""
    if not values:
        return []
    med = float(np.median(list(values.values())))
    return [k for k, v in values.items() if v > (1.0 + tolerance) * med]
