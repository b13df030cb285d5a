"""The study's task graph, its hyper-parameter selection and its JSON sections, on planted results.

Training is replaced by functions that return planted per-window NE (no torch work); the graph,
the selection tasks and every statistic run for real.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exfm_trainer import study, study_runs
from exfm_trainer.study_dag import Ref, Task, TaskError, run_dag
from exfm_trainer.study_summary import summarize

VERTICALS = ["a", "b"]
WINDOWS = list(range(10))
GAIN = {"none": 0.0, "kd": 0.005, "aux": 0.026, "aux_sa": 0.028}  # = staleness level 1


def test_run_dag_resolves_refs_in_priority_order() -> None:
    order: list[str] = []

    def rec(name: str, *xs: int) -> int:
        order.append(name)
        return sum(xs) + 1

    tasks = [
        Task("c", rec, ("c", Ref("a"), Ref("b"))),
        Task("a", rec, ("a",), priority=1),
        Task("b", rec, ("b",), priority=5),
        Task("d", rec, ("d", {"x": [Ref("c")]}["x"][0]), local=True),
    ]
    done = run_dag(tasks)
    assert order == ["b", "a", "c", "d"]
    assert done["c"].result == 3 and done["d"].result == 4


def test_run_dag_in_worker_processes() -> None:
    tasks = [Task("a", pow, (2, 3)), Task("b", pow, (3, 2)), Task("c", pow, (Ref("a"), Ref("b")))]
    done = run_dag(tasks, workers=2)
    assert done["c"].result == 8**9 and done["a"].wall_s >= 0


def test_run_dag_errors_name_the_task() -> None:
    with pytest.raises(ValueError, match="unknown tasks"):
        run_dag([Task("a", pow, (Ref("zz"), 2))])
    with pytest.raises(ValueError, match="duplicate"):
        run_dag([Task("a", pow, (1, 2)), Task("a", pow, (1, 2))])
    with pytest.raises(ValueError, match="cycle"):
        run_dag([Task("a", pow, (Ref("b"), 2)), Task("b", pow, (Ref("a"), 2))], workers=2)
    with pytest.raises(TaskError, match="'bad'"):
        run_dag([Task("bad", int, ("x",))])


def _plan(tmp_path: Path) -> study_runs.Plan:
    preset = study.get_preset("tiny")
    preset.synthetic.windows = len(WINDOWS)
    return study_runs.Plan(preset, tmp_path, data_seeds=[0, 1], seeds=[0, 1, 2])


def _curve(start: int, end: int, ne: Any) -> dict[str, Any]:
    ws = list(range(start, end))
    return {"windows": ws, "ne": [ne(w) for w in ws]}


def _noise(*key: Any) -> float:
    return float(np.random.default_rng(zlib.crc32(repr(key).encode())).normal(0, 0.001))


def _fake(task: Task) -> Any:
    """A planted stand-in for the task's work (None: run the task itself, a local decision)."""
    kind, *rest = task.key.split(":")
    if task.local:
        return None
    if kind == "data":
        return lambda *a: {"run": None, "bayes_ne": {w: {v: 0.7 for v in VERTICALS} for w in WINDOWS}}
    if kind == "fm":
        size = rest[1]
        return lambda *a: {
            "ne_second_half": {"tiny": 0.95, "small": 0.95, "medium": 0.93, "large": 0.91}[size]
        }
    if kind == "das":
        lag, start = int(rest[2].removeprefix("lag")), int(rest[3].removeprefix("from"))
        teacher = {v: _curve(start, 10, lambda w, lag=lag: 0.96 + 0.01 * lag) for v in VERTICALS}
        for c in teacher.values():
            c["base_rate"] = [0.2] * len(c["windows"])  # alpha 4 saturates the target: skipped
        return lambda *a: {"aug": None, "teacher": teacher}
    if kind == "tune":

        def tune(data, das, name, v, mode, override=None, start=0, seed=0, export=False, end=None):
            if override and study_runs.resolve_override(override)["alpha"] == 4.0:
                return study_runs.t_tune_vm(data, das, name, v, mode, override, start, seed, export, end)
            cfg = study_runs.resolve_override(override) if override else {}
            score = 1.0 - 0.01 * (cfg.get("alpha") == 2.0) - 0.004 * (cfg.get("weight") == 0.5)
            score -= 0.003 * (cfg.get("adapter_share") == 0.75)
            return _curve(start, end, lambda w: score + (0.5 if w == start else 0.0))

        return tune
    section, d, s, v, mode = rest
    d, s = int(d), int(s)

    def vm(*a: Any) -> dict[str, Any]:
        start = a[6]
        if section.startswith("staleness") and mode != "none":
            k = int(section.removeprefix("staleness"))
            aux = 0.97 + 0.004 * k
            base = aux - (0.002 * k if mode == "aux_sa" else 0.0)
        else:
            base = 1.0 - GAIN[mode] - (0.002 if section == "scaling-large" else 0.0)
        if (section, d, s, v, mode) == ("ablation", 1, 2, "b", "kd"):
            base = 1.05  # one collapsed run
        return _curve(start, 10, lambda w: base + _noise(section, d, s, v, mode, w))

    return vm


