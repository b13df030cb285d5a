"""DAS benchmark: DAS throughput vs pure FM inference, and external distillation vs co-distillation.

``python bench/das.py --quick --json OUT.json`` writes OUT.json and OUT.md with:

- ``das_vs_fm_inference``: rows/s of the DAS (read all columns, FM inference, write augmented
  Parquet, commit) vs pure FM inference over the same windows and batches (read + convert +
  forward, nothing written); goal ratio >= 0.8.
- ``external_vs_codistill``: total CPU seconds of "DAS once + N student trainings on the augmented
  data" vs "N student trainings that each run the teacher forward inside every step", for
  N = 1, 2, 4, 8; goal ratio at N=4 <= 0.45.

Everything runs single-threaded (``torch.set_num_threads(1)``) on local storage, so CPU seconds
are comparable. The teacher is a randomly initialised FM checkpoint (cost, not quality, is measured).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from exfm_trainer import layout
from exfm_trainer.das import run_das
from exfm_trainer.data.batches import iter_batches
from exfm_trainer.data.synthetic import SyntheticConfig, generate
from exfm_trainer.jobs import DatasetRef, Distillation, parse_job
from exfm_trainer.models.checkpoint import build_model, load_fm_for_inference, model_config, write_checkpoint
from exfm_trainer.models.losses import vm_loss
from exfm_trainer.models.vm import VerticalModel
from exfm_trainer.storage import Storage, open_storage

NS = "bench"


def _cpu() -> float:
    return time.process_time()


def _write_fm(storage: Storage, ref: DatasetRef, preset: str) -> str:
    torch.manual_seed(0)
    cfg = model_config("fm", ref.feature_schema, preset)
    model = build_model(cfg, "plain")
    prefix = layout.fm_checkpoint(NS, "fm", layout.version_name(0))
    manifest = layout.CheckpointManifest(
        kind="fm-checkpoint",
        namespace=NS,
        name="fm",
        version=layout.version_name(0),
        windows=[0],
        preset=preset,
    )
    write_checkpoint(storage, prefix, {"model": model.state_dict()}, cfg, manifest)
    return prefix


def _rates(rows: int, wall: float, cpu: float) -> dict[str, float]:
    """Rows and their rate per CPU second (``rows_per_s``) and per wall second."""
    return {
        "rows": rows,
        "wall_s": wall,
        "cpu_s": cpu,
        "rows_per_s": rows / cpu,
        "rows_per_wall_s": rows / wall,
    }


def _das(storage: Storage, ref: DatasetRef, name: str, windows: list[int], batch: int) -> dict[str, float]:
    job = parse_job(
        {
            "job": "das",
            "storage": storage.root_uri,
            "namespace": NS,
            "name": name,
            "dataset": ref.model_dump(by_alias=True, mode="json"),
            "fm": {"namespace": NS, "name": "fm"},
            "windows": {"start": windows[0], "end": windows[-1] + 1},
            "batch_size": batch,
            "device": "cpu",
        }
    )
    wall, cpu = time.perf_counter(), _cpu()
    records = run_das(job, out=io.StringIO())  # type: ignore[arg-type]
    wall, cpu = time.perf_counter() - wall, _cpu() - cpu
    return _rates(sum(r["rows"] for r in records), wall, cpu)


def _pure_inference(module: Any, ref: DatasetRef, windows: list[int], batch: int) -> dict[str, float]:
    wall, cpu, fwd, rows = time.perf_counter(), _cpu(), 0.0, 0
    for w in windows:
        for b in iter_batches(ref, w, batch):
            t0 = _cpu()
            module(b)
            fwd += _cpu() - t0
            rows += len(b)
    wall, cpu = time.perf_counter() - wall, _cpu() - cpu
    return {**_rates(rows, wall, cpu), "forward_only_rows_per_s": rows / fwd}


def _student(
    ref: DatasetRef, windows: list[int], batch: int, teacher: Any | None, vm_preset: str, seed: int
) -> float:
    """Train one student over ``windows``; returns its CPU seconds. ``teacher``: co-distillation."""
    torch.manual_seed(seed)
    distill = Distillation(mode="aux")
    cpu = _cpu()
    vm = VerticalModel(ref.feature_schema, vm_preset, distill, embedding_mode="fused")
    dense_params = [p for n, p in vm.named_parameters() if not n.startswith("sparse.")]
    opt = torch.optim.Adam(dense_params, lr=1e-3)
    for w in windows:
        for b in iter_batches(ref, w, batch, with_fm_logit=teacher is None):
            fm_logit = b.fm_logit if teacher is None else teacher(b)
            out = vm(b.dense, b.sparse)
            loss, _ = vm_loss(out, b.labels, fm_logit, distill)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return _cpu() - cpu


def run(quick: bool) -> dict[str, Any]:
    torch.set_num_threads(1)
    rows = 30_000 if quick else 150_000
    fm_preset, vm_preset, batch = "large", "tiny", 1024
    windows = [1, 2]
    with tempfile.TemporaryDirectory(prefix="exfm-bench-das-") as tmp:
        storage = open_storage(Path(tmp) / "store")
        ref = generate(
            storage.join("data"), SyntheticConfig(windows=3, rows_per_window=rows, verticals=4, seed=1)
        )
        fm_prefix = _write_fm(storage, ref, fm_preset)
        module, _, _ = load_fm_for_inference(storage, fm_prefix)
        _pure_inference(module, ref, [0], batch)  # warm-up (allocators, hashing caches)
        pure = _pure_inference(module, ref, windows, batch)
        das = _das(storage, ref, "das-throughput", windows, batch)
        pure2 = _pure_inference(module, ref, windows, batch)  # both sides twice, best of two
        das2 = _das(storage, ref, "das-throughput-2", windows, batch)
        pure = max(pure, pure2, key=lambda r: r["rows_per_s"])
        das = max(das, das2, key=lambda r: r["rows_per_s"])
        ratio = das["rows_per_s"] / pure["rows_per_s"]
        # External distillation: one DAS pass, then N students on the augmented windows.
        ext_das = _das(storage, ref, "das-external", windows, batch)
        aug = DatasetRef(uri=storage.uri(layout.das_output(NS, "das-external")), schema=ref.feature_schema)
        ns = [1, 2, 4, 8]
        ext_students = [_student(aug, windows, batch, None, vm_preset, s) for s in range(max(ns))]
        co_students = [_student(ref, windows, batch, module, vm_preset, s) for s in range(max(ns))]
    per_n = {}
    for n in ns:
        external = ext_das["cpu_s"] + sum(ext_students[:n])
        codistill = sum(co_students[:n])
        per_n[str(n)] = {
            "external_cpu_s": external,
            "codistill_cpu_s": codistill,
            "ratio": external / codistill,
        }
    return {
        "setup": {
            "quick": quick,
            "rows_per_window": rows,
            "windows": windows,
            "rows": pure["rows"],
            "batch_size": batch,
            "fm_preset": fm_preset,
            "vm_preset": vm_preset,
            "threads": 1,
            "storage": "local",
        },
        "das_vs_fm_inference": {
            "das_rows_per_s": das["rows_per_s"],
            "fm_inference_rows_per_s": pure["rows_per_s"],
            "das_rows_per_wall_s": das["rows_per_wall_s"],
            "fm_inference_rows_per_wall_s": pure["rows_per_wall_s"],
            "rate_basis": "rows per CPU second (1 thread; the machine is shared, so wall rates are noisy)",
            "fm_forward_only_rows_per_s": pure["forward_only_rows_per_s"],
            "ratio": ratio,
            "goal": ">= 0.8",
            "meets_goal": ratio >= 0.8,
        },
        "external_vs_codistill": {
            "das_cpu_s": ext_das["cpu_s"],
            "student_cpu_s_external": ext_students,
            "student_cpu_s_codistill": co_students,
            "per_n": per_n,
            "goal": "ratio at N=4 <= 0.45",
            "meets_goal": per_n["4"]["ratio"] <= 0.45,
        },
    }


def markdown(res: dict[str, Any]) -> str:
    d, e, s = res["das_vs_fm_inference"], res["external_vs_codistill"], res["setup"]
    lines = [
        "# DAS benchmark",
        "",
        f"{s['rows']} rows ({len(s['windows'])} windows x {s['rows_per_window']}), batch {s['batch_size']}, "
        f"FM `{s['fm_preset']}`, VM `{s['vm_preset']}`, 1 thread, local storage.",
        "",
        "## DAS vs pure FM inference",
        "",
        "Rates are rows per CPU second of one thread (wall-clock rates in the JSON).",
        "",
        "| DAS rows/s | FM inference rows/s | forward-only rows/s | ratio (goal >= 0.8) |",
        "|---|---|---|---|",
        f"| {d['das_rows_per_s']:.0f} | {d['fm_inference_rows_per_s']:.0f} | "
        f"{d['fm_forward_only_rows_per_s']:.0f} | {d['ratio']:.2f} |",
        "",
        "## External distillation (DAS once + N students) vs co-distillation (teacher in every step)",
        "",
        f"DAS pass: {e['das_cpu_s']:.2f} CPU s.",
        "",
        "| N | external CPU s | co-distillation CPU s | ratio |",
        "|---|---|---|---|",
    ]
    for n, row in e["per_n"].items():
        lines.append(
            f"| {n} | {row['external_cpu_s']:.2f} | {row['codistill_cpu_s']:.2f} | {row['ratio']:.2f} |"
        )
    lines += ["", f"Goal: ratio at N=4 <= 0.45 -> {'met' if e['meets_goal'] else 'NOT met'}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data (<= 3 minutes)")
    parser.add_argument("--json", required=True, help="output JSON path (markdown written next to it)")
    args = parser.parse_args(argv)
    res = run(args.quick)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
