"""`exfm status` shows the operator's status model: the same status the planner computes for the world."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from exfm_operator.cli import app
from exfm_operator.local.manifests import load_bundle, localize
from exfm_operator.local.progress import Reporter
from exfm_operator.local.runner import LocalRunner, RunOptions
from exfm_operator.local.workdir import Workdir
from exfm_operator.observe import GpuQuota, StorageObserver, observe_world
from exfm_operator.planner import plan_data_augmentation, plan_foundation_model, plan_vertical_model
from exfm_trainer import layout
from exfm_trainer.storage import open_storage
from exfm_trainer.storage.commit import commit_artifact

SCHEMA = {"label": "label", "dense": ["d0"], "sparse": [{"name": "s0", "hash_buckets": 10}], "vertical": "v"}
MANIFESTS = [
    {
        "apiVersion": "exfm.io/v1alpha1",
        "kind": "FoundationModel",
        "metadata": {"name": "teacher"},
        "spec": {
            "dataset": {"uri": "s3://exfm/data", "schema": SCHEMA},
            "storage": {"uri": "s3://exfm/run"},
            "windows": {"end": 1},
        },
    },
    {
        "apiVersion": "exfm.io/v1alpha1",
        "kind": "DataAugmentation",
        "metadata": {"name": "augment"},
        "spec": {"fmRef": {"name": "teacher"}, "maxStaleness": 0, "windows": {"end": 3}},
    },
    {
        "apiVersion": "exfm.io/v1alpha1",
        "kind": "VerticalModel",
        "metadata": {"name": "feed"},
        "spec": {"dasRef": {"name": "augment"}, "vertical": "a", "windows": {"end": 2}},
    },
]


def _ckpt(
    storage: Any, prefix: str, kind: str, name: str, windows: list[int], ne: float, **extra: Any
) -> None:
    metrics = {str(w): layout.WindowMetrics(window=w, rows=10, ne=ne) for w in windows}
    manifest = layout.CheckpointManifest(
        kind=kind, namespace="default", name=name, version=layout.version_name(windows[-1]),
        windows=windows, preset="tiny", metrics=metrics, **extra,
    )  # fmt: skip
    commit_artifact(storage, prefix, {"model.pt": b"x"}, layout.manifest_metadata(manifest))


def _world(tmp_path: Path) -> Workdir:
    """Storage holding: data windows 0-2, FM checkpoint 00000, DAS window 1, VM checkpoint 00001."""
    wd = Workdir(tmp_path / "wd").ensure()
    root = open_storage(wd.storage_dir / "exfm")
    for w in range(3):
        root.put_bytes(f"data/{layout.window_dir(w)}/part-00000.parquet", b"")
        root.put_bytes(f"data/{layout.window_dir(w)}/{layout.DATA_SUCCESS}", b"")
    run = root.join("run")
    _ckpt(run, layout.fm_checkpoint("default", "teacher", "00000"), "fm-checkpoint", "teacher", [0], 0.9)
    das = layout.DASWindowManifest(
        window=1, input_uri="x", fm_namespace="default", fm_name="teacher", fm_version="00000",
        fm_uri="y", fm_last_window=0, staleness=0, rows=10,
    )  # fmt: skip
    commit_artifact(
        run, layout.das_window("default", "augment", 1), {"p.parquet": b""}, layout.manifest_metadata(das)
    )
    _ckpt(
        run, layout.vm_checkpoint("default", "feed", "00001"), "vm-checkpoint", "feed", [1], 0.8,
        das_windows=[1], fm_versions=["00000"],
    )  # fmt: skip
    return wd


def _without_times(status: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(status))
    for cond in out.get("conditions", []):
        cond.pop("lastTransitionTime", None)
    return out


def test_status_matches_the_planner_for_the_same_world(tmp_path: Path) -> None:
    wd = _world(tmp_path)
    files = tmp_path / "m.yaml"
    files.write_text(yaml.safe_dump_all(MANIFESTS))
    bundle = localize(load_bundle([files]), str(wd.storage_dir))
    runner = LocalRunner(bundle, wd, Reporter(), RunOptions(max_parallel=2))
    result, _rows = runner.run_pass()
    assert result.done and result.submitted == 0

    shown = CliRunner().invoke(app, ["status", "--workdir", str(wd.root), "-o", "json"])
    assert shown.exit_code == 0, shown.output
    rows = {r["name"]: r for r in json.loads(shown.stdout)}

    # The operator's view: observe each resource (fresh observer, no jobs) and plan it, upstream first.
    fresh = localize(load_bundle([files]), str(wd.storage_dir))
    fm, das, vm = fresh.resources
    observer, launcher, quota = StorageObserver(), runner.launcher, GpuQuota(budget=None)
    fm.status = plan_foundation_model(
        fm, observe_world(fm, observer=observer, launcher=launcher, quota=quota)
    ).status
    das_world = observe_world(das, observer=observer, launcher=launcher, quota=quota, fm=fm)
    das.status = plan_data_augmentation(das, fm, das_world).status
    vm_world = observe_world(vm, observer=observer, launcher=launcher, quota=quota, das=das)
    vm.status = plan_vertical_model(vm, das, vm_world).status

    for res in (fm, das, vm):
        row = rows[res.metadata.name]
        assert _without_times(row["status"]) == _without_times(res.status.to_json())
        assert row["phase"] == res.status.phase
        assert row["lastWindow"] == res.status.last_window
    assert rows["teacher"]["phase"] == "Succeeded" and rows["teacher"]["checkpoint"] == "00000"
    assert rows["teacher"]["ne"] == 0.9 and rows["teacher"]["ready"] == "True"
    # DAS: window 2 needs an FM trained through window 1, which the FM (windows [0, 1)) never makes.
    assert rows["augment"]["phase"] == "Waiting"
    progressing = next(c for c in rows["augment"]["status"]["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "WaitingForFreshFM"
    assert rows["feed"]["phase"] == "Succeeded" and rows["feed"]["checkpoint"] == "00001"

    table = CliRunner().invoke(app, ["status", "--workdir", str(wd.root)])
    assert table.exit_code == 0
    header, *lines = [line.split() for line in table.stdout.strip().splitlines()]
    assert header[:4] == ["NAME", "KIND", "PHASE", "READY"]
    assert [line[:3] for line in lines] == [
        ["teacher", "fm", "Succeeded"], ["augment", "das", "Waiting"], ["feed", "vm", "Succeeded"],
    ]  # fmt: skip


def test_status_of_an_empty_workdir(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["status", "--workdir", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert "exfm run" in result.stderr
    assert (
        CliRunner().invoke(app, ["status", "--workdir", str(tmp_path), "-o", "json"]).stdout.strip() == "[]"
    )
