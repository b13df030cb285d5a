"""Operator paths besides the happy pipeline: Prometheus metrics, kopf liveness, transient API
failures (retried with ``kopf.TemporaryError``, never Failed), and the launcher's shared job list.

kopf and TorchX's kubernetes scheduler run against the Kubernetes emulator; the emulator's fault
hook (``set_fault``) makes the API server answer 500 for one kind of request.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest
from k8s.emulator import VOLCANO, EmulatorServer
from k8s.fixtures import k8s as k8s  # the fixture
from k8s.harness import OperatorThread, wait_for
from k8s.pipeline import (
    FM_RES,
    complete_volcano_job,
    fm_manifest,
    set_phase,
    unfinished,
    volcano_jobs,
    write_windows,
)
from prometheus_client import REGISTRY

from exfm_operator.api.common import Resources
from exfm_operator.kopf_app import make_context
from exfm_operator.launcher.kubernetes import KubernetesLauncher, load_api_client
from exfm_operator.planner.actions import SubmitJob
from exfm_operator.settings import OperatorSettings


def _context(**overrides: object) -> object:
    settings = OperatorSettings(scheduler="kubernetes", poll_interval=0.3, retry_delay=0.3, queue="exfm")
    for key, value in overrides.items():
        setattr(settings, key, value)
    return make_context(settings)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _scrape(port: int) -> dict[str, float]:
    """The ``/metrics`` page as {'name{labels}': value} (what Prometheus would read)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def _status(k8s: EmulatorServer, name: str) -> dict:
    return (k8s.get(FM_RES, "default", name) or {}).get("status") or {}


def test_metrics_endpoint_and_liveness_after_reconciles(k8s: EmulatorServer, tmp_path: Path) -> None:
    write_windows(tmp_path / "data", range(2))
    metrics_port, live_port = _free_port(), _free_port()
    before = {
        "submitted": _metric("exfm_jobs_submitted_total", kind="fm-train"),
        "failed": _metric("exfm_jobs_failed_total", kind="fm-train"),
        "windows": _metric("exfm_windows_processed_total", kind="fm-train"),
        "reconciles": _metric("exfm_reconcile_seconds_count", kind="FoundationModel"),
    }
    liveness = f"http://127.0.0.1:{live_port}/healthz"
    with OperatorThread(_context(), metrics_port=metrics_port, liveness=liveness) as op:
        k8s.apply(FM_RES, fm_manifest("fm", tmp_path / "data", tmp_path / "store", end=2, per_job=1))
        first = wait_for(lambda: volcano_jobs(k8s, "fm-train"), 20, what="the first job")[0]
        complete_volcano_job(k8s, first)  # window 0 committed
        wait_for(lambda: _status(k8s, "fm").get("lastWindow") == 0, 20, what="window 0 in status")
        second = wait_for(lambda: unfinished(volcano_jobs(k8s, "fm-train")), 20, what="the second job")[0]
        set_phase(k8s, second["metadata"]["name"], "Failed")
        wait_for(
            lambda: _metric("exfm_jobs_failed_total", kind="fm-train") > before["failed"], 20, what="failure"
        )

        page = _scrape(metrics_port)
        assert page['exfm_jobs_submitted_total{kind="fm-train"}'] >= before["submitted"] + 2
        assert page['exfm_jobs_failed_total{kind="fm-train"}'] == before["failed"] + 1
        assert page['exfm_windows_processed_total{kind="fm-train"}'] == before["windows"] + 1
        assert page['exfm_reconcile_seconds_count{kind="FoundationModel"}'] >= before["reconciles"] + 3
        assert (
            page['exfm_reconcile_seconds_bucket{kind="FoundationModel",le="+Inf"}']
            == (page['exfm_reconcile_seconds_count{kind="FoundationModel"}'])
        )
        assert 'exfm_reconcile_seconds_sum{kind="FoundationModel"}' in page

        reply = urllib.request.urlopen(liveness, timeout=10)
        assert reply.status == 200
        assert json.loads(reply.read())["launcher"] == "kubernetes"  # the operator's own probe
        assert op.alive
    with pytest.raises(OSError):  # both endpoints go away with the operator
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_transient_api_errors_retry_and_recover_without_failing(
    k8s: EmulatorServer, tmp_path: Path, method: str
) -> None:
    """GET: observing jobs fails; POST: submitting fails. Both are TemporaryErrors: the resource is
    neither Failed nor Degraded, a RetryLater warning is posted, and the job goes out once the API
    answers again."""
    write_windows(tmp_path / "data", range(1))
    k8s.set_fault(method, "jobs", 500)
    errors = _metric("exfm_reconcile_errors_total", kind="FoundationModel")
    with OperatorThread(_context()) as op:
        k8s.apply(FM_RES, fm_manifest("fm", tmp_path / "data", tmp_path / "store", end=1, per_job=1))
        wait_for(
            lambda: _metric("exfm_reconcile_errors_total", kind="FoundationModel") >= errors + 2,
            20,
            what="two failed reconciles (a retry after the first)",
        )
        warnings = [e for e in k8s.list("v1/events", "default") if e.get("reason") == "RetryLater"]
        assert warnings and all(e["type"] == "Warning" for e in warnings)
        assert "Internal Server Error" in warnings[0]["message"]
        assert _status(k8s, "fm").get("phase") not in ("Failed", "Degraded")
        assert not volcano_jobs(k8s)
        k8s.set_fault(method, "jobs", None)
        job = wait_for(lambda: volcano_jobs(k8s, "fm-train"), 20, what="the job after recovery")
        wait_for(lambda: _status(k8s, "fm").get("phase") == "Running", 20, what="phase Running")
        assert len(job) == 1 and op.alive
        assert not any(c.get("type") == "Degraded" and c.get("status") == "True"
                       for c in _status(k8s, "fm").get("conditions", []))  # fmt: skip


