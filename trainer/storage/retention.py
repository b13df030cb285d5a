"""Checkpoint retention: keep the newest K, pinned and leased versions; delete the rest.

References are recorded two ways, both next to the model (``fm|vm/<ns>/<name>/``):

- **pins** (``PINS.json``, :func:`exfm_trainer.layout.pins_key`): a JSON list of versions kept
  until unpinned (a user or the operator pins a release);
- **leases** (``leases/<holder>.json``): ``{"holder", "versions", "expires_at"}`` written by a
  running job (the DAS, before it loads an FM checkpoint) and renewed while it runs. One object
  per holder, so concurrent jobs never race on a shared file; a crashed job's lease simply expires.

:func:`gc_checkpoints` deletes a checkpoint by removing its ``_COMMITTED`` marker first, so a
reader either sees the whole artifact or nothing. It also removes uncommitted leftovers (a
crashed writer) older than a grace period.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator
from typing import Literal

from exfm_trainer.layout import model_root, pins_key
from exfm_trainer.storage.base import Storage, StorageError
from exfm_trainer.storage.commit import COMMITTED, delete_artifact, is_committed

log = logging.getLogger(__name__)
Kind = Literal["fm", "vm"]
DEFAULT_LEASE_TTL_S = 6 * 3600.0
DEFAULT_GRACE_S = 3600.0
_HOLDER_RE = re.compile(r"[^A-Za-z0-9_.=-]+")


def _ckpt_parent(kind: Kind, namespace: str, name: str) -> str:
    return f"{model_root(kind, namespace, name)}/ckpt"


def leases_prefix(kind: Kind, namespace: str, name: str) -> str:
    return f"{model_root(kind, namespace, name)}/leases"


def lease_key(kind: Kind, namespace: str, name: str, holder: str) -> str:
    """Object of ``holder``'s lease (the holder id is sanitized into a file name)."""
    safe = _HOLDER_RE.sub("_", holder).strip("_") or "holder"
    return f"{leases_prefix(kind, namespace, name)}/{safe}.json"


# -- pins ------------------------------------------------------------------------------------------


def read_pins(storage: Storage, kind: Kind, namespace: str, name: str) -> list[str]:
    """Pinned versions (``PINS.json``); empty when there is none."""
    key = pins_key(kind, namespace, name)
    try:
        data = json.loads(storage.get_bytes(key))
    except FileNotFoundError:
        return []
    except json.JSONDecodeError as err:
        raise StorageError(f"{storage.uri(key)} is not valid JSON ({err}): fix or delete it") from None
    if isinstance(data, dict):  # also accept {"versions": [...]}
        data = data.get("versions", [])
    if not isinstance(data, list) or not all(isinstance(v, str) for v in data):
        raise StorageError(f"{storage.uri(key)} must be a JSON list of version strings, got {data!r}")
    return sorted(set(data))


def write_pins(storage: Storage, kind: Kind, namespace: str, name: str, versions: Iterable[str]) -> list[str]:
    """Replace the pin list; returns it sorted."""
    pins = sorted(set(versions))
    storage.put_bytes(pins_key(kind, namespace, name), json.dumps(pins).encode())
    return pins


def pin(storage: Storage, kind: Kind, namespace: str, name: str, *versions: str) -> list[str]:
    """Add versions to the pin list (read-modify-write: for operators/users, not hot paths)."""
    return write_pins(storage, kind, namespace, name, [*read_pins(storage, kind, namespace, name), *versions])


def unpin(storage: Storage, kind: Kind, namespace: str, name: str, *versions: str) -> list[str]:
    """Remove versions from the pin list."""
    keep = [v for v in read_pins(storage, kind, namespace, name) if v not in versions]
    return write_pins(storage, kind, namespace, name, keep)


# -- leases ----------------------------------------------------------------------------------------


def acquire_lease(
    storage: Storage,
    kind: Kind,
    namespace: str,
    name: str,
    holder: str,
    versions: Iterable[str],
    ttl_s: float = DEFAULT_LEASE_TTL_S,
) -> str:
    """Record that ``holder`` uses ``versions`` until now + ``ttl_s`` (call again to renew/replace).

    Returns the lease key. Write the lease *before* reading the checkpoint.
    """
    now = time.time()
    key = lease_key(kind, namespace, name, holder)
    body = {"holder": holder, "versions": sorted(set(versions)), "created_at": now, "expires_at": now + ttl_s}
    storage.put_bytes(key, json.dumps(body).encode())
    return key


def release_lease(storage: Storage, kind: Kind, namespace: str, name: str, holder: str) -> None:
    """Drop ``holder``'s lease (missing leases are ignored)."""
    storage.delete(lease_key(kind, namespace, name, holder))


