"""Retention: newest K, pins, leases and stale uncommitted leftovers, on both backends."""

from __future__ import annotations

import time

import pytest

from exfm_trainer import layout
from exfm_trainer.storage import Storage
from exfm_trainer.storage.commit import commit_artifact, list_committed
from exfm_trainer.storage.retention import (
    acquire_lease,
    active_leases,
    gc_checkpoints,
    lease,
    lease_key,
    pin,
    read_pins,
    unpin,
)

CKPT = layout.fm_checkpoints("ns", "fm")


def _ckpts(storage: Storage, *windows: int) -> list[str]:
    versions = [layout.version_name(w) for w in windows]
    for v in versions:
        commit_artifact(storage, f"{CKPT}/{v}", {"model.pt": v.encode()}, {"version": v})
    return versions


def test_keeps_newest_k_and_pins(storage: Storage) -> None:
    v = _ckpts(storage, 0, 1, 2, 3, 4, 5)
    assert pin(storage, "fm", "ns", "fm", v[0]) == [v[0]]
    assert read_pins(storage, "fm", "ns", "fm") == [v[0]]
    deleted = gc_checkpoints(storage, "fm", "ns", "fm", keep=2, extra_pins=[v[2]])
    assert deleted == [v[1], v[3]]
    assert list_committed(storage, CKPT) == [v[0], v[2], v[4], v[5]]
    assert storage.list(f"{CKPT}/{v[1]}/") == []
    assert gc_checkpoints(storage, "fm", "ns", "fm", keep=2, extra_pins=[v[2]]) == []
    unpin(storage, "fm", "ns", "fm", v[0])
    assert gc_checkpoints(storage, "fm", "ns", "fm", keep=2) == [v[0], v[2]]
    with pytest.raises(ValueError, match="keep must be >= 1"):
        gc_checkpoints(storage, "fm", "ns", "fm", keep=0)


def test_leases_protect_until_released_or_expired(storage: Storage) -> None:
    v = _ckpts(storage, 0, 1, 2)
    with lease(storage, "fm", "ns", "fm", "das/ns/aug", [v[0]]):
        assert active_leases(storage, "fm", "ns", "fm") == {"das/ns/aug": [v[0]]}
        assert gc_checkpoints(storage, "fm", "ns", "fm", keep=1) == [v[1]]
    assert not storage.exists(lease_key("fm", "ns", "fm", "das/ns/aug"))
    acquire_lease(storage, "fm", "ns", "fm", "crashed-job", [v[0]], ttl_s=-1)  # already expired
    assert active_leases(storage, "fm", "ns", "fm") == {}
    assert gc_checkpoints(storage, "fm", "ns", "fm", keep=1) == [v[0]]
    assert storage.list(layout.model_root("fm", "ns", "fm") + "/leases/") == []  # expired lease removed


def test_stale_uncommitted_leftovers_are_removed_after_grace(storage: Storage) -> None:
    _ckpts(storage, 0)
    storage.put_bytes(f"{CKPT}/00001/model.pt", b"half-written")
    assert gc_checkpoints(storage, "fm", "ns", "fm", keep=3) == []  # young: may be in progress
    assert storage.exists(f"{CKPT}/00001/model.pt")
    later = time.time() + 7200
    assert gc_checkpoints(storage, "fm", "ns", "fm", keep=3, grace_s=3600, now=later) == ["00001"]
    assert list_committed(storage, CKPT) == ["00000"]
