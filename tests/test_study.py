"""Transfer study: the study command's output shape, the lagged DAS, dataset import, the bench JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from exfm_trainer import layout, study
from exfm_trainer.schema import FeatureSchema, SparseFeature
from exfm_trainer.storage import open_storage
from exfm_trainer.storage.commit import list_committed, read_manifest

REPO = Path(__file__).resolve().parents[1]
MODES = {"none", "kd", "aux", "aux_sa"}


def _check_shape(result: dict, verticals: list[str]) -> None:
    assert set(result["verticals"]) == set(verticals)
    for v, row in result["verticals"].items():
        assert set(row) == MODES, v
        assert all(isinstance(x, float) and math.isfinite(x) and x > 0 for x in row.values()), row


@pytest.mark.slow
def test_study_tiny_preset_writes_exact_shape_and_uses_a_stale_fm(tmp_path: Path) -> None:
    out = tmp_path / "study"
    assert study.main(["--preset", "tiny", "--out", str(out), "--select"]) == 0
    result = json.loads((out / "study.json").read_text())
    # the knobs were picked on windows before the evaluated half and used by every distilled VM
    sel = result["selection"]
    assert max(sel["tuning_windows"]) < sel["evaluated_windows_start"] == 4
    assert {k: result["preset"]["distill"][k] for k in sel["chosen"]} == sel["chosen"]
    verticals = study.get_preset("tiny").synthetic.vertical_names
    _check_shape(result, verticals)
    assert (out / "study.md").read_text().count("|") > 20
    assert (out / "study_ne.png").stat().st_size > 1000
    # per-window curves cover the VM windows; the FM the VMs learn from is exactly 1 window stale
    assert result["vm_windows"] == list(range(2, 6))
    for modes in result["per_window"].values():
        assert all(c["windows"] == result["vm_windows"] for c in modes.values())
    st = open_storage(out / "store")
    das = [d for d in st.list_dirs(f"das/{study.NS}") if "lag1" in d]
    assert len(das) == 1
    for w in result["vm_windows"]:
        manifest = read_manifest(st, layout.das_window(study.NS, das[0], w))
        assert manifest["staleness"] == 1 and manifest["fm_last_window"] == w - 2


def test_lagged_das_rejects_a_window_without_a_stale_enough_fm(tmp_path: Path) -> None:
    preset = study.get_preset("tiny")
    preset.synthetic.windows = 4
    run = study.prepare(tmp_path, preset)
    study.ensure_fm(run, "tiny", 0)
    fm = study.fm_name("tiny", 0)
    assert list_committed(open_storage(run.store), layout.fm_checkpoints(study.NS, fm)) == [
        "00000",
        "00001",
        "00002",
        "00003",
    ]
    with pytest.raises(study.StudyError, match="window 1 has no FM 1 windows stale"):
        study.run_lagged_das(run.store, run.ref, fm, "das-x", 1, [1])
    aug = study.run_lagged_das(run.store, run.ref, fm, "das-y", 2, [3])
    manifest = read_manifest(open_storage(run.store), layout.das_window(study.NS, "das-y", 3))
    assert manifest["staleness"] == 2 and manifest["fm_version"] == "00000"
    assert aug.uri.endswith("das/study/das-y")


def _write_csv(path: Path, windows: int = 6, rows: int = 900) -> FeatureSchema:
    rng = np.random.default_rng(0)
    n = windows * rows
    user = rng.integers(0, 80, n)
    item = rng.integers(0, 40, n)
    vert = rng.choice(["web", "app"], n, p=[0.6, 0.4])
    x = rng.normal(size=n)
    logit = np.sin(user) + 0.8 * np.cos(item) + 0.5 * x - 1.5 + (vert == "app") * 0.5
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    ts = 1_699_999_200 + np.sort(rng.integers(0, windows * 3600, n))  # window 0 starts at a multiple of 3600
    table = pa.table({"ts": ts, "clicked": label, "x": x, "user": user, "item": item, "surface": vert})
    pacsv.write_csv(table, path)
    return FeatureSchema(
        label="clicked",
        dense=["x"],
        sparse=[SparseFeature(name="user", hash_buckets=200), SparseFeature(name="item", hash_buckets=100)],
        vertical="surface",
        timestamp="ts",
    )


def test_study_on_an_imported_csv(tmp_path: Path) -> None:
    schema = _write_csv(tmp_path / "events.csv")
    (tmp_path / "schema.json").write_text(schema.model_dump_json())
    out = tmp_path / "study"
    argv = ["--preset", "tiny", "--out", str(out), "--dataset", str(tmp_path / "events.csv")]
    argv += ["--schema", str(tmp_path / "schema.json"), "--window-seconds", "3600"]
    assert study.main(argv) == 0
    result = json.loads((out / "study.json").read_text())
    _check_shape(result, ["web", "app"])
    assert result["windows"] == list(range(6)) and result["dataset"]["uri"].endswith("data")


def test_study_input_errors_name_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    schema = _write_csv(tmp_path / "events.csv", windows=2, rows=50).model_copy(update={"vertical": None})
    (tmp_path / "schema.json").write_text(schema.model_dump_json())
    argv = ["--preset", "tiny", "--out", str(tmp_path / "o"), "--dataset", str(tmp_path / "events.csv")]
    assert study.main([*argv, "--schema", str(tmp_path / "schema.json")]) == 2
    assert "vertical" in capsys.readouterr().err
    assert study.main(argv) == 2
    assert "--schema" in capsys.readouterr().err
    assert study.main(["--preset", "huge", "--out", str(tmp_path / "o")]) == 2
    assert "unknown study preset 'huge'" in capsys.readouterr().err


def test_entrypoint_dispatches_study(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "exfm_trainer", "study", "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and "--dataset" in proc.stdout


@pytest.mark.slow
def test_bench_tiny_json_has_every_section(tmp_path: Path) -> None:
    js = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "bench" / "study.py"), "--preset", "tiny", "--json", str(js)]
    cmd += ["--out", str(tmp_path / "md"), "--no-das", "--workers", "2", "--seeds", "1", "--data-seeds", "2"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=1800)
    res = json.loads(js.read_text())
    keys = {"ablation", "ci", "staleness", "staleness_recovery", "scaling", "transfer_ratio", "collapses"}
    assert keys | {"selection", "serving", "one_fm_n_vms", "repeats"} <= set(res)
    verts = res["setup"]["verticals"]
    assert res["setup"]["seeds"] == [0] and res["setup"]["data_seeds"] == [0, 1]
    assert set(res["ablation"]["means"]) == set(verts)
    for v in verts:
        for m in MODES:
            c = res["ablation"]["verticals"][v][m]
            assert len(c["ne"]) == len(c["windows"]) and math.isfinite(c["ne_second_half"])
    # acceptance keys: ci {v: {mode: {gain_pct, ci95}}}, recovery {k: {v: {recovered, ci95}}}, scaling
    assert set(res["ci"]) == set(verts)
    for v in verts:
        assert set(res["ci"][v]) == {"kd", "aux", "aux_sa"}
        for x in res["ci"][v].values():
            lo, hi = x["ci95"]
            assert lo <= x["gain_pct"] <= hi and x["n_units"] == 2 * 3  # 2 data seeds x 3 evaluated windows
        assert set(res["transfer_ratio"][v]) == {"kd", "aux", "aux_sa"}
    assert set(res["staleness_recovery"]) == {"1", "2", "4"}
    for per_v in res["staleness_recovery"].values():
        assert set(per_v) == set(verts)
        assert all({"recovered", "ci95"} <= set(r) and len(r["ci95"]) == 2 for r in per_v.values())
    sc = res["scaling"]
    assert set(sc["fm_ne"]) == set(sc["vm_gain_pct"]) == {"small", "medium", "large"}
    assert all(math.isfinite(x) for x in [*sc["fm_ne"].values(), *sc["vm_gain_pct"].values()])
    assert set(res["bayes_ne"]) == set(verts) and all(0 < x < 1.5 for x in res["bayes_ne"].values())
    assert isinstance(res["collapses"], int) and res["runs_checked"] == 2 * len(verts) * (3 + 3 * 2 + 3)
    sel = res["selection"]
    assert [r["param"] for r in sel["rounds"]] == ["alpha", "beta", "weight", "adapter_share"]
    assert (
        max(sel["tuning_windows"]) < sel["evaluated_windows_start"] == res["ablation"]["evaluated_windows"][0]
    )
    assert set(sel["chosen"]) >= {"alpha", "beta", "weight", "adapter_share"}
    assert set(res["serving"]["latency_ms"]) == {"baseline_vm", "exfm_vm", "fm"}
    assert set(res["serving"]["ratios"]) == {"1", "64", "512"}
    assert set(res["one_fm_n_vms"]["gain_pct_aux_sa"]) == set(verts)
    for name in ("study_bench_tiny.md", "study_bench_tiny_gains.png", "study_bench_tiny_staleness.png"):
        assert (tmp_path / "md" / name).exists()
    assert "Paired gains vs none" in (tmp_path / "md" / "study_bench_tiny.md").read_text()


@pytest.mark.slow
def test_a_rerun_vm_reports_the_stored_windows(tmp_path: Path) -> None:
    """Re-running a study in the same folder resumes each VM; its curve still covers every window."""
    preset = study.get_preset("tiny")
    preset.synthetic.windows = 4
    run = study.prepare(tmp_path, preset)
    study.ensure_fm(run, "tiny", 0)
    aug = study.ensure_das(run, "tiny", 0, 1, 2)
    first = study.train_vm(run.store, aug, "vm-x", run.verticals[0], "aux", preset, 2, 0)
    again = study.train_vm(run.store, aug, "vm-x", run.verticals[0], "aux", preset, 2, 0)
    assert [m.window for m in first] == [m.window for m in again] == [2, 3]
    assert [m.ne for m in again] == [m.ne for m in first]


def test_kd_keeps_the_served_head_calibrated() -> None:
    cfg = study.DistillConfig(alpha=4.0, weight=2.0)
    assert cfg.for_mode("kd").alpha == 1.0 and cfg.for_mode("kd").weight == 2.0
    assert cfg.for_mode("aux").alpha == cfg.for_mode("aux_sa").alpha == 4.0
    assert cfg.for_mode("aux_sa").adapter and not cfg.for_mode("aux").adapter
