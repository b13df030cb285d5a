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


def test_young_checkpoints_survive_until_a_consumer_can_lease_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A backlog: the FM commits faster than the DAS starts; min_age_s keeps the old versions."""
    from exfm_trainer import layout
    from exfm_trainer.storage.commit import commit_artifact, list_committed
    from exfm_trainer.storage.local import LocalStorage
    from exfm_trainer.storage.retention import gc_checkpoints

    st = LocalStorage(tmp_path)
    parent = layout.fm_checkpoints("ns", "fm")
    for v in ("00000", "00001", "00002", "00003"):
        commit_artifact(st, f"{parent}/{v}", {"model.pt": b"x"}, {"kind": "fm-checkpoint"})
    assert gc_checkpoints(st, "fm", "ns", "fm", keep=1, min_age_s=600) == []
    assert list_committed(st, parent) == ["00000", "00001", "00002", "00003"]
    later = __import__("time").time() + 601
    assert gc_checkpoints(st, "fm", "ns", "fm", keep=1, min_age_s=600, now=later) == [
        "00000",
        "00001",
        "00002",
    ]
