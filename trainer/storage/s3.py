"""S3 backend (MinIO, AWS S3 or any S3-compatible store) on the ``minio`` client.

Every call is retried with exponential backoff and jitter on transient failures (connection
errors, timeouts, 5xx, SlowDown). Permanent failures raise :class:`StorageError` naming the URI,
the cause and the fix. Large uploads go multipart (``part_size``); reads stream.
"""

from __future__ import annotations

import io
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from exfm_trainer.storage.base import Storage, StorageError
from exfm_trainer.storage.credentials import (
    CREDENTIAL_HINT,
    MIN_PART_SIZE,
    S3Config,
    load_s3_config,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "OperationAborted",
        "XMinioServerNotInitialized",
    }
)
CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken"}
)
MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject"})
MAX_BACKOFF_S = 30.0


def is_transient(err: BaseException) -> bool:
    """True for failures worth retrying: network errors, timeouts, 5xx, throttling."""
    if isinstance(err, S3Error):
        status = getattr(err.response, "status", 0) or 0
        return err.code in TRANSIENT_CODES or status >= 500
    if isinstance(err, ServerError):
        return err.status_code >= 500 or err.status_code == 429
    if isinstance(err, InvalidResponseError):
        code = getattr(err, "_code", 0) or 0
        return code >= 500 or code == 429
    return isinstance(err, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


class _Connection:
    """One minio client plus the once-per-process bucket check, shared by joined storages."""

    def __init__(self, bucket: str, config: S3Config, client: Minio | None = None) -> None:
        self.bucket = bucket
        self.config = config
        if client is None:
            timeout = urllib3.Timeout(connect=config.timeout_s, read=config.timeout_s)
            http = urllib3.PoolManager(
                timeout=timeout,
                maxsize=10,
                cert_reqs="CERT_REQUIRED" if config.verify_tls else "CERT_NONE",
                ca_certs=config.ca_file or os.environ.get("SSL_CERT_FILE") or certifi.where(),
                retries=False,  # retries happen in S3Storage._call, with backoff and clear errors
            )
            client = Minio(
                config.endpoint,
                access_key=config.access_key,
                secret_key=config.secret_key,
                session_token=config.session_token,
                secure=config.secure,
                region=config.region,
                http_client=http,
                cert_check=config.verify_tls,
            )
        self.client = client
        self.bucket_ok = False
        self.lock = threading.Lock()


class S3Storage(Storage):
    """Objects under ``s3://bucket/prefix``. Build it with :func:`open_storage` or :meth:`from_uri`."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        config: S3Config | None = None,
        *,
        part_size: int | None = None,
        _conn: _Connection | None = None,
    ) -> None:
        if not bucket:
            raise StorageError("S3 URI has no bucket: use s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._conn = _conn or _Connection(bucket, config or load_s3_config())
        self.part_size = part_size or self._conn.config.part_size
        if self.part_size < MIN_PART_SIZE:
            raise StorageError(f"part_size {self.part_size} is below the S3 minimum of 5 MiB")
        self.root_uri = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "")

    @classmethod
    def from_uri(cls, uri: str, config: S3Config | None = None, **kwargs: object) -> S3Storage:
        """``s3://bucket/prefix`` with settings from :func:`load_s3_config` unless given."""
        if not uri.startswith("s3://"):
            raise StorageError(f"{uri!r} is not an s3:// URI")
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        return cls(bucket, prefix, config, **kwargs)  # type: ignore[arg-type]

    @property
    def config(self) -> S3Config:
        return self._conn.config

    @property
    def client(self) -> Minio:
        return self._conn.client

    # -- helpers ---------------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        key = key.lstrip("/")
        if not key:
            raise StorageError(f"empty object key under {self.root_uri}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _list_prefix(self, prefix: str) -> str:
        if not prefix:
            return f"{self.prefix}/" if self.prefix else ""
        return (f"{self.prefix}/" if self.prefix else "") + prefix.lstrip("/")

    def _rel(self, name: str) -> str:
        return name[len(self.prefix) + 1 :] if self.prefix else name

    def _error(self, err: BaseException, uri: str, op: str) -> StorageError:
        where = f"{op} {uri} at {self.config.describe()}"
        if isinstance(err, S3Error):
            if err.code in CREDENTIAL_CODES:
                return StorageError(
                    f"{where}: access denied ({err.code}): the S3 credentials are wrong or lack "
                    f"permission on bucket {self.bucket!r}; {CREDENTIAL_HINT}"
                )
            if err.code == "NoSuchBucket":
                return StorageError(
                    f"{where}: bucket {self.bucket!r} does not exist; create it (S3Storage.ensure_bucket() "
                    "or EXFM_S3_CREATE_BUCKET=true) or fix the storage URI"
                )
            return StorageError(f"{where}: {err.code}: {err.message}")
        if is_transient(err):
            return StorageError(
                f"{where}: endpoint unreachable or failing after {self.config.max_attempts} attempts "
                f"({type(err).__name__}: {err}); check EXFM_S3_ENDPOINT and that the store is up"
            )
        return StorageError(f"{where}: {type(err).__name__}: {err}")

    def _call(self, op: str, key: str, fn: Callable[[], T], check_bucket: bool = True) -> T:
        """Run ``fn`` with retries; map failures to StorageError (FileNotFoundError passes)."""
        if check_bucket:
            self._check_bucket()
        uri = self.uri(key)
        attempts = max(1, self.config.max_attempts)
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except FileNotFoundError:
                raise
            except (MinioException, urllib3.exceptions.HTTPError, OSError) as err:
                if isinstance(err, S3Error) and err.code in MISSING_CODES:
                    raise FileNotFoundError(f"{uri} does not exist") from None
                if not is_transient(err) or attempt == attempts:
                    raise self._error(err, uri, op) from err
                delay = min(MAX_BACKOFF_S, self.config.backoff_s * 2 ** (attempt - 1))
                delay *= 0.5 + random.random() / 2
                log.warning("%s %s failed (%s); retry %d/%d in %.2fs", op, uri, err, attempt, attempts, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _check_bucket(self) -> None:
        conn = self._conn
        if conn.bucket_ok:
            return
        with conn.lock:
            if conn.bucket_ok:
                return
            exists = self._call("check bucket", "", lambda: conn.client.bucket_exists(self.bucket), False)
            if not exists:
                if not self.config.create_bucket:
                    raise StorageError(
                        f"bucket {self.bucket!r} of {self.root_uri} does not exist at "
                        f"{self.config.describe()}; create it (S3Storage.ensure_bucket() or "
                        "EXFM_S3_CREATE_BUCKET=true) or fix the storage URI"
                    )
                self._make_bucket()
            conn.bucket_ok = True

    def _make_bucket(self) -> None:
        def make() -> None:
            try:
                self.client.make_bucket(self.bucket, location=self.config.region)
            except S3Error as err:
                if err.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

        self._call("create bucket", "", make, check_bucket=False)

    def ensure_bucket(self) -> bool:
        """Create the bucket when missing; returns True when it was created."""
        exists = self._call("check bucket", "", lambda: self.client.bucket_exists(self.bucket), False)
        if not exists:
            self._make_bucket()
        self._conn.bucket_ok = True
        return not exists

    # -- Storage API -----------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        name = self._name(key)
        self._call(
            "write",
            key,
            lambda: self.client.put_object(
                self.bucket, name, io.BytesIO(data), len(data), part_size=self.part_size
            ),
        )

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        name = self._name(key)
        if not Path(path).is_file():
            raise FileNotFoundError(f"cannot upload {path} to {self.uri(key)}: no such file")
        self._call(
            "upload",
            key,
            lambda: self.client.fput_object(self.bucket, name, os.fspath(path), part_size=self.part_size),
        )

    def get_bytes(self, key: str) -> bytes:
        name = self._name(key)

        def fetch() -> bytes:
            resp = self.client.get_object(self.bucket, name)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return self._call("read", key, fetch)

    def get_file(self, key: str, path: str | os.PathLike[str]) -> None:
        name = self._name(key)
        dest = Path(path)
        tmp = dest.with_name(f".{dest.name}.part")

        def fetch() -> None:
            resp = self.client.get_object(self.bucket, name)
            try:
                with open(tmp, "wb") as fh:
                    for chunk in resp.stream(1 << 20):
                        fh.write(chunk)
            finally:
                resp.close()
                resp.release_conn()
            os.replace(tmp, dest)

        try:
            self._call("download", key, fetch)
        finally:
            tmp.unlink(missing_ok=True)

    def open_read(self, key: str) -> BinaryIO:
        """A buffered, seekable stream fetching byte ranges on demand (pyarrow can read Parquet from it)."""
        size = self.size(key)
        return io.BufferedReader(_RangeReader(self, key, size), buffer_size=8 << 20)  # type: ignore[return-value]

    def size(self, key: str) -> int:
        """Object size in bytes; FileNotFoundError when missing."""
        name = self._name(key)
        return int(self._call("stat", key, lambda: self.client.stat_object(self.bucket, name)).size or 0)

    def modified_time(self, key: str) -> float:
        name = self._name(key)
        stat = self._call("stat", key, lambda: self.client.stat_object(self.bucket, name))
        return stat.last_modified.timestamp() if stat.last_modified else 0.0

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except FileNotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        full = self._list_prefix(prefix)

        def run() -> list[str]:
            objs = self.client.list_objects(self.bucket, prefix=full or None, recursive=True)
            return [self._rel(o.object_name) for o in objs if o.object_name and not o.is_dir]

        return sorted(self._call("list", prefix, run))

    def list_dirs(self, prefix: str = "") -> list[str]:
        base = self._list_prefix(prefix.rstrip("/") + "/" if prefix else "")

        def run() -> list[str]:
            objs = self.client.list_objects(self.bucket, prefix=base or None, recursive=False)
            return [o.object_name[len(base) :].rstrip("/") for o in objs if o.is_dir and o.object_name]

        return sorted(self._call("list", prefix, run))

    def delete(self, key: str) -> None:
        name = self._name(key)
        self._call("delete", key, lambda: self.client.remove_object(self.bucket, name))

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)

        def run() -> None:
            errors = list(
                self.client.remove_objects(self.bucket, (DeleteObject(self._name(k)) for k in keys))
            )
            if errors:
                raise StorageError(f"delete under {self.uri(prefix)} failed: {errors[0]}")

        if keys:
            self._call("delete", prefix, run)
        return len(keys)

    def join(self, prefix: str) -> S3Storage:
        sub = self._list_prefix(prefix).strip("/")
        return S3Storage(self.bucket, sub, part_size=self.part_size, _conn=self._conn)


class _RangeReader(io.RawIOBase):
    """Seekable raw stream over one object; each read is a ranged GET (retried)."""

    def __init__(self, storage: S3Storage, key: str, size: int) -> None:
        self._storage = storage
        self._key = key
        self._name = storage._name(key)
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(buf), self._size - self._pos)
        if want <= 0:
            return 0
        storage = self._storage

        def fetch() -> bytes:
            resp = storage.client.get_object(storage.bucket, self._name, offset=self._pos, length=want)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        data = storage._call("read", self._key, fetch)
        n = len(data)
        memoryview(buf)[:n] = data
        self._pos += n
        return n
