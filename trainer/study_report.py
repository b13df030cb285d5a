"""Tables and plots of the transfer study (markdown + PNG); no torch import."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODE_LABELS = {"none": "none", "kd": "kd", "aux": "aux", "aux_sa": "aux+adapter"}


def gain_pct(base: float, other: float) -> float:
    """Relative NE gain of ``other`` over ``base`` in percent (positive = lower NE = better)."""
    return (base - other) / base * 100.0


def finite_json(x: Any) -> Any:
    """``x`` with every NaN/inf float replaced by None (strict JSON; e.g. a ratio over a zero
    denominator, or a skipped tuning config's score)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite_json(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite_json(v) for v in x]
    return x


def dump_json(x: Any) -> str:
    """Strict JSON text of a study result (see :func:`finite_json`)."""
    return json.dumps(finite_json(x), indent=2, default=str, allow_nan=False) + "\n"


def _num(x: float | None, fmt: str) -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Markdown table lines (floats with 4 decimals)."""

    def cell(x: Any) -> str:
        if isinstance(x, float):
            return f"{x:.4f}"
        return str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines


def ablation_table(verticals: dict[str, dict[str, float]]) -> list[str]:
    """Second-half NE per vertical and mode, and each mode's gain over ``none`` in percent."""
    modes = [m for m in MODE_LABELS if any(m in row for row in verticals.values())]
    header = ["vertical", *(MODE_LABELS[m] for m in modes)]
    header += [f"{MODE_LABELS[m]} gain %" for m in modes if m != "none"]
    rows = []
    for v, row in verticals.items():
        cells: list[Any] = [v, *(row[m] for m in modes)]
        cells += [f"{gain_pct(row['none'], row[m]):+.2f}" for m in modes if m != "none"]
        rows.append(cells)
    return md_table(header, rows)


def study_markdown(result: dict[str, Any]) -> str:
    """``study.md`` of a :func:`exfm_trainer.study.run_study` result dict."""
    p = result["preset"]
    syn = p["synthetic"]
    lines = [
        f"# Transfer study (preset `{p['name']}`)",
        "",
        f"Dataset `{result['dataset']['uri']}`: windows {result['windows'][0]}..{result['windows'][-1]}"
        + (
            f" (synthetic: {syn['rows_per_window']} rows/window, drift {'on' if syn['drift'] else 'off'})"
            if "synthetic" in result["dataset"]["uri"] or result["dataset"]["uri"].endswith("/data")
            else ""
        )
        + f". FM `{p['fm_preset']}`, VM `{p['vm_preset']}`, FM staleness {result['staleness']} "
        f"({result['staleness_definition']}). "
        f"VM windows {result['vm_windows'][0]}..{result['vm_windows'][-1]}.",
        "",
        f"Metric: {result['metric']}. Lower is better; gain % = (NE_none - NE_mode) / NE_none.",
        "",
        *ablation_table(result["verticals"]),
        "",
        "FM (teacher) NE on each vertical, from the DAS predictions (same windows, second half):",
        "",
        *md_table(
            ["vertical", "FM NE", "FM AUC"],
            [[v, q["ne_second_half"], q["auc_second_half"]] for v, q in result["fm_per_vertical"].items()],
        ),
        "",
        f"Wall time: {result['timings_s']['total_wall']:.1f} s "
        + "("
        + ", ".join(f"{k} {v:.1f} s" for k, v in result["timings_s"]["wall"].items())
        + ").",
        "",
        "![NE over windows](study_ne.png)",
        "",
    ]
    return "\n".join(lines)


def plot_curves(
    per_window: dict[str, dict[str, dict[str, Any]]],
    path: Path,
    title: str,
    teacher: dict[str, dict[str, Any]] | None = None,
) -> None:
    """One panel per vertical: progressive NE over windows for each mode (and the FM's, dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_window)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, v in zip(axes[0], names, strict=True):
        ys: list[float] = []
        for mode, c in per_window[v].items():
            ax.plot(c["windows"], c["ne"], marker="o", ms=3, label=MODE_LABELS.get(mode, mode))
            ys += [y for y in c["ne"][len(c["ne"]) // 3 :] if y is not None]
        if teacher and v in teacher:
            ax.plot(teacher[v]["windows"], teacher[v]["ne"], "k--", lw=1, label="FM (DAS)")
            ys += [y for y in teacher[v]["ne"] if y is not None]
        if ys:  # zoom on the converged part; the first windows of a fresh VM are far off
            lo, hi = min(ys), max(ys)
            ax.set_ylim(lo - 0.01, hi + 0.02)
        ax.set_title(v)
        ax.set_xlabel("window")
        ax.set_ylabel("progressive NE")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_study_outputs(result: dict[str, Any], out: Path) -> dict[str, str]:
    """study.json, study.md and study_ne.png under ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "study.json", "markdown": out / "study.md", "plot": out / "study_ne.png"}
    paths["json"].write_text(dump_json(result))
    paths["markdown"].write_text(study_markdown(result))
    plot_curves(
        result["per_window"],
        paths["plot"],
        f"Progressive NE per vertical (FM {result['staleness']} window(s) stale)",
        result.get("fm_per_vertical"),
    )
    return {k: str(v) for k, v in paths.items()}


