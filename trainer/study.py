"""Transfer study: one FM, one DAS, one vertical model per vertical trained four ways.

``python -m exfm_trainer study --preset quick --out DIR`` runs, in process and with the real jobs:

1. the dataset: the default synthetic stream (or ``--dataset URI --schema schema.json``: a
   windowed dataset, or a CSV/TSV/Parquet file imported by time into ``DIR/data``);
2. ``fm-train`` over every window (streaming, a checkpoint per window, all kept);
3. the ``das`` job with an FM that is ``staleness`` windows stale: window ``t`` is augmented by the
   checkpoint trained through window ``t - 1 - staleness`` (``layout.staleness`` = ``staleness``;
   0 is the freshest legal FM). The lag is simulated by publishing the FM's checkpoints into a
   view (``fm/<ns>/<fm>-lag<k>``) one window late each, just before the DAS handles a window,
   so the DAS picks "the newest checkpoint older than the window" exactly as in production;
4. ``vm-train`` per vertical in modes ``none`` / ``kd`` / ``aux`` / ``aux_sa`` (aux + student
   adapter) on the augmented windows, from window ``staleness + 1`` (the first with a legal FM).

``DIR/study.json`` holds ``{"verticals": {v: {mode: NE}}}`` where NE is the mean progressive NE
of the second half of the VM's windows (plus per-window NE/AUC, FM quality and timings);
``DIR/study.md`` the tables and ``DIR/study_ne.png`` NE over windows.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from exfm_trainer import layout
from exfm_trainer.data.synthetic import SyntheticConfig
from exfm_trainer.jobs import DatasetRef, Distillation, ModelPreset, Optim
from exfm_trainer.schema import FeatureSchema

MODES = ("none", "kd", "aux", "aux_sa")
NS = "study"


class DistillConfig(BaseModel):
    """Distillation knobs shared by the kd / aux / aux_sa variants (kd keeps alpha = 1: its target
    trains the served head, where a scaled label would miscalibrate the predictions)."""

    model_config = ConfigDict(extra="forbid")

    alpha: float = 1.0
    beta: float = 1.0
    weight: float = 1.0
    aux_tower: list[int] = Field(default_factory=lambda: [16])
    adapter_share: float = 0.5
    adapter_lr: float = 0.01
    adapter_decay: float = 0.01

    def for_mode(self, mode: str) -> Distillation:
        """The job's :class:`Distillation` of one study variant."""
        if mode not in MODES:
            raise ValueError(f"unknown study mode {mode!r}; choose one of {MODES}")
        knobs = self.model_dump()
        if mode == "kd":  # kd distills into the served head: a scaled target would bias what is served
            knobs["alpha"] = 1.0
        return Distillation(
            mode=mode.removesuffix("_sa"),  # type: ignore[arg-type]
            adapter=mode.endswith("_sa"),
            **knobs,
        )


