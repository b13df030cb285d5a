"""Importers infer vocabularies for low-cardinality columns: no collisions, deterministic, stored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from exfm_operator.local.datasets import materialise
from exfm_operator.local.manifests import load_bundle, localize
from exfm_operator.local.progress import make_reporter
from exfm_trainer.data.cli import main_import
from exfm_trainer.data.hashing import encode_column
from exfm_trainer.data.importers import import_criteo, import_table
from exfm_trainer.data.vocab import VocabularyCounter
from exfm_trainer.data.windows import DataError, iter_record_batches, list_ready_windows, read_dataset_info
from exfm_trainer.schema import OOV_ROW, FeatureSchema, SparseFeature

DECLARED = FeatureSchema(
    label="click",
    dense=["price"],
    sparse=[
        SparseFeature(name="pos", hash_buckets=8),  # low-cardinality: gets a vocabulary
        SparseFeature(name="device", hash_buckets=8),  # strings, low-cardinality
        SparseFeature(name="user", hash_buckets=512),  # > threshold distinct: keeps hashing
        SparseFeature(name="country", vocabulary=["us", "de"]),  # declared: kept as is
        SparseFeature(name="tags", hash_buckets=64, multi_valued=True),
    ],
    vertical="site",
    timestamp="ts",
)


def _table(rows: int = 3000, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    pos = rng.choice(6, rows, p=[0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    return pa.table(
        {
            "ts": np.sort(rng.integers(0, 4 * 3600, rows)),
            "click": rng.integers(0, 2, rows),
            "price": rng.random(rows),
            "pos": pos,
            "device": rng.choice(["ios", "android", "web", "tv"], rows),
            "user": [f"u{u}" for u in rng.integers(0, 2000, rows)],
            "country": rng.choice(["us", "de", "fr"], rows),
            "tags": ["|".join(f"t{t}" for t in rng.integers(0, 30, rng.integers(0, 4))) for _ in range(rows)],
            "site": rng.choice(["news", "shop"], rows),
        }
    )


def _csv(path: Path, table: pa.Table) -> Path:
    pacsv.write_csv(table, path)
    return path


def _import(src: Path, out: Path, **kw: object) -> FeatureSchema:
    ref, _ = import_table(src, out, DECLARED, window_seconds=3600, block_bytes=16_384, **kw)  # type: ignore[arg-type]
    return ref.feature_schema


def test_low_cardinality_columns_get_vocabularies_high_keep_hashing(tmp_path: Path) -> None:
    table = _table()
    schema = _import(_csv(tmp_path / "clicks.csv", table), tmp_path / "ds", vocabulary_threshold=100)
    feats = {f.name: f for f in schema.sparse}
    counts = pc.value_counts(table["pos"]).to_pylist()
    by_freq = [str(c["values"]) for c in sorted(counts, key=lambda c: (-c["counts"], str(c["values"])))]
    assert feats["pos"].vocabulary == by_freq  # frequency, then value
    assert sorted(feats["device"].vocabulary or []) == ["android", "ios", "tv", "web"]
    assert sorted(feats["tags"].vocabulary or []) == sorted(f"t{t}" for t in range(30))
    assert feats["user"].encoding == "hash" and feats["user"].hash_buckets == 512
    assert feats["country"].vocabulary == ["us", "de"]  # the user's declaration wins
    info = read_dataset_info(tmp_path / "ds")
    assert info is not None and FeatureSchema.model_validate(info["schema"]) == schema
    assert info["schema_fingerprint"] == schema.fingerprint() != DECLARED.fingerprint()
    assert info["inferred_vocabularies"] == ["device", "pos", "tags"]
    assert FeatureSchema.model_validate(info["declared_schema"]) == DECLARED


def test_inferred_vocabularies_have_zero_collisions(tmp_path: Path) -> None:
    schema = _import(_csv(tmp_path / "clicks.csv", _table()), tmp_path / "ds", vocabulary_threshold=100)
    for feat in schema.sparse:
        if feat.name in ("user", "country"):
            continue
        rows_of: dict[str, set[int]] = {}
        for w in list_ready_windows(tmp_path / "ds"):
            for rb in iter_record_batches(str(tmp_path / "ds"), w, [feat.name]):
                col = rb[feat.name]
                ids, _ = encode_column(col, feat)
                flat = pc.list_flatten(col) if feat.multi_valued else col
                for value, row in zip(pc.cast(flat, pa.string()).to_pylist(), ids.tolist(), strict=True):
                    rows_of.setdefault(value, set()).add(int(row))
        assert all(len(rows) == 1 for rows in rows_of.values())  # a value always lands on one row
        owners = [next(iter(r)) for r in rows_of.values()]
        assert len(set(owners)) == len(owners) and OOV_ROW not in owners  # no two values share a row
        assert sorted(owners) == list(range(1, feat.num_rows))  # every row is used by exactly one value


def test_reimport_gives_the_same_vocabulary_whatever_the_row_order(tmp_path: Path) -> None:
    table = _table(seed=3)
    first = _import(_csv(tmp_path / "a.csv", table), tmp_path / "a", vocabulary_threshold=100)
    again = _import(_csv(tmp_path / "a.csv", table), tmp_path / "c", vocabulary_threshold=100)
    shuffled = table.take(pa.array(np.random.default_rng(1).permutation(table.num_rows)))
    other = _import(_csv(tmp_path / "b.csv", shuffled), tmp_path / "b", vocabulary_threshold=100)
    assert first == again == other
    assert first.fingerprint() == again.fingerprint() == other.fingerprint()


def test_a_later_import_into_the_same_root_keeps_its_vocabularies(tmp_path: Path) -> None:
    first = _import(_csv(tmp_path / "a.csv", _table()), tmp_path / "ds", vocabulary_threshold=100)
    later = _table(seed=5)
    later = later.set_column(0, "ts", pc.add(later["ts"], 4 * 3600))  # the next four hours
    later = later.set_column(4, "device", pa.array(["watch"] * later.num_rows))  # a value never seen
    ref, rows = import_table(_csv(tmp_path / "b.csv", later), tmp_path / "ds", DECLARED, window_seconds=3600,
                             origin=0, vocabulary_threshold=100)  # fmt: skip
    assert min(rows) == 4 and ref.feature_schema == first  # ids keep their rows
    info = read_dataset_info(tmp_path / "ds")
    assert info is not None and info["vocabularies_kept_from"] == first.fingerprint()
    device = next(f for f in first.sparse if f.name == "device")
    ids, _ = encode_column(next(iter_record_batches(ref.uri, 5, ["device"]))["device"], device)
    assert set(ids.tolist()) == {OOV_ROW}  # the new value lands on the out-of-vocabulary row


def test_parquet_int_and_bool_columns_and_a_float_column(tmp_path: Path) -> None:
    table = _table(rows=500).set_column(4, "device", pa.array(np.arange(500) % 2 == 0))
    pq.write_table(table, tmp_path / "c.parquet")  # pos stays int64, device is bool
    schema = _import(tmp_path / "c.parquet", tmp_path / "ds", vocabulary_threshold=100)
    feats = {f.name: f for f in schema.sparse}
    assert sorted(feats["pos"].vocabulary or []) == ["0", "1", "2", "3", "4", "5"]
    assert sorted(feats["device"].vocabulary or []) == ["0", "1"]
    ids, _ = encode_column(next(iter_record_batches(str(tmp_path / "ds"), 0, ["pos"]))["pos"], feats["pos"])
    assert OOV_ROW not in ids.tolist()  # ints map through their text form
    pq.write_table(table.set_column(3, "pos", pa.array(np.linspace(0, 1, 500))), tmp_path / "f.parquet")
    with pytest.raises(DataError, match="sparse column 'pos': cannot hash values of type double"):
        _import(tmp_path / "f.parquet", tmp_path / "ds2")
    assert list_ready_windows(tmp_path / "ds2") == []  # nothing visible


def test_threshold_zero_keeps_hashing_and_nulls_are_not_vocabulary(tmp_path: Path) -> None:
    schema = _import(_csv(tmp_path / "c.csv", _table()), tmp_path / "ds", vocabulary_threshold=0)
    assert [f.encoding for f in schema.sparse] == ["hash", "hash", "hash", "vocabulary", "hash"]
    small = FeatureSchema(sparse=[SparseFeature(name="pos")])
    counter = VocabularyCounter(small, threshold=10)
    counter.update(pa.table({"pos": pa.array(["b", None, "", "a", "b"])}))
    counter.update(pa.table({"pos": pa.array(["c", "a"])}))
    assert counter.vocabularies()["pos"] == ["a", "b", "c"]  # a:2, b:2 then c:1; null and "" left out
    with pytest.raises(ValueError, match="threshold"):
        VocabularyCounter(DECLARED, threshold=-1)


def test_criteo_low_cardinality_columns_and_cli_flag(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    lines = []
    for i in range(400):
        cats = [f"{int(rng.integers(0, 5 if j < 3 else 10**6)):08x}" for j in range(26)]
        lines.append("\t".join([str(i % 2), *["1"] * 13, *cats]))
    src = tmp_path / "day.tsv"
    src.write_text("\n".join(lines) + "\n")
    ref, _ = import_criteo(src, tmp_path / "ds", rows_per_window=100, vocabulary_threshold=50)
    enc = {f.name: f.encoding for f in ref.feature_schema.sparse}
    assert [enc[f"C{i}"] for i in (1, 2, 3)] == ["vocabulary"] * 3
    assert all(enc[f"C{i}"] == "hash" for i in range(4, 27))
    argv = ["criteo", "--input", str(src), "--out", str(tmp_path / "ds2"), "--rows-per-window", "100"]
    assert main_import([*argv, "--vocabulary-threshold", "0"]) == 0
    printed = json.loads(capsys.readouterr().out)["dataset"]["schema"]
    assert all(f.get("vocabulary") is None for f in printed["sparse"])


def test_local_dataset_import_hands_the_inferred_schema_to_the_pipeline(tmp_path: Path) -> None:
    _csv(tmp_path / "clicks.csv", _table(rows=600))
    schema = DECLARED.model_dump(mode="json")
    (tmp_path / "m.yaml").write_text(
        json.dumps(
            {
                "apiVersion": "local.exfm.io/v1alpha1",
                "kind": "Dataset",
                "metadata": {"name": "clicks"},
                "spec": {
                    "uri": "s3://exfm/clicks",
                    "import": {"path": "clicks.csv", "windowSeconds": 3600, "vocabularyThreshold": 100},
                },
            }
        )
        + "\n---\n"
        + json.dumps(
            {
                "apiVersion": "exfm.io/v1alpha1",
                "kind": "FoundationModel",
                "metadata": {"name": "fm"},
                "spec": {
                    "dataset": {"uri": "s3://exfm/clicks", "schema": schema},
                    "storage": {"uri": "s3://x"},
                },
            }
        )
    )
    bundle = localize(load_bundle([tmp_path / "m.yaml"]), str(tmp_path / "root"))
    with make_reporter(True, False) as reporter:
        materialise(bundle, reporter)
    fm_schema = bundle.resources[0].spec.dataset.feature_schema
    stored = FeatureSchema.model_validate(read_dataset_info(tmp_path / "root" / "exfm" / "clicks")["schema"])
    assert fm_schema == stored and fm_schema.fingerprint() == stored.fingerprint()
    assert {f.name for f in fm_schema.sparse if f.encoding == "vocabulary"} == {
        "pos",
        "device",
        "country",
        "tags",
    }