@contextlib.contextmanager
def lease(
    storage: Storage,
    kind: Kind,
    namespace: str,
    name: str,
    holder: str,
    versions: Iterable[str],
    ttl_s: float = DEFAULT_LEASE_TTL_S,
) -> Iterator[str]:
    """Hold a lease for the duration of a ``with`` block."""
    key = acquire_lease(storage, kind, namespace, name, holder, versions, ttl_s)
    try:
        yield key
    finally:
        with contextlib.suppress(StorageError):
            release_lease(storage, kind, namespace, name, holder)


def active_leases(
    storage: Storage, kind: Kind, namespace: str, name: str, now: float | None = None
) -> dict[str, list[str]]:
    """``{holder: versions}`` of unexpired leases. Unreadable lease files count as holding nothing
    and are reported in the log (they expire with their object's age via :func:`gc_checkpoints`)."""
    now = time.time() if now is None else now
    out: dict[str, list[str]] = {}
    for key in storage.list(leases_prefix(kind, namespace, name) + "/"):
        try:
            body = json.loads(storage.get_bytes(key))
            if float(body["expires_at"]) > now:
                out[str(body["holder"])] = [str(v) for v in body["versions"]]
        except FileNotFoundError:
            continue
        except (ValueError, KeyError, TypeError) as err:
            log.warning("ignoring unreadable lease %s: %s", storage.uri(key), err)
    return out


def protected_versions(
    storage: Storage, kind: Kind, namespace: str, name: str, now: float | None = None
) -> set[str]:
    """Pinned plus leased versions."""
    leased = {v for vs in active_leases(storage, kind, namespace, name, now).values() for v in vs}
    return set(read_pins(storage, kind, namespace, name)) | leased


# -- garbage collection ----------------------------------------------------------------------------


def _newest_mtime(storage: Storage, keys: list[str]) -> float:
    newest = 0.0
    for key in keys:
        with contextlib.suppress(FileNotFoundError):
            newest = max(newest, storage.modified_time(key))
    return newest


def gc_checkpoints(
    storage: Storage,
    kind: Kind,
    namespace: str,
    name: str,
    keep: int,
    extra_pins: Iterable[str] = (),
    grace_s: float = DEFAULT_GRACE_S,
    now: float | None = None,
    min_age_s: float = 0.0,
) -> list[str]:
    """Delete checkpoints of ``kind/namespace/name`` beyond the newest ``keep`` committed ones.

    Kept: the newest ``keep`` committed versions, ``PINS.json``, unexpired leases,
    ``extra_pins`` (e.g. the version a caller is about to resume from) and versions committed
    less than ``min_age_s`` ago: a consumer (the DAS) leases the version it reads when its job
    starts, and ``min_age_s`` covers the time between the commit and that lease, so a backlog of
    windows never loses the only checkpoint old enough for them. Uncommitted leftovers
    whose newest object is older than ``grace_s`` are removed too (a younger one may be a write
    in progress). Expired lease files are removed. Returns the deleted version names, sorted.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    now = time.time() if now is None else now
    parent = _ckpt_parent(kind, namespace, name)
    names = storage.list_dirs(parent)
    committed = [v for v in names if is_committed(storage, f"{parent}/{v}")]
    protected = set(extra_pins) | protected_versions(storage, kind, namespace, name, now)
    victims = [
        v
        for v in committed[:-keep]
        if v not in protected and now - _newest_mtime(storage, [f"{parent}/{v}/{COMMITTED}"]) >= min_age_s
    ]
    deleted: list[str] = []
    for version in victims:
        # Re-check right before deleting: a job may have leased it since we looked.
        if version in protected_versions(storage, kind, namespace, name, now):
            continue
        delete_artifact(storage, f"{parent}/{version}")
        deleted.append(version)
    for version in sorted(set(names) - set(committed)):
        prefix = f"{parent}/{version}"
        keys = storage.list(prefix + "/")
        if keys and now - _newest_mtime(storage, keys) > grace_s and not is_committed(storage, prefix):
            storage.delete_prefix(prefix + "/")
            deleted.append(version)
    _drop_expired_leases(storage, kind, namespace, name, now, grace_s)
    if deleted:
        log.info("retention removed %s under %s", sorted(deleted), storage.uri(parent))
    return sorted(deleted)


def _drop_expired_leases(
    storage: Storage, kind: Kind, namespace: str, name: str, now: float, grace_s: float
) -> None:
    for key in storage.list(leases_prefix(kind, namespace, name) + "/"):
        try:
            expired = float(json.loads(storage.get_bytes(key))["expires_at"]) <= now
        except FileNotFoundError:
            continue
        except (ValueError, KeyError, TypeError):
            expired = now - _newest_mtime(storage, [key]) > grace_s
        if expired:
            storage.delete(key)
