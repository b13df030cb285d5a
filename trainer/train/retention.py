"""Checkpoint retention: keep the newest K committed versions plus every pinned one.

Pins are read from ``layout.pins_key(kind, ns, name)`` (a JSON list of versions that DAS outputs
or users still reference). A version is removed marker-first, so readers never see half of it.
"""

from __future__ import annotations

import json
from typing import Literal

from exfm_trainer import layout
from exfm_trainer.storage import Storage
from exfm_trainer.storage.commit import COMMITTED, list_committed


def read_pins(storage: Storage, kind: Literal["fm", "vm"], namespace: str, name: str) -> set[str]:
    key = layout.pins_key(kind, namespace, name)
    if not storage.exists(key):
        return set()
    data = json.loads(storage.get_bytes(key))
    if isinstance(data, dict):  # tolerate {"versions": [...]} as well as a plain list
        data = data.get("versions", [])
    return {str(v) for v in data}


def apply_retention(
    storage: Storage, kind: Literal["fm", "vm"], namespace: str, name: str, keep: int
) -> list[str]:
    """Delete committed checkpoints beyond the newest ``keep`` (pins kept); returns removed versions."""
    ckpts = layout.fm_checkpoints if kind == "fm" else layout.vm_checkpoints
    parent = ckpts(namespace, name)
    versions = list_committed(storage, parent)
    pins = read_pins(storage, kind, namespace, name)
    doomed = [v for v in versions[: max(len(versions) - keep, 0)] if v not in pins]
    for version in doomed:
        prefix = f"{parent}/{version}"
        storage.delete(f"{prefix}/{COMMITTED}")
        storage.delete_prefix(prefix + "/")
    return doomed