def _ci(x: dict[str, Any], digits: int = 2) -> str:
    lo, hi = x["ci95"]
    return f"[{_num(lo, f'+.{digits}f')}, {_num(hi, f'+.{digits}f')}]"


def _sig(x: dict[str, Any]) -> str:
    return {1: "**gain**", -1: "**loss**"}.get(x.get("significant", 0), "-")


def _f(x: float | None, fmt: str = ".4f") -> str:
    return "-" if x is None else format(x, fmt)


def setup_lines(res: dict[str, Any]) -> list[str]:
    """One paragraph: data, models, seeds, wall time."""
    s = res["setup"]
    syn = s["preset"]["synthetic"]
    data = (
        f"imported dataset `{s['dataset']['uri']}`"
        if s.get("dataset")
        else f"synthetic stream: {syn['windows']} windows x {syn['rows_per_window']} rows"
    )
    return [
        f"Preset `{s.get('preset_name', '?')}`, {data}, {len(s['verticals'])} verticals "
        f"({', '.join(s['verticals'])}); FM `{s['preset']['fm_preset']}`, VM `{s['preset']['vm_preset']}`; "
        f"model seeds {s['seeds']} x data seeds {s.get('data_seeds', [0])} "
        f"(FM seed: {s.get('fm_seed', 'per data seed')}); {s['workers']} worker processes; "
        f"wall {res['wall_s']:.0f} s.",
        "",
        f"Statistics: {res['statistics']['bootstrap']}; {res['statistics']['ci']}. "
        f"Gain % = {res['statistics']['gain_pct']}.",
    ]


def ci_lines(res: dict[str, Any]) -> list[str]:
    """The paired gains vs none with 95 % intervals, per vertical and mode."""
    rows = []
    for v, modes in res["ci"].items():
        for m, x in modes.items():
            rows.append([v, MODE_LABELS[m], f"{x['gain_pct']:+.2f}", _ci(x), _sig(x)])
    return md_table(["vertical", "mode", "gain %", "95 % CI", "counts as"], rows)


def transfer_lines(res: dict[str, Any]) -> list[str]:
    """NE none / FM / Bayes and the transfer ratio per vertical and mode."""
    bayes = res.get("bayes_ne") or {}
    rows = []
    for v, modes in res["transfer_ratio"].items():
        rows.append(
            [
                v,
                res["ablation"]["means"][v]["none"],
                res["fm_ne_per_vertical"][v],
                _f(bayes.get(v)),
                *(
                    f"{_num(modes[m], '+.3f')} {_ci({'ci95': res['transfer_ratio_ci95'][v][m]}, 3)}"
                    for m in ("kd", "aux", "aux_sa")
                ),
            ]
        )
    head = ["vertical", "NE none", "NE FM (1 stale)", "Bayes NE", "transfer kd", "transfer aux"]
    return md_table([*head, "transfer aux+adapter"], rows)


