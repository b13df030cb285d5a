"""``exfm report``: per-window NE of every VM against its baseline, FM staleness, job times.

Baseline pairing (documented in docs/local.md):

* a VM whose ``distillation.mode`` is ``none`` is a *baseline*; it is never reported as its own
  entry, only as the ``baseline_ne`` of the ExFM VMs it pairs with;
* an ExFM VM pairs with the baseline that names it in the annotation ``exfm.io/baseline-for``
  (a comma-separated list of VM names), else with the baseline VM of the same ``vertical``
  (ties: the first by name);
* ``exfm_ne`` / ``baseline_ne`` are the means of per-window progressive NE over the second half
  (``windows[n // 2:]``) of the windows *both* models evaluated, ``windows`` is that count ``n``.

Inputs are the artifacts themselves: metrics JSON per window (``layout.metrics_key``), committed
DAS window manifests (staleness) and the run's events (job durations).
"""

from __future__ import annotations

import contextlib
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exfm_trainer import layout
from exfm_trainer.storage import Storage, open_storage
from exfm_trainer.storage.commit import list_committed, read_manifest

BASELINE_ANNOTATION = "exfm.io/baseline-for"


@dataclass(frozen=True)
class ResourceInfo:
    """What the report needs to know about one resource of the run."""

    kind: str  # FoundationModel | DataAugmentation | VerticalModel
    namespace: str
    name: str
    root: str  # the storage root its artifacts live under
    vertical: str | None = None
    distillation_mode: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def is_baseline(self) -> bool:
        return self.kind == "VerticalModel" and self.distillation_mode == "none"


def resource_infos(resources: list[Any]) -> list[ResourceInfo]:
    """ResourceInfo of API resources (FoundationModel/DataAugmentation/VerticalModel models)."""
    from exfm_operator.planner.resolve import SpecProblem, das_storage

    by_key = {(r.kind, r.metadata.namespace, r.metadata.name): r for r in resources}
    out = []
    for r in resources:
        ns, name, spec = r.metadata.namespace, r.metadata.name, r.spec
        root, vertical, mode = None, None, None
        if r.kind == "FoundationModel":
            root = spec.storage.uri
        elif r.kind == "DataAugmentation":
            fm = by_key.get(("FoundationModel", ns, spec.fm_ref.name))
            with contextlib.suppress(SpecProblem):
                root = das_storage(r, fm).uri if fm is not None else None
        else:
            vertical, mode = spec.vertical, spec.distillation.mode
            das = by_key.get(("DataAugmentation", ns, spec.das_ref.name))
            fm = by_key.get(("FoundationModel", ns, das.spec.fm_ref.name)) if das is not None else None
            if spec.storage is not None:
                root = spec.storage.uri
            elif das is not None and fm is not None:
                with contextlib.suppress(SpecProblem):
                    root = das_storage(das, fm).uri
        if root is None:
            continue
        out.append(ResourceInfo(r.kind, ns, name, root, vertical, mode, dict(r.metadata.annotations)))
    return out


def read_metrics(storage: Storage, kind: str, namespace: str, name: str) -> dict[int, layout.WindowMetrics]:
    """Every per-window metrics file of a model, by window."""
    prefix = f"{layout.model_root(kind, namespace, name)}/metrics/"  # type: ignore[arg-type]
    out: dict[int, layout.WindowMetrics] = {}
    for key in storage.list(prefix):
        window = layout.parse_window_dir(key.rsplit("/", 1)[-1].removesuffix(".json"))
        if window is None:
            continue
        out[window] = layout.WindowMetrics.model_validate_json(storage.get_bytes(key))
    return dict(sorted(out.items()))


def read_das_windows(storage: Storage, namespace: str, name: str) -> list[layout.DASWindowManifest]:
    """Committed DAS windows of a DataAugmentation, in window order."""
    parent = layout.das_output(namespace, name)
    out = []
    for entry in list_committed(storage, parent):
        if layout.parse_window_dir(entry) is None:
            continue
        out.append(layout.DASWindowManifest.model_validate(read_manifest(storage, f"{parent}/{entry}")))
    return sorted(out, key=lambda m: m.window)


