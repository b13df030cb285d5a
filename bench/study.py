"""Transfer-study benchmark: ablation, FM staleness, FM scaling over data x model seeds, with statistics.

``python bench/study.py --preset standard --json OUT.json [--out DIR]`` writes OUT.json and, under DIR
(default ``docs/results``), ``study_bench_<preset>.md`` and PNG plots. The runs (see
:mod:`exfm_trainer.study_runs`): per data seed one FM per size and one DAS per (size, staleness);
per data seed x model seed the VMs of every vertical in each section; hyper-parameters chosen on
the early windows first. Sections of the JSON:

- ``ablation``: none / kd / aux / aux_sa per vertical (curves of the first run, means over all);
- ``ci``: ``{vertical: {mode: {gain_pct, ci95}}}``, paired windows x seeds bootstrap vs ``none``;
- ``staleness`` / ``staleness_recovery``: FM 0, 1, 2, 4 windows stale; what the adapter recovers,
  ``(NE_aux,k - NE_aux_sa,k) / (NE_aux,k - NE_aux,0)`` with its interval;
- ``scaling``: ``fm_ne`` and the aux_sa VM's ``vm_gain_pct`` per FM size (small / medium / large);
- ``transfer_ratio``: ``(NE_none - NE_mode) / (NE_none - NE_FM)`` per vertical and mode;
- ``bayes_ne`` (when the generator knows it), ``collapses``, ``selection``, ``repeats``;
- ``serving``: p50/p99 latency of the exported serving modules and the ExFM / baseline ratio;
- ``one_fm_n_vms``: the cost of one FM + one DAS against the VM trainings it serves, and external
  distillation vs co-distillation from ``bench/das.py``'s JSON.

Independent runs go to ``--workers`` processes (default 2), one torch thread each.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BATCHES = (1, 64, 512)
DEFAULT_SEEDS = {"tiny": (2, 1), "quick": (2, 1), "standard": (5, 2), "full": (5, 2)}


def bench_preset(name: str) -> Any:
    """The study preset of a bench run.

    ``quick``: the study's ``quick`` stream with a third of the rows (the 5-minute check);
    ``standard``: the study's ``quick`` stream as is (the committed run); ``full``: the study's
    ``full`` stream; ``tiny``: tests (seconds, numbers meaningless).
    """
    from exfm_trainer.study import get_preset

    if name == "quick":
        p = get_preset("quick")
        p.synthetic.rows_per_window //= 3
        p.synthetic.users = (p.synthetic.users or 0) // 3 or None
        return p.model_copy(update={"name": "bench-quick"})
    if name == "standard":
        return get_preset("quick").model_copy(update={"name": "standard"})
    p = get_preset(name)
    if name == "tiny":
        p.synthetic.windows = 10  # staleness 4 needs windows 0..4 for the FM; VMs on 5..9
    return p


# ---- serving latency ----------------------------------------------------------------------------


def _fm_serving_module(store: str, prefix: str) -> Any:
    """The FM checkpoint as a TorchScript module with the VM export's plain-tensor signature."""
    import torch
    from torch import nn

    from exfm_trainer.models.checkpoint import load_model
    from exfm_trainer.models.embeddings import table_name
    from exfm_trainer.storage import open_storage

    fm, _ = load_model(open_storage(store), prefix)

    class FMServing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            state = fm.state_dict()
            bags = []
            for i, f in enumerate(fm.schema.sparse):
                w = state[f"sparse.embedding_bags.{table_name(i)}.weight"].detach().float()
                bag = nn.EmbeddingBag(w.shape[0], w.shape[1], mode="mean" if f.multi_valued else "sum")
                bag.weight.data.copy_(w)
                bags.append(bag)
            self.bags = nn.ModuleList(bags)
            self.dense_proj = fm.dense_tower.proj
            # LowRankCrossNet indexes its ParameterLists by a loop variable (not scriptable): stack them
            self.register_buffer("cross_v", torch.stack([p.detach() for p in fm.cross.V_kernels]))
            self.register_buffer("cross_w", torch.stack([p.detach() for p in fm.cross.W_kernels]))
            self.register_buffer("cross_b", torch.stack([p.detach() for p in fm.cross.bias]))
            self.top = fm.top
            self.out = fm.out

        def forward(self, dense: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            batch = dense.shape[0]
            parts = [self.dense_proj(dense)]
            lengths = lengths.to(torch.long)
            start = 0
            for i, bag in enumerate(self.bags):
                lens = lengths[i * batch : (i + 1) * batch]
                n = int(lens.sum())
                parts.append(bag(values[start : start + n].to(torch.long), torch.cumsum(lens, 0) - lens))
                start += n
            x0 = torch.cat(parts, dim=1)
            x = x0
            for i in range(self.cross_v.shape[0]):
                xv = torch.nn.functional.linear(x, self.cross_v[i])
                x = x0 * (torch.nn.functional.linear(xv, self.cross_w[i]) + self.cross_b[i]) + x
            return torch.sigmoid(self.out(self.top(x)).squeeze(-1))

    module = FMServing().eval()
    return torch.jit.script(module), fm


def _latency(
    modules: dict[str, Any], inputs: dict[str, dict[int, tuple]], iters: dict[int, int]
) -> dict[str, Any]:
    """p50/p99 ms per module and batch size (``inputs[module][batch]``: each module gets the
    columns of its own schema); calls alternate between modules (A, B, C, A, B, C...) so load from
    other processes hits every module alike."""
    import numpy as np
    import torch

    res: dict[str, dict[str, dict[str, float]]] = {k: {} for k in modules}
    with torch.no_grad():
        for b in BATCHES:
            times: dict[str, list[float]] = {k: [] for k in modules}
            keys = list(modules)
            for i in range(iters[b] + 5):
                # rotate the call order each round: no module always runs right after another's cache churn
                for key in keys[i % len(keys) :] + keys[: i % len(keys)]:
                    mod = modules[key]
                    args = inputs[key][b]
                    t = time.perf_counter()
                    mod(*args)
                    if i >= 5:  # warm-up calls are not timed
                        times[key].append((time.perf_counter() - t) * 1e3)
            for key, ts in times.items():
                res[key][str(b)] = {
                    "p50_ms": float(np.percentile(ts, 50)),
                    "p99_ms": float(np.percentile(ts, 99)),
                }
    return res


def serving_bench(run: Any, plan: Any) -> dict[str, Any]:
    """Latency of the exported none / aux_sa VMs (first run, first vertical) and of the FM."""
    import torch

    from exfm_trainer import layout
    from exfm_trainer.data.batches import iter_batches
    from exfm_trainer.models.checkpoint import latest_version
    from exfm_trainer.models.export import load_serving
    from exfm_trainer.storage import open_storage
    from exfm_trainer.study import NS, fm_name

    torch.set_num_threads(1)
    st = open_storage(run.store)
    quick = plan.preset.name

    def batch_inputs(schema: Any) -> tuple[Any, dict[int, tuple]]:
        """A batch of the last window with ``schema``'s columns, sliced to each batch size."""
        ref = run.ref.model_copy(update={"feature_schema": schema})
        batch = next(iter_batches(ref, run.windows[-1], max(BATCHES)))
        return batch, {
            b: (batch.dense[:b].float(), sub.values(), sub.lengths())
            for b in BATCHES
            for sub in [_slice_kjt(batch.sparse, b)]
        }

    batch, fm_inputs = batch_inputs(run.ref.feature_schema)
    inputs: dict[str, dict[int, tuple]] = {"fm": fm_inputs}
    iters = {1: 1000, 64: 500, 512: 200} if quick == "bench-quick" else {1: 3000, 64: 1500, 512: 500}
    if quick == "tiny":
        iters = {1: 10, 64: 5, 512: 3}
    modules: dict[str, Any] = {}
    d0, s0, v0 = plan.data_seeds[0], plan.seeds[0], run.verticals[0]
    exports = {m: f"vm-ab-d{d0}-s{s0}-{v0}-{m}" for m in ("none", "aux_sa")}
    for mode, name in exports.items():
        version = latest_version(st, f"{layout.model_root('vm', NS, name)}/serving")
        key = "baseline_vm" if mode == "none" else "exfm_vm"
        pred = load_serving(st, layout.vm_serving(NS, name, version))
        modules[key] = pred.module
        inputs[key] = batch_inputs(pred.schema)[1]  # the student's serving budget (its own columns)
    fm_version = layout.version_name(run.windows[-1])
    modules["fm"], fm_model = _fm_serving_module(
        run.store, layout.fm_checkpoint(NS, fm_name(run.preset.fm_preset, plan.data_seeds[0]), fm_version)
    )
    with torch.no_grad():  # the FM serving glue must reproduce the checkpoint's predictions
        want = torch.sigmoid(fm_model(batch.dense, batch.sparse))
        got = modules["fm"](batch.dense.float(), batch.sparse.values(), batch.sparse.lengths())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    lat = _latency(modules, inputs, iters)
    ratios = {
        b: {
            "exfm_over_baseline_p50": lat["exfm_vm"][b]["p50_ms"] / lat["baseline_vm"][b]["p50_ms"],
            "exfm_over_baseline_p99": lat["exfm_vm"][b]["p99_ms"] / lat["baseline_vm"][b]["p99_ms"],
            "fm_over_vm_p50": lat["fm"][b]["p50_ms"] / lat["baseline_vm"][b]["p50_ms"],
        }
        for b in lat["fm"]
    }
    worst = max(r["exfm_over_baseline_p50"] for r in ratios.values())
    return {
        "latency_ms": lat,
        "ratios": ratios,
        "goal": "ExFM VM / baseline VM p50 <= 1.02 at every batch size",
        "meets_goal": worst <= 1.02,
        "note": "1 thread, TorchScript serving modules (VM: models.export; FM: same signature, bench glue); "
        "ExFM exports only backbone + serving head, so its graph equals the baseline's",
        "vertical": v0,
        "fm_preset": run.preset.fm_preset,
    }


def _slice_kjt(kjt: Any, b: int) -> Any:
    from torchrec import KeyedJaggedTensor

    parts = [kjt[k] for k in kjt.keys()]  # noqa: SIM118 (KJT has no __iter__)
    values, lengths = [], []
    for jt in parts:
        lens = jt.lengths()[:b]
        values.append(jt.values()[: int(lens.sum())])
        lengths.append(lens)
    import torch

    return KeyedJaggedTensor(keys=kjt.keys(), values=torch.cat(values), lengths=torch.cat(lengths), stride=b)


# ---- cost -----------------------------------------------------------------------------------------


def one_fm_section(res: dict[str, Any], done: dict[str, Any], plan: Any, das: dict | None, src: str) -> dict:
    """One FM training and one DAS pass (data seed 0) against the ablation VM trainings they serve."""
    from exfm_trainer.study_runs import das_key

    d0 = plan.data_seeds[0]
    ab_start = res["ablation"]["verticals"][next(iter(res["ablation"]["verticals"]))]["none"]["windows"][0]
    vm_keys = [k for k in done if k.startswith(f"vm:ablation:{d0}:")]
    return {
        "gain_pct_aux_sa": {v: m["aux_sa"] for v, m in res["ci"].items()},
        "cost_cpu_s": {
            "fm_train": done[f"fm:{d0}:{plan.preset.fm_preset}"].cpu_s,
            "das_once": done[das_key(d0, plan.preset.fm_preset, plan.ablation_lag, ab_start)].cpu_s,
            "vm_train_total": sum(done[k].cpu_s for k in vm_keys),
            "vm_trainings": len(vm_keys),
        },
        "external_vs_codistill": (das or {}).get("external_vs_codistill"),
        "external_vs_codistill_source": src,
    }


def load_or_run_das(path: Path | None) -> tuple[dict[str, Any] | None, str]:
    """bench/das.py's JSON at ``path``, else its quick run; ``path`` None skips it."""
    if path is None:
        return None, "skipped"
    if path.exists():
        return json.loads(path.read_text()), str(path)
    sys.path.insert(0, str(REPO / "bench"))
    import das as das_bench  # bench/das.py

    return das_bench.run(quick=True), "bench/das.py run(quick=True) (no JSON found at " + str(path) + ")"


# ---- main ---------------------------------------------------------------------------------------


def seed_list(text: str) -> list[int]:
    """``"5"`` -> ``[0..4]``; ``"0,3,7"`` -> those seeds."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if len(items) == 1 and "," not in text:
        n = int(items[0])
        if n < 1:
            raise ValueError(f"need at least one seed, got {text!r}")
        return list(range(n))
    return [int(x) for x in items]


def run(
    preset_name: str,
    workers: int,
    seeds: list[int],
    data_seeds: list[int],
    das_json: Path | None,
    work: Path,
    dataset: str | None = None,
    schema_json: str | None = None,
    window_seconds: int = 86_400,
    select: bool = True,
    log: Any = None,
) -> dict[str, Any]:
    """Every run of the study (a task graph over ``workers`` processes), then its statistics."""
    from exfm_trainer.study_dag import Task, run_dag
    from exfm_trainer.study_runs import Plan, build_tasks, t_data
    from exfm_trainer.study_summary import summarize

    t0 = time.perf_counter()
    preset = bench_preset(preset_name)
    if dataset is not None:
        data_seeds = data_seeds[:1]  # one imported stream: the model seeds carry the repeats
    plan = Plan(preset, work, data_seeds, seeds, dataset, schema_json, window_seconds, select=select)
    done = run_dag([Task(f"data:{d}", t_data, (plan, d)) for d in data_seeds], workers, log)
    run0 = done[f"data:{data_seeds[0]}"].result["run"]
    for d in data_seeds[1:]:
        other = done[f"data:{d}"].result["run"]
        if set(other.verticals) != set(run0.verticals) or other.windows != run0.windows:
            raise SystemExit(
                f"error: data seed {d} has other verticals/windows than data seed {data_seeds[0]}"
            )
    need = max(plan.staleness_levels) + 3
    if len(run0.windows) < need:
        raise SystemExit(
            f"error: {run0.ref.uri} has {len(run0.windows)} windows; the staleness sweep (FM up to "
            f"{max(plan.staleness_levels)} windows stale) needs at least {need}: use more, shorter windows "
            "(--window-seconds)"
        )
    tasks = [t for t in build_tasks(plan, run0.verticals, run0.windows) if not t.key.startswith("data:")]
    done = run_dag(tasks, workers, log, prior=done, limits={"fm": max(1, workers - 1)})
    res = summarize(plan, done, run0.verticals, run0.windows)
    serving = serving_bench(run0, plan)
    das, src = load_or_run_das(das_json)
    return {
        "setup": {
            "preset_name": preset.name,
            "preset": preset.model_dump(mode="json"),
            "dataset": run0.ref.model_dump(mode="json", by_alias=True) if dataset else None,
            "seeds": seeds,
            "data_seeds": data_seeds,
            "fm_seed": "the data seed's index (one FM per data seed and size, shared by all model seeds)",
            "workers": workers,
            "threads_per_worker": 1,
            "verticals": run0.verticals,
            "windows": run0.windows,
            "staleness_levels": list(plan.staleness_levels),
            "fm_sizes": list(plan.fm_sizes),
        },
        **res,
        "serving": serving,
        "one_fm_n_vms": one_fm_section(res, done, plan, das, src),
        "wall_s": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument(
        "--preset",
        choices=sorted(DEFAULT_SEEDS),
        default="standard",
        help="stream and sizes (default standard)",
    )
    ap.add_argument("--quick", action="store_true", help="same as --preset quick (<= ~5 minutes on 2 cores)")
    ap.add_argument("--json", required=True, type=Path, help="output JSON")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "results", help="markdown + PNG folder")
    ap.add_argument("--workers", type=int, default=2, help="parallel worker processes (default 2)")
    ap.add_argument("--seeds", default=None, help="model seeds: a count (5) or a list (0,1,2); per preset")
    ap.add_argument("--data-seeds", default=None, help="data seeds: a count or a list; per preset")
    ap.add_argument("--no-select", action="store_true", help="skip hyper-parameter selection (preset's)")
    ap.add_argument("--das-json", type=Path, default=REPO / "bench" / "results" / "das.json")
    ap.add_argument(
        "--no-das", action="store_true", help="skip the co-distillation comparison (bench/das.py)"
    )
    ap.add_argument("--dataset", default=None, help="windowed dataset URI or CSV/TSV/Parquet file")
    ap.add_argument("--schema", type=Path, default=None, help="FeatureSchema JSON of --dataset")
    ap.add_argument("--window-seconds", type=int, default=86_400, help="window length when importing")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log each finished task to stderr")
    args = ap.parse_args(argv)
    name = "quick" if args.quick else args.preset
    n_seeds, n_data = DEFAULT_SEEDS[name]
    try:
        seeds = seed_list(args.seeds) if args.seeds else list(range(n_seeds))
        data_seeds = seed_list(args.data_seeds) if args.data_seeds else list(range(n_data))
    except ValueError as err:
        print(f"error: --seeds/--data-seeds: {err}", file=sys.stderr)
        return 2
    if (args.dataset is None) != (args.schema is None):
        print(
            "error: --dataset and --schema go together (a FeatureSchema JSON with a vertical column)",
            file=sys.stderr,
        )
        return 2
    schema_json = args.schema.read_text() if args.schema else None
    das_json = None if args.no_das else args.das_json
    sys.path.insert(0, str(REPO / "bench"))
    from exfm_trainer.study_report import dump_json, write_bench_outputs

    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.verbose else None
    kw = {"dataset": args.dataset, "schema_json": schema_json, "window_seconds": args.window_seconds}
    kw |= {"select": not args.no_select, "log": log}
    if args.work is not None:
        result = run(name, args.workers, seeds, data_seeds, das_json, args.work, **kw)
    else:
        with tempfile.TemporaryDirectory(prefix="exfm-study-bench-") as tmp:
            result = run(name, args.workers, seeds, data_seeds, das_json, Path(tmp), **kw)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(dump_json(result))
    paths = write_bench_outputs(
        json.loads(dump_json(result)), args.out
    )  # the report reads what the JSON says
    print(json.dumps({"json": str(args.json), **paths, "wall_s": round(result["wall_s"], 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
