"""Pure translation of a planner ``SubmitJob`` into a TorchX ``AppDef``.

The trainer is ``python -m exfm_trainer <kind> --config <file>``. The config travels either as a
file path the job can read (``config_path``, used by ``local_cwd``) or inline in the environment
variable ``EXFM_JOB_CONFIG``, which a ``sh -c`` prologue writes to a file in the container before
``exec``-ing the trainer (used by ``kubernetes``: no object-store round trip, no trainer flag).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from typing import Any

from torchx import specs

CONFIG_ENV = "EXFM_JOB_CONFIG"
CONFIG_FILE = "/tmp/exfm-job-config.json"
ROLE_NAME = "trainer"
RDZV_PORT = 29500

LABEL_JOB = "exfm.io/job-name"
LABEL_KIND = "exfm.io/job-kind"
LABEL_GPUS = "exfm.io/gpus"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
MANAGED_BY = "exfm-operator"

_DNS_RE = re.compile(r"[^a-z0-9-]+")
_MEM_UNITS = {
    "": 1 / (1 << 20),
    "k": 1e3 / (1 << 20),
    "m": 1e6 / (1 << 20),
    "g": 1e9 / (1 << 20),
    "t": 1e12 / (1 << 20),
    "ki": 1 / 1024,
    "mi": 1.0,
    "gi": 1024.0,
    "ti": 1024.0 * 1024,
}


def dns_name(name: str, limit: int = 63) -> str:
    """A DNS-1123 label from ``name`` (lowercase, dashes), as Kubernetes object names need."""
    text = _DNS_RE.sub("-", name.lower()).strip("-")
    if not text:
        raise ValueError(f"job name {name!r} has no DNS-1123 characters")
    return text[:limit].rstrip("-")


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def parse_memory_mb(value: Any) -> int:
    """Kubernetes quantity (``"4Gi"``, ``"512Mi"``, ``1073741824``) or plain MB int → MB."""
    if value is None:
        return 0
    if isinstance(value, int | float):
        return int(value)
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _MEM_UNITS:
        raise ValueError(f"resources.memory {value!r} is not a quantity like '4Gi' or '512Mi'")
    return int(float(match.group(1)) * _MEM_UNITS[match.group(2).lower()])


def parse_cpu(value: Any) -> int:
    """Kubernetes CPU quantity (``"500m"``, ``2``) → whole cores (at least 1 when set)."""
    if value is None:
        return 0
    text = str(value).strip()
    cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    return max(1, round(cores)) if cores > 0 else 0


def resource_of(resources: Any) -> tuple[specs.Resource, int]:
    """``(specs.Resource, replicas)`` from the planner's resources (model or mapping)."""
    cpu = parse_cpu(_get(resources, "cpu", 1))
    mem = parse_memory_mb(_get(resources, "memory", _get(resources, "mem_mb", 2048)))
    gpu = int(_get(resources, "gpus", _get(resources, "gpu", 0)) or 0)
    replicas = int(_get(resources, "replicas", 1) or 1)
    if replicas < 1:
        raise ValueError(f"resources.replicas must be >= 1, got {replicas}")
    return specs.Resource(cpu=cpu, gpu=gpu, memMB=mem), replicas


def job_labels(submit: Any) -> dict[str, str]:
    """Labels every job carries: the deterministic job name, its kind, the owner's labels."""
    labels = {str(k): str(v) for k, v in (_get(submit, "labels") or {}).items()}
    labels[LABEL_JOB] = dns_name(submit.job_name)
    labels[LABEL_KIND] = str(submit.job_kind)
    resource, replicas = resource_of(_get(submit, "resources"))
    labels[LABEL_GPUS] = str(resource.gpu * replicas)
    labels.setdefault(LABEL_MANAGED, MANAGED_BY)
    return labels


def trainer_command(kind: str, config_arg: str, replicas: int, python: str = "python") -> list[str]:
    """argv of the trainer; >1 replica goes through torchrun's c10d rendezvous on replica 0."""
    if replicas == 1:
        return [python, "-m", "exfm_trainer", kind, "--config", config_arg]
    return [
        python, "-m", "torch.distributed.run",
        "--nnodes", str(replicas), "--nproc_per_node", "1",
        "--rdzv_backend", "c10d", "--rdzv_endpoint", f"${{TORCHX_RANK0_HOST:=localhost}}:{RDZV_PORT}",
        "--rdzv_id", f"${{{CONFIG_ENV}_ID:=exfm}}",
        "-m", "exfm_trainer", kind, "--config", config_arg,
    ]  # fmt: skip


def build_appdef(
    submit: Any,
    *,
    image: str | None = None,
    config_path: str | None = None,
    python: str = "python",
    env: Mapping[str, str] | None = None,
    exit_code_file: str | None = None,
) -> specs.AppDef:
    """The TorchX app of one planner ``SubmitJob`` (pure: no I/O).

    ``config_path`` set: ``--config <config_path>``; else the config is inline in ``EXFM_JOB_CONFIG``.
    ``exit_code_file``: also record the trainer's exit status there (local registry recovery).
    """
    kind = str(submit.job_kind)
    if kind not in ("fm-train", "das", "vm-train"):
        raise ValueError(f"job_kind {kind!r} is not one of fm-train, das, vm-train")
    resource, replicas = resource_of(_get(submit, "resources"))
    role_env = {str(k): str(v) for k, v in (env or {}).items()}
    # The checkout holds a folder named `operator`, which shadows the standard library's module when
    # a job's working directory is the checkout (local_cwd) and Python prepends it to sys.path.
    role_env.setdefault("PYTHONSAFEPATH", "1")
    # One intra-op thread per requested CPU: jobs sharing a machine must not oversubscribe it.
    role_env.setdefault("OMP_NUM_THREADS", str(max(1, int(resource.cpu))))
    role_env["EXFM_JOB_NAME"] = submit.job_name
    role_env[f"{CONFIG_ENV}_ID"] = dns_name(submit.job_name)
    prologue = ""
    if config_path is None:
        role_env[CONFIG_ENV] = json.dumps(submit.config, sort_keys=True, separators=(",", ":"))
        prologue = f'printf "%s" "${CONFIG_ENV}" > {CONFIG_FILE} && '
        config_arg = CONFIG_FILE
    else:
        config_arg = config_path
    cmd = " ".join(
        a if a.startswith(("${", "$")) or "${" in a else shlex.quote(a)
        for a in trainer_command(kind, config_arg, replicas, python)
    )
    if exit_code_file:
        script = f"{prologue}{cmd}; rc=$?; echo $rc > {shlex.quote(exit_code_file)}; exit $rc"
    else:
        script = f"{prologue}exec {cmd}"
    role = specs.Role(
        name=ROLE_NAME,
        image=image or _get(submit, "image") or "",
        entrypoint="sh",
        args=["-c", script],
        env=role_env,
        num_replicas=replicas,
        resource=resource,
        max_retries=0,
    )
    return specs.AppDef(name=dns_name(submit.job_name), roles=[role], metadata=job_labels(submit))