def second_half_mean(values: dict[int, float]) -> float | None:
    """Mean over the second half (``windows[n // 2:]``) of the windows, or None when empty."""
    if not values:
        return None
    windows = sorted(values)
    tail = windows[len(windows) // 2 :]
    return statistics.fmean(values[w] for w in tail)


def pair_baselines(vms: list[ResourceInfo]) -> dict[str, ResourceInfo | None]:
    """ExFM VM name -> its baseline VM (or None)."""
    baselines = sorted((v for v in vms if v.is_baseline), key=lambda v: v.name)
    pairs: dict[str, ResourceInfo | None] = {}
    for vm in sorted(vms, key=lambda v: v.name):
        if vm.is_baseline:
            continue
        named = [
            b
            for b in baselines
            if vm.name in [s.strip() for s in b.annotations.get(BASELINE_ANNOTATION, "").split(",")]
        ]
        same_vertical = [
            b for b in baselines if b.vertical == vm.vertical and BASELINE_ANNOTATION not in b.annotations
        ]
        pairs[vm.name] = (named or same_vertical or [None])[0]
    return pairs


def _ne_by_window(metrics: dict[int, layout.WindowMetrics]) -> dict[int, float]:
    return {w: m.ne for w, m in metrics.items() if m.ne is not None}


@dataclass
class ReportData:
    """Everything the report shows; ``summary()`` is the ``--json`` document."""

    vms: dict[str, dict[str, Any]]
    fm: dict[str, dict[str, Any]]
    vm_ne: dict[str, dict[int, float]]
    fm_ne: dict[str, dict[int, float]]
    staleness: dict[str, dict[int, int]]
    job_seconds: list[tuple[str, str, float]]
    baselines: dict[str, str | None]

    def summary(self) -> dict[str, Any]:
        return {"vms": self.vms, "fm": self.fm}


def collect(resources: list[ResourceInfo], events: list[dict[str, Any]]) -> ReportData:
    """Read every artifact the report needs (each resource under its own storage root)."""
    storages: dict[str, Storage] = {}

    def store(r: ResourceInfo) -> Storage:
        if r.root not in storages:
            storages[r.root] = open_storage(r.root)
        return storages[r.root]

    vm_infos = [r for r in resources if r.kind == "VerticalModel"]
    vm_ne = {v.name: _ne_by_window(read_metrics(store(v), "vm", v.namespace, v.name)) for v in vm_infos}
    pairs = pair_baselines(vm_infos)
    vms: dict[str, dict[str, Any]] = {}
    for name, base in pairs.items():
        own = vm_ne.get(name, {})
        if base is not None:
            common = sorted(set(own) & set(vm_ne.get(base.name, {})))
            exfm = second_half_mean({w: own[w] for w in common})
            baseline = second_half_mean({w: vm_ne[base.name][w] for w in common})
        else:
            common = sorted(own)
            exfm, baseline = second_half_mean(own), None
        vms[name] = {"baseline_ne": baseline, "exfm_ne": exfm, "windows": len(common)}
    fm_ne: dict[str, dict[int, float]] = {}
    fm: dict[str, dict[str, Any]] = {}
    for r in resources:
        if r.kind != "FoundationModel":
            continue
        ne = _ne_by_window(read_metrics(store(r), "fm", r.namespace, r.name))
        fm_ne[r.name] = ne
        ckpts = list_committed(store(r), layout.fm_checkpoints(r.namespace, r.name))
        fm[r.name] = {
            "ne": second_half_mean(ne),
            "windows": len(ne),
            "checkpoints": len(ckpts),
            "last_checkpoint": ckpts[-1] if ckpts else None,
        }
    staleness: dict[str, dict[int, int]] = {}
    for r in resources:
        if r.kind != "DataAugmentation":
            continue
        windows = read_das_windows(store(r), r.namespace, r.name)
        staleness[r.name] = {m.window: m.staleness for m in windows}
        for fm_entry in fm.values():
            fm_entry.setdefault("das", {})[r.name] = {
                "windows": len(windows),
                "mean_staleness": statistics.fmean(m.staleness for m in windows) if windows else None,
            }
    jobs = [
        (str(e.get("job")), str(e.get("resource", "")), float(e["duration_s"]))
        for e in events
        if e.get("event") == "job_finished" and e.get("duration_s") is not None
    ]
    return ReportData(
        vms=vms,
        fm=fm,
        vm_ne=vm_ne,
        fm_ne=fm_ne,
        staleness=staleness,
        job_seconds=jobs,
        baselines={k: (v.name if v else None) for k, v in pairs.items()},
    )


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def write_report(data: ReportData, out: Path) -> Path:
    """Write ``report.md`` and its PNG charts under ``out``; returns the markdown path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    lines = ["# ExFM run report", ""]
    lines += [
        "## Vertical models: ExFM vs baseline",
        "",
        "NE = normalized entropy (lower is better), progressive: each window is evaluated before training "
        "on it. Means over the second half of the windows both models evaluated.",
        "",
        "| VM | baseline | windows | baseline NE | ExFM NE | gain |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in data.vms.items():
        b, e = row["baseline_ne"], row["exfm_ne"]
        gain = "-" if b is None or e is None else f"{(b - e) / b * 100:+.2f}%"
        lines.append(
            f"| {name} | {data.baselines.get(name) or '-'} | {row['windows']} "
            f"| {_fmt(b)} | {_fmt(e)} | {gain} |"
        )
    lines.append("")

    if data.vm_ne:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for name, ne in sorted(data.vm_ne.items()):
            if ne:
                style = "--" if name not in data.vms else "-"
                ax.plot(list(ne), list(ne.values()), style, marker="o", label=name)
        # The first windows of an untrained model sit far above the rest: scale the axis to the
        # windows after the first quarter, where the comparison is made.
        later = [v for ne in data.vm_ne.values() for w, v in ne.items() if w >= _quarter(ne)]
        if later:
            lo, hi = min(later), max(later)
            pad = max((hi - lo) * 0.15, 0.005)
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlabel("window")
        ax.set_ylabel("NE")
        ax.set_title("Progressive NE per window (dashed: baselines; early windows off scale)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "vm_ne.png", dpi=100)
        plt.close(fig)
        lines += ["![NE per window](vm_ne.png)", ""]

        names = [n for n, r in data.vms.items() if r["exfm_ne"] is not None]
        if names:
            fig, ax = plt.subplots(figsize=(8, 4))
            xs = range(len(names))
            ax.bar(
                [x - 0.2 for x in xs], [data.vms[n]["baseline_ne"] or 0 for n in names], 0.4, label="baseline"
            )
            ax.bar([x + 0.2 for x in xs], [data.vms[n]["exfm_ne"] for n in names], 0.4, label="ExFM")
            ax.set_xticks(list(xs), names, rotation=15)
            values = [v for n in names for v in (data.vms[n]["baseline_ne"], data.vms[n]["exfm_ne"]) if v]
            ax.set_ylim(min(values) * 0.98, max(values) * 1.01)  # differences of ~1% must be visible
            ax.set_ylabel("mean NE (second half)")
            ax.set_title("Baseline vs ExFM")
            ax.legend()
            fig.tight_layout()
            fig.savefig(out / "baseline_vs_exfm.png", dpi=100)
            plt.close(fig)
            lines += ["![Baseline vs ExFM](baseline_vs_exfm.png)", ""]

    lines += [
        "## Foundation models",
        "",
        "| FM | windows | checkpoints | last checkpoint | NE (2nd half) |",
        "|---|---|---|---|---|",
    ]
    for name, row in data.fm.items():
        lines.append(
            f"| {name} | {row['windows']} | {row['checkpoints']} "
            f"| {row['last_checkpoint'] or '-'} | {_fmt(row['ne'])} |"
        )
    lines.append("")
    if any(data.staleness.values()):
        fig, ax = plt.subplots(figsize=(8, 3.5))
        for name, st in sorted(data.staleness.items()):
            ax.step(list(st), list(st.values()), where="mid", marker="o", label=name)
        ax.set_xlabel("DAS window")
        ax.set_ylabel("FM staleness (windows)")
        ax.set_title("FM staleness per DAS window (0 = FM saw every earlier window)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "fm_staleness.png", dpi=100)
        plt.close(fig)
        lines += ["## FM staleness", "", "![FM staleness](fm_staleness.png)", ""]

    if data.job_seconds:
        totals: dict[str, float] = {}
        for _job, resource, secs in data.job_seconds:
            totals[resource] = totals.get(resource, 0.0) + secs
        fig, ax = plt.subplots(figsize=(8, max(2.5, 0.35 * len(totals) + 1)))
        names = sorted(totals)
        ax.barh(names, [totals[n] for n in names])
        ax.set_xlabel("seconds in jobs")
        ax.set_title("Time spent per resource (sum of job durations)")
        fig.tight_layout()
        fig.savefig(out / "job_time.png", dpi=100)
        plt.close(fig)
        lines += [
            "## Time spent per job",
            "",
            "![Job time](job_time.png)",
            "",
            "| job | resource | seconds |",
            "|---|---|---|",
        ]
        lines += [f"| {job} | {res} | {secs:.1f} |" for job, res, secs in data.job_seconds]
        lines.append("")

    md = out / "report.md"
    md.write_text("\n".join(lines))
    (out / "report.json").write_text(json.dumps(data.summary(), indent=2))
    return md


def _quarter(ne: dict[int, float]) -> int:
    """The first window after the first quarter of a model's evaluated windows."""
    windows = sorted(ne)
    return windows[len(windows) // 4] if windows else 0