def _submit(name: str, owner: str) -> SubmitJob:
    return SubmitJob(
        job_name=name, job_kind="fm-train", config={"job": "fm-train", "storage": "/x"}, windows=(0, 1),
        labels={"exfm.io/owner-uid": owner}, image="exfm:test", resources=Resources(),
    )  # fmt: skip


def _job_requests(k8s: EmulatorServer) -> list[tuple[str, str | None]]:
    return [(m, a) for m, _g, plural, _s, a in k8s.requests() if plural == "jobs"]


def test_launcher_shares_one_job_list_and_submits_idempotently(k8s: EmulatorServer) -> None:
    launcher = KubernetesLauncher(queue="exfm", api_client=load_api_client(), list_ttl=30)
    owners = [f"owner-{i}" for i in range(5)]
    handles = [launcher.submit(_submit(f"job-{i}", owner)) for i, owner in enumerate(owners)]
    assert _job_requests(k8s) == [("POST", "CREATE")] * 5  # no lookup before create
    for i, owner in enumerate(owners):
        refs = launcher.list_jobs({"exfm.io/owner-uid": owner}, "default")
        assert [r.handle for r in refs] == [handles[i]] and refs[0].state == "PENDING"
    assert _job_requests(k8s).count(("GET", "LIST")) == 1  # one list served all five owners
    assert launcher.submit(_submit("job-0", "owner-0")) == handles[0]  # known: no request at all
    assert len(_job_requests(k8s)) == 6

    set_phase(k8s, "job-1", "Running")
    fresh = KubernetesLauncher(queue="exfm", api_client=load_api_client(), list_ttl=30)
    assert fresh.status(handles[1]).state == "RUNNING"  # not cached yet: TorchX describe
    assert fresh.submit(_submit("job-1", "owner-1")) == handles[1]  # 409 → found, not duplicated
    assert [j["metadata"]["name"] for j in k8s.list(VOLCANO, "default")].count("job-1") == 1
    assert fresh.list_jobs({"exfm.io/owner-uid": "owner-1"})[0].state == "RUNNING"
    fresh.cancel(handles[1])
    assert fresh.list_jobs({"exfm.io/owner-uid": "owner-1"}) == []  # forgotten at once
    assert k8s.get(VOLCANO, "default", "job-1") is None
    launcher.close()
    fresh.close()
