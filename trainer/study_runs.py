"""The multi-seed transfer study as a task graph: data seeds x model seeds x sections.

Per **data seed** ``d`` (the synthetic stream regenerated with seed ``preset.synthetic.seed + d``;
an imported dataset has one data seed) the study trains **one FM per size**, seeded ``d``, and runs
one DAS per (FM size, staleness, first VM window). Those are shared by every model seed and mode,
so all runs of a data seed learn from the same teacher. Reseeding the FM per model seed would keep
the modes paired too, but would multiply the most expensive steps (FM training, DAS) by the number
of model seeds; the FM's own seed variance is sampled through the data seeds instead.

Per data seed and **model seed** ``s`` the VMs (seed ``s``) of each vertical are trained:

- ``ablation``: FM ``preset.fm_preset``, ``preset.staleness`` (1) window stale, modes none / kd /
  aux / aux_sa (kd keeps alpha = 1: it distills into the served head);
- ``staleness``: FM 0, 1, 2, 4 windows stale: aux and aux_sa per level;
- ``scaling``: the medium and large FMs, aux_sa (small = the ablation's aux_sa, same none).

Every section starts its VMs at window 5, the first with an FM 4 windows stale, so the ablation's
runs are also the staleness sweep's ``none`` and its level 1 (``Plan.shared_start``).

Before them, **hyper-parameter selection** (data seed 0, model seed 0, the ablation's DAS) picks
alpha, beta, w (mode aux) and then adapter_share (mode aux_sa) by coordinate search on the *early*
windows only: VMs trained on the first half of the ablation's VM windows, scored by the mean NE
over the second half of that range (the first windows are burn-in), averaged over verticals. The
choice is frozen for every run; the evaluated windows (second half) are never seen by it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exfm_trainer import study
from exfm_trainer.study_dag import Ref, Task

STALENESS_LEVELS = (0, 1, 2, 4)
FM_SIZES = ("small", "medium", "large")
SELECT_GRID: dict[str, tuple[float, ...]] = {
    "alpha": (1.0, 2.0, 4.0),
    "beta": (1.0, 0.5),
    "weight": (1.0, 0.5, 2.0),
    "adapter_share": (0.5, 0.25, 0.75),
}
MAX_SCALED_RATE = 0.5
"""Selection skips label scales alpha with alpha * base rate above this (see :func:`t_tune_vm`)."""
SELECT_ORDER = (("alpha", "aux"), ("beta", "aux"), ("weight", "aux"), ("adapter_share", "aux_sa"))


@dataclass
class Plan:
    """What a study run trains (see the module doc)."""

    preset: study.StudyPreset
    work: Path
    data_seeds: list[int]
    seeds: list[int]
    dataset: str | None = None
    schema_json: str | None = None
    window_seconds: int = 86_400
    staleness_levels: tuple[int, ...] = STALENESS_LEVELS
    fm_sizes: tuple[str, ...] = FM_SIZES
    select: bool = True
    grid: dict[str, tuple[float, ...]] = field(default_factory=lambda: dict(SELECT_GRID))
    export_first: bool = True

    shared_start: bool = True
    """All sections start their VMs at the staleness sweep's first window, so the ablation's runs
    double as the sweep's ``none`` and its level ``preset.staleness`` (trained once, ~20 % fewer VMs)."""

    @property
    def ablation_lag(self) -> int:
        return self.preset.staleness

    def starts(self, windows: Sequence[int]) -> tuple[int, int]:
        """First VM window of the ablation (and scaling) and of the staleness sweep."""
        st = windows[0] + max(self.staleness_levels) + 1
        return (st if self.shared_start else windows[0] + self.ablation_lag + 1), st

    def canonical(self, section: str, mode: str) -> str:
        """The section whose run stands for ``(section, mode)``: shared runs are trained once."""
        if section == f"scaling-{self.preset.fm_preset}":
            return "ablation"
        if not section.startswith("staleness"):
            return section
        if self.shared_start and (mode == "none" or section == f"staleness{self.ablation_lag}"):
            return "ablation"
        return "staleness" if mode == "none" else section


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


# ---- task functions (run in worker processes; arguments and results are picklable) ---------------


