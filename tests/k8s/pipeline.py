"""Pipeline fixtures for operator tests: data windows, manifests, and 'what a finished job wrote'.

On the cluster path nothing runs the trainer: :func:`complete_volcano_job` reads the job config the
operator put into the Volcano job (``EXFM_JOB_CONFIG``), commits the artifacts that job would have
committed (FM/VM checkpoints, DAS windows) through the real commit protocol, then marks the Volcano
job Completed, the way Volcano would.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from exfm_trainer import layout
from exfm_trainer.data.windows import write_window
from exfm_trainer.jobs import parse_job
from exfm_trainer.storage import open_storage
from exfm_trainer.storage.commit import commit_artifact
from k8s.emulator import EXFM_GROUP, EXFM_VERSION, VOLCANO, EmulatorServer

SCHEMA = {
    "label": "label",
    "dense": ["d0"],
    "sparse": [{"name": "s0", "hash_buckets": 100, "embedding_dim": 4}],
}
FM_RES = f"{EXFM_GROUP}/{EXFM_VERSION}/foundationmodels"
DAS_RES = f"{EXFM_GROUP}/{EXFM_VERSION}/dataaugmentations"
VM_RES = f"{EXFM_GROUP}/{EXFM_VERSION}/verticalmodels"


def write_windows(uri: str | Path, windows: range, rows: int = 8) -> None:
    for w in windows:
        table = pa.table({"label": [i % 2 for i in range(rows)], "d0": [float(i) for i in range(rows)],
                          "s0": [i % 5 for i in range(rows)]})  # fmt: skip
        write_window(str(uri), w, table)


def fm_manifest(name: str, data: Path, store: Path, end: int, per_job: int = 2, **spec: object) -> dict:
    return {
        "apiVersion": f"{EXFM_GROUP}/{EXFM_VERSION}", "kind": "FoundationModel",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"dataset": {"uri": str(data), "schema": SCHEMA}, "storage": {"uri": str(store)},
                 "cadence": {"windowsPerJob": per_job}, "windows": {"start": 0, "end": end},
                 "resources": {"cpu": "1", "memory": "2Gi"}, "retry": {"limit": 1, "backoffSeconds": 0},
                 **spec},
    }  # fmt: skip


def das_manifest(name: str, fm: str, end: int, **spec: object) -> dict:
    return {
        "apiVersion": f"{EXFM_GROUP}/{EXFM_VERSION}", "kind": "DataAugmentation",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"fmRef": {"name": fm}, "windows": {"start": 0, "end": end}, "cadence": {"windowsPerJob": 1},
                 "retry": {"limit": 1, "backoffSeconds": 0}, **spec},
    }  # fmt: skip


def vm_manifest(name: str, das: str, end: int, **spec: object) -> dict:
    return {
        "apiVersion": f"{EXFM_GROUP}/{EXFM_VERSION}", "kind": "VerticalModel",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"dasRef": {"name": das}, "windows": {"start": 0, "end": end},
                 "cadence": {"windowsPerJob": 1}, "retry": {"limit": 1, "backoffSeconds": 0}, **spec},
    }  # fmt: skip


def job_config(job: dict) -> dict:
    env = job["spec"]["tasks"][0]["template"]["spec"]["containers"][0]["env"]
    return json.loads(next(e["value"] for e in env if e["name"] == "EXFM_JOB_CONFIG"))


def write_job_artifacts(config: dict) -> list[str]:
    """Commit what the trainer job of ``config`` commits; returns the artifact prefixes."""
    job = parse_job(config)
    storage = open_storage(job.storage)
    start, end = job.windows.start, job.windows.end
    assert end is not None, "operator jobs always have a closed window range"
    windows = list(range(start, end))
    written = []
    if job.job in ("fm-train", "vm-train"):
        kind = "fm" if job.job == "fm-train" else "vm"
        ckpts = layout.fm_checkpoints if kind == "fm" else layout.vm_checkpoints
        from exfm_trainer.storage.commit import list_committed, read_manifest

        previous = [read_manifest(storage, f"{ckpts(job.namespace, job.name)}/{v}")
                    for v in list_committed(storage, ckpts(job.namespace, job.name))]  # fmt: skip
        trained = sorted({w for m in previous for w in m["windows"]} | set(windows))
        metrics = {
            str(w): layout.WindowMetrics(window=w, rows=8, ne=0.9, auc=0.7).model_dump() for w in windows
        }
        extra = {}
        if kind == "vm":
            extra = {"das_windows": trained, "fm_versions": ["00001"]}
        manifest = layout.CheckpointManifest(
            kind=f"{kind}-checkpoint", namespace=job.namespace, name=job.name,
            version=layout.version_name(end - 1), windows=trained,
            preset=job.preset, metrics=metrics, **extra,
        )  # fmt: skip
        prefix = (layout.fm_checkpoint if kind == "fm" else layout.vm_checkpoint)(
            job.namespace, job.name, layout.version_name(end - 1)
        )
        commit_artifact(storage, prefix, {"model.bin": b"weights"}, layout.manifest_metadata(manifest))
        written.append(prefix)
    else:  # das
        from exfm_trainer.storage.commit import list_committed, read_manifest

        fm_root = layout.fm_checkpoints(job.fm.namespace, job.fm.name)
        versions = list_committed(storage, fm_root)
        for w in windows:
            usable = [v for v in versions if int(v) < w]
            version = max(usable)
            fm_last = max(read_manifest(storage, f"{fm_root}/{version}")["windows"])
            manifest = layout.DASWindowManifest(
                window=w, input_uri=job.dataset.uri, fm_namespace=job.fm.namespace, fm_name=job.fm.name,
                fm_version=version, fm_uri=storage.uri(f"{fm_root}/{version}"), fm_last_window=fm_last,
                staleness=layout.staleness(w, fm_last), rows=8,
            )  # fmt: skip
            prefix = layout.das_window(job.namespace, job.name, w)
            commit_artifact(
                storage, prefix, {"part-00000.parquet": b"rows"}, layout.manifest_metadata(manifest)
            )
            written.append(prefix)
    return written


def set_phase(k8s: EmulatorServer, name: str, phase: str, namespace: str = "default") -> None:
    k8s.patch(VOLCANO, namespace, name, {"status": {"state": {"phase": phase}}})


def complete_volcano_job(k8s: EmulatorServer, job: dict) -> list[str]:
    """Running → artifacts committed → Completed, as Volcano and the trainer would."""
    name = job["metadata"]["name"]
    set_phase(k8s, name, "Running")
    written = write_job_artifacts(job_config(job))
    set_phase(k8s, name, "Completed")
    return written


def volcano_jobs(k8s: EmulatorServer, kind: str | None = None) -> list[dict]:
    jobs = k8s.list(VOLCANO, "default")
    return [j for j in jobs if kind is None or j["metadata"]["labels"].get("exfm.io/job-kind") == kind]


def unfinished(jobs: list[dict]) -> list[dict]:
    return [j for j in jobs if ((j.get("status") or {}).get("state") or {}).get("phase") != "Completed"]
