"""Transfer-study benchmark: ablation, FM staleness, FM scaling, serving latency, 1 FM -> N VMs, repeats.

``python bench/study.py --quick --json OUT.json [--out DIR]`` writes OUT.json and, under DIR
(default ``docs/results``), ``study_bench.md`` and PNG plots. Sections of the JSON:

- ``ablation``: per vertical, VMs trained none / kd / aux / aux_sa (aux + student adapter) on the
  same lagged-DAS windows: NE and AUC per window and the second-half means (seed 0);
- ``staleness``: the DAS uses an FM 0, 1, 2 and 4 windows stale (window t <- FM trained through
  t-1-k); NE gain over ``none`` of aux and aux_sa per level, and what the adapter recovers;
- ``scaling``: FM presets small / medium / large: the FM's own NE and each VM's aux_sa gain;
- ``serving``: p50/p99 latency of the exported serving modules (baseline VM, ExFM VM, FM) at
  batch 1, 64, 512 and the ratios ExFM VM / baseline VM (goal <= 1.02) and FM / VM;
- ``one_fm_n_vms``: gain per vertical from one FM + one DAS pass, the measured cost of each step,
  and external distillation vs co-distillation from ``bench/das.py``'s JSON (run if absent);
- ``repeats``: the ablation over >= 3 seeds (FM and VMs reseeded, data fixed): mean +- std of NE
  and of the paired gain; ``significant`` when the mean gain exceeds its std across seeds.

The work runs in ``--workers`` processes (default 2), one torch thread each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STALENESS_LEVELS = (0, 1, 2, 4)
FM_SIZES = ("small", "medium", "large")
BATCHES = (1, 64, 512)


def bench_preset(quick: bool | str) -> Any:
    """The study preset of a bench run.

    ``True`` (``--quick``): the study's ``quick`` stream with a third of the rows (fits 5 minutes);
    ``False`` (default, ``standard``): the study's ``quick`` stream as is (the committed run);
    ``"full"``: the study's ``full`` stream; ``"tiny"``: tests (seconds, numbers meaningless).
    """
    from exfm_trainer.study import get_preset

    if quick is True:
        p = get_preset("quick")
        p.synthetic.rows_per_window //= 3
        p.synthetic.users = (p.synthetic.users or 0) // 3 or None
        return p.model_copy(update={"name": "bench-quick"})
    if quick is False:
        return get_preset("quick").model_copy(update={"name": "standard"})
    p = get_preset(quick)
    if quick == "tiny":
        p.synthetic.windows = 7  # staleness 4 needs windows 0..4 for the FM before the VMs start
    return p


# ---- worker tasks (each in its own process; results are plain dicts) -----------------------------


def _setup(out: str, quick: bool | str) -> Any:
    import torch

    from exfm_trainer.study import prepare

    torch.set_num_threads(1)
    return prepare(Path(out), bench_preset(quick))


def task_ablation(out: str, quick: bool | str, seed: int, export: bool) -> dict[str, Any]:
    """FM (seed) -> DAS (staleness 1) -> every vertical x mode; exports seed 0's none/aux_sa VMs."""
    from exfm_trainer import study

    run = _setup(out, quick)
    p = run.preset
    t0 = time.perf_counter()
    fm = study.ensure_fm(run, p.fm_preset, seed)
    start = run.vm_start(p.staleness)
    aug = study.ensure_das(run, p.fm_preset, seed, p.staleness, start)
    teacher = study.fm_vertical_quality(aug, run.windows[run.windows.index(start) :], run.verticals)
    res = study.vm_variants(run, aug, f"{p.fm_preset}-s{seed}-lag{p.staleness}", study.MODES, start, seed)
    exports = {}
    if export:
        v = run.verticals[0]
        for mode in ("none", "aux_sa"):
            name = f"serve-{v}-{mode}"
            study.train_vm(run.store, aug, name, v, mode, p, start, seed, export=True)
            exports[mode] = name
    return {
        "seed": seed,
        "per_window": res,
        "fm": {**study.curve(fm), "ne_second_half": study.second_half([m.ne for m in fm][1:])},
        "fm_per_vertical": teacher,
        "exports": exports,
        "timings": {"wall": run.timer.wall, "cpu": run.timer.cpu, "total_wall": time.perf_counter() - t0},
        "verticals": run.verticals,
        "windows": run.windows,
    }


