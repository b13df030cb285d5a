"""The multi-seed study's JSON sections from its finished tasks (see :mod:`exfm_trainer.study_runs`).

Every NE below is progressive (evaluate a window, then train on it) and taken over the *evaluated*
windows: the second half of each section's VM windows. Gains and ratios come with the paired
windows x seeds bootstrap of :mod:`exfm_trainer.study_stats`, pooled over all data and model seeds.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from exfm_trainer import study_stats as S
from exfm_trainer.study import MODES
from exfm_trainer.study_dag import Done
from exfm_trainer.study_runs import Plan, das_key, vm_key

DISTILL_MODES = ("kd", "aux", "aux_sa")


class Results:
    """Lookup of finished tasks by section, data seed, model seed, vertical and mode."""

    def __init__(
        self, plan: Plan, done: Mapping[str, Done], verticals: Sequence[str], windows: Sequence[int]
    ):
        self.plan, self.done, self.verticals, self.windows = plan, done, list(verticals), list(windows)
        p = plan.preset
        self.ab_start, self.st_start = plan.starts(windows)
        self.ab_eval = evaluated([w for w in windows if w >= self.ab_start])
        self.st_eval = evaluated([w for w in windows if w >= self.st_start])
        self.fm = p.fm_preset

    def curve(self, section: str, d: int, s: int, v: str, mode: str) -> dict[str, Any]:
        return self.done[vm_key(self.plan.canonical(section, mode), d, s, v, mode)].result

    def cell(self, section: str, v: str, mode: str) -> list[np.ndarray]:
        """``[data seed][model seed, evaluated window]`` NE of one section, vertical and mode."""
        ev = self.st_eval if section.startswith("staleness") else self.ab_eval
        out = []
        for d in self.plan.data_seeds:
            rows = []
            for s in self.plan.seeds:
                c = self.curve(section, d, s, v, mode)
                rows.append(_at(c, ev))
            out.append(np.array(rows, dtype=np.float64))
        return out

    def fm_cell(self, v: str, size: str | None = None, lag: int | None = None) -> list[np.ndarray]:
        """The FM's NE on vertical ``v``'s rows (from the DAS's fm_logit), ``[data seed][1, window]``."""
        size = size or self.fm
        lag = self.plan.ablation_lag if lag is None else lag
        start = self.ab_start if lag == self.plan.ablation_lag else self.st_start
        ev = self.ab_eval if start == self.ab_start else self.st_eval
        out = []
        for d in self.plan.data_seeds:
            teacher = self.done[das_key(d, size, lag, start)].result["teacher"][v]
            out.append(np.array([_at(teacher, ev)], dtype=np.float64))
        return out


def evaluated(vm_windows: Sequence[int]) -> list[int]:
    """The evaluated windows: the second half of a section's VM windows (the later half when odd)."""
    return list(vm_windows[len(vm_windows) // 2 :])


def _at(c: Mapping[str, Any], windows: Sequence[int]) -> list[float]:
    by_w = dict(zip(c["windows"], c["ne"], strict=True))
    return [np.nan if by_w.get(w) is None else float(by_w[w]) for w in windows]


def _mean(cell: Sequence[np.ndarray]) -> float:
    vals = np.concatenate([np.asarray(c, dtype=np.float64).ravel() for c in cell])
    return float(np.nanmean(vals))


def _run_means(cell: Sequence[np.ndarray]) -> list[float]:
    return [float(np.nanmean(row)) for arr in cell for row in arr]


def pooled(cells: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """The mean over verticals of several cells, unit by unit (each vertical weighs the same)."""
    return [np.mean(np.stack([c[d] for c in cells]), axis=0) for d in range(len(cells[0]))]


# ---- sections -----------------------------------------------------------------------------------


def ci_section(r: Results) -> dict[str, dict[str, dict[str, Any]]]:
    """``{vertical: {mode: {gain_pct, ci95, significant, n_units}}}`` of the ablation, paired vs none."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for v in r.verticals:
        none = r.cell("ablation", v, "none")
        out[v] = {m: S.gain_ci(none, r.cell("ablation", v, m)) for m in DISTILL_MODES}
    return out


def ablation_section(r: Results) -> dict[str, Any]:
    """First run's curves (data seed 0, seed 0), pooled means over every run, the FM's NE."""
    d0, s0 = r.plan.data_seeds[0], r.plan.seeds[0]
    curves = {v: {m: r.curve("ablation", d0, s0, v, m) for m in MODES} for v in r.verticals}
    return {
        "seed": s0,
        "data_seed": d0,
        "evaluated_windows": r.ab_eval,
        "verticals": {
            v: {m: {**c, "ne_second_half": _mean([np.array([_at(c, r.ab_eval)])])} for m, c in modes.items()}
            for v, modes in curves.items()
        },
        "means": {v: {m: _mean(r.cell("ablation", v, m)) for m in MODES} for v in r.verticals},
        "means_note": "mean NE over every data seed, model seed and evaluated window",
        "fm_per_vertical": {v: _mean(r.fm_cell(v)) for v in r.verticals},
    }


def repeats_section(r: Results) -> dict[str, Any]:
    """Per-run second-half NE of the ablation and the per-run gain's mean +- std (for reference)."""
    runs = [f"d{d}s{s}" for d in r.plan.data_seeds for s in r.plan.seeds]
    out: dict[str, Any] = {"runs": runs, "seeds": r.plan.seeds, "data_seeds": r.plan.data_seeds}
    out["verticals"] = {}
    for v in r.verticals:
        ne = {m: _run_means(r.cell("ablation", v, m)) for m in MODES}
        row: dict[str, Any] = {m: _mean_std(ne[m]) for m in MODES}
        row["gain_pct"] = {}
        for m in DISTILL_MODES:
            g = [(a - b) / a * 100 for a, b in zip(ne["none"], ne[m], strict=True)]
            row["gain_pct"][m] = {**_mean_std(g), "per_run": g, "positive_runs": sum(x > 0 for x in g)}
        out["verticals"][v] = row
    return out


def _mean_std(xs: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def staleness_sections(r: Results) -> tuple[dict[str, Any], dict[str, Any]]:
    """``staleness`` (pooled means and gains with CIs per level) and ``staleness_recovery``."""
    levels: dict[str, Any] = {}
    recovery: dict[str, Any] = {}
    k0 = min(r.plan.staleness_levels)
    for k in r.plan.staleness_levels:
        levels[str(k)] = {}
        for v in r.verticals:
            none = r.cell("staleness", v, "none")
            aux, sa = r.cell(f"staleness{k}", v, "aux"), r.cell(f"staleness{k}", v, "aux_sa")
            g_aux, g_sa = S.gain_ci(none, aux), S.gain_ci(none, sa)
            levels[str(k)][v] = {
                "fm_ne": _mean(r.fm_cell(v, lag=k)),
                "none": _mean(none),
                "aux": _mean(aux),
                "aux_sa": _mean(sa),
                "gain_aux_pct": g_aux["gain_pct"],
                "gain_aux_sa_pct": g_sa["gain_pct"],
                "adapter_recovers_pct": g_sa["gain_pct"] - g_aux["gain_pct"],
                "ci": {"aux": g_aux, "aux_sa": g_sa},
            }
        if k != k0:
            recovery[str(k)] = {
                v: S.recovery_ci(
                    r.cell(f"staleness{k}", v, "aux"),
                    r.cell(f"staleness{k}", v, "aux_sa"),
                    r.cell(f"staleness{k0}", v, "aux"),
                )
                for v in r.verticals
            }
    section = {
        "vm_start_window": r.st_start,
        "evaluated_windows": r.st_eval,
        "definition": "window t uses the FM trained through t-1-k",
        "levels": levels,
    }
    return section, recovery


def scaling_section(r: Results) -> dict[str, Any]:
    """FM NE per size (mean over data seeds) and the aux_sa VM's gain per FM size (pooled over verticals)."""
    p = r.plan
    fm_ne, fm_ne_d, gain, gain_ci, per_v, presets = {}, {}, {}, {}, {}, {}
    none_cells = {v: r.cell("ablation", v, "none") for v in r.verticals}
    for size in p.fm_sizes:
        sec = f"scaling-{size}"
        fm_ne_d[size] = [r.done[f"fm:{d}:{size}"].result["ne_second_half"] for d in p.data_seeds]
        fm_ne[size] = statistics.fmean(fm_ne_d[size])
        cells = {v: r.cell(sec, v, "aux_sa") for v in r.verticals}
        g = S.gain_ci(pooled(list(none_cells.values())), pooled(list(cells.values())))
        gain[size], gain_ci[size] = g["gain_pct"], g["ci95"]
        per_v[size] = {v: S.gain_ci(none_cells[v], cells[v]) for v in r.verticals}
        walls = [r.done[f"fm:{d}:{size}"].wall_s for d in p.data_seeds]
        presets[size] = {
            "fm_ne": fm_ne[size],
            "fm_ne_per_vertical": {v: _mean(r.fm_cell(v, size=size)) for v in r.verticals},
            "fm_train_wall_s": statistics.fmean(walls),
            "aux_sa": {v: _mean(c) for v, c in cells.items()},
            "gain_pct": {v: per_v[size][v]["gain_pct"] for v in r.verticals},
        }
    return {
        "fm_ne": fm_ne,
        "vm_gain_pct": gain,
        "vm_gain_ci95": gain_ci,
        "vm_gain_pct_per_vertical": per_v,
        "fm_ne_per_data_seed": fm_ne_d,
        "presets": presets,
        "baseline_none": {v: _mean(c) for v, c in none_cells.items()},
        "note": "fm_ne: the FM's progressive NE on all rows (second half of the windows after the first), "
        "mean over data seeds; vm_gain_pct: aux_sa vs none pooled over verticals (equal weight), "
        "paired bootstrap over windows x seeds",
    }


def transfer_section(r: Results) -> tuple[dict[str, Any], dict[str, Any], dict[str, float]]:
    """``transfer_ratio`` {v: {mode: r}}, its CIs, and the FM NE used (NE_FM per vertical)."""
    ratio: dict[str, Any] = {}
    cis: dict[str, Any] = {}
    fm_ne: dict[str, float] = {}
    for v in r.verticals:
        none, fm = r.cell("ablation", v, "none"), r.fm_cell(v)
        fm_ne[v] = _mean(fm)
        ratio[v], cis[v] = {}, {}
        for m in DISTILL_MODES:
            t = S.transfer_ratio_ci(none, r.cell("ablation", v, m), fm)
            ratio[v][m], cis[v][m] = t["ratio"], t["ci95"]
    return ratio, cis, fm_ne


def collapse_section(r: Results) -> dict[str, Any]:
    """Runs > 1 % worse than their paired none (every section), and none runs > 1 % off their siblings."""
    runs = []
    secs = [("ablation", m) for m in DISTILL_MODES]
    secs += [(f"staleness{k}", m) for k in r.plan.staleness_levels for m in ("aux", "aux_sa")]
    secs += [(f"scaling-{z}", "aux_sa") for z in r.plan.fm_sizes if z != r.fm]
    secs = [(sec, m) for sec, m in secs if r.plan.canonical(sec, m) == sec]  # each trained run once
    for sec, m in secs:
        base = r.plan.canonical("staleness" if sec.startswith("staleness") else "ablation", "none")
        for v in r.verticals:
            ne, ne0 = _run_means(r.cell(sec, v, m)), _run_means(r.cell(base, v, "none"))
            ids = [(d, s) for d in r.plan.data_seeds for s in r.plan.seeds]
            for (d, s), a, b in zip(ids, ne, ne0, strict=True):
                runs.append(
                    {
                        "section": sec,
                        "mode": m,
                        "vertical": v,
                        "data_seed": d,
                        "seed": s,
                        "ne": a,
                        "ne_none": b,
                    }
                )
    n, bad = S.collapses(runs)
    none_out = []
    for base in sorted({"ablation", r.plan.canonical("staleness", "none")}):
        for v in r.verticals:
            for d, arr in zip(r.plan.data_seeds, r.cell(base, v, "none"), strict=True):
                vals = {str(s): float(np.nanmean(row)) for s, row in zip(r.plan.seeds, arr, strict=True)}
                none_out += [
                    {"section": base, "vertical": v, "data_seed": d, "seed": int(s), "ne": vals[s]}
                    for s in S.outliers(vals)
                ]
    by_mode = {m: sum(b["mode"] == m for b in bad) for m in DISTILL_MODES}
    return {
        "collapses": n,
        "collapses_by_mode": by_mode,
        "collapses_detail": bad,
        "runs_checked": len(runs),
        "none_outliers": none_out,
    }


def bayes_section(
    r: Results, bayes: Sequence[Mapping[int, Mapping[str, float]] | None]
) -> dict[str, float] | None:
    """Mean Bayes NE per vertical over the ablation's evaluated windows and data seeds (None: unknown)."""
    if not bayes or any(b is None for b in bayes):
        return None
    out = {}
    for v in r.verticals:
        vals = [
            b[w][v] for b in bayes if b is not None for w in r.ab_eval if w in b and b[w].get(v) is not None
        ]
        if vals:
            out[v] = statistics.fmean(vals)
    return out


def selection_section(r: Results) -> dict[str, Any] | None:
    """The grid, the per-config tuning scores, and the frozen choice."""
    if "select:final" not in r.done:
        return None
    rounds = []
    from exfm_trainer.study_runs import SELECT_ORDER

    none_curves = r.done["tune:none"].result["curves"]
    for i, (param, mode) in enumerate(SELECT_ORDER):
        key = f"select:r{i}"
        if key not in r.done:
            continue
        res = r.done[key].result
        tried = [
            {
                "config": {k: x["config"][k] for k in ("alpha", "beta", "weight", "adapter_share")},
                "mode": x["mode"],
                "score": statistics.fmean(x["scores"].values()),
                "per_vertical": x["scores"],
                "skipped": x.get("skipped", []),
            }
            for key, x in res["results"].items()
            if key.startswith(f"tune:r{i}:")
        ]
        rounds.append({"param": param, "mode": mode, "tried": tried, "choice": res["config"][param]})
    first = next(iter(none_curves.values()))
    tuning = list(first["windows"])
    score_from = tuning[len(tuning) // 2]
    from exfm_trainer.study import mean_from

    return {
        "method": "coordinate search (alpha, beta, w on aux; then adapter_share on aux_sa), one pass",
        "grid": {k: list(v) for k, v in r.plan.grid.items()},
        "data_seed": r.plan.data_seeds[0],
        "seed": r.plan.seeds[0],
        "tuning_windows": tuning,
        "score_windows": [w for w in tuning if w >= score_from],
        "score": "mean progressive NE over the score windows, averaged over verticals (lower is better)",
        "none_score": statistics.fmean(
            mean_from(c["ne"], c["windows"], score_from) for c in none_curves.values()
        ),
        "rounds": rounds,
        "chosen": r.done["select:final"].result["config"],
        "evaluated_windows_start": r.ab_eval[0],
    }


def goals_section(res: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's acceptance goals, checked on this run (``met`` and what was measured)."""
    ci, rec, sc = res["ci"], res["staleness_recovery"], res["scaling"]
    verts = list(ci)
    sizes = list(sc["fm_ne"])
    fm = [sc["fm_ne"][z] for z in sizes]
    gain = [sc["vm_gain_pct"][z] for z in sizes]
    near = [k for k in ("1", "2") if k in rec]
    goals = {
        "aux_sa_ci_lower_above_0_every_vertical": {
            "met": all(ci[v]["aux_sa"]["ci95"][0] > 0 for v in verts),
            "measured": {v: ci[v]["aux_sa"]["ci95"][0] for v in verts},
        },
        "aux_mean_at_least_kd_every_vertical": {
            "met": all(ci[v]["aux"]["gain_pct"] >= ci[v]["kd"]["gain_pct"] for v in verts),
            "measured": {v: [ci[v]["aux"]["gain_pct"], ci[v]["kd"]["gain_pct"]] for v in verts},
        },
        "recovered_at_least_0.3_ci_lower_above_0_at_k1_k2": {
            "met": bool(near)
            and all(rec[k][v]["recovered"] >= 0.3 and rec[k][v]["ci95"][0] > 0 for k in near for v in verts),
            "measured": {k: {v: [rec[k][v]["recovered"], rec[k][v]["ci95"][0]] for v in verts} for k in near},
        },
        "no_significant_adapter_loss_at_any_k": {
            "met": all(rec[k][v]["adapter_gain_ne_ci95"][1] >= 0 for k in rec for v in verts)
            and all(
                lvl[v]["ci"]["aux_sa"]["ci95"][1] >= 0
                for lvl in res["staleness"]["levels"].values()
                for v in verts
            ),
            "measured": "adapter vs aux and aux_sa vs none intervals per k (staleness section)",
        },
        "fm_ne_strictly_decreasing_with_size": {
            "met": all(a > b for a, b in itertools.pairwise(fm)),
            "measured": dict(zip(sizes, fm, strict=True)),
        },
        "vm_gain_non_decreasing_with_fm_size": {
            "met": all(a <= b for a, b in itertools.pairwise(gain)),
            "measured": dict(zip(sizes, gain, strict=True)),
        },
        "no_collapses": {"met": res["collapses"] == 0, "measured": res["collapses"]},
    }
    return goals


def timings_section(done: Mapping[str, Done]) -> dict[str, Any]:
    """Wall and CPU seconds per task kind (``data``, ``fm:<size>``, ``das``, ``vm``, ``tune``)."""
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    count: dict[str, int] = {}
    for key, dn in done.items():
        parts = key.split(":")
        kind = f"fm:{parts[2]}" if parts[0] == "fm" else parts[0]
        wall[kind] = wall.get(kind, 0.0) + dn.wall_s
        cpu[kind] = cpu.get(kind, 0.0) + dn.cpu_s
        count[kind] = count.get(kind, 0) + 1
    return {"task_wall_s": wall, "task_cpu_s": cpu, "tasks": count}


def summarize(
    plan: Plan, done: Mapping[str, Done], verticals: Sequence[str], windows: Sequence[int]
) -> dict[str, Any]:
    """Every statistics section of the study JSON."""
    r = Results(plan, done, verticals, windows)
    staleness, recovery = staleness_sections(r)
    ratio, ratio_ci, fm_ne = transfer_section(r)
    bayes = bayes_section(r, [done[f"data:{d}"].result["bayes_ne"] for d in plan.data_seeds])
    out: dict[str, Any] = {
        "ablation": ablation_section(r),
        "ci": ci_section(r),
        "repeats": repeats_section(r),
        "staleness": staleness,
        "staleness_recovery": recovery,
        "scaling": scaling_section(r),
        "transfer_ratio": ratio,
        "transfer_ratio_ci95": ratio_ci,
        "fm_ne_per_vertical": fm_ne,
        **collapse_section(r),
        "selection": selection_section(r),
        "statistics": {
            "unit": "(data seed, model seed, evaluated window); modes paired with none on the same unit",
            "bootstrap": f"{S.N_BOOT} replicates, RNG seed {S.RNG_SEED}, stratified by data seed; per "
            "replicate model seeds and windows are drawn with replacement independently (two-way cluster)",
            "ci": "percentile 95 % interval; a gain counts only when its interval excludes 0",
            "gain_pct": "100 * (mean NE_none - mean NE_mode) / mean NE_none over the paired units",
            "collapse": "a run whose evaluated-window NE is > 1 % above its paired none run's",
        },
        "timings": timings_section(done),
    }
    if bayes is not None:
        out["bayes_ne"] = bayes
    out["goals"] = goals_section(out)
    return out
