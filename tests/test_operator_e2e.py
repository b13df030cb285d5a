"""End to end: kopf in-process against the Kubernetes emulator, real trainer jobs on TorchX ``local_cwd``.

A tiny synthetic stream (4 windows, 2 verticals) is generated in a subprocess; FM + DAS + 2 VMs are
applied and every job really trains/infers (``python -m exfm_trainer fm-train|das|vm-train``). The
test suspends the FM while its first job runs (the job is cancelled, nothing is committed), resumes
it, waits for both VMs to train every augmentable window, checks statuses (progress, metrics,
lineage), committed artifacts and that no window range ran twice, then deletes everything while a
job runs (cancelled, finalizers released). The operator (this process) never imports torch.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from k8s.emulator import EmulatorServer
from k8s.fixtures import k8s as k8s  # the fixture
from k8s.harness import OperatorThread, wait_for
from k8s.local_jobs import (
    GatedLauncher,
    job_pids,
    live_group_members,
    local_context,
    local_jobs,
    modules_import_torch,
    reap_jobs,
    synthesize,
)
from k8s.pipeline import DAS_RES, FM_RES, VM_RES, das_manifest, fm_manifest, vm_manifest

from exfm_trainer import layout
from exfm_trainer.storage import open_storage
from exfm_trainer.storage.commit import is_committed, list_committed, read_manifest

SYNTH = {"windows": 4, "rows_per_window": 1500, "verticals": 2, "seed": 11}
VMS = {"vm-feed": "feed", "vm-video": "video"}
PIPELINE_TIMEOUT = 900  # generous: the 2 cores are shared; a quiet machine needs ~1-2 minutes


def _status(k8s: EmulatorServer, res: str, name: str) -> dict:
    return (k8s.get(res, "default", name) or {}).get("status") or {}


def _condition(status: dict, ctype: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c["type"] == ctype), {})


def _apply_pipeline(k8s: EmulatorServer, data: Path, store: Path) -> None:
    dataset = {"uri": str(data), "synthetic": SYNTH}
    fm = fm_manifest("fm", data, store, end=4, per_job=2, dataset=dataset, preset="tiny",
                     training={"batchSize": 512}, retention={"keepCheckpoints": 10})  # fmt: skip
    k8s.apply(FM_RES, fm)
    k8s.apply(DAS_RES, das_manifest("das", "fm", end=4, cadence={"windowsPerJob": 2}, batchSize=1024))
    for vm, vertical in VMS.items():
        k8s.apply(VM_RES, vm_manifest(vm, "das", end=4, vertical=vertical, preset="tiny",
                                      cadence={"windowsPerJob": 2}, training={"batchSize": 256},
                                      distillation={"mode": "aux", "adapter": True}))  # fmt: skip


@pytest.mark.slow
def test_real_jobs_flow_fm_das_vms_suspend_resume_and_delete(k8s: EmulatorServer, tmp_path: Path) -> None:
    torch_loaded_before = "torch" in sys.modules
    modules_before = set(sys.modules)
    data, store = tmp_path / "data", tmp_path / "store"
    synthesize(data, SYNTH)
    ctx = local_context(tmp_path / "jobs")
    with reap_jobs(ctx), OperatorThread(ctx):
        _apply_pipeline(k8s, data, store)

        # -- suspend while the FM's first job runs: cancelled, nothing committed, no active job
        def fm_running() -> list:
            return [j for j in local_jobs(ctx, {"exfm.io/job-kind": "fm-train"}) if j.state == "RUNNING"]

        first = wait_for(fm_running, 120, interval=0.05, what="the first FM job to run")[0]
        k8s.patch(FM_RES, "default", "fm", {"spec": {"suspend": True}})

        def suspended() -> dict | None:
            st = _status(k8s, FM_RES, "fm")
            return st if st.get("phase") == "Suspended" and not st.get("activeJob") else None

        st = wait_for(suspended, 60, what="FM Suspended")
        assert _condition(st, "Suspended")["status"] == "True"
        assert _condition(st, "Progressing")["status"] == "False"
        cancelled = next(j for j in local_jobs(ctx) if j.job_name == first.job_name)
        assert cancelled.state == "CANCELLED", cancelled
        wait_for(lambda: not live_group_members(job_pids(ctx, first.job_name)), 30, what="job processes gone")
        storage = open_storage(str(store))
        fm_root = layout.fm_checkpoints("default", "fm")
        assert list_committed(storage, fm_root) == [], "the cancelled job committed a checkpoint"
        assert not [j for j in local_jobs(ctx) if j.state in ("PENDING", "RUNNING")]  # nothing else started

        # -- resume: the same windows again (attempt 1), then the whole pipeline flows through
        k8s.patch(FM_RES, "default", "fm", {"spec": {"suspend": False}})

        def all_trained() -> bool:
            return all(
                _status(k8s, VM_RES, vm).get("lastWindow") == 3
                and _status(k8s, VM_RES, vm).get("phase") == "Succeeded"
                for vm in VMS
            )

        wait_for(all_trained, PIPELINE_TIMEOUT, interval=0.5, what="both VMs to train windows 1-3")
        wait_for(lambda: _status(k8s, FM_RES, "fm").get("phase") == "Succeeded", 60, what="FM Succeeded")
        wait_for(lambda: _status(k8s, DAS_RES, "das").get("phase") == "Succeeded", 60, what="DAS Succeeded")

        # -- statuses: progress, metrics, lineage
        fm = _status(k8s, FM_RES, "fm")
        assert fm["lastWindow"] == 3 and not fm.get("activeJob")
        assert fm["latestCheckpoint"]["version"] == "00003"
        assert fm["lineage"]["windows"] == [{"start": 0, "end": 4}]
        assert _condition(fm, "Suspended")["status"] == "False"
        assert _condition(fm, "Ready")["status"] == "True"
        assert fm["counters"]["jobsSucceeded"] == 2
        das = _status(k8s, DAS_RES, "das")
        # The FM commits a checkpoint per window, so window 0 alone has no FM older than it. Which FM
        # version augments a window depends on timing; it is always one trained on earlier windows only.
        lineage = das["lineage"]["windows"]
        assert [w["window"] for w in lineage] == [1, 2, 3], lineage
        for w in lineage:
            fm_last = int(w["fmVersion"])  # a version names the last window it trained
            assert fm_last < w["window"] and w["staleness"] == w["window"] - fm_last - 1
            manifest = read_manifest(storage, layout.das_window("default", "das", w["window"]))
            assert manifest["fm_version"] == w["fmVersion"] and manifest["rows"] == SYNTH["rows_per_window"]
        assert das["lastWindow"] == 3 and das["fmVersion"] == lineage[-1]["fmVersion"]
        assert das["lineage"]["staleness"]["count"] == 3
        assert das["output"]["uri"] and das["output"]["schema"]["vertical"]
        fm_versions = sorted({w["fmVersion"] for w in lineage})
        for vm in VMS:
            st = _status(k8s, VM_RES, vm)
            assert st["lineage"] == {"dasWindows": [{"start": 1, "end": 4}], "fmVersions": fm_versions}
            ckpt = st["latestCheckpoint"]
            assert ckpt["version"] == "00003" and ckpt["lastWindow"] == 3
            assert ckpt["metrics"]["ne"] > 0 and 0.0 <= ckpt["metrics"]["auc"] <= 1.0
            assert st["counters"]["windowsProcessed"] == 3

        # -- artifacts are committed (MANIFEST + _COMMITTED), with the trainer's metrics and lineage
        for version in ("00000", "00001", "00002", "00003"):
            assert is_committed(storage, f"{fm_root}/{version}")
        assert set(read_manifest(storage, f"{fm_root}/00003")["metrics"]) == {"0", "1", "2", "3"}
        for vm in VMS:
            prefix = layout.vm_checkpoint("default", vm, "00003")
            assert storage.exists(f"{prefix}/_COMMITTED")
            manifest = read_manifest(storage, prefix)
            assert sorted(manifest["das_windows"]) == [1, 2, 3] and manifest["fm_versions"] == fm_versions

        # -- no window range ran twice: one successful job per (owner, kind, range), and the only
        # extra job is the one cancelled by the suspend
        jobs = local_jobs(ctx)
        assert all(j.state in ("SUCCEEDED", "CANCELLED") for j in jobs), [(j.job_name, j.state) for j in jobs]
        ran: dict[str, list[int]] = {}
        for j in jobs:
            if j.state == "SUCCEEDED":
                start, end = int(j.labels["exfm.io/window-start"]), int(j.labels["exfm.io/window-end"])
                ran.setdefault(j.labels["exfm.io/owner-name"], []).extend(range(start, end))
        expected = {"fm": [0, 1, 2, 3], "das": [1, 2, 3]} | {vm: [1, 2, 3] for vm in VMS}
        assert {owner: sorted(ws) for owner, ws in ran.items()} == expected  # each window exactly once
        fm_ranges = [(j.labels["exfm.io/window-start"], j.labels["exfm.io/window-end"], j.state)
                     for j in jobs if j.kind == "fm-train"]  # fmt: skip
        assert sorted(fm_ranges) == [("0", "2", "CANCELLED"), ("0", "2", "SUCCEEDED"),
                                     ("2", "4", "SUCCEEDED")]  # fmt: skip
        assert [j.job_name for j in jobs if j.state == "CANCELLED"] == [first.job_name]
        resumed = next(j for j in jobs if j.kind == "fm-train" and j.state == "SUCCEEDED"
                       and j.labels["exfm.io/window-start"] == "0")  # fmt: skip
        assert resumed.labels["exfm.io/attempt"] == "1" and resumed.job_name.endswith("-w0-2-r1")
        assert len({j.job_name for j in jobs}) == len(jobs)

        # -- delete everything while a job runs: it is cancelled, finalizers are released, objects gone
        dataset = {"uri": str(data), "synthetic": SYNTH}
        k8s.apply(FM_RES, fm_manifest("fm2", data, store, end=4, per_job=4, dataset=dataset, preset="tiny"))
        running = wait_for(
            lambda: [j for j in local_jobs(ctx, {"exfm.io/owner-name": "fm2"}) if j.state == "RUNNING"],
            120, interval=0.05, what="an fm2 job",
        )[0]  # fmt: skip
        objects = [(VM_RES, vm) for vm in VMS] + [(DAS_RES, "das"), (FM_RES, "fm"), (FM_RES, "fm2")]
        for res, name in objects:
            assert "exfm.io/finalizer" in k8s.get(res, "default", name)["metadata"]["finalizers"]
            k8s.delete(res, "default", name)

        def remaining() -> list[tuple[str, dict]]:
            left = [(name, k8s.get(res, "default", name)) for res, name in objects]
            return [(name, obj["metadata"]) for name, obj in left if obj is not None]

        try:
            wait_for(lambda: not remaining(), 60, what="every object to be released")
        except AssertionError as err:
            raise AssertionError(f"{err}; still there: {remaining()}") from None
        gone = next(j for j in local_jobs(ctx) if j.job_name == running.job_name)
        assert gone.state == "CANCELLED", gone
        wait_for(lambda: not live_group_members(job_pids(ctx, running.job_name)), 30, what="fm2 job gone")
        assert not is_committed(storage, f"{layout.fm_checkpoints('default', 'fm2')}/00003")
        assert is_committed(storage, f"{fm_root}/00003")  # deleting a resource keeps its artifacts

    # The operator ran in this process: it must not have loaded torch (nor may what it imported).
    if not torch_loaded_before:
        assert "torch" not in sys.modules, "the operator imported torch"
    used = sorted(m for m in set(sys.modules) - modules_before if m.startswith(("exfm_", "kopf", "torchx")))
    used += sorted(m for m in sys.modules if m.startswith("exfm_operator"))
    assert not modules_import_torch(sorted(set(used))), "a module the operator used imports torch"


@pytest.mark.parametrize("data_arrives", [True, False], ids=["poll-submits", "poll-changes-nothing"])
def test_delete_during_an_in_flight_poll(k8s: EmulatorServer, tmp_path: Path, data_arrives: bool) -> None:
    """A resource deleted while its ``poll`` timer reconciles. If that reconcile submits a job, the
    delete handler waits for it and cancels the job (no orphan). Either way the finalizer goes soon
    after the timer returns: kopf re-checks an exiting timer every ``cancellation_polling`` seconds
    (60 by default), and a poll that changes nothing triggers no earlier re-check."""
    staged, data, store = tmp_path / "staged", tmp_path / "data", tmp_path / "store"
    synthesize(staged, SYNTH)
    ctx = local_context(tmp_path / "jobs", launcher_cls=GatedLauncher)
    launcher = ctx.launcher
    assert isinstance(launcher, GatedLauncher)
    with reap_jobs(ctx), OperatorThread(ctx):
        dataset = {"uri": str(data), "synthetic": SYNTH}
        k8s.apply(FM_RES, fm_manifest("fm", data, store, end=4, per_job=4, dataset=dataset, preset="tiny"))
        wait_for(lambda: _status(k8s, FM_RES, "fm").get("phase") == "Waiting", 60, what="FM waiting for data")
        launcher.gate.clear()
        assert launcher.held.wait(60), "no poll reached the launcher"  # a timer reconcile, mid-observe
        if data_arrives:
            staged.rename(data)  # the held reconcile will submit a job
        k8s.delete(FM_RES, "default", "fm")
        time.sleep(1.0)  # kopf sees the deletion and starts the delete handler
        launcher.gate.set()
        wait_for(lambda: k8s.get(FM_RES, "default", "fm") is None, 30, what="the finalizer to be released")
        jobs = local_jobs(ctx)
        if not data_arrives:
            assert jobs == []
            return
        # the held reconcile submitted one job; the delete handler cancelled it
        assert [j.state for j in jobs] == ["CANCELLED"], [(j.job_name, j.state) for j in jobs]
        wait_for(lambda: not live_group_members(job_pids(ctx, jobs[0].job_name)), 30, what="job gone")