def task_staleness(out: str, quick: bool | str, seed: int) -> dict[str, Any]:
    """One FM; DAS with FMs 0/1/2/4 windows stale, all from window max(levels)+1; none/aux/aux_sa VMs."""
    from exfm_trainer import study

    run = _setup(out, quick)
    p = run.preset
    study.ensure_fm(run, p.fm_preset, seed)
    start = run.vm_start(max(STALENESS_LEVELS))
    base = study.vm_variants(
        run, _das_for(run, p.fm_preset, seed, 0, start), "stale-base", ["none"], start, seed
    )
    levels: dict[str, Any] = {}
    for k in STALENESS_LEVELS:
        aug = _das_for(run, p.fm_preset, seed, k, start)
        vms = study.vm_variants(run, aug, f"stale{k}-s{seed}", ["aux", "aux_sa"], start, seed)
        teacher = study.fm_vertical_quality(aug, run.windows[run.windows.index(start) :], run.verticals)
        levels[str(k)] = {
            v: {
                "fm_ne": teacher[v]["ne_second_half"],
                "none": base[v]["none"]["ne_second_half"],
                "aux": vms[v]["aux"]["ne_second_half"],
                "aux_sa": vms[v]["aux_sa"]["ne_second_half"],
            }
            for v in run.verticals
        }
    return {"start": start, "levels": levels, "timings": run.timer.wall}


def _das_for(run: Any, fm_preset: str, seed: int, k: int, start: int) -> Any:
    from exfm_trainer import study

    return study.ensure_das(run, fm_preset, seed, k, start)


def task_scaling(out: str, quick: bool | str, fm_preset: str, seed: int) -> dict[str, Any]:
    """FM of one size -> DAS (staleness 1) -> aux_sa VM per vertical."""
    from exfm_trainer import study

    run = _setup(out, quick)
    p = run.preset
    fm = study.ensure_fm(run, fm_preset, seed)
    start = run.vm_start(p.staleness)
    aug = study.ensure_das(run, fm_preset, seed, p.staleness, start)
    teacher = study.fm_vertical_quality(aug, run.windows[run.windows.index(start) :], run.verticals)
    vms = study.vm_variants(run, aug, f"scale-{fm_preset}-s{seed}", ["aux_sa"], start, seed)
    return {
        "fm_preset": fm_preset,
        "fm_ne": study.second_half([m.ne for m in fm][1:]),
        "fm_train_wall_s": run.timer.wall.get(f"fm-train:{fm_preset}"),
        "fm_ne_per_vertical": {v: teacher[v]["ne_second_half"] for v in run.verticals},
        "aux_sa": {v: vms[v]["aux_sa"]["ne_second_half"] for v in run.verticals},
    }


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


def _latency(modules: dict[str, Any], inputs: dict[int, tuple], iters: dict[int, int]) -> dict[str, Any]:
    """p50/p99 ms per module and batch size; calls alternate between modules (A, B, C, A, B, C...)
    so load from other processes hits every module alike."""
    import numpy as np
    import torch

    res: dict[str, dict[str, dict[str, float]]] = {k: {} for k in modules}
    with torch.no_grad():
        for b, args in inputs.items():
            times: dict[str, list[float]] = {k: [] for k in modules}
            keys = list(modules)
            for i in range(iters[b] + 5):
                # rotate the call order each round: no module always runs right after another's cache churn
                for key in keys[i % len(keys) :] + keys[: i % len(keys)]:
                    mod = modules[key]
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