def staleness_lines(res: dict[str, Any]) -> list[str]:
    """Gains per staleness level (with CIs) and the adapter's recovery ratio."""
    st = res["staleness"]
    rows = []
    for k, per_v in st["levels"].items():
        for v, r in per_v.items():
            ci = r.get("ci", {})
            rows.append(
                [
                    k,
                    v,
                    r["fm_ne"],
                    r["none"],
                    f"{r['gain_aux_pct']:+.2f} {_ci(ci['aux']) if 'aux' in ci else ''}",
                    f"{r['gain_aux_sa_pct']:+.2f} {_ci(ci['aux_sa']) if 'aux_sa' in ci else ''}",
                ]
            )
    lines = [
        f"VMs from window {st['vm_start_window']} ({st['definition']}); evaluated windows "
        f"{st.get('evaluated_windows', ['?'])[0]}..{st.get('evaluated_windows', ['?'])[-1]}.",
        "",
        *md_table(
            ["staleness k", "vertical", "FM NE", "NE none", "aux gain % [CI]", "aux+adapter gain % [CI]"],
            rows,
        ),
        "",
    ]
    rec = res.get("staleness_recovery") or {}
    if rec:
        rows = []
        for k, per_v in rec.items():
            for v, r in per_v.items():
                rows.append(
                    [
                        k,
                        v,
                        _num(r["recovered"], "+.2f"),
                        _ci(r),
                        f"{r['adapter_gain_ne']:+.5f} {_ci({'ci95': r['adapter_gain_ne_ci95']}, 5)}",
                        f"{r['staleness_cost_ne']:+.5f} {_ci({'ci95': r['staleness_cost_ne_ci95']}, 5)}",
                    ]
                )
        lines += [
            "Recovered share r = (NE_aux,k - NE_aux_sa,k) / (NE_aux,k - NE_aux,0): the adapter's gain "
            "over aux divided by what staleness costs aux (both paired, bootstrapped together; a cost "
            "near 0 makes r unstable).",
            "",
            *md_table(
                [
                    "k",
                    "vertical",
                    "recovered r",
                    "95 % CI",
                    "adapter gain (NE) [CI]",
                    "staleness cost (NE) [CI]",
                ],
                rows,
            ),
            "",
        ]
    return lines


def scaling_lines(res: dict[str, Any]) -> list[str]:
    """FM NE and the aux+adapter VM gain per FM size."""
    sc = res["scaling"]
    verts = list(sc["baseline_none"])
    rows = []
    for size, fm_ne in sc["fm_ne"].items():
        per_v = sc["vm_gain_pct_per_vertical"][size]
        rows.append(
            [
                size,
                fm_ne,
                f"{sc['vm_gain_pct'][size]:+.2f} {_ci({'ci95': sc['vm_gain_ci95'][size]})}",
                *(f"{per_v[v]['gain_pct']:+.2f} {_sig(per_v[v])}" for v in verts),
                _f(sc["presets"][size].get("fm_train_wall_s"), ".0f"),
            ]
        )
    head = [
        "FM",
        "FM NE",
        "VM gain % (all verticals) [CI]",
        *(f"{v} gain %" for v in verts),
        "FM train wall s",
    ]
    return md_table(head, rows)


def selection_lines(res: dict[str, Any]) -> list[str]:
    """The hyper-parameter grid, the tuning scores and the frozen choice."""
    sel = res.get("selection")
    if not sel:
        return ["No selection (run with the preset's distillation settings)."]
    rows = []
    for rnd in sel["rounds"]:
        for t in rnd["tried"]:
            c = t["config"]
            rows.append(
                [
                    rnd["param"],
                    MODE_LABELS[rnd["mode"]],
                    f"alpha {c['alpha']:g}, beta {c['beta']:g}, w {c['weight']:g}, "
                    f"share {c['adapter_share']:g}",
                    "skipped (alpha saturates the target)" if t.get("skipped") else t["score"],
                ]
            )
    chosen = sel["chosen"]
    return [
        f"{sel['method']}. Tuning on data seed {sel['data_seed']}, model seed {sel['seed']}, VMs trained on "
        f"windows {sel['tuning_windows'][0]}..{sel['tuning_windows'][-1]} only and scored on "
        f"{sel['score_windows'][0]}..{sel['score_windows'][-1]} ({sel['score']}); the evaluated windows "
        f"start at {sel['evaluated_windows_start']}. Grid: "
        + ", ".join(f"{k} {v}" for k, v in sel["grid"].items())
        + f". Score of none: {sel['none_score']:.4f}.",
        "",
        *md_table(["round", "mode", "config", "score"], rows),
        "",
        "Chosen (frozen for every run): "
        + ", ".join(f"{k} {chosen[k]:g}" for k in ("alpha", "beta", "weight", "adapter_share")),
    ]