class StudyPreset(BaseModel):
    """Everything a study run depends on (recorded in study.json)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    synthetic: SyntheticConfig
    fm_preset: ModelPreset = "small"
    vm_preset: ModelPreset = "tiny"
    staleness: int = Field(default=1, ge=0)
    fm_batch_size: int = 512
    vm_batch_size: int = 256
    fm_optim: Optim = Field(default_factory=Optim)
    vm_optim: Optim = Field(default_factory=Optim)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    seed: int = 0


PRESETS: dict[str, StudyPreset] = {
    "tiny": StudyPreset(
        name="tiny",
        synthetic=SyntheticConfig(windows=6, rows_per_window=1500, verticals=3, seed=0),
        fm_preset="tiny",
        vm_preset="tiny",
        fm_batch_size=256,
        vm_batch_size=128,
    ),
    # The generator's default users: ~300 impressions per user over the stream, shared by every
    # vertical, so a user's taste is learnable from all verticals together (the FM) but only partly
    # from one vertical's rows and a budget-limited feature set (a VM). 24 windows, so the FM has a
    # long history by the second half (docs/data.md, docs/results.md).
    "quick": StudyPreset(
        name="quick",
        synthetic=SyntheticConfig(windows=24, rows_per_window=25_000, verticals=4, seed=0),
    ),
    "full": StudyPreset(
        name="full",
        synthetic=SyntheticConfig(windows=36, rows_per_window=40_000, verticals=4, seed=0),
        fm_preset="medium",
    ),
}


def get_preset(name: str) -> StudyPreset:
    try:
        return PRESETS[name].model_copy(deep=True)
    except KeyError:
        raise ValueError(f"unknown study preset {name!r}; choose one of {sorted(PRESETS)}") from None


# ---- dataset ------------------------------------------------------------------------------------


class StudyError(RuntimeError):
    """The study cannot run on its input; the message names the input and the fix."""


def synthetic_dataset(root: Path, cfg: SyntheticConfig) -> DatasetRef:
    from exfm_trainer.data.synthetic import generate

    return generate(root / "data", cfg, overwrite=True)


def imported_dataset(root: Path, uri: str, schema: FeatureSchema, window_seconds: int = 86_400) -> DatasetRef:
    """A windowed dataset at ``uri`` as is, or a CSV/TSV/Parquet file imported into ``root/data``."""
    from exfm_trainer.data.importers import import_table
    from exfm_trainer.data.windows import list_ready_windows

    if not schema.vertical:
        raise StudyError(
            "the dataset schema declares no `vertical` column: the study trains one model per "
            "vertical; set `vertical` in the schema JSON"
        )
    local = Path(uri)
    if "://" not in uri and local.is_file():
        ref, _ = import_table(local, root / "data", schema, window_seconds=window_seconds, overwrite=True)
        return ref
    if not list_ready_windows(uri):
        raise StudyError(
            f"{uri} holds no ready window=NNNNN folders and is not a CSV/TSV/Parquet file: import it "
            "first (`python -m exfm_trainer import table ...`) or pass the file itself"
        )
    return DatasetRef(uri=uri, schema=schema)


def dataset_verticals(ref: DatasetRef, windows: Sequence[int], min_rows: int = 1) -> list[str]:
    """The vertical values of ``ref`` (rows counted over ``windows``), most frequent first."""
    from collections import Counter

    from exfm_trainer.data.windows import iter_record_batches

    col = ref.feature_schema.vertical
    if not col:
        raise StudyError(f"the schema of {ref.uri} declares no `vertical` column")
    counts: Counter[str] = Counter()
    for w in windows:
        for rb in iter_record_batches(ref.uri, w, [col]):
            counts.update(str(v) for v in rb.column(0).to_pylist() if v is not None)
    names = [v for v, n in counts.most_common() if n >= min_rows]
    if not names:
        raise StudyError(f"{ref.uri}: column {col!r} holds no vertical values in windows {list(windows)}")
    return names


# ---- pipeline steps (the real jobs, in process) --------------------------------------------------


@dataclass
class Timer:
    """Wall and CPU seconds per named step."""

    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, wall: float, cpu: float) -> None:
        self.wall[name] = self.wall.get(name, 0.0) + wall
        self.cpu[name] = self.cpu.get(name, 0.0) + cpu


class _Clock:
    def __init__(self, timer: Timer | None, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> _Clock:
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.timer is not None:
            self.timer.add(self.name, time.perf_counter() - self.w, time.process_time() - self.c)


def train_fm(
    store: str,
    ref: DatasetRef,
    name: str,
    preset: str,
    optim: Optim,
    batch_size: int,
    seed: int,
    windows: Sequence[int],
) -> list[layout.WindowMetrics]:
    """``fm-train`` over ``windows`` with a checkpoint per window, all kept (the DAS picks lagged ones)."""
    from exfm_trainer.jobs import FMTrainJob, WindowRange
    from exfm_trainer.train.loop import run_training

    job = FMTrainJob(
        storage=store,
        namespace=NS,
        name=name,
        dataset=ref,
        preset=preset,  # type: ignore[arg-type]
        optim=optim,
        batch_size=batch_size,
        seed=seed,
        device="cpu",
        windows=WindowRange(start=min(windows), end=max(windows) + 1),
        checkpoint_every=1,
        keep_checkpoints=len(windows) + 1,
    )
    return run_training(job, out=None).metrics


def publish_lagged(store: str, fm_name: str, view: str, version: str) -> None:
    """Publish FM checkpoint ``version`` into the view ``fm/<ns>/<view>`` (a committed copy)."""
    from exfm_trainer.storage import open_storage
    from exfm_trainer.storage.commit import MANIFEST, commit_artifact, is_committed, read_manifest

    st = open_storage(store)
    src = layout.fm_checkpoint(NS, fm_name, version)
    dst = layout.fm_checkpoint(NS, view, version)
    if is_committed(st, dst):
        return
    meta = {k: v for k, v in read_manifest(st, src).items() if k not in ("files", "committed_at")}
    files = {
        key.rsplit("/", 1)[-1]: st.get_bytes(key)
        for key in st.list(src + "/")
        if key.rsplit("/", 1)[-1] not in (MANIFEST, "_COMMITTED")
    }
    commit_artifact(st, dst, files, {**meta, "published_from": f"{NS}/{fm_name}", "view": view})


def run_lagged_das(
    store: str,
    ref: DatasetRef,
    fm_name: str,
    das_name: str,
    staleness: int,
    windows: Sequence[int],
    batch_size: int = 4096,
) -> DatasetRef:
    """The ``das`` job over ``windows`` with an FM exactly ``staleness`` windows stale (see module doc).

    Returns the augmented dataset (root of the DAS output) with the input's schema.
    """
    from exfm_trainer.das import run_das
    from exfm_trainer.jobs import DASJob, WindowRange

    view = f"{das_name}-fm"  # one view per DAS output: concurrent studies never share one
    for t in windows:
        fm_last = t - 1 - staleness
        if fm_last < 0:
            raise StudyError(f"window {t} has no FM {staleness} windows stale (the FM starts at window 0)")
        publish_lagged(store, fm_name, view, layout.version_name(fm_last))
        job = DASJob(
            storage=store,
            namespace=NS,
            name=das_name,
            dataset=ref,
            fm={"namespace": NS, "name": view},
            windows=WindowRange(start=t, end=t + 1),
            max_staleness=staleness,
            batch_size=batch_size,
            device="cpu",
        )
        (record,) = run_das(job, out=io.StringIO())
        if record.get("status") == "done" and record["staleness"] != staleness:
            raise StudyError(f"DAS used a {record['staleness']}-stale FM for window {t}, not {staleness}")
    from exfm_trainer.storage import open_storage

    uri = open_storage(store).uri(layout.das_output(NS, das_name))
    return DatasetRef(uri=uri, schema=ref.feature_schema)


def train_vm(
    store: str,
    aug: DatasetRef,
    name: str,
    vertical: str,
    mode: str,
    preset: StudyPreset,
    start: int,
    seed: int,
    export: bool = False,
    end: int | None = None,
) -> list[layout.WindowMetrics]:
    """``vm-train`` of one vertical in one study mode on windows ``[start, end)``; per-window metrics.

    The student gets the generator's serving-budget feature subset where there is one
    (:func:`student_features`).
    """
    from exfm_trainer.jobs import VMTrainJob, WindowRange
    from exfm_trainer.train.loop import run_training

    job = VMTrainJob(
        storage=store,
        namespace=NS,
        name=name,
        dataset=aug,
        vertical=vertical,
        preset=preset.vm_preset,
        distillation=preset.distill.for_mode(mode),
        optim=preset.vm_optim,
        batch_size=preset.vm_batch_size,
        seed=seed,
        device="cpu",
        windows=WindowRange(start=start, end=end),
        checkpoint_every=10_000,
        keep_checkpoints=1,
        export=export,
        **student_features(preset, aug),
    )
    result = run_training(job, out=None)
    if result.resumed_from is None:
        return result.metrics
    return stored_metrics(store, "vm", name, start, end, result.metrics)


def stored_metrics(
    store: str,
    kind: str,
    name: str,
    start: int,
    end: int | None,
    fresh: Sequence[layout.WindowMetrics] = (),
) -> list[layout.WindowMetrics]:
    """A resumed job's metrics: the stored per-window files of ``[start, end)`` plus ``fresh``
    (so re-running a study with the same ``--work`` folder picks up where it stopped)."""
    from exfm_trainer.storage import open_storage

    st = open_storage(store)
    prefix = f"{layout.model_root(kind, NS, name)}/metrics/"  # type: ignore[arg-type]
    by_window = {}
    for key in st.list(prefix):
        m = layout.WindowMetrics.model_validate_json(st.get_bytes(key))
        if m.window >= start and (end is None or m.window < end):
            by_window[m.window] = m
    by_window.update({m.window: m for m in fresh})
    return [by_window[w] for w in sorted(by_window)]


def student_features(preset: StudyPreset, aug: DatasetRef) -> dict[str, Any]:
    """``{"features": [...]}``: the student's serving budget on the synthetic stream, when both the
    generator (``synthetic.student_features``) and the job (``VMTrainJob.features``) support it;
    ``{}`` otherwise (imported data, or older code: the student sees every feature)."""
    from exfm_trainer.data import synthetic
    from exfm_trainer.jobs import VMTrainJob

    pick = getattr(synthetic, "student_features", None)
    if pick is None or "features" not in VMTrainJob.model_fields or not is_synthetic(aug, preset):
        return {}
    return {"features": list(pick(preset.synthetic))}


def is_synthetic(ref: DatasetRef, preset: StudyPreset) -> bool:
    """Whether ``ref`` (or the DAS output over it) has the preset's synthetic schema."""
    from exfm_trainer.data.synthetic import synthetic_schema

    return ref.feature_schema == synthetic_schema(preset.synthetic)


