"""DAS end to end on a small synthetic stream: staleness, lineage, idempotence, resume, bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from exfm_trainer import layout
from exfm_trainer.das import DASError, choose_fm, main, run_das
from exfm_trainer.data.batches import iter_batches
from exfm_trainer.data.synthetic import SyntheticConfig, generate
from exfm_trainer.data.windows import DataError, iter_record_batches, write_window
from exfm_trainer.jobs import DASJob, DatasetRef, parse_job
from exfm_trainer.layout import DASWindowManifest
from exfm_trainer.models.checkpoint import build_model, load_fm_for_inference, model_config, write_checkpoint
from exfm_trainer.schema import FeatureSchema
from exfm_trainer.storage import Storage, StorageError
from exfm_trainer.storage.commit import is_committed, list_committed, read_manifest, verify_artifact
from exfm_trainer.storage.retention import active_leases

ROWS = 300
LINEAGE = [layout.FM_LOGIT_COLUMN, layout.FM_VERSION_COLUMN, layout.FM_WINDOW_COLUMN]


def make_data(storage: Storage, windows: int = 5) -> DatasetRef:
    cfg = SyntheticConfig(windows=windows, rows_per_window=ROWS, verticals=2, max_hash_buckets=200, seed=3)
    return generate(storage.join("data"), cfg)


def write_fm(
    storage: Storage, schema: FeatureSchema, windows: list[int], name: str = "fm", seed: int = 0
) -> str:
    torch.manual_seed(seed + len(windows))
    cfg = model_config("fm", schema, "tiny")
    model = build_model(cfg, "plain")
    version = layout.version_name(windows[-1])
    manifest = layout.CheckpointManifest(
        kind="fm-checkpoint", namespace="default", name=name, version=version, windows=windows, preset="tiny"
    )
    write_checkpoint(
        storage, layout.fm_checkpoint("default", name, version), {"model": model.state_dict()}, cfg, manifest
    )
    return version


def das_job(storage: Storage, ref: DatasetRef, **kw: object) -> DASJob:
    body = {
        "job": "das",
        "storage": storage.root_uri,
        "name": "aug",
        "dataset": ref.model_dump(by_alias=True, mode="json"),
        "fm": {"name": "fm"},
        "batch_size": 128,
        "windows": {"start": 1},
        **kw,
    }
    return parse_job(body)  # type: ignore[return-value]


def read_das_window(storage: Storage, window: int) -> pa.Table:
    das = storage.join(layout.das_output("default", "aug"))
    return pa.Table.from_batches(list(iter_record_batches(das, window)))


def das_objects(storage: Storage) -> list[str]:
    return storage.list(layout.das_output("default", "aug") + "/")


def test_das_end_to_end(storage: Storage) -> None:
    ref = make_data(storage)
    for last in (0, 1, 2):
        write_fm(storage, ref.feature_schema, list(range(last + 1)))
    out = io.StringIO()
    records = run_das(das_job(storage, ref), out=out, rows_per_file=100)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines == records and [r["window"] for r in lines] == [1, 2, 3, 4]
    assert all(r["status"] == "done" and r["rows"] == ROWS for r in lines)
    # Staleness: the FM used for window t never saw t, and it is the newest such checkpoint.
    expect = {1: "00000", 2: "00001", 3: "00002", 4: "00002"}
    das_root = layout.das_output("default", "aug")
    assert list_committed(storage, das_root) == [layout.window_dir(w) for w in expect]
    for t, version in expect.items():
        prefix = layout.das_window("default", "aug", t)
        raw = read_manifest(storage, prefix)
        man = DASWindowManifest.model_validate(raw)
        assert (man.fm_version, man.fm_last_window, man.rows) == (version, int(version), ROWS)
        assert man.fm_last_window < t and man.staleness == t - int(version) - 1
        assert max(raw["fm_windows"]) < t and man.fm_uri == storage.uri(
            layout.fm_checkpoint("default", "fm", version)
        )
        assert man.input_uri == storage.uri(f"data/{layout.window_dir(t)}")
        assert len([k for k in storage.list(prefix + "/") if k.endswith(".parquet")]) == 3  # rows_per_file
        verify_artifact(storage, prefix)
        # Every original column and row, plus the logit and the lineage columns.
        got = read_das_window(storage, t)
        original = pa.Table.from_batches(list(iter_record_batches(storage.join("data"), t)))
        assert got.column_names == original.column_names + LINEAGE == man.columns
        assert got.drop_columns(LINEAGE).equals(original)
        assert set(got[layout.FM_VERSION_COLUMN].to_pylist()) == {version}
        assert set(got[layout.FM_WINDOW_COLUMN].to_pylist()) == {int(version)}
        # The logits are the FM's own inference on the same rows.
        module, _, _ = load_fm_for_inference(storage, layout.fm_checkpoint("default", "fm", version))
        want = torch.cat([module(b) for b in iter_batches(ref, t, 64)]).numpy()
        np.testing.assert_allclose(got[layout.FM_LOGIT_COLUMN].to_numpy(), want, rtol=1e-5, atol=1e-5)
    # 1 FM -> N VMs: each VM reads the same augmented window filtered to its vertical.
    das_ref = DatasetRef(uri=storage.uri(das_root), schema=ref.feature_schema)
    per_vertical = {}
    for vertical in ("feed", "video"):
        per_vertical[vertical] = sum(
            len(b) for b in iter_batches(das_ref, 2, 64, vertical=vertical, with_fm_logit=True)
        )
    assert sum(per_vertical.values()) == ROWS and min(per_vertical.values()) > 0
    # No lease is left behind; a re-run is a no-op.
    assert active_leases(storage, "fm", "default", "fm") == {}
    before = {k: storage.get_bytes(k) for k in das_objects(storage) if k.endswith("MANIFEST.json")}
    again = run_das(das_job(storage, ref), out=io.StringIO())
    assert [r["status"] for r in again] == ["skipped"] * 4
    assert {k: storage.get_bytes(k) for k in before} == before


def test_fm_lease_held_while_augmenting(tmp_path: Path) -> None:
    from exfm_trainer.storage import open_storage

    storage = open_storage(tmp_path / "store")
    ref = make_data(storage, windows=2)
    write_fm(storage, ref.feature_schema, [0])
    seen: list[dict[str, list[str]]] = []

    class Probe(io.StringIO):
        def write(self, s: str) -> int:
            seen.append(active_leases(storage, "fm", "default", "fm"))
            return super().write(s)

    run_das(das_job(storage, ref), out=Probe())
    assert seen and list(seen[0].values()) == [["00000"]]
    assert active_leases(storage, "fm", "default", "fm") == {}


def test_max_staleness_enforced(tmp_path: Path) -> None:
    from exfm_trainer.storage import open_storage

    storage = open_storage(tmp_path / "store")
    ref = make_data(storage)
    write_fm(storage, ref.feature_schema, [0])
    write_fm(storage, ref.feature_schema, [0, 1])
    with pytest.raises(
        DASError, match=r"00001 of FM default/fm.*2 windows stale for window 4 \(max_staleness=1\)"
    ):
        run_das(das_job(storage, ref, max_staleness=1), out=io.StringIO())
    committed = list_committed(storage, layout.das_output("default", "aug"))
    assert committed == ["window=00001", "window=00002", "window=00003"]
    assert not das_objects_for(storage, 4)


def das_objects_for(storage: Storage, window: int) -> list[str]:
    return storage.list(layout.das_window("default", "aug", window) + "/")


def test_missing_fm_checkpoint_is_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from exfm_trainer.storage import open_storage

    storage = open_storage(tmp_path / "store")
    ref = make_data(storage, windows=3)
    job = das_job(storage, ref)
    config = tmp_path / "job.json"
    config.write_text(job.model_dump_json(by_alias=True))
    assert main(["--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "no committed checkpoint of FM default/fm" in err and "window 1" in err and "none" in err
    # A checkpoint that already saw the window is not usable either; the message lists it.
    write_fm(storage, ref.feature_schema, [0, 1, 2])
    with pytest.raises(DASError, match=r"usable for window 1.*00002 \(windows 0\.\.2\)"):
        choose_fm(storage, "default", "fm", 1)
    assert das_objects(storage) == []


def test_unreadable_window_commits_nothing(tmp_path: Path) -> None:
    from exfm_trainer.storage import open_storage

    storage = open_storage(tmp_path / "store")
    ref = make_data(storage, windows=3)
    write_fm(storage, ref.feature_schema, [0])
    part = next(k for k in storage.list("data/window=00002/") if k.endswith(".parquet"))
    storage.put_bytes(part, b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"window=00002/part-.*parquet"):
        run_das(das_job(storage, ref), out=io.StringIO())
    assert is_committed(storage, layout.das_window("default", "aug", 1))
    assert das_objects_for(storage, 2) == []
    # Not-ready input inside an explicit range is named too.
    with pytest.raises(DataError, match=r"window 7 .* is not ready"):
        run_das(das_job(storage, ref, windows={"start": 7, "end": 8}), out=io.StringIO())


def test_schema_mismatch_between_fm_and_data(tmp_path: Path) -> None:
    from exfm_trainer.storage import open_storage

    storage = open_storage(tmp_path / "store")
    ref = make_data(storage, windows=2)
    schema = ref.feature_schema
    other = schema.model_copy(
        update={"sparse": [f.model_copy(update={"hash_buckets": 7, "identity": None}) for f in schema.sparse]}
    )
    write_fm(storage, other, [0])
    with pytest.raises(
        DASError,
        match=r"schema mismatch between the FM checkpoint .*00000 and the dataset.*by hash into 7 rows",
    ):
        run_das(das_job(storage, ref), out=io.StringIO())
    assert das_objects(storage) == []
    # Data that lacks a column the FM reads.
    storage2 = open_storage(tmp_path / "store2")
    ref2 = make_data(storage2, windows=2)
    table = pa.Table.from_batches(list(iter_record_batches(storage2.join("data"), 1)))
    write_window(storage2.join("data"), 1, table.drop_columns(["ad_id"]), overwrite=True)
    write_fm(storage2, ref2.feature_schema, [0])
    with pytest.raises(DASError, match=r"window .*window=00001 lacks column\(s\) \['ad_id'\]"):
        run_das(das_job(storage2, ref2), out=io.StringIO())
    assert das_objects(storage2) == []


def test_bad_rows_kept_with_null_logit(tmp_path: Path) -> None:
    from exfm_trainer.storage import open_storage

    storage = open_storage(tmp_path / "store")
    ref = make_data(storage, windows=2)
    table = pa.Table.from_batches(list(iter_record_batches(storage.join("data"), 1)))
    dense = ref.feature_schema.dense[0]
    values = table[dense].to_numpy().astype(np.float64)
    values[[3, 50]] = np.nan
    labels = table["label"].to_numpy().copy()
    labels[7] = 2
    table = table.set_column(
        table.schema.get_field_index(dense), dense, pa.array(values).cast(table[dense].type)
    )
    table = table.set_column(
        table.schema.get_field_index("label"), "label", pa.array(labels).cast(table["label"].type)
    )
    write_window(storage.join("data"), 1, table, overwrite=True)
    write_fm(storage, ref.feature_schema, [0])
    with pytest.raises(
        DataError, match=r"3 of 300 rows.*max_bad_row_fraction=0.001.*raise spec.maxBadRowFraction"
    ):
        run_das(das_job(storage, ref, max_bad_row_fraction=0.001), out=io.StringIO())
    assert das_objects(storage) == []
    (rec,) = run_das(das_job(storage, ref), out=io.StringIO())
    assert (rec["rows"], rec["skipped_rows"]) == (ROWS, 3)
    got = read_das_window(storage, 1)
    nulls = np.flatnonzero(pc.is_null(got[layout.FM_LOGIT_COLUMN]).to_numpy(zero_copy_only=False))
    assert nulls.tolist() == [3, 7, 50]
    raw = read_manifest(storage, layout.das_window("default", "aug", 1))
    assert raw["skipped_by_reason"] == {"bad_label": 1, "nan_dense": 2}
    assert raw["bad_row_policy"] == "kept-with-null-fm_logit"


def test_half_written_window_is_redone(storage: Storage) -> None:
    ref = make_data(storage, windows=3)
    write_fm(storage, ref.feature_schema, [0])
    prefix = layout.das_window("default", "aug", 2)
    # What a job killed while uploading leaves behind: some parts, no marker.
    storage.put_bytes(f"{prefix}/part-00000.parquet", b"truncated")
    storage.put_bytes(f"{prefix}/part-00009.parquet", b"from an older attempt")
    assert list_committed(storage, layout.das_output("default", "aug")) == []
    records = run_das(das_job(storage, ref), out=io.StringIO(), rows_per_file=1000)
    assert [r["status"] for r in records] == ["done", "done"]
    assert sorted(k.rsplit("/", 1)[-1] for k in storage.list(prefix + "/")) == [
        "MANIFEST.json",
        "_COMMITTED",
        "part-00000.parquet",
    ]
    verify_artifact(storage, prefix)
    assert read_das_window(storage, 2).num_rows == ROWS


def test_wrong_credentials_on_s3(s3_server, monkeypatch, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from exfm_trainer.storage import open_storage

    s3_server.apply_env(monkeypatch)
    good = s3_server.storage()
    local = open_storage(tmp_path / "data")
    ref = make_data(local, windows=2)
    job = das_job(good, ref)
    config = tmp_path / "job.json"
    config.write_text(job.model_dump_json(by_alias=True))
    import urllib3

    http = urllib3.PoolManager()
    url = f"http://{s3_server.endpoint}/moto-api/reset-auth"
    prev = json.loads(http.request("POST", url, body=b"0").data)["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]
    try:
        monkeypatch.setenv("EXFM_S3_ACCESS_KEY", "not-a-key")
        assert main(["--config", str(config)]) == 1
    finally:
        http.request("POST", url, body=prev.encode())
    err = capsys.readouterr().err
    assert good.root_uri in err and "credentials are wrong" in err and "EXFM_S3_SECRET_KEY" in err
    assert good.list() == []


def test_storage_error_type_for_missing_bucket(s3_server, monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from conftest import new_bucket

    from exfm_trainer.storage import open_storage

    s3_server.apply_env(monkeypatch)
    ref = make_data(open_storage(tmp_path / "d"), windows=2)
    body = das_job(open_storage(tmp_path / "s"), ref).model_dump(by_alias=True, mode="json")
    body["storage"] = f"s3://{new_bucket()}/exfm"
    with pytest.raises(StorageError, match="does not exist"):
        run_das(parse_job(body), out=io.StringIO())  # type: ignore[arg-type]


@pytest.mark.slow
def test_killed_job_is_redone_on_restart(s3_server, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL a DAS process (S3 storage) while it uploads a window; the restart redoes only that window."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from exfm_trainer.storage import open_storage

    s3_server.apply_env(monkeypatch)
    env = {**os.environ, "EXFM_DAS_ROWS_PER_FILE": "3"}
    store = s3_server.storage()
    ref = make_data(store, windows=4)
    write_fm(store, ref.feature_schema, [0])
    config = tmp_path / "job.json"
    config.write_text(das_job(store, ref).model_dump_json(by_alias=True))
    # Many small parts (3 rows each) make each window's upload long enough to be caught in the middle.
    cmd = [sys.executable, "-m", "exfm_trainer.das", "--config", str(config)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE)
    target = layout.das_window("default", "aug", 2)
    deadline = time.monotonic() + 120
    while not any(k.endswith(".parquet") for k in store.list(target + "/")):
        assert proc.poll() is None and time.monotonic() < deadline, "DAS ended before window 2 was written"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert is_committed(store, layout.das_window("default", "aug", 1))
    assert not is_committed(store, target), "the kill should land mid-upload"
    assert list_committed(store, layout.das_output("default", "aug")) == ["window=00001"]
    # Restart: window 1 skipped, window 2 redone from scratch, window 3 done.
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    statuses = [(r["window"], r["status"]) for r in map(json.loads, done.stdout.splitlines())]
    assert statuses == [(1, "skipped"), (2, "done"), (3, "done")]
    verify_artifact(store, target)
    assert read_das_window(open_storage(store.root_uri), 2).num_rows == ROWS
    assert len([k for k in store.list(target + "/") if k.endswith(".parquet")]) == ROWS // 3


def test_an_all_empty_input_fails_instead_of_committing_empty_windows(tmp_path: Path) -> None:
    """Issue 11, item 1: a DAS job whose input has no row at all (and never had) fails clearly."""
    from exfm_trainer.storage import open_storage

    storage = open_storage(tmp_path / "s")
    ref = make_data(storage, windows=2)
    empty = read_das_input(storage, 0).slice(0, 0)
    for w in (2, 3):
        write_window(storage.join("data"), w, empty)
    write_fm(storage, ref.feature_schema, [0])
    write_fm(storage, ref.feature_schema, [0, 1])
    with pytest.raises(
        DASError, match=r"no rows in windows \[2, 4\) of .*every input window of the job is empty"
    ):
        run_das(das_job(storage, ref, windows={"start": 2, "end": 4}), out=io.StringIO())
    assert list_committed(storage, layout.das_output("default", "aug")) == []
    run_das(das_job(storage, ref, windows={"start": 1, "end": 2}), out=io.StringIO())  # a window with rows
    records = run_das(das_job(storage, ref, windows={"start": 2, "end": 4}), out=io.StringIO())
    assert [r["rows"] for r in records] == [0, 0]  # a gap after real data is fine


def read_das_input(storage: Storage, window: int) -> pa.Table:
    return pa.Table.from_batches(list(iter_record_batches(storage.join("data"), window)))
