"""Shared fixtures: an S3 endpoint (moto's ThreadedMotoServer on loopback) and a storage fixture
parametrized over the local and the S3 backend.

Usage in any test module::

    def test_x(storage):            # runs twice: [local] and [s3]
        storage.put_bytes("a", b"1")

    def test_y(s3_server, monkeypatch):
        s3_server.apply_env(monkeypatch)          # EXFM_S3_* for open_storage("s3://...")
        st = s3_server.storage()                   # fresh bucket, S3Storage

Subprocesses get the endpoint through ``s3_server.env()``. Note: moto keeps its state in module
globals, so every server in this process sees the same buckets; use a fresh bucket per test.
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

logging.getLogger("werkzeug").setLevel(logging.ERROR)

TEST_ACCESS_KEY = "exfm-test-access"
TEST_SECRET_KEY = "exfm-test-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MotoS3:
    """A moto S3 server on 127.0.0.1 that tests can stop (refusing connections) and restart."""

    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    _server: object | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> MotoS3:
        from moto.server import ThreadedMotoServer

        if self._server is None:
            server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
            server.start()
            self._server = server
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket, so new connections are refused."""
        server = self._server
        if server is None:
            return
        self._server = None
        server.stop()  # type: ignore[attr-defined]
        inner = getattr(server, "_server", None)
        if inner is not None:
            inner.server_close()

    def env(self, **overrides: str) -> dict[str, str]:
        """EXFM_S3_* variables pointing at this server (fast retries for tests)."""
        env = {
            "EXFM_S3_ENDPOINT": f"http://{self.endpoint}",
            "EXFM_S3_ACCESS_KEY": TEST_ACCESS_KEY,
            "EXFM_S3_SECRET_KEY": TEST_SECRET_KEY,
            "EXFM_S3_REGION": "us-east-1",
            "EXFM_S3_MAX_ATTEMPTS": "3",
            "EXFM_S3_BACKOFF_S": "0.05",
            "EXFM_S3_TIMEOUT_S": "10",
        }
        env.update(overrides)
        return env

    def apply_env(self, monkeypatch: pytest.MonkeyPatch, **overrides: str) -> None:
        for name in ("EXFM_S3_CREDENTIALS_DIR", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(name, raising=False)
        for name, value in self.env(**overrides).items():
            monkeypatch.setenv(name, value)

    def config(self, **overrides: object):  # type: ignore[no-untyped-def]
        import dataclasses

        from exfm_trainer.storage.credentials import load_s3_config

        return dataclasses.replace(load_s3_config(self.env()), **overrides)

    def storage(self, bucket: str | None = None, prefix: str = "root", create: bool = True, **cfg: object):  # type: ignore[no-untyped-def]
        """An S3Storage on a fresh (created) bucket."""
        from exfm_trainer.storage.s3 import S3Storage

        bucket = bucket or new_bucket()
        st = S3Storage(bucket, prefix, self.config(**cfg))
        if create:
            st.ensure_bucket()
        return st


def new_bucket() -> str:
    return f"exfm-{uuid.uuid4().hex[:16]}"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoS3]:
    """One moto S3 server for the session. Do not stop it; use ``fresh_s3_server`` for that."""
    server = MotoS3().start()
    yield server
    server.stop()


@pytest.fixture
def fresh_s3_server() -> Iterator[MotoS3]:
    """A moto S3 server of this test alone (on its own port), free to stop and restart."""
    server = MotoS3().start()
    yield server
    server.stop()


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """An empty Storage on each backend; for s3 the EXFM_S3_* env is set so open_storage(uri) works."""
    if request.param == "local":
        from exfm_trainer.storage.local import LocalStorage

        return LocalStorage(tmp_path / "store")
    server: MotoS3 = request.getfixturevalue("s3_server")
    server.apply_env(monkeypatch)
    return server.storage()
