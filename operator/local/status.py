"""``exfm status``: a ``kubectl get fm,das,vm``-like view of the statuses a local run stored.

The statuses are the planner's status models (``FoundationModelStatus``...) serialised exactly as
the operator writes them into a CR's ``status`` (camelCase JSON).
"""

from __future__ import annotations

import time
from typing import Any

from exfm_operator.local.workdir import ResourceStatus

COLUMNS = ["NAME", "KIND", "PHASE", "READY", "LAST WINDOW", "CHECKPOINT", "NE", "AGE"]
SHORT = {"FoundationModel": "fm", "DataAugmentation": "das", "VerticalModel": "vm"}
ORDER = {"FoundationModel": 0, "DataAugmentation": 1, "VerticalModel": 2}


def age(seconds: float) -> str:
    """kubectl-style age: ``45s``, ``3m12s``, ``2h5m``, ``3d4h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s" if s < 600 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def _ready(status: dict[str, Any]) -> str:
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            return str(cond.get("status", "Unknown"))
    return "Unknown"


def _checkpoint(kind: str, status: dict[str, Any]) -> str | None:
    if kind == "DataAugmentation":
        return status.get("fmVersion")
    ckpt = status.get("latestCheckpoint") or {}
    return ckpt.get("version")


def _ne(status: dict[str, Any]) -> float | None:
    ne = ((status.get("latestCheckpoint") or {}).get("metrics") or {}).get("ne")
    return float(ne) if isinstance(ne, int | float) else None


def status_row(rec: ResourceStatus, now: float | None = None) -> dict[str, Any]:
    """One resource as a JSON row (``-o json``); :func:`table_cells` renders it."""
    st = rec.status
    return {
        "name": rec.name,
        "namespace": rec.namespace,
        "kind": rec.kind,
        "phase": st.get("phase", "Pending"),
        "ready": _ready(st),
        "lastWindow": st.get("lastWindow"),
        "checkpoint": _checkpoint(rec.kind, st),
        "ne": _ne(st),
        "ageSeconds": round((now or time.time()) - rec.created, 1),
        "status": st,
    }


def table_cells(row: dict[str, Any]) -> list[str]:
    """A :func:`status_row` as the cells of the ``exfm status`` table."""

    def dash(v: Any) -> str:
        return "-" if v is None else str(v)

    ne = row["ne"]
    return [
        row["name"] if row["namespace"] == "default" else f"{row['namespace']}/{row['name']}",
        SHORT.get(row["kind"], row["kind"]),
        row["phase"],
        row["ready"],
        dash(row["lastWindow"]),
        dash(row["checkpoint"]),
        "-" if ne is None else f"{ne:.4f}",
        age(row["ageSeconds"]),
    ]


def status_rows(records: list[ResourceStatus], now: float | None = None) -> list[dict[str, Any]]:
    """:func:`status_row` of every record, in FM, DAS, VM order."""
    ordered = sorted(records, key=lambda r: (ORDER.get(r.kind, 9), r.namespace, r.name))
    return [status_row(r, now) for r in ordered]
