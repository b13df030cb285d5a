"""Operator settings from the environment (``EXFM_*``), overridable in code (tests, CLI)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    try:
        return float(value) if value else default
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number") from None


@dataclass
class OperatorSettings:
    """``scheduler``: ``kubernetes`` (Volcano jobs) or ``local_cwd`` (processes on this machine)."""

    scheduler: str = field(default_factory=lambda: os.environ.get("EXFM_SCHEDULER", "kubernetes"))
    poll_interval: float = field(default_factory=lambda: _env_float("EXFM_POLL_INTERVAL", 10.0))
    retry_delay: float = field(default_factory=lambda: _env_float("EXFM_RETRY_DELAY", 15.0))
    queue: str = field(default_factory=lambda: os.environ.get("EXFM_QUEUE", "default"))
    image: str = field(default_factory=lambda: os.environ.get("EXFM_IMAGE", "exfm:latest"))
    service_account: str | None = field(default_factory=lambda: os.environ.get("EXFM_JOB_SERVICE_ACCOUNT"))
    state_dir: str = field(default_factory=lambda: os.environ.get("EXFM_STATE_DIR", ".exfm/state"))
    gpu_budget: int | None = field(default_factory=lambda: _env_int("EXFM_GPU_BUDGET", None))
    read_quota: bool = field(default_factory=lambda: os.environ.get("EXFM_READ_QUOTA", "1") != "0")
    max_workers: int = field(default_factory=lambda: _env_int("EXFM_MAX_WORKERS", 8) or 8)
    job_list_ttl: float = field(default_factory=lambda: _env_float("EXFM_JOB_LIST_TTL", 1.0))
    finalizer: str = "exfm.io/finalizer"
