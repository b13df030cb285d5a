"""Storage backends (local and S3 on moto through the minio client) and the commit protocol."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from exfm_trainer.storage import Storage, StorageError, open_storage
from exfm_trainer.storage.commit import (
    COMMITTED,
    MANIFEST,
    abort_uncommitted,
    commit_artifact,
    is_committed,
    list_committed,
    read_manifest,
    verify_artifact,
)
from exfm_trainer.storage.s3 import S3Storage


def _write(path: Path, size: int, seed: int = 0) -> Path:
    block = bytes((seed + i) % 251 for i in range(1 << 16))
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, len(block))
            fh.write(block[:n])
            left -= n
    return path


def test_bytes_roundtrip_list_exists_delete(storage: Storage) -> None:
    storage.put_bytes("a/x.bin", b"1")
    storage.put_bytes("a/b/y.bin", b"22")
    storage.put_bytes("c.json", b"{}")
    assert storage.get_bytes("a/b/y.bin") == b"22"
    assert storage.exists("a/x.bin") and not storage.exists("a/nope")
    assert storage.list() == ["a/b/y.bin", "a/x.bin", "c.json"]
    assert storage.list("a/") == ["a/b/y.bin", "a/x.bin"]
    assert storage.list_dirs() == ["a"]
    assert storage.list_dirs("a") == ["b"]
    storage.delete("a/x.bin")
    storage.delete("a/x.bin")  # idempotent
    assert not storage.exists("a/x.bin")
    assert storage.delete_prefix("a/") == 1
    assert storage.list() == ["c.json"]
    with pytest.raises(FileNotFoundError, match="nope"):
        storage.get_bytes("nope")


def test_join_uri_and_open_storage(storage: Storage) -> None:
    sub = storage.join("models/fm")
    sub.put_bytes("w.bin", b"abc")
    assert storage.get_bytes("models/fm/w.bin") == b"abc"
    assert sub.uri("w.bin") == storage.uri("models/fm/w.bin")
    again = open_storage(storage.root_uri)
    assert type(again) is type(storage)
    assert again.get_bytes("models/fm/w.bin") == b"abc"


def test_file_roundtrip_streamed_and_seekable(storage: Storage, tmp_path: Path) -> None:
    src = _write(tmp_path / "src.bin", 3 << 20, seed=3)
    storage.put_file("f/blob.bin", src)
    dst = tmp_path / "dst.bin"
    storage.get_file("f/blob.bin", dst)
    assert dst.read_bytes() == src.read_bytes()
    with storage.local_copy("f/blob.bin") as local:
        assert local.stat().st_size == 3 << 20
    with storage.open_read("f/blob.bin") as fh:
        fh.seek(1_000_000)
        assert fh.read(10) == src.read_bytes()[1_000_000:1_000_010]
    assert storage.modified_time("f/blob.bin") > 0
    with pytest.raises(FileNotFoundError):
        storage.get_file("f/missing.bin", tmp_path / "m")


def test_parquet_readable_through_open_read(storage: Storage, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"x": list(range(1000)), "y": [float(i) / 3 for i in range(1000)]})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=100)
    storage.put_file("t.parquet", tmp_path / "t.parquet")
    with storage.open_read("t.parquet") as fh:
        assert pq.ParquetFile(fh).read().equals(table)


def test_commit_protocol(storage: Storage, tmp_path: Path) -> None:
    src = _write(tmp_path / "w.bin", 100_000)
    manifest = commit_artifact(
        storage, "ck/00003", {"w.bin": src, "meta.json": b'{"a": 1}'}, {"version": "3"}
    )
    assert manifest["files"]["w.bin"]["size"] == 100_000
    assert is_committed(storage, "ck/00003")
    assert read_manifest(storage, "ck/00003")["version"] == "3"
    verify_artifact(storage, "ck/00003")
    with pytest.raises(StorageError, match="already committed"):
        commit_artifact(storage, "ck/00003", {"x": b""}, {})
    # A half-written artifact (no marker) is invisible to readers and redone by the next writer.
    storage.put_bytes("ck/00004/w.bin", b"partial")
    assert list_committed(storage, "ck") == ["00003"]
    with pytest.raises(StorageError, match="not committed"):
        read_manifest(storage, "ck/00004")
    commit_artifact(storage, "ck/00004", {"v.bin": b"v"}, {})
    assert storage.list("ck/00004/") == sorted(f"ck/00004/{n}" for n in (COMMITTED, MANIFEST, "v.bin"))
    assert abort_uncommitted(storage, "ck/00004") == 0
    storage.put_bytes("ck/00005/junk", b"j")
    assert abort_uncommitted(storage, "ck/00005") == 1
    assert list_committed(storage, "ck") == ["00003", "00004"]


def test_verify_detects_corruption(storage: Storage) -> None:
    commit_artifact(storage, "a", {"f": b"good"}, {})
    storage.put_bytes("a/f", b"evil")
    with pytest.raises(StorageError, match="does not match"):
        verify_artifact(storage, "a")


def test_s3_multipart_checkpoint_roundtrip(s3_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    st = s3_server.storage(part_size=5 << 20)
    src = _write(tmp_path / "model.pt", (11 << 20) + 123, seed=7)
    commit_artifact(st, "fm/ns/a/ckpt/00001", {"model.pt": src}, {"kind": "fm-checkpoint"})
    stat = st.client.stat_object(st.bucket, st._name("fm/ns/a/ckpt/00001/model.pt"))
    assert stat.etag.endswith("-3"), f"expected a 3-part multipart upload, etag {stat.etag}"
    verify_artifact(st, "fm/ns/a/ckpt/00001")
    out = tmp_path / "back.pt"
    st.get_file("fm/ns/a/ckpt/00001/model.pt", out)
    assert out.read_bytes() == src.read_bytes()


def test_s3_missing_bucket_and_auto_create(s3_server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from conftest import new_bucket

    s3_server.apply_env(monkeypatch)
    bucket = new_bucket()
    st = open_storage(f"s3://{bucket}/p")
    with pytest.raises(StorageError, match=f"bucket '{bucket}'.*does not exist.*EXFM_S3_CREATE_BUCKET"):
        st.exists("x")
    monkeypatch.setenv("EXFM_S3_CREATE_BUCKET", "true")
    st = open_storage(f"s3://{bucket}/p")
    st.put_bytes("x", b"1")
    assert st.client.bucket_exists(bucket)
    assert isinstance(st, S3Storage) and st.ensure_bucket() is False


def test_s3_wrong_credentials(s3_server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import urllib3

    st = s3_server.storage()
    st.put_bytes("x", b"1")
    http = urllib3.PoolManager()
    # Make moto enforce IAM authentication: our access key is unknown to it, like a wrong key.
    prev = json.loads(
        http.request("POST", f"http://{s3_server.endpoint}/moto-api/reset-auth", body=b"0").data
    )["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]
    try:
        s3_server.apply_env(monkeypatch, EXFM_S3_ACCESS_KEY="wrong", EXFM_S3_SECRET_KEY="wrong")
        bad = open_storage(st.root_uri)
        with pytest.raises(StorageError) as err:
            bad.get_bytes("x")
    finally:
        http.request("POST", f"http://{s3_server.endpoint}/moto-api/reset-auth", body=prev.encode())
    msg = str(err.value)
    assert st.root_uri in msg and "credentials are wrong" in msg
    assert "EXFM_S3_ACCESS_KEY" in msg and "EXFM_S3_CREDENTIALS_DIR" in msg
    assert st.get_bytes("x") == b"1"


def test_s3_unreachable_endpoint_is_clear(tmp_path: Path) -> None:
    from conftest import free_port

    from exfm_trainer.storage.credentials import load_s3_config

    cfg = load_s3_config(
        {
            "EXFM_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}",
            "EXFM_S3_ACCESS_KEY": "a",
            "EXFM_S3_SECRET_KEY": "b",
            "EXFM_S3_REGION": "us-east-1",
            "EXFM_S3_MAX_ATTEMPTS": "2",
            "EXFM_S3_BACKOFF_S": "0.01",
        }
    )
    st = S3Storage("some-bucket", "p", cfg)
    with pytest.raises(StorageError, match=r"s3://some-bucket/p.*unreachable.*2 attempts.*EXFM_S3_ENDPOINT"):
        st.put_bytes("k", b"1")


def test_s3_retries_until_the_server_is_back(fresh_s3_server) -> None:  # type: ignore[no-untyped-def]
    import threading

    st = fresh_s3_server.storage(max_attempts=8, backoff_s=0.1)
    st.put_bytes("before", b"1")
    fresh_s3_server.stop()
    timer = threading.Timer(0.4, fresh_s3_server.start)
    timer.start()
    try:
        st.put_bytes("after", b"2")  # first attempts are refused; backoff rides out the outage
    finally:
        timer.join()
    assert st.get_bytes("after") == b"2"


def test_s3_server_dies_mid_commit_then_retry_succeeds(fresh_s3_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Stop the server while a multipart upload is in flight: nothing committed; a retry commits."""
    import threading
    import time

    server = fresh_s3_server
    st = server.storage(part_size=5 << 20, max_attempts=2, backoff_s=0.05)
    files = {"a_small.json": b'{"x": 1}', "model.pt": _write(tmp_path / "m.pt", 40 << 20, seed=1)}
    prefix = "fm/ns/a/ckpt/00007"
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            commit_artifact(st, prefix, files, {"kind": "fm-checkpoint"})
        except BaseException as err:
            errors.append(err)

    probe = server.storage(bucket=st.bucket, prefix=st.prefix, create=False)
    thread = threading.Thread(target=writer)
    thread.start()
    deadline = time.monotonic() + 30
    while not probe.exists(f"{prefix}/a_small.json"):  # the first object landed: the large one is next
        assert time.monotonic() < deadline and thread.is_alive(), errors
        time.sleep(0.005)
    server.stop()
    thread.join(60)
    assert not thread.is_alive()
    assert errors and isinstance(errors[0], StorageError), errors
    assert f"{st.root_uri}/{prefix}/model.pt" in str(errors[0]), "the stop should hit the large upload"
    assert "unreachable" in str(errors[0])

    server.start()  # same port; the artifact must still be invisible
    assert not is_committed(st, prefix)
    assert list_committed(st, "fm/ns/a/ckpt") == []
    assert not st.exists(f"{prefix}/model.pt")
    commit_artifact(st, prefix, files, {"kind": "fm-checkpoint"})  # the retry of the whole artifact
    assert list_committed(st, "fm/ns/a/ckpt") == ["00007"]
    verify_artifact(st, prefix)


def test_s3_is_transient_classification() -> None:
    import urllib3
    from minio.error import S3Error, ServerError

    from exfm_trainer.storage.s3 import is_transient

    def s3err(code: str) -> S3Error:
        return S3Error(None, code, "m", "/r", None, None)  # type: ignore[arg-type]

    assert is_transient(s3err("SlowDown")) and is_transient(s3err("InternalError"))
    assert not is_transient(s3err("AccessDenied")) and not is_transient(s3err("NoSuchBucket"))
    assert is_transient(ServerError("boom", 503)) and not is_transient(ServerError("x", 400))
    assert is_transient(urllib3.exceptions.ProtocolError("reset")) and is_transient(ConnectionResetError())
    assert not is_transient(ValueError("x"))


def test_local_rejects_escaping_keys(tmp_path: Path) -> None:
    st = open_storage(tmp_path)
    with pytest.raises(StorageError, match="escapes"):
        st.put_bytes("../x", b"1")
    assert os.listdir(tmp_path) == []