def test_planted_study_gives_every_acceptance_key(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    tasks = study_runs.build_tasks(plan, VERTICALS, WINDOWS)
    keys = {t.key for t in tasks}
    assert len(keys) == len(tasks)
    # one FM per data seed and size, one DAS per (data seed, size, lag, start); VMs per seed
    assert {k for k in keys if k.startswith("fm:")} == {
        f"fm:{d}:{z}" for d in (0, 1) for z in ("tiny", "small", "medium", "large")
    }
    assert sum(k.startswith("vm:ablation:") for k in keys) == 2 * 3 * 2 * 4
    # the ablation's runs double as the sweep's none and level 1 (shared start)
    assert sum(k.startswith("vm:staleness") for k in keys) == 2 * 3 * 2 * (3 * 2)
    for t in tasks:
        fake = _fake(t)
        if fake is not None:
            t.fn = fake
    done = run_dag(tasks)
    res = summarize(plan, done, VERTICALS, WINDOWS)

    # ci: planted gains, pooled over 2 data x 3 model seeds, intervals exclude 0
    for v in VERTICALS:
        for m in ("aux", "aux_sa"):
            x = res["ci"][v][m]
            assert x["gain_pct"] == pytest.approx(100 * GAIN[m], abs=0.15)
            assert x["ci95"][0] > 0 and x["significant"] == 1
    # staleness_recovery: (aux_k - sa_k) / (aux_k - aux_0) = 0.002k / 0.004k = 0.5 for k = 1, 2, 4
    assert set(res["staleness_recovery"]) == {"1", "2", "4"}
    for k in ("1", "2", "4"):
        for v in VERTICALS:
            r = res["staleness_recovery"][k][v]
            assert r["recovered"] == pytest.approx(0.5, abs=0.2)
            assert r["ci95"][0] <= r["recovered"] <= r["ci95"][1]
    sc = res["scaling"]
    assert set(sc["fm_ne"]) == {"small", "medium", "large"} == set(sc["vm_gain_pct"])
    assert sc["fm_ne"]["small"] > sc["fm_ne"]["medium"] > sc["fm_ne"]["large"]
    assert sc["vm_gain_pct"]["large"] == pytest.approx(3.0, abs=0.15)
    assert res["bayes_ne"] == {"a": pytest.approx(0.7), "b": pytest.approx(0.7)}
    # transfer ratio: (1 - (1 - g)) / (1 - 0.97) with the 1-stale FM at 0.97
    assert res["transfer_ratio"]["a"]["aux"] == pytest.approx(0.026 / 0.03, rel=0.1)
    assert res["collapses"] == 1 and res["collapses_by_mode"] == {"kd": 1, "aux": 0, "aux_sa": 0}
    assert res["collapses_detail"][0]["vertical"] == "b" and res["collapses_detail"][0]["mode"] == "kd"
    goals = {k: g["met"] for k, g in res["goals"].items()}
    assert goals["aux_sa_ci_lower_above_0_every_vertical"] and goals["aux_mean_at_least_kd_every_vertical"]
    assert goals["fm_ne_strictly_decreasing_with_size"] and not goals["no_collapses"]
    sel = res["selection"]
    assert sel["chosen"]["alpha"] == 2.0 and sel["chosen"]["weight"] == 0.5
    assert sel["chosen"]["beta"] == 1.0 and sel["chosen"]["adapter_share"] == 0.75
    assert sel["tuning_windows"] == [5, 6] and sel["score_windows"] == [6]
    assert sel["evaluated_windows_start"] == 7 and res["ablation"]["evaluated_windows"] == [7, 8, 9]
    assert res["runs_checked"] == 2 * 3 * 2 * (
        3 + 3 * 2 + 3
    )  # every trained distilled run once (tiny FM: 3 scaling sizes)
    assert [r["param"] for r in sel["rounds"]] == ["alpha", "beta", "weight", "adapter_share"]
    assert [len(r["tried"]) for r in sel["rounds"]] == [3, 1, 2, 3]
    alpha4 = sel["rounds"][0]["tried"][2]
    assert alpha4["config"]["alpha"] == 4.0 and alpha4["score"] == float("inf")
    assert len(alpha4["skipped"]) == 2 and "saturates" in alpha4["skipped"][0]


def test_selection_feeds_every_distilled_run(tmp_path: Path) -> None:
    tasks = study_runs.build_tasks(_plan(tmp_path), VERTICALS, WINDOWS)
    for t in tasks:
        if t.key.startswith("vm:"):
            cfg = t.args[5]
            assert (cfg is None) == t.key.endswith(":none"), t.key
            if cfg is not None:
                assert cfg == Ref("select:final")
        if t.key.startswith("tune:") and not t.local:
            assert t.args[-1] == 7  # tuning VMs stop before the first evaluated window
