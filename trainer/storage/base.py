"""The storage interface shared by every backend, and the URI dispatcher."""

from __future__ import annotations

import abc
import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI and the cause."""


class Storage(abc.ABC):
    """A flat key space of immutable objects under a root URI.

    Keys are '/'-separated relative paths. ``join`` builds a child storage rooted at a prefix,
    so callers pass one object around instead of (storage, prefix) pairs.
    """

    root_uri: str

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write a whole object."""

    @abc.abstractmethod
    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Upload a local file (streamed; multipart on S3)."""

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read a whole object; raises ``FileNotFoundError`` when missing."""

    @abc.abstractmethod
    def get_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Download an object to a local file (streamed)."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """True when the object exists."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix`` (recursive), sorted, relative to this storage's root."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object; missing objects are ignored."""

    @abc.abstractmethod
    def join(self, prefix: str) -> Storage:
        """A storage rooted at ``prefix`` below this one."""

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix``; returns how many were removed."""
        keys = self.list(prefix)
        for key in keys:
            self.delete(key)
        return len(keys)

    def list_dirs(self, prefix: str = "") -> list[str]:
        """Immediate child 'folders' under ``prefix`` (names only, sorted)."""
        base = prefix.rstrip("/") + "/" if prefix else ""
        names = {key[len(base) :].split("/", 1)[0] for key in self.list(base) if "/" in key[len(base) :]}
        return sorted(names)

    def modified_time(self, key: str) -> float:
        """Last-modified time of an object (epoch seconds); ``FileNotFoundError`` when missing."""
        raise NotImplementedError(f"{type(self).__name__} does not report modification times")

    def uri(self, key: str = "") -> str:
        """The absolute URI of ``key``."""
        return self.root_uri.rstrip("/") + ("/" + key.lstrip("/") if key else "")

    @contextlib.contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        """A local file holding the object, removed afterwards (the file itself on local disk)."""
        with tempfile.TemporaryDirectory(prefix="exfm-") as tmp:
            path = Path(tmp) / Path(key).name
            self.get_file(key, path)
            yield path

    def open_read(self, key: str) -> BinaryIO:
        """A readable binary stream over the object (default: whole object in memory)."""
        import io

        return io.BytesIO(self.get_bytes(key))


def open_storage(uri: str | os.PathLike[str]) -> Storage:
    """Open the storage named by ``uri``: ``s3://bucket/prefix``, ``file:///path`` or a path."""
    text = os.fspath(uri)
    if text.startswith("s3://"):
        from exfm_trainer.storage.s3 import S3Storage

        return S3Storage.from_uri(text)
    if "://" in text and not text.startswith("file://"):
        raise StorageError(
            f"unsupported storage URI {text!r}: use s3://bucket/prefix, file:///path or a plain path"
        )
    from exfm_trainer.storage.local import LocalStorage

    return LocalStorage(text.removeprefix("file://"))