def collapse_lines(res: dict[str, Any]) -> list[str]:
    """Distilled runs > 1 % worse than their paired none, and outlying none runs."""
    lines = [
        f"Collapses (a distilled run > 1 % worse than the same seed's none): **{res['collapses']}** of "
        f"{res.get('runs_checked', '?')} runs"
        + (
            " (" + ", ".join(f"{MODE_LABELS[m]} {n}" for m, n in res["collapses_by_mode"].items()) + ")."
            if "collapses_by_mode" in res
            else "."
        )
    ]
    for c in res.get("collapses_detail", [])[:10]:
        lines.append(
            f"- {c['section']} {c['vertical']} {c['mode']} data seed {c['data_seed']} seed {c['seed']}: "
            f"NE {c['ne']:.4f} vs none {c['ne_none']:.4f}"
        )
    out = res.get("none_outliers") or []
    lines += ["", f"`none` runs > 1 % above the median of their sibling seeds: {len(out)}."]
    return lines


def serving_lines(res: dict[str, Any]) -> list[str]:
    sv = res["serving"]
    rows = []
    lat = sv["latency_ms"]
    for b, r in sv["ratios"].items():
        rows.append(
            [
                b,
                f"{lat['baseline_vm'][b]['p50_ms']:.3f} / {lat['baseline_vm'][b]['p99_ms']:.3f}",
                f"{lat['exfm_vm'][b]['p50_ms']:.3f} / {lat['exfm_vm'][b]['p99_ms']:.3f}",
                f"{lat['fm'][b]['p50_ms']:.3f} / {lat['fm'][b]['p99_ms']:.3f}",
                f"{r['exfm_over_baseline_p50']:.3f}",
                f"{r['fm_over_vm_p50']:.1f}",
            ]
        )
    head = ["batch", "baseline VM p50/p99 ms", "ExFM VM p50/p99 ms", "FM p50/p99 ms"]
    lines = md_table([*head, "ExFM/baseline (goal <= 1.02)", "FM/VM"], rows)
    lines += ["", f"Goal met: {sv['meets_goal']}. {sv['note']}.", "", "## One FM, N VMs", ""]
    one = res["one_fm_n_vms"]
    c = one["cost_cpu_s"]
    lines += [
        f"One FM training ({c['fm_train']:.1f} CPU s) and one DAS pass ({c['das_once'] or 0:.1f} CPU s) "
        f"serve {c['vm_trainings']} VM trainings of one data seed's ablation "
        f"({c['vm_train_total']:.1f} CPU s in all).",
        "",
    ]
    ext = one.get("external_vs_codistill")
    if ext:
        lines += md_table(
            ["N students", "external CPU s", "co-distillation CPU s", "ratio"],
            [[n, r["external_cpu_s"], r["codistill_cpu_s"], r["ratio"]] for n, r in ext["per_n"].items()],
        )
        lines += ["", f"Source: {one['external_vs_codistill_source']}.", ""]
    t = res.get("timings")
    if t:
        lines += [
            "Task cost (wall s / CPU s, summed over tasks): "
            + ", ".join(
                f"{k} {t['task_wall_s'][k]:.0f} / {t['task_cpu_s'][k]:.0f} ({t['tasks'][k]})"
                for k in t["task_wall_s"]
            )
            + ".",
            "",
        ]
    return lines