def t_data(plan: Plan, d: int) -> dict[str, Any]:
    """Write (or import) data seed ``d``'s stream; the StudyRun and the generator's Bayes NE."""
    from exfm_trainer.data import synthetic
    from exfm_trainer.schema import FeatureSchema

    preset = plan.preset.model_copy(deep=True)
    preset.synthetic.seed = plan.preset.synthetic.seed + d
    schema = FeatureSchema.model_validate_json(plan.schema_json) if plan.schema_json else None
    run = study.prepare(plan.work / f"data{d}", preset, plan.dataset, schema, None, plan.window_seconds)
    bayes = None
    fn = getattr(synthetic, "bayes_ne", None)
    if plan.dataset is None and fn is not None:
        bayes = {int(w): dict(per_v) for w, per_v in fn(run.ref.uri).items()}
    return {"run": run, "bayes_ne": bayes}


def t_fm(data: dict[str, Any], size: str, d: int) -> dict[str, Any]:
    """Train the FM of one size (seed ``d``) over every window; its per-window curve."""
    _one_thread()
    metrics = study.ensure_fm(data["run"], size, d)
    c = study.curve(metrics)
    return {**c, "ne_second_half": study.second_half(c["ne"][1:])}


def t_das(data: dict[str, Any], _fm: Any, size: str, d: int, lag: int, start: int) -> dict[str, Any]:
    """The DAS of FM ``(size, d)`` ``lag`` windows stale from ``start``, and the FM's NE per vertical."""
    _one_thread()
    run = data["run"]
    aug = study.ensure_das(run, size, d, lag, start)
    vm_windows = run.windows[run.windows.index(start) :]
    return {"aug": aug, "teacher": study.fm_vertical_quality(aug, vm_windows, run.verticals)}


def t_vm(
    data: dict[str, Any],
    das: dict[str, Any],
    name: str,
    vertical: str,
    mode: str,
    distill: study.DistillConfig | dict[str, Any] | None,
    start: int,
    seed: int,
    export: bool = False,
    end: int | None = None,
) -> dict[str, Any]:
    """One VM training; its per-window curve (plus second-half means when trained to the end)."""
    _one_thread()
    run = data["run"]
    preset = run.preset
    if isinstance(distill, dict):
        distill = study.DistillConfig(**distill["config"])
    if distill is not None:
        preset = preset.model_copy(update={"distill": distill})
    metrics = study.train_vm(run.store, das["aug"], name, vertical, mode, preset, start, seed, export, end)
    return study.curve(metrics)


