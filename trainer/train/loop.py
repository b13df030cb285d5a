"""One-pass streaming training of an FM or a VM over time-ordered windows.

For each ready window after the last committed checkpoint: read it, check its bad-row fraction,
evaluate the current model on it (progressive validation), train on it, write its metrics, and
commit a checkpoint every ``checkpoint_every`` windows (and after the last one). A restarted job
resumes from the newest committed checkpoint, so a window is never trained twice and a crash
loses at most the windows since the last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torchrec import KeyedJaggedTensor

from exfm_trainer import layout
from exfm_trainer.data.batches import Batch, RowStats, check_bad_fraction, iter_batches
from exfm_trainer.data.windows import DataError, iter_record_batches, list_ready_windows, window_info
from exfm_trainer.jobs import FMTrainJob, VMTrainJob
from exfm_trainer.models.adapter import AdapterTrainer
from exfm_trainer.models.checkpoint import (
    build_model,
    latest_version,
    model_config,
    read_checkpoint,
    write_checkpoint,
)
from exfm_trainer.models.losses import fm_loss, vm_loss
from exfm_trainer.models.presets import fm_preset, vm_preset
from exfm_trainer.models.vm import VerticalModel
from exfm_trainer.storage import Storage, open_storage
from exfm_trainer.storage.commit import read_manifest
from exfm_trainer.storage.retention import gc_checkpoints
from exfm_trainer.train import distributed as D
from exfm_trainer.train.metrics import window_metrics

Kind = Literal["fm", "vm"]


class TrainingError(RuntimeError):
    """The job cannot continue; the message names the artifact or setting and the fix."""


@dataclass
class RunResult:
    """What one invocation did."""

    trained: list[int] = field(default_factory=list)
    empty: list[int] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    resumed_from: str | None = None
    metrics: list[layout.WindowMetrics] = field(default_factory=list)
    waiting_for: int | None = None


def emit(out: TextIO | None, event: str, **fields: Any) -> None:
    """One JSON line of progress (the control plane tails these)."""
    if out is not None:
        out.write(json.dumps({"event": event, **fields}, default=str) + "\n")
        out.flush()


def windows_to_train(
    ready: list[int], job: FMTrainJob | VMTrainJob, last: int
) -> tuple[list[int], int | None]:
    """The contiguous run of ready windows to train now, and the window it waits for (if any).

    After a checkpoint the next window must be ``last + 1``; a fresh job starts at the first ready
    window in range. Windows are never skipped over, so time order holds.
    """
    cands = [w for w in ready if job.windows.contains(w) and w > last]
    expected = last + 1 if last >= 0 else (cands[0] if cands else job.windows.start)
    run: list[int] = []
    for w in cands:
        if w != expected:
            break
        run.append(w)
        expected += 1
    waiting = expected if job.windows.contains(expected) else None
    return run, waiting


class StreamingTrainer:
    """Trains one FM or VM job over its windows (see module docstring)."""

    def __init__(
        self,
        job: FMTrainJob | VMTrainJob,
        ctx: D.DistContext | None = None,
        out: TextIO | None = sys.stdout,
        on_window_done: Callable[[int], None] | None = None,
    ) -> None:
        self.job = job
        self.kind: Kind = "fm" if isinstance(job, FMTrainJob) else "vm"
        self.ctx = ctx or D.DistContext(0, 1, D.resolve_device(job.device))
        self.out = out if self.ctx.is_main else None
        self.on_window_done = on_window_done
        self.storage: Storage = open_storage(job.storage)
        # a VM reads only its serving budget's features (VMTrainJob.features); the FM reads all
        self.dataset = job.model_dataset() if isinstance(job, VMTrainJob) else job.dataset
        self.schema = self.dataset.feature_schema
        distill = job.distillation if isinstance(job, VMTrainJob) else None
        self.config = model_config(self.kind, self.schema, job.preset, distill)
        self.with_fm_logit = distill is not None and distill.mode != "none"
        torch.manual_seed(job.seed)
        mode = "sharded" if self.ctx.distributed else "fused"
        raw = build_model(self.config, mode, job.optim.embedding_lr, self.ctx.device)
        self.model = D.wrap_model(raw, self.ctx) if self.ctx.distributed else raw
        dense = sorted(
            ((n, p) for n, p in self.model.named_parameters() if not n.startswith("sparse.")),
            key=lambda item: item[0],
        )
        self.dense_params = [p for _, p in dense]
        preset = fm_preset(job.preset) if self.kind == "fm" else vm_preset(job.preset)
        self.dense_lr = job.optim.dense_lr or preset.dense_lr
        self.dense_optim = torch.optim.Adam(
            self.dense_params, lr=self.dense_lr, weight_decay=job.optim.weight_decay
        )
        self.steps = 0
        self.adapter = (
            AdapterTrainer(distill, self.ctx.device, D.grad_averager(self.ctx))
            if distill is not None and distill.adapter and distill.mode != "none"
            else None
        )
        self.ckpt_parent = (
            layout.fm_checkpoints(job.namespace, job.name)
            if self.kind == "fm"
            else layout.vm_checkpoints(job.namespace, job.name)
        )
        self.windows: list[int] = []
        self.metrics: dict[str, layout.WindowMetrics] = {}
        self.das_windows: list[int] = []
        self.fm_versions: list[str] = []
        self.empty_windows: list[int] = []

    # ---- resume --------------------------------------------------------------------------------

    def resume(self) -> str | None:
        """Load the newest committed checkpoint, if any; returns its version."""
        version = latest_version(self.storage, self.ckpt_parent)
        if version is None:
            return None
        prefix = f"{self.ckpt_parent}/{version}"
        state, config, manifest = read_checkpoint(self.storage, prefix)
        if config != self.config:
            raise TrainingError(
                f"checkpoint {self.storage.uri(prefix)} was written for another model "
                f"(preset/schema/distillation differ: {config.get('preset')!r} vs {self.job.preset!r}); "
                "use a new job name or delete the old checkpoints"
            )
        D.load_full_state(self.model, state)
        if state.get("dense_optim"):
            self.dense_optim.load_state_dict(state["dense_optim"])
        self.steps = int(state.get("steps", 0))
        if self.adapter is not None and state.get("adapter"):
            self.adapter.load_state_dict(state["adapter"])
        self.windows = list(manifest.windows)
        self.metrics = dict(manifest.metrics)
        self.das_windows = list(manifest.das_windows)
        self.fm_versions = list(manifest.fm_versions)
        self.empty_windows = list(getattr(manifest, "empty_windows", None) or [])
        return version

    # ---- main loop -----------------------------------------------------------------------------

    def run(self) -> RunResult:
        """Resume, then process every ready window in order (checkpointing as configured)."""
        result = RunResult(resumed_from=self.resume())
        last = max(self.windows) if self.windows else -1
        ready = list_ready_windows(self.job.dataset.uri)
        todo, waiting = windows_to_train(ready, self.job, last)
        emit(
            self.out,
            "start",
            job=self.kind,
            name=self.job.name,
            resumed_from=result.resumed_from,
            windows=todo,
            world_size=self.ctx.world_size,
            device=str(self.ctx.device),
        )
        self.check_input(todo)
        since_ckpt = 0
        for i, window in enumerate(todo):
            metrics = self.process_window(window)
            result.metrics.append(metrics)
            (result.empty if metrics.rows == 0 else result.trained).append(window)
            since_ckpt += 1
            if since_ckpt >= self.job.checkpoint_every or i == len(todo) - 1:
                result.checkpoints.append(self.checkpoint())
                since_ckpt = 0
            if self.on_window_done is not None:
                self.on_window_done(window)
        result.waiting_for = waiting
        emit(
            self.out,
            "done",
            trained=result.trained,
            empty=result.empty,
            waiting_for=waiting,
            last_window=max(self.windows) if self.windows else None,
        )
        return result

    def check_input(self, todo: list[int]) -> None:
        """Fail before training when the job's windows hold no row for it (a misspelled vertical, an
        empty dataset) and the model never trained on a row: no checkpoint or export of an untrained
        model. Later empty chunks (gaps in a stream) are fine once the model has trained."""
        if not todo or not set(self.windows) <= set(self.empty_windows):
            return
        uri, span = self.job.dataset.uri, f"windows [{todo[0]}, {todo[-1] + 1})"
        vertical = self.job.vertical if isinstance(self.job, VMTrainJob) else None
        column = self.schema.vertical
        if vertical is None or not column:
            if sum(window_info(uri, w).rows for w in todo) == 0:
                raise DataError(
                    f"no rows in {span} of {uri}: every window of the job is empty; check the dataset "
                    "(its import or generator), or start spec.windows at the first window with data"
                )
            return
        counts: dict[str, int] = {}
        for w in todo:
            for rb in iter_record_batches(uri, w, [column]):
                vc = pc.value_counts(pc.cast(rb.column(0), pa.string()))
                for value, n in zip(
                    vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True
                ):
                    counts[str(value)] = counts.get(str(value), 0) + int(n)
        if counts.get(vertical, 0) == 0:
            present = ", ".join(sorted(counts)) if counts else "no rows at all"
            raise DataError(
                f"vertical {vertical!r} not in [{present}] (column {column!r} of {span} of {uri}): no row "
                "of the job is of this vertical; fix spec.vertical of the VerticalModel"
            )

    def _load_window(self, window: int) -> tuple[list[Batch], RowStats]:
        stats = RowStats()
        vertical = self.job.vertical if isinstance(self.job, VMTrainJob) else None
        batches = [
            b.to(self.ctx.device) if self.ctx.device.type != "cpu" else b
            for b in iter_batches(
                self.dataset,
                window,
                self.job.batch_size,
                rank=self.ctx.rank,
                world_size=self.ctx.world_size,
                vertical=vertical,
                with_fm_logit=self.with_fm_logit,
                stats=stats,
            )
        ]
        return batches, stats

    def process_window(self, window: int) -> layout.WindowMetrics:
        """Evaluate, then train on one window (all ranks); returns its progressive metrics."""
        batches, local = self._load_window(window)
        reasons = sorted(local.skipped_by_reason)
        counts = D.all_reduce_ints(
            [local.rows_read, local.rows_used, *(local.skipped_by_reason[r] for r in reasons)], self.ctx
        )
        batch_counts = D.gather_objects(len(batches), self.ctx)  # every rank's, for padding
        stats = RowStats(rows_read=counts[0], rows_used=counts[1])
        stats.skipped_by_reason = dict(zip(reasons, counts[2:], strict=True))
        stats.examples = dict(local.examples)
        check_bad_fraction(stats, self.job.max_bad_row_fraction, window)
        used, skipped = stats.rows_used, stats.rows_skipped
        if used == 0:
            metrics = layout.WindowMetrics(window=window, rows=0, skipped_rows=skipped)
            self.empty_windows.append(window)
            self._finish_window(window, metrics, empty=True)
            return metrics
        steps = self._pad(batches, max(batch_counts))
        logits, labels = self._evaluate(steps)
        if self.adapter is not None:
            self._anchor_adapter(batches)
        start = time.perf_counter()
        self._train(steps, batch_counts)
        elapsed = time.perf_counter() - start
        gathered = D.gather_objects((logits, labels), self.ctx)
        all_logits = np.concatenate([g[0] for g in gathered])
        all_labels = np.concatenate([g[1] for g in gathered])
        metrics = window_metrics(
            window,
            all_logits,
            all_labels,
            skipped_rows=skipped,
            samples_per_s=used / elapsed if elapsed > 0 else None,
        )
        self._finish_window(window, metrics, empty=False)
        return metrics

    def _finish_window(self, window: int, metrics: layout.WindowMetrics, empty: bool) -> None:
        self.windows.append(window)
        self.metrics[str(window)] = metrics
        if self.kind == "vm":
            self._record_lineage(window)
        if self.ctx.is_main:
            key = layout.metrics_key(self.kind, self.job.namespace, self.job.name, window)
            self.storage.put_bytes(key, metrics.model_dump_json(indent=2).encode())
        emit(
            self.out,
            "window",
            window=window,
            rows=metrics.rows,
            skipped=empty,
            ne=metrics.ne,
            auc=metrics.auc,
            logloss=metrics.logloss,
            calibration=metrics.calibration,
            samples_per_s=metrics.samples_per_s,
            skipped_rows=metrics.skipped_rows,
        )

    # ---- steps ---------------------------------------------------------------------------------

    def _pad(self, batches: list[Batch], n: int) -> list[tuple[Batch, bool]]:
        """Every rank runs ``n`` steps (DMP collectives): pad with zero-weight copies."""
        steps = [(b, True) for b in batches]
        filler = batches[-1] if batches else self._empty_batch()
        while len(steps) < n:
            steps.append((filler, False))
        return steps

    def _empty_batch(self) -> Batch:
        dev = self.ctx.device
        n_sparse = len(self.schema.sparse)
        return Batch(
            dense=torch.zeros((1, len(self.schema.dense)), device=dev),
            sparse=KeyedJaggedTensor(
                keys=self.schema.sparse_names,
                values=torch.zeros(0, dtype=torch.int64, device=dev),
                lengths=torch.zeros(n_sparse, dtype=torch.int32, device=dev),
                stride=1,
            ),
            labels=torch.zeros(1, device=dev),
            fm_logit=torch.zeros(1, device=dev) if self.with_fm_logit else None,
        )

    def _forward(self, batch: Batch) -> Any:
        return self.model(batch.dense, batch.sparse)

    def _evaluate(self, steps: list[tuple[Batch, bool]]) -> tuple[np.ndarray, np.ndarray]:
        self.model.eval()
        logits, labels = [], []
        with torch.no_grad():
            for batch, real in steps:
                out = self._forward(batch)
                if real:
                    logits.append(out if self.kind == "fm" else out.serving)
                    labels.append(batch.labels)
        self.model.train()
        return (
            torch.cat(logits).float().cpu().numpy(),
            torch.cat(labels).float().cpu().numpy(),
        )

    def _anchor_adapter(self, batches: list[Batch]) -> None:
        """Re-anchor the adapter's standardisation on this window's FM logits (all ranks)."""
        assert self.adapter is not None
        logits = [b.fm_logit.double() for b in batches if b.fm_logit is not None]
        x = torch.cat(logits) if logits else torch.zeros(0, dtype=torch.float64)
        n, s1, s2 = D.all_reduce_floats([float(x.numel()), float(x.sum()), float((x * x).sum())], self.ctx)
        if n > 0:
            mean = s1 / n
            self.adapter.anchor(mean, max(s2 / n - mean * mean, 0.0) ** 0.5)

    def _lr_scale(self) -> float:
        warmup = self.job.optim.warmup_steps
        return min(1.0, (self.steps + 1) / warmup) if warmup else 1.0

    def _train(self, steps: list[tuple[Batch, bool]], batch_counts: list[int]) -> None:
        """One pass over the window's steps.

        ``batch_counts`` holds every rank's number of real batches. At step ``i`` only ranks with
        more than ``i`` batches hold real rows; the others run a zero-weight copy (DMP collectives
        need every rank), and real ranks scale their loss by ``world / real ranks`` so the
        all-reduced gradient is the mean over real rows. A step no rank has real rows for is not
        run, so padding never moves optimizer state.
        """
        distill = self.job.distillation if isinstance(self.job, VMTrainJob) else None
        world = len(batch_counts)
        clip = self.job.optim.clip_grad_norm
        for i, (batch, real) in enumerate(steps):
            real_ranks = sum(c > i for c in batch_counts)
            if real_ranks == 0:
                continue
            weight = None if real else torch.zeros_like(batch.labels)
            adapter_prob = None
            if self.adapter is not None:
                adapter_prob = self.adapter.step(batch.fm_logit, batch.labels, weight)
            out = self._forward(batch)
            if distill is None:
                loss, _ = fm_loss(out, batch.labels, weight)
            else:
                loss, _ = vm_loss(out, batch.labels, batch.fm_logit, distill, weight, adapter_prob)
            if real_ranks < world:
                loss = loss * (world / real_ranks)
            for group in self.dense_optim.param_groups:
                group["lr"] = self.dense_lr * self._lr_scale()
            self.dense_optim.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(self.dense_params, clip)
            self.dense_optim.step()
            self.steps += 1

    # ---- lineage and checkpoints ---------------------------------------------------------------

    def _record_lineage(self, window: int) -> None:
        job = self.job
        assert isinstance(job, VMTrainJob)
        versions: set[str] = set()
        if job.das is not None:
            self.das_windows.append(window)
            prefix = layout.das_window(job.das.namespace, job.das.name, window)
            with contextlib.suppress(FileNotFoundError, KeyError, RuntimeError):
                versions.add(str(read_manifest(self.storage, prefix)["fm_version"]))
        if not versions and self.ctx.is_main:
            try:
                for rb in iter_record_batches(job.dataset.uri, window, [layout.FM_VERSION_COLUMN]):
                    versions.update(str(v) for v in rb.column(0).unique().to_pylist() if v is not None)
            except DataError:
                pass  # no fm_version column: no per-row lineage
        self.fm_versions = sorted(set(self.fm_versions) | versions)

    def checkpoint(self) -> str:
        """Commit model + optimizer state after the last processed window (rank 0 writes)."""
        state = D.full_state(self.model, self.ctx)
        version = layout.version_name(max(self.windows))
        if self.ctx.is_main:
            assert state is not None
            state["dense_optim"] = self.dense_optim.state_dict()
            state["steps"] = self.steps
            if self.adapter is not None:
                state["adapter"] = self.adapter.state_dict()
            manifest = layout.CheckpointManifest(
                kind="fm-checkpoint" if self.kind == "fm" else "vm-checkpoint",
                namespace=self.job.namespace,
                name=self.job.name,
                version=version,
                windows=sorted(self.windows),
                preset=self.job.preset,
                metrics=self.metrics,
                das_windows=sorted(self.das_windows),
                fm_versions=self.fm_versions,
                empty_windows=sorted(self.empty_windows),
                world_size=self.ctx.world_size,
            )
            prefix = f"{self.ckpt_parent}/{version}"
            write_checkpoint(self.storage, prefix, state, self.config, manifest)
            removed = gc_checkpoints(
                self.storage,
                self.kind,
                self.job.namespace,
                self.job.name,
                self.job.keep_checkpoints,
                min_age_s=self.job.retention_min_age_s,
            )
            emit(self.out, "checkpoint", version=version, uri=self.storage.uri(prefix), removed=removed)
        D.barrier(self.ctx)
        return version

    def trained_vm(self) -> VerticalModel:
        """The VM being trained, outside any DMP wrapper."""
        model = D.unwrap(self.model)
        assert isinstance(model, VerticalModel)
        return model


def run_training(
    job: FMTrainJob | VMTrainJob,
    out: TextIO | None = sys.stdout,
    on_window_done: Callable[[int], None] | None = None,
) -> RunResult:
    """Run an ``fm-train`` / ``vm-train`` job (joins torchrun's process group when launched by it)."""
    ctx = D.init_distributed(job.device)
    try:
        trainer = StreamingTrainer(job, ctx, out, on_window_done)
        result = trainer.run()
        if isinstance(job, VMTrainJob) and job.export and trainer.windows and result.checkpoints:
            from exfm_trainer.train.serving import export_latest

            export_latest(trainer, out)
        return result
    finally:
        D.shutdown(ctx)
