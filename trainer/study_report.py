"""Tables and plots of the transfer study (markdown + PNG); no torch import."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODE_LABELS = {"none": "none", "kd": "kd", "aux": "aux", "aux_sa": "aux+adapter"}


def gain_pct(base: float, other: float) -> float:
    """Relative NE gain of ``other`` over ``base`` in percent (positive = lower NE = better)."""
    return (base - other) / base * 100.0


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
    paths["json"].write_text(json.dumps(result, indent=2, default=str) + "\n")
    paths["markdown"].write_text(study_markdown(result))
    plot_curves(
        result["per_window"],
        paths["plot"],
        f"Progressive NE per vertical (FM {result['staleness']} window(s) stale)",
        result.get("fm_per_vertical"),
    )
    return {k: str(v) for k, v in paths.items()}


def _pm(s: dict[str, float], digits: int = 4) -> str:
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def bench_markdown(res: dict[str, Any]) -> str:
    """The study benchmark's tables (see bench/study.py)."""
    s = res["setup"]
    syn = s["preset"]["synthetic"]
    lines = [
        "# Transfer-study benchmark",
        "",
        f"Synthetic stream: {syn['windows']} windows x {syn['rows_per_window']} rows, "
        f"{len(s['verticals'])} verticals ({', '.join(s['verticals'])}), drift "
        f"{'on' if syn['drift'] else 'off'}; FM `{s['preset']['fm_preset']}`, "
        f"VM `{s['preset']['vm_preset']}`; "
        f"seeds {s['seeds']}; preset `{s.get('preset_name', '?')}`; wall {res['wall_s']:.0f} s.",
        "",
        "## Ablation (seed 0, FM 1 window stale): second-half progressive NE",
        "",
        *ablation_table(res["ablation"]["means"]),
        "",
        "FM NE on each vertical (DAS predictions): "
        + ", ".join(f"{v} {x:.4f}" for v, x in res["ablation"]["fm_per_vertical"].items()),
        "",
        "![ablation](study_bench_ablation.png)",
        "",
        "## Repeats: mean ± std over seeds (gain % paired per seed)",
        "",
    ]
    rep = res["repeats"]
    rows = []
    for v, r in rep["verticals"].items():
        for m in ("kd", "aux", "aux_sa"):
            g = r["gain_pct"][m]
            rows.append(
                [
                    v,
                    MODE_LABELS[m],
                    _pm(r["none"]),
                    _pm(r[m]),
                    _pm(g, 2),
                    f"{g.get('positive_seeds', '?')}/{g['n']}",
                    "yes" if g["significant"] else "no",
                ]
            )
    lines += md_table(
        ["vertical", "mode", "NE none", "NE mode", "gain %", "seeds with gain > 0", "significant"], rows
    )
    lines += ["", f"Rule: {rep['significance_rule']}.", "", "## FM staleness", ""]
    st = res["staleness"]
    rows = []
    for k, per_v in st["levels"].items():
        for v, r in per_v.items():
            rows.append(
                [
                    k,
                    v,
                    r["fm_ne"],
                    r["none"],
                    f"{r['gain_aux_pct']:+.2f}",
                    f"{r['gain_aux_sa_pct']:+.2f}",
                    f"{r['adapter_recovers_pct']:+.2f}",
                ]
            )
    lines += [
        f"VMs from window {st['vm_start_window']} ({st['definition']}).",
        "",
        *md_table(
            [
                "staleness",
                "vertical",
                "FM NE",
                "NE none",
                "aux gain %",
                "aux+adapter gain %",
                "adapter adds %",
            ],
            rows,
        ),
        "",
        "![staleness](study_bench_staleness.png)",
        "",
        "## FM scaling (seed 0, staleness 1)",
        "",
    ]
    sc = res["scaling"]["presets"]
    verts = list(res["scaling"]["baseline_none"])
    rows = [
        [
            name,
            r["fm_ne"],
            *(f"{r['gain_pct'][v]:+.2f}" for v in verts),
            f"{r['fm_train_wall_s']:.0f}" if r.get("fm_train_wall_s") else "-",
        ]
        for name, r in sc.items()
    ]
    lines += md_table(["FM preset", "FM NE", *(f"{v} aux+adapter gain %" for v in verts), "FM train s"], rows)
    lines += ["", "![scaling](study_bench_scaling.png)", "", "## Serving latency (1 thread)", ""]
    sv = res["serving"]
    rows = []
    for b, r in sv["ratios"].items():
        lat = sv["latency_ms"]
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
    lines += md_table(
        [
            "batch",
            "baseline VM p50/p99 ms",
            "ExFM VM p50/p99 ms",
            "FM p50/p99 ms",
            "ExFM/baseline (goal <= 1.02)",
            "FM/VM",
        ],
        rows,
    )
    lines += ["", f"Goal met: {sv['meets_goal']}. {sv['note']}.", "", "## One FM, N VMs", ""]
    one = res["one_fm_n_vms"]
    c = one["cost_cpu_s"]
    lines += [
        f"One FM training ({c['fm_train']:.1f} CPU s) and one DAS pass "
        f"({c['das_once'] or 0:.1f} CPU s) serve "
        f"{c['vm_trainings']} VM trainings ({c['vm_train_total']:.1f} CPU s in all).",
        "",
    ]
    ext = one.get("external_vs_codistill")
    if ext:
        lines += md_table(
            ["N students", "external CPU s", "co-distillation CPU s", "ratio"],
            [[n, r["external_cpu_s"], r["codistill_cpu_s"], r["ratio"]] for n, r in ext["per_n"].items()],
        )
        lines += ["", f"Source: {one['external_vs_codistill_source']}.", ""]
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


def write_bench_outputs(res: dict[str, Any], out: Path) -> dict[str, str]:
    """study_bench_<preset>.md and PNG plots under ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    stem = f"study_bench_{res['setup'].get('preset_name', 'run')}"
    paths = {
        "markdown": out / f"{stem}.md",
        "ablation_plot": out / f"{stem}_ablation.png",
        "staleness_plot": out / f"{stem}_staleness.png",
        "scaling_plot": out / f"{stem}_scaling.png",
    }
    text = bench_markdown(res)
    for key in ("ablation", "staleness", "scaling"):
        text = text.replace(f"(study_bench_{key}.png)", f"({stem}_{key}.png)")
    paths["markdown"].write_text(text)
    abl = res["ablation"]["verticals"]
    plot_curves(
        {v: {m: c for m, c in modes.items()} for v, modes in abl.items()},
        paths["ablation_plot"],
        "Progressive NE per vertical (seed 0, FM 1 window stale)",
    )
    levels = res["staleness"]["levels"]
    verts = list(next(iter(levels.values())))
    series, errs = {}, None
    for v in verts:
        series[f"{v} aux"] = [levels[k][v]["gain_aux_pct"] for k in levels]
        series[f"{v} aux+adapter"] = [levels[k][v]["gain_aux_sa_pct"] for k in levels]
    _bar_plot(
        paths["staleness_plot"],
        [f"stale {k}" for k in levels],
        series,
        "NE gain over none (%)",
        "Gain vs FM staleness",
        errs,
    )
    sc = res["scaling"]["presets"]
    _bar_plot(
        paths["scaling_plot"],
        list(sc),
        {v: [sc[p]["gain_pct"][v] for p in sc] for v in verts},
        "aux+adapter NE gain over none (%)",
        "Gain vs FM size",
    )
    return {k: str(v) for k, v in paths.items()}
