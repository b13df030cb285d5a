"""`exfm report`: baseline pairing, second-half NE means, the exact --json shape, markdown + PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from exfm_operator.cli import app
from exfm_operator.local.manifests import load_bundle, localize
from exfm_operator.local.report import ResourceInfo, pair_baselines, second_half_mean
from exfm_operator.local.workdir import Workdir
from exfm_trainer import layout
from exfm_trainer.storage import open_storage
from exfm_trainer.storage.commit import commit_artifact


def _vm(name: str, vertical: str, mode: str, annotations: dict[str, str] | None = None) -> dict:
    meta: dict = {"name": name}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "exfm.io/v1alpha1",
        "kind": "VerticalModel",
        "metadata": meta,
        "spec": {"dasRef": {"name": "augment"}, "vertical": vertical, "distillation": {"mode": mode}},
    }


MANIFESTS = [
    {
        "apiVersion": "exfm.io/v1alpha1",
        "kind": "FoundationModel",
        "metadata": {"name": "teacher"},
        "spec": {
            "dataset": {"uri": "s3://exfm/data", "synthetic": {"windows": 5}},
            "storage": {"uri": "s3://exfm/r"},
        },
    },
    {
        "apiVersion": "exfm.io/v1alpha1",
        "kind": "DataAugmentation",
        "metadata": {"name": "augment"},
        "spec": {"fmRef": {"name": "teacher"}},
    },
    _vm("feed", "feed", "aux"),
    _vm("feed-base", "feed", "none"),
    _vm("video", "video", "aux"),
    _vm("video-kd", "video", "kd"),
    _vm("video-base", "video", "none", {"exfm.io/baseline-for": "video-kd"}),
    _vm("lonely", "search", "aux"),
]
# Per-window NE (windows 1..4); the second half is windows 3 and 4.
NE = {
    "feed": [0.99, 0.95, 0.90, 0.88],
    "feed-base": [0.99, 0.97, 0.94, 0.92],
    "video": [0.9, 0.9, 0.9, 0.9],
    "video-kd": [0.98, 0.96, 0.80, 0.84],
    "video-base": [0.99, 0.97, 0.95, 0.93],
    "lonely": [0.7, 0.7, 0.6, 0.5],
}


def _workdir(tmp_path: Path) -> Workdir:
    wd = Workdir(tmp_path / "wd").ensure()
    files = tmp_path / "m.yaml"
    files.write_text(yaml.safe_dump_all(MANIFESTS))
    bundle = localize(load_bundle([files]), str(wd.storage_dir))
    wd.save_manifests([r.to_json() for r in bundle.resources])
    run = open_storage(wd.storage_dir / "exfm" / "r")
    for name, values in NE.items():
        for w, ne in enumerate(values, start=1):
            m = layout.WindowMetrics(window=w, rows=100, ne=ne, auc=0.7)
            run.put_bytes(layout.metrics_key("vm", "default", name, w), m.model_dump_json().encode())
    for w in range(5):
        m = layout.WindowMetrics(window=w, rows=100, ne=0.8 - 0.01 * w)
        run.put_bytes(layout.metrics_key("fm", "default", "teacher", w), m.model_dump_json().encode())
        ckpt = layout.CheckpointManifest(
            kind="fm-checkpoint", namespace="default", name="teacher", version=layout.version_name(w),
            windows=list(range(w + 1)), preset="tiny",
        )  # fmt: skip
        commit_artifact(
            run, layout.fm_checkpoint("default", "teacher", ckpt.version), {"m": b"x"}, ckpt.model_dump()
        )
    for w, fm_last in ((1, 0), (2, 0), (3, 2), (4, 3)):
        das = layout.DASWindowManifest(
            window=w, input_uri="i", fm_namespace="default", fm_name="teacher",
            fm_version=layout.version_name(fm_last), fm_uri="u", fm_last_window=fm_last,
            staleness=layout.staleness(w, fm_last), rows=100,
        )  # fmt: skip
        commit_artifact(run, layout.das_window("default", "augment", w), {"p": b""}, das.model_dump())
    wd.append_event({"event": "job_finished", "job": "fm-x", "resource": "fm/teacher", "duration_s": 12.5})
    wd.append_event({"event": "job_finished", "job": "vm-x", "resource": "vm/feed", "duration_s": 3.0})
    return wd


def test_report_json_has_exactly_the_documented_shape(tmp_path: Path) -> None:
    wd = _workdir(tmp_path)
    result = CliRunner().invoke(app, ["report", "--workdir", str(wd.root), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"vms", "fm"}
    # Baselines are never entries of their own; every ExFM VM is.
    assert set(data["vms"]) == {"feed", "video", "video-kd", "lonely"}
    for row in data["vms"].values():
        assert set(row) == {"baseline_ne", "exfm_ne", "windows"}
    assert data["vms"]["feed"] == {
        "baseline_ne": pytest.approx(0.93),
        "exfm_ne": pytest.approx(0.89),
        "windows": 4,
    }
    # video-base names video-kd in its annotation, so it is video-kd's baseline and not video's.
    assert data["vms"]["video-kd"]["baseline_ne"] == pytest.approx(0.94)
    assert data["vms"]["video-kd"]["exfm_ne"] == pytest.approx(0.82)
    assert data["vms"]["video"]["baseline_ne"] is None
    assert data["vms"]["lonely"] == {"baseline_ne": None, "exfm_ne": pytest.approx(0.55), "windows": 4}
    fm = data["fm"]["teacher"]
    assert fm["windows"] == 5 and fm["checkpoints"] == 5 and fm["last_checkpoint"] == "00004"
    assert fm["ne"] == pytest.approx((0.78 + 0.77 + 0.76) / 3)
    assert fm["das"]["augment"] == {"windows": 4, "mean_staleness": pytest.approx(0.25)}


def test_report_writes_markdown_and_charts(tmp_path: Path) -> None:
    wd = _workdir(tmp_path)
    out = tmp_path / "rep"
    result = CliRunner().invoke(app, ["report", "--workdir", str(wd.root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    md = (out / "report.md").read_text()
    assert "| feed | feed-base | 4 | 0.9300 | 0.8900 |" in md
    for png in ("vm_ne.png", "baseline_vs_exfm.png", "fm_staleness.png", "job_time.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"]({png})" in md
    assert "| fm-x | fm/teacher | 12.5 |" in md


def test_pairing_and_means_helpers() -> None:
    assert second_half_mean({}) is None
    assert second_half_mean({1: 1.0, 2: 2.0, 3: 3.0}) == pytest.approx(2.5)  # windows[1:] for n=3
    vms = [
        ResourceInfo("VerticalModel", "default", "a", "/r", "x", "aux"),
        ResourceInfo("VerticalModel", "default", "b", "/r", "x", "none"),
        ResourceInfo("VerticalModel", "default", "c", "/r", "y", "kd"),
    ]
    pairs = pair_baselines(vms)
    assert pairs["a"] is not None and pairs["a"].name == "b"
    assert pairs["c"] is None and "b" not in pairs


def test_report_without_a_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", "--workdir", str(tmp_path)])
    assert result.exit_code == 1 and "exfm run" in result.stderr
