"""Deterministic job names and labels."""

from __future__ import annotations

import hashlib
import re

from exfm_operator.planner.world import JobKind

MAX_JOB_NAME = 52  # DNS-1123 label (<= 63) with room for TorchX/Volcano pod suffixes
MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_OWNER_KIND = "exfm.io/owner-kind"
LABEL_OWNER_NAME = "exfm.io/owner-name"
LABEL_OWNER_UID = "exfm.io/owner-uid"
LABEL_JOB_KIND = "exfm.io/job-kind"
LABEL_WINDOW_START = "exfm.io/window-start"
LABEL_WINDOW_END = "exfm.io/window-end"
LABEL_ATTEMPT = "exfm.io/attempt"
_PREFIX = {"fm-train": "fm", "das": "das", "vm-train": "vm"}
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def label_value(value: str) -> str:
    """A valid label value (<= 63 chars, alnum at both ends)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", value)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)


def job_name(
    job_kind: JobKind, namespace: str, name: str, uid: str | None, windows: tuple[int, int], attempt: int = 0
) -> str:
    """``<fm|das|vm>-<name>-<hash6>-w<start>-<end>[-r<attempt>]``, a DNS-1123 label of <= 52 chars.

    The hash covers kind, namespace, name and uid, so a recreated resource never reuses a name.
    """
    digest = hashlib.sha1(f"{job_kind}/{namespace}/{name}/{uid or ''}".encode()).hexdigest()[:6]
    tail = f"-{digest}-w{windows[0]}-{windows[1]}" + (f"-r{attempt}" if attempt else "")
    prefix = _PREFIX[job_kind]
    room = MAX_JOB_NAME - len(prefix) - 1 - len(tail)
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[: max(room, 0)].strip("-")
    return f"{prefix}-{slug}{tail}" if slug else f"{prefix}{tail}"


def job_labels(
    owner_kind: str, name: str, uid: str | None, job_kind: JobKind, windows: tuple[int, int], attempt: int
) -> dict[str, str]:
    """Labels of a job: owner (select by ``exfm.io/owner-uid``), window range, attempt, managed-by."""
    labels = {
        MANAGED_BY: "exfm",
        LABEL_OWNER_KIND: owner_kind,
        LABEL_OWNER_NAME: label_value(name),
        LABEL_JOB_KIND: job_kind,
        LABEL_WINDOW_START: str(windows[0]),
        LABEL_WINDOW_END: str(windows[1]),
        LABEL_ATTEMPT: str(attempt),
    }
    if uid:
        labels[LABEL_OWNER_UID] = label_value(uid)
    return labels
