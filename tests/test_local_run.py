"""Real tiny `exfm run`s (TorchX local_cwd jobs): interrupt with SIGINT midway, re-run, nothing redone."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from k8s.local_jobs import live_group_members

from exfm_trainer import layout
from exfm_trainer.storage import open_storage
from exfm_trainer.storage.commit import list_committed, read_manifest

pytestmark = pytest.mark.slow

PIPELINE = """\
apiVersion: exfm.io/v1alpha1
kind: FoundationModel
metadata: {name: teacher}
spec:
  dataset:
    uri: s3://exfm/data
    synthetic: {windows: 4, rows_per_window: 2000, verticals: 2, seed: 3}
  storage: {uri: s3://exfm/run}
  preset: tiny
  windows: {end: 4}
  cadence: {windowsPerJob: 1}
  retention: {keepCheckpoints: 10}
  training: {batchSize: 512}
---
apiVersion: exfm.io/v1alpha1
kind: DataAugmentation
metadata: {name: augment}
spec:
  fmRef: {name: teacher}
  maxStaleness: 0
  windows: {end: 4}
  cadence: {windowsPerJob: 1}
---
apiVersion: exfm.io/v1alpha1
kind: VerticalModel
metadata: {name: feed}
spec:
  dasRef: {name: augment}
  vertical: feed
  preset: tiny
  windows: {end: 4}
  cadence: {windowsPerJob: 3}
  distillation: {mode: aux, adapter: true}
  training: {batchSize: 256}
---
apiVersion: exfm.io/v1alpha1
kind: VerticalModel
metadata: {name: feed-baseline}
spec:
  dasRef: {name: augment}
  vertical: feed
  preset: tiny
  windows: {end: 4}
  cadence: {windowsPerJob: 3}
  distillation: {mode: none}
  training: {batchSize: 256}
"""


def _exfm(*args: str) -> list[str]:
    return [sys.executable, "-c", "from exfm_operator.cli import main; main()", *args]


def _committed(run: object) -> dict[str, float]:
    """Every committed FM/VM checkpoint and DAS window -> its commit time."""
    out = {}
    parents = [
        layout.fm_checkpoints("default", "teacher"),
        layout.das_output("default", "augment"),
        layout.vm_checkpoints("default", "feed"),
        layout.vm_checkpoints("default", "feed-baseline"),
    ]
    for parent in parents:
        for name in list_committed(run, parent):  # type: ignore[arg-type]
            out[f"{parent}/{name}"] = read_manifest(run, f"{parent}/{name}")["committed_at"]  # type: ignore[arg-type]
    return out


def _jobs(workdir: Path) -> dict[str, dict]:
    return json.loads((workdir / "jobs" / "jobs.json").read_text())


def test_interrupt_then_resume_redoes_no_committed_window(tmp_path: Path) -> None:
    manifests = tmp_path / "pipeline.yaml"
    manifests.write_text(PIPELINE)
    workdir = tmp_path / "wd"
    args = _exfm("run", "-f", str(manifests), "--workdir", str(workdir), "--json", "--poll", "0.5")
    fm_ckpts = workdir / "storage" / "exfm" / "run" / layout.fm_checkpoints("default", "teacher")
    with open(tmp_path / "first.jsonl", "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while not (fm_ckpts / "00001" / "_COMMITTED").exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the FM never committed window 1"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    events = [json.loads(line) for line in (tmp_path / "first.jsonl").read_text().splitlines()]
    assert any(e["event"] == "interrupted" for e in events)
    summary = next(e for e in events if e["event"] == "summary")
    assert summary["exit_code"] == 130
    assert summary["resources"]["fm/teacher"]["phase"] == "Suspended"

    # Every job is finished: cancelled jobs are marked, no process of any job group is left running.
    jobs = _jobs(workdir)
    groups = {pid for record in jobs.values() for pid in record["pids"]}
    deadline = time.monotonic() + 10
    while live_group_members(list(groups)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not live_group_members(list(groups))
    assert any(r["cancelled"] for r in jobs.values()), "the active FM job was not cancelled"

    run = open_storage(workdir / "storage" / "exfm" / "run")
    before = _committed(run)
    assert f"{layout.fm_checkpoints('default', 'teacher')}/00001" in before
    resumed_at = time.time()

    second = subprocess.run(
        _exfm("run", "-f", str(manifests), "--workdir", str(workdir), "--quiet", "--poll", "0.5"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert second.returncode == 0, second.stderr
    assert second.stdout == ""  # --quiet prints nothing but errors

    after = _committed(run)
    for key, committed_at in before.items():
        assert after[key] == committed_at, f"{key} was rewritten by the re-run"
    assert sorted(list_committed(run, layout.fm_checkpoints("default", "teacher"))) == [
        "00000", "00001", "00002", "00003",
    ]  # fmt: skip
    das_windows = [
        layout.parse_window_dir(n) for n in list_committed(run, layout.das_output("default", "augment"))
    ]
    assert das_windows == [1, 2, 3]

    # No job of the re-run started at a window that was already committed.
    done_fm = {int(k.rsplit("/", 1)[1]) for k in before if k.startswith("fm/")}
    done_das = {layout.parse_window_dir(k.rsplit("/", 1)[1]) for k in before if k.startswith("das/")}
    new = [r for r in _jobs(workdir).values() if r["submitted_at"] >= resumed_at]
    assert new, "the re-run submitted nothing"
    for r in new:
        start = int(r["labels"]["exfm.io/window-start"])
        if r["kind"] == "fm-train":
            assert start > max(done_fm)
        if r["kind"] == "das":
            assert start not in done_das
    fm_jobs = [r for r in _jobs(workdir).values() if r["kind"] == "fm-train" and not r["cancelled"]]
    fm_windows = sorted(int(r["labels"]["exfm.io/window-start"]) for r in fm_jobs)
    assert len(fm_windows) == len(set(fm_windows)), f"an FM window range ran twice: {fm_windows}"

    status = subprocess.run(
        _exfm("status", "--workdir", str(workdir), "-o", "json"), capture_output=True, text=True
    )
    phases = {r["name"]: r["phase"] for r in json.loads(status.stdout)}
    assert phases == dict.fromkeys(["teacher", "augment", "feed", "feed-baseline"], "Succeeded")

    report = subprocess.run(
        _exfm("report", "--workdir", str(workdir), "--json"), capture_output=True, text=True
    )
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert set(data) == {"vms", "fm"}
    assert set(data["vms"]) == {"feed"}
    assert data["vms"]["feed"]["windows"] == 3
    assert isinstance(data["vms"]["feed"]["exfm_ne"], float) and isinstance(
        data["vms"]["feed"]["baseline_ne"], float
    )
    assert data["fm"]["teacher"]["windows"] == 4


KILL_PIPELINE = PIPELINE.replace("spec:\n", "spec:\n  retry: {limit: 20, backoffSeconds: 1}\n")


def test_sigkills_of_exfm_run_and_its_jobs_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    """Issue 11: SIGKILL `exfm run` (and, every other time, a running job) at random points; the final
    state equals an uninterrupted run's: 0 windows lost, 0 committed artifacts rewritten, no process
    left, and the same report."""
    import contextlib
    import os
    import random

    manifests = tmp_path / "pipeline.yaml"
    manifests.write_text(KILL_PIPELINE)
    ref_wd, wd = tmp_path / "ref", tmp_path / "wd"
    ref = subprocess.run(
        _exfm("run", "-f", str(manifests), "--workdir", str(ref_wd), "-q", "--poll", "0.3"),
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert ref.returncode == 0, ref.stderr
    rng = random.Random(11)
    run_store = wd / "storage" / "exfm" / "run"
    seen: dict[str, float] = {}
    kills = job_kills = 0
    for _ in range(6):
        proc = subprocess.Popen(
            _exfm("run", "-f", str(manifests), "--workdir", str(wd), "-q", "--poll", "0.3"),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(rng.uniform(1.0, 10.0))
        if proc.poll() is not None:
            break  # finished before the kill
        proc.kill()
        proc.wait()
        kills += 1
        jobs_file = wd / "jobs" / "jobs.json"
        if rng.random() < 0.5 and jobs_file.exists():
            live = [r for r in _jobs(wd).values() if live_group_members(r["pids"])]
            if live:
                for pid in rng.choice(live)["pids"]:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                job_kills += 1
        if run_store.exists():
            now = _committed(open_storage(run_store))
            for key, at in seen.items():
                assert now.get(key) == at, f"{key} was rewritten or removed after a kill"
            seen.update(now)
    final = subprocess.run(
        _exfm("run", "-f", str(manifests), "--workdir", str(wd), "-q", "--poll", "0.3"),
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert final.returncode == 0, final.stderr
    assert kills >= 3, f"only {kills} kills landed: the runs finished too fast to test anything"
    run = open_storage(run_store)
    after = _committed(run)
    for key, at in seen.items():
        assert after.get(key) == at, f"{key} was rewritten after a kill"
    for name, windows in (("teacher", [0, 1, 2, 3]),):
        latest = max(list_committed(run, layout.fm_checkpoints("default", name)))
        trained = read_manifest(run, f"{layout.fm_checkpoints('default', name)}/{latest}")["windows"]
        assert trained == windows, f"fm {name}: trained {trained}"  # none lost, none twice
    for name in ("feed", "feed-baseline"):
        parent = layout.vm_checkpoints("default", name)
        trained = read_manifest(run, f"{parent}/{max(list_committed(run, parent))}")["windows"]
        assert trained == [1, 2, 3], f"vm {name}: trained {trained}"
    das = [layout.parse_window_dir(n) for n in list_committed(run, layout.das_output("default", "augment"))]
    assert das == [1, 2, 3]
    groups = [pid for r in _jobs(wd).values() for pid in r["pids"]]
    deadline = time.monotonic() + 10
    while live_group_members(groups) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not live_group_members(groups), "a job process outlived the runs"

    def report(workdir: Path) -> str:
        out = subprocess.run(
            _exfm("report", "--workdir", str(workdir), "--json"), capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert report(wd) == report(ref_wd)  # byte-identical to the uninterrupted run's
    print(f"kill figures: {kills} SIGKILLs of exfm run, {job_kills} of jobs; 0 lost, 0 rewritten")
