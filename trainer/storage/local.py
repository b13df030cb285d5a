"""Local-filesystem backend: objects are files; every write is atomic (temp file + rename)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

from exfm_trainer.storage.base import Storage, StorageError


class LocalStorage(Storage):
    """Objects under a directory. Writes land in a temp file and are renamed into place."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root_uri = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        path = (self.root / key.lstrip("/")).resolve()
        if path != self.root and self.root not in path.parents:
            raise StorageError(f"key {key!r} escapes the storage root {self.root}")
        return path

    def _atomic_write(self, key: str, writer) -> None:  # type: ignore[no-untyped-def]
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                writer(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(key, lambda fh: fh.write(data))

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        def copy(fh: BinaryIO) -> None:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, fh, 8 << 20)

        self._atomic_write(key, copy)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"{self.uri(key)} does not exist")
        return path.read_bytes()

    def get_file(self, key: str, path: str | os.PathLike[str]) -> None:
        src = self._path(key)
        if not src.is_file():
            raise FileNotFoundError(f"{self.uri(key)} does not exist")
        shutil.copyfile(src, path)

    def open_read(self, key: str) -> BinaryIO:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"{self.uri(key)} does not exist")
        return open(path, "rb")

    def modified_time(self, key: str) -> float:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"{self.uri(key)} does not exist")
        return path.stat().st_mtime

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            # A prefix may end inside a name ("ckpt/00" matching "ckpt/000012/...").
            parent = base.parent
            if not parent.is_dir():
                return []
            candidates = [p for p in parent.iterdir() if p.name.startswith(base.name)]
        else:
            candidates = [base]
        keys: list[str] = []
        for start in candidates:
            walk = [start] if start.is_file() else start.rglob("*")
            for p in walk:
                if p.is_file() and not p.name.startswith(".tmp-"):
                    keys.append(p.relative_to(self.root).as_posix())
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        # Prune empty parents up to the root so listings stay clean.
        parent = path.parent
        while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def join(self, prefix: str) -> LocalStorage:
        return LocalStorage(self._path(prefix))

    def local_path(self, key: str = "") -> Path:
        """The file path of ``key`` (local backend only)."""
        return self._path(key)
