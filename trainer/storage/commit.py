"""The commit protocol: objects first, then MANIFEST.json (sizes + sha256), then _COMMITTED.

Readers call :func:`is_committed` / :func:`list_committed` and never look inside an artifact
without its marker, so a half-written artifact is invisible. A writer that finds an uncommitted
artifact at its target removes it and writes again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from exfm_trainer.storage.base import Storage, StorageError

MANIFEST = "MANIFEST.json"
COMMITTED = "_COMMITTED"


def _digest(fh: BinaryIO) -> tuple[str, int]:
    """Hex sha256 and size of a stream, read in 8 MiB chunks."""
    digest, size = hashlib.sha256(), 0
    for chunk in iter(lambda: fh.read(8 << 20), b""):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a local file (streamed)."""
    with open(path, "rb") as fh:
        return _digest(fh)[0]


def is_committed(storage: Storage, prefix: str) -> bool:
    """True when the artifact at ``prefix`` carries its commit marker."""
    return storage.exists(f"{prefix.rstrip('/')}/{COMMITTED}")


def read_manifest(storage: Storage, prefix: str) -> dict[str, Any]:
    """The manifest of a committed artifact; raises StorageError when it is not committed."""
    prefix = prefix.rstrip("/")
    if not is_committed(storage, prefix):
        raise StorageError(f"{storage.uri(prefix)} is not committed (no {COMMITTED} marker)")
    try:
        return json.loads(storage.get_bytes(f"{prefix}/{MANIFEST}"))
    except FileNotFoundError:
        raise StorageError(
            f"{storage.uri(prefix)} has a {COMMITTED} marker but no {MANIFEST}: it is being deleted "
            "or was damaged; delete it (delete_artifact) and write it again"
        ) from None
    except json.JSONDecodeError as err:
        raise StorageError(f"{storage.uri(prefix + '/' + MANIFEST)} is not valid JSON ({err})") from None


def list_committed(storage: Storage, parent: str) -> list[str]:
    """Names of committed artifacts directly under ``parent`` (sorted)."""
    parent = parent.rstrip("/")
    return [
        name
        for name in storage.list_dirs(parent)
        if is_committed(storage, f"{parent}/{name}" if parent else name)
    ]


def abort_uncommitted(storage: Storage, prefix: str) -> int:
    """Remove the leftovers of a write that never committed; returns objects removed."""
    if is_committed(storage, prefix):
        return 0
    return storage.delete_prefix(prefix.rstrip("/") + "/")


def commit_artifact(
    storage: Storage,
    prefix: str,
    files: Mapping[str, str | os.PathLike[str] | bytes],
    metadata: Mapping[str, Any],
) -> dict[str, Any]:
    """Write ``files`` under ``prefix``, then the manifest, then the marker.

    ``files`` maps names (relative to ``prefix``) to local paths or bytes. Anything left at
    ``prefix`` by an earlier, uncommitted attempt is removed first. Returns the manifest.
    Raises StorageError when ``prefix`` is already committed (artifacts are immutable).
    """
    prefix = prefix.rstrip("/")
    if is_committed(storage, prefix):
        raise StorageError(
            f"{storage.uri(prefix)} is already committed; artifacts are immutable: write a new version, "
            "or delete this one first (delete_artifact)"
        )
    abort_uncommitted(storage, prefix)
    entries: dict[str, dict[str, Any]] = {}
    for name, src in sorted(files.items()):
        if name in (MANIFEST, COMMITTED):
            raise StorageError(
                f"file name {name!r} of {storage.uri(prefix)} is reserved by the commit protocol; rename it"
            )
        key = f"{prefix}/{name}"
        if isinstance(src, bytes):
            storage.put_bytes(key, src)
            entries[name] = {"size": len(src), "sha256": hashlib.sha256(src).hexdigest()}
        else:
            path = Path(src)
            storage.put_file(key, path)
            entries[name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = {**dict(metadata), "files": entries, "committed_at": time.time()}
    storage.put_bytes(f"{prefix}/{MANIFEST}", json.dumps(manifest, indent=2, sort_keys=True).encode())
    storage.put_bytes(f"{prefix}/{COMMITTED}", b"")
    return manifest


def verify_artifact(storage: Storage, prefix: str) -> None:
    """Check every file of a committed artifact against its manifest's size and checksum (streamed)."""
    manifest = read_manifest(storage, prefix)
    fix = "the artifact is damaged: delete it (delete_artifact) and write it again"
    for name, entry in manifest.get("files", {}).items():
        key = f"{prefix.rstrip('/')}/{name}"
        try:
            with storage.open_read(key) as fh:
                sha256, size = _digest(fh)
        except FileNotFoundError:
            raise StorageError(f"{storage.uri(key)} is listed in the manifest but missing; {fix}") from None
        if size != entry["size"] or sha256 != entry["sha256"]:
            raise StorageError(
                f"{storage.uri(key)} does not match its manifest ({size} bytes, sha256 {sha256[:12]}…; "
                f"manifest: {entry['size']} bytes, sha256 {str(entry['sha256'])[:12]}…); {fix}"
            )


def delete_artifact(storage: Storage, prefix: str) -> int:
    """Delete an artifact: the marker first (readers stop seeing it), then the manifest, then the rest.

    Returns how many objects remained to delete after marker and manifest.
    """
    prefix = prefix.rstrip("/")
    storage.delete(f"{prefix}/{COMMITTED}")
    storage.delete(f"{prefix}/{MANIFEST}")
    return storage.delete_prefix(prefix + "/")
