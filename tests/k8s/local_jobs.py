"""Helpers for operator tests whose jobs really run: kopf + TorchX ``local_cwd`` + local storage.

The data is generated in a subprocess (``python -m exfm_trainer synth``) so the test process, which
hosts the operator, never imports the training stack. :func:`local_context` builds the operator
context with the ``local_cwd`` launcher; :func:`reap_jobs` kills (by pid, from the launcher's own
registry) whatever job processes a failing test leaves behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from exfm_operator.kopf_app import OperatorContext, make_context
from exfm_operator.launcher import JobRef
from exfm_operator.launcher.local import LocalLauncher
from exfm_operator.settings import OperatorSettings


def synthesize(uri: str | Path, params: dict[str, Any]) -> dict[str, Any]:
    """Generate the synthetic stream ``params`` (``SyntheticConfig`` fields) into ``uri`` in a subprocess."""
    cfg = Path(str(uri).rstrip("/") + ".synthetic.json")
    cfg.write_text(json.dumps(params))
    proc = subprocess.run(
        [sys.executable, "-m", "exfm_trainer", "synth", "--out", str(uri), "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"synth failed: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout)


class GatedLauncher(LocalLauncher):
    """The real ``local_cwd`` launcher whose ``list_jobs`` (the first step of every observe) waits
    while :attr:`gate` is closed, so a test can hold a reconcile mid-flight (:attr:`held` is set)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.gate.set()
        self.held = threading.Event()

    def list_jobs(self, labels: dict[str, str], namespace: str | None = None) -> list[JobRef]:
        if not self.gate.is_set():
            self.held.set()
            assert self.gate.wait(120), "the test never opened the gate"
        return super().list_jobs(labels, namespace)


def local_context(
    state_dir: str | Path,
    poll_interval: float = 0.5,
    retry_delay: float = 1.0,
    threads: int = 1,
    launcher_cls: type[LocalLauncher] = LocalLauncher,
) -> OperatorContext:
    """An operator context whose jobs run as local processes (TorchX ``local_cwd``)."""
    settings = OperatorSettings(
        scheduler="local_cwd", state_dir=str(state_dir), poll_interval=poll_interval,
        retry_delay=retry_delay, read_quota=False, gpu_budget=None,
    )  # fmt: skip
    launcher = launcher_cls(state_dir, env={"OMP_NUM_THREADS": str(threads)})
    return make_context(settings, launcher)


def local_jobs(ctx: OperatorContext, selector: dict[str, str] | None = None) -> list[JobRef]:
    """Every job the launcher started whose labels include ``selector``, with its current state."""
    return ctx.launcher.list_jobs(selector or {})


def job_pids(ctx: OperatorContext, job_name: str) -> list[int]:
    assert isinstance(ctx.launcher, LocalLauncher)
    record = ctx.launcher.registry.get(job_name)
    return list(record.pids) if record else []


def live_group_members(groups: list[int]) -> list[int]:
    """Processes (not zombies) in the process groups ``groups`` (a job's replicas lead their groups)."""
    wanted = set(groups)
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) in wanted:
            live.append(int(stat.parent.name))
    return live


@contextlib.contextmanager
def reap_jobs(ctx: OperatorContext) -> Iterator[None]:
    """On exit, SIGKILL the process groups of this launcher's jobs that are still alive."""
    try:
        yield
    finally:
        assert isinstance(ctx.launcher, LocalLauncher)
        for record in ctx.launcher.registry.all():
            for pid in record.pids:
                if live_group_members([pid]):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)


def modules_import_torch(modules: list[str]) -> bool:
    """Whether importing ``modules`` in a fresh interpreter loads ``torch``."""
    code = (
        "import importlib, sys, json\n"
        f"for m in json.loads({json.dumps(json.dumps(modules))}):\n"
        "    importlib.import_module(m)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1] == "True"