def goals_lines(res: dict[str, Any]) -> list[str]:
    """The issue's acceptance goals, met or not on this run."""
    goals = res.get("goals") or {}
    labels = {
        "aux_sa_ci_lower_above_0_every_vertical": "aux+adapter: 95 % CI lower bound > 0 on every vertical",
        "aux_mean_at_least_kd_every_vertical": "aux >= kd (mean gain) on every vertical",
        "recovered_at_least_0.3_ci_lower_above_0_at_k1_k2": "recovered >= 0.3, CI lower > 0 at k = 1, 2",
        "no_significant_adapter_loss_at_any_k": "no significant adapter loss at any staleness k",
        "fm_ne_strictly_decreasing_with_size": "FM NE strictly decreasing small -> large",
        "vm_gain_non_decreasing_with_fm_size": "VM gain non-decreasing with FM size",
        "no_collapses": "collapses = 0",
    }
    rows = [[labels.get(name, name), "yes" if g["met"] else "**no**"] for name, g in goals.items()]
    return md_table(["goal", "met"], rows) if rows else []


def bench_markdown(res: dict[str, Any], image_prefix: str = "") -> str:
    """The study benchmark's tables (see bench/study.py); images under ``image_prefix``."""
    stem = f"{image_prefix}study_bench_{res['setup'].get('preset_name', 'run')}"
    ab = res["ablation"]
    lines = [
        "# Transfer-study benchmark",
        "",
        *setup_lines(res),
        "",
        "## Goals of issue 10 on this run",
        "",
        *goals_lines(res),
        "",
        "## Ablation: mean progressive NE over the evaluated windows (every seed)",
        "",
        *ablation_table(ab["means"]),
        "",
        f"![ablation]({stem}_ablation.png)",
        "",
        "## Paired gains vs none with 95 % intervals",
        "",
        *ci_lines(res),
        "",
        "## Transfer ratio, FM and Bayes NE",
        "",
        "Transfer ratio = (NE_none - NE_mode) / (NE_none - NE_FM): the share of the FM's lead over the "
        "student that distillation passes on (NE_FM: the 1-window-stale FM's progressive NE on the "
        "vertical's rows of the same windows, from the DAS output). Bayes NE: the generator's true "
        "probabilities (the floor).",
        "",
        *transfer_lines(res),
        "",
        *collapse_lines(res),
        "",
        "## FM staleness",
        "",
        *staleness_lines(res),
        f"![staleness]({stem}_staleness.png)",
        "",
        "## FM scaling (staleness 1, aux+adapter)",
        "",
        *scaling_lines(res),
        "",
        f"![scaling]({stem}_scaling.png)",
        "",
        "## Hyper-parameter selection (early windows only)",
        "",
        *selection_lines(res),
        "",
        "## Serving latency (1 thread)",
        "",
        *serving_lines(res),
    ]
    return "\n".join(lines)


def _bar_plot(
    path: Path,
    groups: list[str],
    series: dict[str, list[float]],
    ylabel: str,
    title: str,
    errors: dict[str, list[float]] | None = None,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(groups))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(min(12.0, 2.0 + 0.35 * len(groups) * max(1, len(series))), 3.6))
    for i, (name, vals) in enumerate(series.items()):
        err = errors.get(name) if errors else None
        ax.bar(x + i * width - 0.4 + width / 2, vals, width, yerr=err, capsize=3, label=name)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _err(x: float, ci: Sequence[float]) -> tuple[float, float]:
    return max(0.0, x - ci[0]), max(0.0, ci[1] - x)


def _errs(pairs: list[tuple[float, float]]) -> list[list[float]]:
    return [[p[0] for p in pairs], [p[1] for p in pairs]]


