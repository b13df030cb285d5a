"""TorchX launcher: one interface (:class:`Launcher`), two backends (``local_cwd``, ``kubernetes``)."""

from __future__ import annotations

import os
from typing import Any

from exfm_operator.launcher.appdef import build_appdef, dns_name, job_labels
from exfm_operator.launcher.base import (
    JOB_STATES,
    TERMINAL_STATES,
    JobRef,
    JobStatus,
    Launcher,
    LauncherError,
)


def make_launcher(scheduler: str, **options: Any) -> Launcher:
    """``make_launcher("local_cwd", state_dir=...)`` or ``make_launcher("kubernetes", queue=...)``."""
    if scheduler == "local_cwd":
        from exfm_operator.launcher.local import LocalLauncher

        options.setdefault("state_dir", os.environ.get("EXFM_STATE_DIR", ".exfm/state"))
        return LocalLauncher(**options)
    if scheduler == "kubernetes":
        from exfm_operator.launcher.kubernetes import KubernetesLauncher

        return KubernetesLauncher(**options)
    raise ValueError(f"scheduler {scheduler!r} is not supported: use 'local_cwd' or 'kubernetes'")


__all__ = [
    "JOB_STATES",
    "TERMINAL_STATES",
    "JobRef",
    "JobStatus",
    "Launcher",
    "LauncherError",
    "build_appdef",
    "dns_name",
    "job_labels",
    "make_launcher",
]