def pick(
    base: Mapping[str, Any], param: str, mode: str, results: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Best config among the tuning results of ``mode`` (lowest mean score over verticals).

    ``results``: ``{config id: {"mode", "config", "scores": {vertical: NE}}}``; ties keep the
    earlier config (grid order: the preset's default first).
    """
    cands = [r for r in results.values() if r["mode"] == mode]
    if not cands:
        return dict(base)
    best = min(cands, key=lambda r: sum(r["scores"].values()) / len(r["scores"]))
    return {"config": dict(best["config"]), "param": param}


def t_select(
    base: study.DistillConfig | dict[str, Any], param: str, mode: str, tune: dict[str, Any], score_from: int
) -> dict[str, Any]:
    """A coordinate-search decision: the best of the configs tried so far for ``mode``."""
    results = {}
    for key, r in tune.items():
        scores = {
            v: math.inf if c.get("skipped") else study.mean_from(c["ne"], c["windows"], score_from)
            for v, c in r["curves"].items()
        }
        skipped = [f"{v}: {c['skipped']}" for v, c in r["curves"].items() if c.get("skipped")]
        results[key] = {"mode": r["mode"], "config": r["config"], "scores": scores, "skipped": skipped}
    cfg = base.model_dump() if isinstance(base, study.DistillConfig) else base["config"]
    chosen = pick({"config": cfg, "param": param}, param, mode, results)
    return {**chosen, "results": results}


def t_tune_group(curves: dict[str, dict[str, Any]], mode: str, override: dict[str, Any]) -> dict[str, Any]:
    """Bundle one tuning config's per-vertical curves (a local task)."""
    return {"mode": mode, "config": resolve_override(override) if override else {}, "curves": curves}


# ---- the plan -----------------------------------------------------------------------------------


def build_tasks(plan: Plan, verticals: Sequence[str], windows: Sequence[int]) -> list[Task]:
    """Every task of the study (see the module doc for what and why)."""
    tasks: list[Task] = []
    p = plan.preset
    ab_lag = plan.ablation_lag
    ab_start, st_start = plan.starts(windows)
    vm_windows = [w for w in windows if w >= ab_start]
    eval_from = vm_windows[len(vm_windows) // 2]
    for d in plan.data_seeds:
        data = Ref(f"data:{d}")
        tasks.append(Task(data.key, t_data, (plan, d), priority=100))
        sizes = [p.fm_preset, *(z for z in plan.fm_sizes if z != p.fm_preset)]
        for i, size in enumerate(sizes):
            # the ablation FM first (it gates the selection and most VMs), then the largest
            prio = 90 - d if size == p.fm_preset else 70 + i
            tasks.append(Task(f"fm:{d}:{size}", t_fm, (data, size, d), priority=prio, group="fm"))
        das_keys = {(p.fm_preset, ab_lag, ab_start)}
        das_keys |= {(p.fm_preset, k, st_start) for k in plan.staleness_levels}
        das_keys |= {(size, ab_lag, ab_start) for size in plan.fm_sizes}
        for size, k, start in sorted(das_keys):
            prio = 85 if (size, k, start) == (p.fm_preset, ab_lag, ab_start) else 50
            fm = Ref(f"fm:{d}:{size}")
            tasks.append(
                Task(das_key(d, size, k, start), t_das, (data, fm, size, d, k, start), priority=prio)
            )
    distill: Any = p.distill
    if plan.select:
        distill = Ref("select:final")
        tasks += selection_tasks(plan, verticals, ab_start, eval_from)
    for d in plan.data_seeds:
        data = Ref(f"data:{d}")
        for s in plan.seeds:
            for v in verticals:
                ab = Ref(das_key(d, p.fm_preset, ab_lag, ab_start))
                for mode in study.MODES:
                    export = plan.export_first and d == plan.data_seeds[0] and s == plan.seeds[0]
                    export = export and v == verticals[0] and mode in ("none", "aux_sa")
                    cfg = None if mode == "none" else distill
                    name = f"vm-ab-d{d}-s{s}-{v}-{mode}"
                    args = (data, ab, name, v, mode, cfg, ab_start, s, export)
                    tasks.append(Task(vm_key("ablation", d, s, v, mode), t_vm, args, priority=20))
                if plan.canonical("staleness", "none") == "staleness":
                    base = Ref(das_key(d, p.fm_preset, 0, st_start))
                    name = f"vm-st-d{d}-s{s}-{v}-none"
                    args = (data, base, name, v, "none", None, st_start, s)
                    tasks.append(Task(vm_key("staleness", d, s, v, "none"), t_vm, args, priority=20))
                for k in plan.staleness_levels:
                    aug = Ref(das_key(d, p.fm_preset, k, st_start))
                    for mode in ("aux", "aux_sa"):
                        if plan.canonical(f"staleness{k}", mode) != f"staleness{k}":
                            continue
                        name = f"vm-st{k}-d{d}-s{s}-{v}-{mode}"
                        args = (data, aug, name, v, mode, distill, st_start, s)
                        tasks.append(Task(vm_key(f"staleness{k}", d, s, v, mode), t_vm, args, priority=20))
                for size in plan.fm_sizes:
                    if plan.canonical(f"scaling-{size}", "aux_sa") != f"scaling-{size}":
                        continue  # the ablation's aux_sa
                    aug = Ref(das_key(d, size, ab_lag, ab_start))
                    name = f"vm-sc{size}-d{d}-s{s}-{v}-aux_sa"
                    args = (data, aug, name, v, "aux_sa", distill, ab_start, s)
                    tasks.append(Task(vm_key(f"scaling-{size}", d, s, v, "aux_sa"), t_vm, args, priority=15))
    return tasks


def selection_tasks(plan: Plan, verticals: Sequence[str], start: int, eval_from: int) -> list[Task]:
    """Coordinate search on data seed 0, model seed 0, windows ``[start, eval_from)``."""
    p = plan.preset
    d, s = plan.data_seeds[0], plan.seeds[0]
    data = Ref(f"data:{d}")
    aug = Ref(das_key(d, p.fm_preset, plan.ablation_lag, start))
    tuning = [w for w in range(start, eval_from)]
    score_from = tuning[len(tuning) // 2]
    tasks: list[Task] = []
    for v in verticals:
        args = (data, aug, f"tune-none-{v}", v, "none", None, start, s, False, eval_from)
        tasks.append(Task(f"tune:none:{v}", t_vm, args, priority=70))
    tasks.append(
        Task(
            "tune:none",
            t_tune_group,
            ({v: Ref(f"tune:none:{v}") for v in verticals}, "none", {}),
            local=True,
        )
    )
    base: Any = p.distill
    tried: dict[str, Ref] = {}
    defaults = p.distill.model_dump()
    for r, (param, mode) in enumerate(SELECT_ORDER):
        values = [x for x in plan.grid.get(param, ()) if r == 0 or mode == "aux_sa" or x != defaults[param]]
        if param == "adapter_share" and defaults[param] not in values:
            values.insert(0, defaults[param])
        for i, x in enumerate(values):
            cfg_key = f"tune:r{r}:{i}"
            for v in verticals:
                args = (data, aug, f"tune-r{r}-{i}-{v}", v, mode, _Override(base, param, x), start, s)
                tasks.append(Task(f"{cfg_key}:{v}", t_tune_vm, (*args, False, eval_from), priority=70 - r))
            tasks.append(
                Task(
                    cfg_key,
                    t_tune_group,
                    ({v: Ref(f"{cfg_key}:{v}") for v in verticals}, mode, _Override(base, param, x)),
                    local=True,
                )
            )
            tried[cfg_key] = Ref(cfg_key)
        sel = Ref(f"select:r{r}")
        tasks.append(Task(sel.key, t_select, (base, param, mode, dict(tried), score_from), local=True))
        base = sel
    tasks.append(Task("select:final", t_final, (base,), local=True))
    return tasks


class _Override(dict):
    """``base`` config (a DistillConfig or a selection result, possibly a Ref) with ``param = value``."""

    def __init__(self, base: Any, param: str, value: float) -> None:
        super().__init__(base=base, param=param, value=value)


def resolve_override(o: Mapping[str, Any]) -> dict[str, Any]:
    """The config dict of an (already resolved) :class:`_Override`."""
    base = o["base"]
    cfg = base.model_dump() if isinstance(base, study.DistillConfig) else dict(base["config"])
    cfg[o["param"]] = o["value"]
    return cfg


def t_tune_vm(
    data: dict[str, Any],
    das: dict[str, Any],
    name: str,
    vertical: str,
    mode: str,
    override: Mapping[str, Any],
    start: int,
    seed: int,
    export: bool,
    end: int,
) -> dict[str, Any]:
    """A tuning VM on the early windows with the override's config.

    A label scale alpha > 1 that saturates the target (``alpha * base rate > MAX_SCALED_RATE`` on the
    tuning windows: most rows would get ``clip(alpha * p) = 1``, a constant) is not trained; it
    scores +inf, so the search never picks it.
    """
    cfg = study.DistillConfig(**resolve_override(override))
    teacher = das["teacher"][vertical]
    rates = [
        r for w, r in zip(teacher["windows"], teacher.get("base_rate", []), strict=False) if w < end and r
    ]
    rate = sum(rates) / len(rates) if rates else 0.0
    if cfg.alpha > 1.0 and cfg.alpha * rate > MAX_SCALED_RATE:
        ws = list(range(start, end))
        reason = f"alpha {cfg.alpha:g} x base rate {rate:.3f} > {MAX_SCALED_RATE}: the target saturates"
        return {"windows": ws, "ne": [math.inf] * len(ws), "skipped": reason}
    return t_vm(data, das, name, vertical, mode, cfg, start, seed, export, end)


def t_final(sel: dict[str, Any]) -> dict[str, Any]:
    """The frozen choice (a selection result's config)."""
    return {"config": dict(sel["config"])}


def das_key(d: int, size: str, lag: int, start: int) -> str:
    return f"das:{d}:{size}:lag{lag}:from{start}"


def vm_key(section: str, d: int, s: int, v: str, mode: str) -> str:
    return f"vm:{section}:{d}:{s}:{v}:{mode}"