# ---- summaries ----------------------------------------------------------------------------------


def second_half(values: Sequence[float | None]) -> float:
    """Mean of the second half of ``values`` (the later half when odd; None entries skipped)."""
    tail = [v for v in values[len(values) // 2 :] if v is not None and math.isfinite(v)]
    if not tail:
        raise StudyError("no finite metric in the second half of the windows (windows too small?)")
    return sum(tail) / len(tail)


def mean_from(values: Sequence[float | None], windows: Sequence[int], first: int) -> float:
    """Mean of the finite ``values`` of windows ``>= first``."""
    tail = [
        v for v, w in zip(values, windows, strict=True) if w >= first and v is not None and math.isfinite(v)
    ]
    if not tail:
        raise StudyError(f"no finite metric from window {first} on (windows too small?)")
    return sum(tail) / len(tail)


def curve(metrics: Sequence[layout.WindowMetrics]) -> dict[str, list]:
    """Per-window series (windows, NE, AUC, calibration, rows) of a job's metrics."""
    return {
        "windows": [m.window for m in metrics],
        "ne": [m.ne for m in metrics],
        "auc": [m.auc for m in metrics],
        "calibration": [m.calibration for m in metrics],
        "rows": [m.rows for m in metrics],
    }


def with_second_half(c: dict[str, list]) -> dict[str, Any]:
    """``c`` plus the :func:`second_half` means of its ``ne`` and ``auc`` series."""
    return {**c, "ne_second_half": second_half(c["ne"]), "auc_second_half": second_half(c["auc"])}


def fm_vertical_quality(aug: DatasetRef, windows: Sequence[int], verticals: Sequence[str]) -> dict[str, Any]:
    """NE/AUC of the DAS's FM predictions per vertical and window (the teacher as the VMs see it)."""
    import numpy as np

    from exfm_trainer.data.windows import iter_record_batches
    from exfm_trainer.train.metrics import auc, normalized_entropy

    schema = aug.feature_schema
    cols = [schema.label, schema.vertical or schema.label, layout.FM_LOGIT_COLUMN]
    out: dict[str, dict[str, list]] = {
        v: {"windows": [], "ne": [], "auc": [], "base_rate": []} for v in verticals
    }
    for w in windows:
        ys, zs, vs = [], [], []
        for rb in iter_record_batches(aug.uri, w, cols):
            ys.append(rb.column(0).to_numpy(zero_copy_only=False).astype(np.float64))
            vs.append(np.asarray(rb.column(1).to_pylist(), dtype=object))
            zs.append(rb.column(2).to_numpy(zero_copy_only=False).astype(np.float64))
        y, v, z = np.concatenate(ys), np.concatenate(vs), np.concatenate(zs)
        for name in verticals:
            m = (v == name) & np.isfinite(z) & np.isfinite(y)
            p = 1 / (1 + np.exp(-z[m]))
            out[name]["windows"].append(w)
            out[name]["ne"].append(normalized_entropy(p, y[m]) if m.any() else None)
            out[name]["auc"].append(auc(p, y[m]) if m.any() else None)
            out[name]["base_rate"].append(float(y[m].mean()) if m.any() else None)
    return {name: with_second_half(c) for name, c in out.items()}


# ---- the study ----------------------------------------------------------------------------------


@dataclass
class StudyRun:
    """Where a study writes and what it shares between variants."""

    out: Path
    preset: StudyPreset
    ref: DatasetRef
    verticals: list[str]
    windows: list[int]
    timer: Timer = field(default_factory=Timer)

    @property
    def store(self) -> str:
        return str(self.out / "store")

    def vm_start(self, staleness: int) -> int:
        return self.windows[0] + staleness + 1


def prepare(
    out: Path,
    preset: StudyPreset,
    dataset: str | None = None,
    schema: FeatureSchema | None = None,
    verticals: Sequence[str] | None = None,
    window_seconds: int = 86_400,
) -> StudyRun:
    """Write/import the dataset and resolve its windows and verticals."""
    from exfm_trainer.data.windows import list_ready_windows

    out.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    with _Clock(timer, "data"):
        if dataset is None:
            ref = synthetic_dataset(out, preset.synthetic)
        else:
            if schema is None:
                raise StudyError("--dataset needs --schema (a FeatureSchema JSON with a vertical column)")
            ref = imported_dataset(out, dataset, schema, window_seconds)
    windows = list_ready_windows(ref.uri)
    if len(windows) < preset.staleness + 3:
        raise StudyError(
            f"{ref.uri} has {len(windows)} ready windows; the study needs at least {preset.staleness + 3} "
            f"(staleness {preset.staleness} + 1 FM-only window + 2 VM windows)"
        )
    if windows != list(range(windows[0], windows[0] + len(windows))):
        raise StudyError(f"{ref.uri}: ready windows {windows} have gaps; the stream must be contiguous")
    found = dataset_verticals(ref, windows[: min(len(windows), 3)])
    if verticals:
        missing = [v for v in verticals if v not in found]
        if missing:
            raise StudyError(f"verticals {missing} do not occur in {ref.uri} (found {found})")
        found = list(verticals)
    return StudyRun(out, preset, ref, found, windows, timer)


def fm_name(preset: str, seed: int) -> str:
    return f"fm-{preset}-s{seed}"


def ensure_fm(run: StudyRun, preset: str, seed: int) -> list[layout.WindowMetrics]:
    """Train (once per preset and seed) the FM over every window; per-window metrics.

    An FM already trained through the last window is reused (its checkpoint manifest's metrics).
    """
    from exfm_trainer.models.checkpoint import read_checkpoint
    from exfm_trainer.storage import open_storage
    from exfm_trainer.storage.commit import is_committed

    st = open_storage(run.store)
    last = layout.fm_checkpoint(NS, fm_name(preset, seed), layout.version_name(run.windows[-1]))
    if is_committed(st, last):
        _, _, manifest = read_checkpoint(st, last)
        return [manifest.metrics[str(w)] for w in run.windows]
    with _Clock(run.timer, f"fm-train:{preset}"):
        return train_fm(
            run.store,
            run.ref,
            fm_name(preset, seed),
            preset,
            run.preset.fm_optim,
            run.preset.fm_batch_size,
            seed,
            run.windows,
        )


def ensure_das(run: StudyRun, fm_preset: str, seed: int, staleness: int, start: int) -> DatasetRef:
    """The DAS output of the FM ``(fm_preset, seed)`` at ``staleness``, from window ``start`` on."""
    name = f"das-{fm_preset}-s{seed}-lag{staleness}-from{start}"
    with _Clock(run.timer, "das"):
        return run_lagged_das(
            run.store,
            run.ref,
            fm_name(fm_preset, seed),
            name,
            staleness,
            run.windows[run.windows.index(start) :],
        )


def _vm_task(
    store: str, aug: DatasetRef, name: str, v: str, mode: str, preset: StudyPreset, start: int, seed: int
) -> tuple[list[layout.WindowMetrics], float, float]:
    """One VM training (runs in a worker process too): metrics, wall s, CPU s."""
    import torch

    torch.set_num_threads(1)
    w, c = time.perf_counter(), time.process_time()
    metrics = train_vm(store, aug, name, v, mode, preset, start, seed)
    return metrics, time.perf_counter() - w, time.process_time() - c


def vm_variants(
    run: StudyRun,
    aug: DatasetRef,
    tag: str,
    modes: Sequence[str],
    start: int,
    seed: int,
    workers: int = 1,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Train every vertical's VM in each of ``modes``; ``{vertical: {mode: curve + second-half}}``.

    ``workers`` > 1 trains that many VMs at a time in worker processes (one torch thread each).
    """
    jobs = [(v, m) for v in run.verticals for m in modes]
    args = {(v, m): (run.store, aug, f"vm-{tag}-{v}-{m}", v, m, run.preset, start, seed) for v, m in jobs}
    done: dict[tuple[str, str], tuple[list[layout.WindowMetrics], float, float]] = {}
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            futs = {key: pool.submit(_vm_task, *a) for key, a in args.items()}
            done = {key: f.result() for key, f in futs.items()}
    else:
        done = {key: _vm_task(*a) for key, a in args.items()}
    res: dict[str, dict[str, dict[str, Any]]] = {v: {} for v in run.verticals}
    for (v, mode), (metrics, wall, cpu) in done.items():
        run.timer.add(f"vm-train:{mode}", wall, cpu)
        res[v][mode] = with_second_half(curve(metrics))
    return res


def select_distill(
    run: StudyRun, aug: DatasetRef, teacher: dict[str, Any], start: int, workers: int
) -> tuple[DistillConfig, dict[str, Any] | None]:
    """Pick alpha, beta, w and adapter_share on the early VM windows (see ``study_runs``)."""
    from exfm_trainer.study_dag import Done, run_dag
    from exfm_trainer.study_runs import Plan, das_key, selection_tasks
    from exfm_trainer.study_summary import Results, evaluated, selection_section

    p = run.preset
    plan = Plan(p, run.out, data_seeds=[0], seeds=[p.seed], shared_start=False)
    vm_windows = run.windows[run.windows.index(start) :]
    eval_from = evaluated(vm_windows)[0]
    prior = {
        "data:0": Done({"run": run, "bayes_ne": None}, 0.0, 0.0),
        das_key(0, p.fm_preset, p.staleness, start): Done({"aug": aug, "teacher": teacher}, 0.0, 0.0),
    }
    with _Clock(run.timer, "selection"):
        done = run_dag(selection_tasks(plan, run.verticals, start, eval_from), workers, prior=prior)
    chosen = DistillConfig(**done["select:final"].result["config"])
    return chosen, selection_section(Results(plan, done, run.verticals, run.windows))


def run_study(
    run: StudyRun, modes: Sequence[str] = MODES, workers: int = 1, select: bool = False
) -> dict[str, Any]:
    """The ablation of the study command: FM, lagged DAS, four VMs per vertical.

    ``select``: first pick the distillation knobs on the early windows (the choice is recorded
    under ``selection`` and used by every distilled VM).
    """
    p = run.preset
    t0 = time.perf_counter()
    fm_metrics = ensure_fm(run, p.fm_preset, p.seed)
    start = run.vm_start(p.staleness)
    aug = ensure_das(run, p.fm_preset, p.seed, p.staleness, start)
    vm_windows = run.windows[run.windows.index(start) :]
    with _Clock(run.timer, "fm-quality"):
        teacher = fm_vertical_quality(aug, vm_windows, run.verticals)
    selection = None
    if select:
        p.distill, selection = select_distill(run, aug, teacher, start, workers)
    with _Clock(run.timer, "vm-stage (all VMs)"):
        res = vm_variants(
            run, aug, f"{p.fm_preset}-s{p.seed}-lag{p.staleness}", modes, start, p.seed, workers
        )
    fm_curve = curve(fm_metrics)
    return {
        "verticals": {v: {m: res[v][m]["ne_second_half"] for m in modes} for v in run.verticals},
        "metric": "mean progressive NE (evaluate-then-train) over the second half of each VM's windows",
        "preset": p.model_dump(mode="json"),
        "dataset": run.ref.model_dump(mode="json", by_alias=True),
        "windows": run.windows,
        "vm_windows": vm_windows,
        "staleness": p.staleness,
        "staleness_definition": "window t uses the FM checkpoint trained through window t-1-staleness",
        "per_window": res,
        "fm": {"preset": p.fm_preset, **fm_curve, "ne_second_half": second_half(fm_curve["ne"][1:])},
        "fm_per_vertical": teacher,
        "selection": selection,
        "timings_s": {"wall": run.timer.wall, "cpu": run.timer.cpu, "total_wall": time.perf_counter() - t0},
    }


# ---- CLI ----------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m exfm_trainer study``."""
    ap = argparse.ArgumentParser(
        prog="python -m exfm_trainer study",
        description="Transfer study: FM -> lagged DAS -> VMs trained none/kd/aux/aux_sa per vertical.",
    )
    ap.add_argument("--preset", default="quick", help=f"one of {sorted(PRESETS)} (default quick)")
    ap.add_argument("--out", required=True, type=Path, help="output folder (study.json, study.md, PNG)")
    ap.add_argument("--dataset", default=None, help="windowed dataset URI or CSV/TSV/Parquet file")
    ap.add_argument("--schema", type=Path, default=None, help="FeatureSchema JSON of --dataset")
    ap.add_argument("--window-seconds", type=int, default=86_400, help="window length when importing")
    ap.add_argument("--verticals", default=None, help="comma-separated verticals (default: all found)")
    ap.add_argument("--seed", type=int, default=None, help="model seed (default: the preset's)")
    ap.add_argument("--staleness", type=int, default=None, help="FM staleness in windows (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these sizes)")
    ap.add_argument("--workers", type=int, default=2, help="VM trainings run in parallel (processes)")
    ap.add_argument(
        "--select",
        action="store_true",
        help="pick alpha, beta, w and adapter_share on the early windows first (about doubles the VM time)",
    )
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study CLI; 0 on success, 2 on bad input (the message says which)."""
    args = parser().parse_args(argv)
    import torch

    from exfm_trainer.data.windows import DataError
    from exfm_trainer.study_report import write_study_outputs

    torch.set_num_threads(max(1, args.threads))
    try:
        preset = get_preset(args.preset)
        if args.seed is not None:
            preset.seed = args.seed
        if args.staleness is not None:
            preset.staleness = args.staleness
        schema = None
        if args.schema is not None:
            try:
                schema = FeatureSchema.model_validate_json(args.schema.read_text())
            except (OSError, ValueError) as err:
                raise StudyError(f"--schema {args.schema}: {err}") from None
        verticals = [v.strip() for v in args.verticals.split(",")] if args.verticals else None
        run = prepare(args.out, preset, args.dataset, schema, verticals, args.window_seconds)
        result = run_study(run, workers=max(1, args.workers), select=args.select)
    except (StudyError, DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    paths = write_study_outputs(result, args.out)
    print(
        json.dumps(
            {"event": "study-done", "out": os.fspath(args.out), **paths, "verticals": result["verticals"]}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
