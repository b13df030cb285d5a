"""Launcher: the pure SubmitJob → AppDef translation, and local_cwd jobs with registry recovery."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from exfm_operator.api.common import Resources
from exfm_operator.launcher import build_appdef, make_launcher
from exfm_operator.launcher.appdef import CONFIG_ENV, parse_memory_mb
from exfm_operator.planner.actions import SubmitJob


def _submit(
    name: str = "fm-demo-abc123-w0-2", replicas: int = 1, gpu: int = 0, config: dict | None = None
) -> SubmitJob:
    return SubmitJob(
        job_name=name, job_kind="fm-train", config=config or {"job": "fm-train", "storage": "/x"},
        windows=(0, 2),
        resources=Resources(replicas=replicas, cpu="2", memory="3Gi", gpu=gpu), image="exfm:test",
        labels={"exfm.io/owner-uid": "u1"}, env_from_secret="s3",
    )  # fmt: skip


def test_appdef_carries_config_inline_resources_and_labels() -> None:
    app = build_appdef(_submit(gpu=1))
    role = app.roles[0]
    assert app.name == "fm-demo-abc123-w0-2" and role.image == "exfm:test"
    assert (role.resource.cpu, role.resource.gpu, role.resource.memMB) == (2, 1, 3072)
    assert json.loads(role.env[CONFIG_ENV]) == {"job": "fm-train", "storage": "/x"}
    assert role.entrypoint == "sh" and "python -m exfm_trainer fm-train --config" in role.args[1]
    assert app.metadata["exfm.io/owner-uid"] == "u1" and app.metadata["exfm.io/gpus"] == "1"


def test_appdef_multi_replica_uses_torchrun_rendezvous() -> None:
    app = build_appdef(_submit(replicas=3), config_path="/tmp/c.json")
    role = app.roles[0]
    assert role.num_replicas == 3 and CONFIG_ENV not in role.env
    assert "torch.distributed.run --nnodes 3" in role.args[1] and "--config /tmp/c.json" in role.args[1]


def test_bad_inputs_name_the_field() -> None:
    with pytest.raises(ValueError, match="memory"):
        parse_memory_mb("lots")
    with pytest.raises(ValueError, match="scheduler"):
        make_launcher("slurm")


def test_local_jobs_run_and_a_new_launcher_finds_them(tmp_path: Path) -> None:
    launcher = make_launcher("local_cwd", state_dir=tmp_path / "state")
    bad = _submit(config={"job": "fm-train", "unknown_field": 1})  # the trainer rejects it (exit 2)
    handle = launcher.submit(bad)
    assert launcher.submit(bad) == handle  # idempotent by job name
    deadline = time.monotonic() + 60
    while not (st := launcher.status(handle)).terminal and time.monotonic() < deadline:
        time.sleep(0.2)
    assert st.state == "FAILED" and "unknown_field" in st.message
    # a restarted operator (new launcher, same state dir) finds the job instead of relaunching it
    again = make_launcher("local_cwd", state_dir=tmp_path / "state")
    assert again.find(bad.job_name) == handle
    assert again.status(handle).state == "FAILED"
    assert again.submit(bad) == handle
    refs = again.list_jobs({"exfm.io/owner-uid": "u1"})
    assert [r.job_name for r in refs] == [bad.job_name] and refs[0].state == "FAILED"
    launcher.close()


def test_local_cancel_stops_a_running_job(tmp_path: Path) -> None:
    slow = tmp_path / "slow-python"  # stands in for the interpreter: a job that runs for a while
    slow.write_text("#!/bin/sh\nsleep 30\n")
    slow.chmod(0o755)
    launcher = make_launcher("local_cwd", state_dir=tmp_path / "state", python=str(slow))
    handle = launcher.submit(_submit(name="fm-sleepy-w0-1"))
    assert launcher.status(handle).state in ("PENDING", "RUNNING")
    launcher.cancel(handle)
    assert make_launcher("local_cwd", state_dir=tmp_path / "state").status(handle).state == "CANCELLED"


def test_failure_message_leads_with_the_jobs_error_event(tmp_path: Path) -> None:
    """Issue 11, item 6: the status shows the job's final error event, not its stdout tail noise."""
    noisy = tmp_path / "noisy-python"  # stands in for a trainer that fails on bad data
    noisy.write_text(
        "#!/bin/sh\n"
        'echo \'{"event": "start", "job": "fm", "windows": [0, 1]}\'\n'
        'echo "UserWarning: torch.fx something something" >&2\n'
        'echo \'{"event": "error", "reason": "BadInputData", "message": "window 2: 40 of 200 rows '
        'were skipped; raise spec.training.maxBadRowFraction", "exit_code": 3}\'\n'
        'echo "error: window 2 ..." >&2\n'
        "exit 3\n"
    )
    noisy.chmod(0o755)
    launcher = make_launcher("local_cwd", state_dir=tmp_path / "state", python=str(noisy))
    handle = launcher.submit(_submit(name="fm-noisy-w0-1"))
    deadline = time.monotonic() + 60
    while not (st := launcher.status(handle)).terminal and time.monotonic() < deadline:
        time.sleep(0.2)
    assert st.state == "FAILED"
    assert st.message.startswith("BadInputData: window 2: 40 of 200 rows"), st.message
    assert "spec.training.maxBadRowFraction" in st.message and st.message.endswith("(exit code 3)")
    assert '"start"' not in st.message and "UserWarning" not in st.message
    # an operator restarted meanwhile reads the same reason from the logs
    again = make_launcher("local_cwd", state_dir=tmp_path / "state")
    assert again.status(handle).message.startswith("BadInputData: window 2")
    launcher.close()