def write_bench_outputs(res: dict[str, Any], out: Path) -> dict[str, str]:
    """study_bench_<preset>.md and PNG plots under ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    stem = f"study_bench_{res['setup'].get('preset_name', 'run')}"
    paths = {
        "markdown": out / f"{stem}.md",
        "ablation_plot": out / f"{stem}_ablation.png",
        "gains_plot": out / f"{stem}_gains.png",
        "staleness_plot": out / f"{stem}_staleness.png",
        "scaling_plot": out / f"{stem}_scaling.png",
    }
    paths["markdown"].write_text(
        bench_markdown(res).replace("_ablation.png)", f"_ablation.png)\n\n![gains]({stem}_gains.png)", 1)
    )
    abl = res["ablation"]["verticals"]
    plot_curves(
        {v: {m: c for m, c in modes.items()} for v, modes in abl.items()},
        paths["ablation_plot"],
        "Progressive NE per vertical (first data seed and seed, FM 1 window stale)",
    )
    verts = list(res["ci"])
    modes = ("kd", "aux", "aux_sa")
    _bar_plot(
        paths["gains_plot"],
        verts,
        {MODE_LABELS[m]: [res["ci"][v][m]["gain_pct"] for v in verts] for m in modes},
        "NE gain over none (%)",
        "Paired gain vs none, 95 % CI (all seeds)",
        {
            MODE_LABELS[m]: _errs([_err(res["ci"][v][m]["gain_pct"], res["ci"][v][m]["ci95"]) for v in verts])
            for m in modes
        },
    )
    levels = res["staleness"]["levels"]
    series, errs = {}, {}
    for v in verts:
        for m, key in (("aux", "gain_aux_pct"), ("aux_sa", "gain_aux_sa_pct")):
            name = f"{v} {MODE_LABELS[m]}"
            series[name] = [levels[k][v][key] for k in levels]
            if all("ci" in levels[k][v] for k in levels):
                errs[name] = _errs([_err(levels[k][v][key], levels[k][v]["ci"][m]["ci95"]) for k in levels])
    _bar_plot(
        paths["staleness_plot"],
        [f"stale {k}" for k in levels],
        series,
        "NE gain over none (%)",
        "Gain vs FM staleness (95 % CI)",
        errs or None,
    )
    sc = res["scaling"]
    sizes = list(sc["fm_ne"])
    _bar_plot(
        paths["scaling_plot"],
        [f"{z}\nFM NE {sc['fm_ne'][z]:.4f}" for z in sizes],
        {"all verticals": [sc["vm_gain_pct"][z] for z in sizes]},
        "aux+adapter NE gain over none (%)",
        "VM gain vs FM size (95 % CI)",
        {"all verticals": _errs([_err(sc["vm_gain_pct"][z], sc["vm_gain_ci95"][z]) for z in sizes])},
    )
    return {k: str(v) for k, v in paths.items()}


def results_markdown(res: dict[str, Any], json_path: str, command: str, notes: str = "") -> str:
    """docs/results.md: the command, the benchmark's tables (images under ``results/``), notes."""
    body = bench_markdown(res, image_prefix="results/").split("\n", 1)[1]
    stem = f"results/study_bench_{res['setup'].get('preset_name', 'run')}"
    body = body.replace(f"({stem}_ablation.png)", f"({stem}_ablation.png)\n\n![gains]({stem}_gains.png)", 1)
    return "\n".join(
        [
            "# Results: external distillation, measured",
            "",
            "Generated by `python -m exfm_trainer.study_report` from the committed JSON "
            f"[`{json_path}`]({json_path.removeprefix('docs/')}); do not edit by hand "
            "(discussion goes into the notes file the generator appends).",
            "",
            "```bash",
            command,
            f"python -m exfm_trainer.study_report --json {json_path} --out docs/results.md",
            "```",
            body,
            "",
            notes.strip(),
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m exfm_trainer.study_report --json RESULT.json --out docs/results.md [--notes F]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m exfm_trainer.study_report", description=main.__doc__)
    ap.add_argument("--json", required=True, type=Path, help="bench/study.py's JSON (committed)")
    ap.add_argument("--out", required=True, type=Path, help="markdown to write (docs/results.md)")
    ap.add_argument("--notes", type=Path, default=None, help="hand-written discussion appended verbatim")
    ap.add_argument(
        "--command",
        default=None,
        help="the command that produced the JSON (default: bench/study.py with the JSON's preset)",
    )
    args = ap.parse_args(argv)
    try:
        res = json.loads(args.json.read_text())
        notes = args.notes.read_text() if args.notes else ""
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    name = res["setup"].get("preset_name", "standard")
    cmd = args.command or (
        f"python bench/study.py --preset {name} --json {args.json.as_posix()} "
        f"--out {args.json.parent.as_posix()}"
    )
    args.out.write_text(results_markdown(res, args.json.as_posix(), cmd, notes))
    print(json.dumps({"markdown": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