def serving_bench(out: str, quick: bool | str, ablation0: dict[str, Any]) -> dict[str, Any]:
    import torch

    from exfm_trainer import layout
    from exfm_trainer.data.batches import iter_batches
    from exfm_trainer.models.checkpoint import latest_version
    from exfm_trainer.models.export import load_serving
    from exfm_trainer.storage import open_storage
    from exfm_trainer.study import NS, fm_name

    torch.set_num_threads(1)
    run = _setup(out, quick)
    st = open_storage(run.store)
    batch = next(iter_batches(run.ref, run.windows[-1], max(BATCHES)))
    inputs: dict[int, tuple] = {}
    for b in BATCHES:
        kjt = batch.sparse
        sub = _slice_kjt(kjt, b)
        inputs[b] = (batch.dense[:b].float(), sub.values(), sub.lengths())
    iters = {1: 1000, 64: 500, 512: 200} if quick else {1: 3000, 64: 1500, 512: 500}
    if quick == "tiny":
        iters = {1: 10, 64: 5, 512: 3}
    modules: dict[str, Any] = {}
    for mode, name in ablation0["exports"].items():
        version = latest_version(st, f"{layout.model_root('vm', NS, name)}/serving")
        modules["baseline_vm" if mode == "none" else "exfm_vm"] = load_serving(
            st, layout.vm_serving(NS, name, version)
        ).module
    fm_version = layout.version_name(run.windows[-1])
    modules["fm"], fm_model = _fm_serving_module(
        run.store, layout.fm_checkpoint(NS, fm_name(run.preset.fm_preset, 0), fm_version)
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
        "vertical": ablation0["verticals"][0],
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


# ---- aggregation --------------------------------------------------------------------------------


def _mean_std(xs: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def repeats_section(runs: list[dict[str, Any]]) -> dict[str, Any]:
    from exfm_trainer.study import MODES

    verts = runs[0]["verticals"]
    out: dict[str, Any] = {"seeds": [r["seed"] for r in runs], "verticals": {}}
    for v in verts:
        row: dict[str, Any] = {}
        for m in MODES:
            row[m] = _mean_std([r["per_window"][v][m]["ne_second_half"] for r in runs])
        gains = {}
        for m in MODES[1:]:
            g = [
                (r["per_window"][v]["none"]["ne_second_half"] - r["per_window"][v][m]["ne_second_half"])
                / r["per_window"][v]["none"]["ne_second_half"]
                * 100
                for r in runs
            ]
            s = _mean_std(g)
            gains[m] = {
                **s,
                "per_seed": g,
                "positive_seeds": sum(x > 0 for x in g),
                "significant": s["mean"] > 0 and s["mean"] > s["std"],
            }
        row["gain_pct"] = gains
        out["verticals"][v] = row
    out["significance_rule"] = (
        "gain % = (NE_none - NE_mode) / NE_none per seed (paired: same seed, same rows); significant when "
        "the mean gain is positive and larger than its standard deviation across seeds"
    )
    return out


def ablation_section(run0: dict[str, Any]) -> dict[str, Any]:
    return {
        "seed": run0["seed"],
        "verticals": {
            v: {
                m: {
                    "windows": c["windows"],
                    "ne": c["ne"],
                    "auc": c["auc"],
                    "ne_second_half": c["ne_second_half"],
                    "auc_second_half": c["auc_second_half"],
                }
                for m, c in modes.items()
            }
            for v, modes in run0["per_window"].items()
        },
        "means": {
            v: {m: c["ne_second_half"] for m, c in modes.items()} for v, modes in run0["per_window"].items()
        },
        "fm_per_vertical": {v: q["ne_second_half"] for v, q in run0["fm_per_vertical"].items()},
    }


def staleness_section(st: dict[str, Any]) -> dict[str, Any]:
    levels = {}
    for k, per_v in st["levels"].items():
        levels[k] = {}
        for v, r in per_v.items():
            g_aux = (r["none"] - r["aux"]) / r["none"] * 100
            g_sa = (r["none"] - r["aux_sa"]) / r["none"] * 100
            levels[k][v] = {
                **r,
                "gain_aux_pct": g_aux,
                "gain_aux_sa_pct": g_sa,
                "adapter_recovers_pct": g_sa - g_aux,
            }
    return {
        "vm_start_window": st["start"],
        "definition": "window t uses the FM trained through t-1-k",
        "levels": levels,
    }


def scaling_section(
    runs: list[dict[str, Any]], none: dict[str, float], small_from_ablation: dict
) -> dict[str, Any]:
    out = {}
    for r in runs:
        out[r["fm_preset"]] = {
            "fm_ne": r["fm_ne"],
            "fm_ne_per_vertical": r["fm_ne_per_vertical"],
            "fm_train_wall_s": r["fm_train_wall_s"],
            "aux_sa": r["aux_sa"],
            "gain_pct": {v: (none[v] - x) / none[v] * 100 for v, x in r["aux_sa"].items()},
        }
    return {"presets": out, "baseline_none": none, "note": "seed 0; VMs identical apart from the FM"}


def one_fm_section(
    run0: dict[str, Any], repeats: dict[str, Any], das: dict[str, Any] | None, src: str
) -> dict:
    t = run0["timings"]
    vm_cpu = {k: v for k, v in t["cpu"].items() if k.startswith("vm-train")}
    n_vms = len(run0["verticals"]) * 4
    return {
        "gain_pct_aux_sa": {v: r["gain_pct"]["aux_sa"] for v, r in repeats["verticals"].items()},
        "cost_cpu_s": {
            "fm_train": sum(v for k, v in t["cpu"].items() if k.startswith("fm-train")),
            "das_once": t["cpu"].get("das"),
            "vm_train_total": sum(vm_cpu.values()),
            "vm_trainings": n_vms,
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


def run(
    quick: bool | str, workers: int, seeds: list[int], das_json: Path | None, work: Path
) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = str(work)
    from exfm_trainer.study import ensure_fm

    shared = _setup(out, quick)  # the dataset and seed 0's FM once, before the workers share them
    fm_timer_wall = time.perf_counter()
    ensure_fm(shared, shared.preset.fm_preset, seeds[0])
    fm0_cost = {
        "wall": time.perf_counter() - fm_timer_wall,
        "cpu": shared.timer.cpu.get(f"fm-train:{shared.preset.fm_preset}"),
    }
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futs = {
            "das": pool.submit(load_or_run_das, das_json),  # bench/das.py's comparison, overlapped
            "stale": pool.submit(task_staleness, out, quick, seeds[0]),
            **{f"seed{s}": pool.submit(task_ablation, out, quick, s, s == seeds[0]) for s in seeds},
            **{f"scale-{m}": pool.submit(task_scaling, out, quick, m, seeds[0]) for m in FM_SIZES[1:]},
        }
        res = {k: f.result() for k, f in futs.items()}
    seed_runs = [res[f"seed{s}"] for s in seeds]
    run0 = seed_runs[0]
    run0["timings"]["cpu"][f"fm-train:{shared.preset.fm_preset}"] = fm0_cost["cpu"]
    run0["timings"]["wall"][f"fm-train:{shared.preset.fm_preset}"] = fm0_cost["wall"]
    serving = serving_bench(out, quick, run0)
    ablation = ablation_section(run0)
    none0 = {v: m["none"] for v, m in ablation["means"].items()}
    small = {
        "fm_preset": "small",
        "fm_ne": run0["fm"]["ne_second_half"],
        "fm_train_wall_s": run0["timings"]["wall"].get("fm-train:small"),
        "fm_ne_per_vertical": ablation["fm_per_vertical"],
        "aux_sa": {v: m["aux_sa"] for v, m in ablation["means"].items()},
    }
    repeats = repeats_section(seed_runs)
    das, src = res["das"]
    preset = bench_preset(quick)
    return {
        "setup": {
            "quick": quick is True,
            "preset_name": preset.name,
            "preset": preset.model_dump(mode="json"),
            "seeds": seeds,
            "workers": workers,
            "threads_per_worker": 1,
            "verticals": run0["verticals"],
            "windows": run0["windows"],
        },
        "ablation": ablation,
        "staleness": staleness_section(res["stale"]),
        "scaling": scaling_section([small, *(res[f"scale-{m}"] for m in FM_SIZES[1:])], none0, small),
        "serving": serving,
        "one_fm_n_vms": one_fm_section(run0, repeats, das, src),
        "repeats": repeats,
        "wall_s": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small data, tiny models (<= 5 minutes on 2 cores)")
    ap.add_argument("--json", required=True, type=Path, help="output JSON")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "results", help="markdown + PNG folder")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (>= 3 for repeats)")
    ap.add_argument("--das-json", type=Path, default=REPO / "bench" / "results" / "das.json")
    ap.add_argument(
        "--no-das", action="store_true", help="skip the co-distillation comparison (bench/das.py)"
    )
    ap.add_argument(
        "--preset", choices=["tiny", "quick", "standard", "full"], default=None, help="overrides --quick"
    )
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    mode: bool | str = (
        args.quick
        if args.preset is None
        else {"quick": True, "standard": False}.get(args.preset, args.preset)
    )
    das_json = None if args.no_das else args.das_json
    sys.path.insert(0, str(REPO / "bench"))
    from exfm_trainer.study_report import write_bench_outputs

    if args.work is not None:
        result = run(mode, args.workers, seeds, das_json, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="exfm-study-bench-") as tmp:
            result = run(mode, args.workers, seeds, das_json, Path(tmp))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    paths = write_bench_outputs(result, args.out)
    print(json.dumps({"json": str(args.json), **paths, "wall_s": round(result["wall_s"], 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
