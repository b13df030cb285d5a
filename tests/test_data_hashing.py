"""Hashing of categorical values: deterministic, salted, vectorised, stable across processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from exfm_trainer.data.hashing import HashingError, hash_column, hash_values

M64 = (1 << 64) - 1


def _reference(value: str, buckets: int, salt: str) -> int:
    """Scalar reference: FNV-1a of the text, xor FNV-1a(salt), splitmix64 finaliser, modulo."""

    def fnv(data: bytes) -> int:
        h = 0xCBF29CE484222325
        for b in data:
            h = ((h ^ b) * 0x100000001B3) & M64
        return h

    h = fnv(value.encode()) ^ fnv(salt.encode())
    h = (h + 0x9E3779B97F4A7C15) & M64
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & M64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & M64
    h ^= h >> 31
    return h % buckets


def test_matches_scalar_reference_for_strings_and_ints() -> None:
    values = ["", "a", "68fd1e64", "hello world", "ünïcode", "x" * 40]
    got = hash_values(pa.array(values), 1000, "C1")
    assert list(got) == [_reference(v, 1000, "C1") for v in values]
    ints = hash_values(pa.array([0, 7, -3, 2**62]), 97, "user_id")
    assert list(ints) == [_reference(str(v), 97, "user_id") for v in (0, 7, -3, 2**62)]


def test_int_and_text_forms_agree_and_null_is_empty_string() -> None:
    a = hash_values(pa.array([123, None], type=pa.int32()), 50_000, "f")
    b = hash_values(pa.array(["123", ""]), 50_000, "f")
    assert list(a) == list(b)


def test_salt_changes_buckets_and_range_is_respected() -> None:
    vals = pa.array(np.arange(5000))
    a, b = hash_values(vals, 1 << 20, "a"), hash_values(vals, 1 << 20, "b")
    assert (a != b).mean() > 0.99
    small = hash_values(vals, 7, "a")
    assert small.min() >= 0 and small.max() < 7
    assert len(np.unique(small)) == 7


def test_sliced_and_chunked_arrays_hash_like_plain_ones() -> None:
    vals = pa.array([f"v{i}" for i in range(100)])
    whole = hash_values(vals, 1000, "s")
    assert list(hash_values(vals.slice(10, 20), 1000, "s")) == list(whole[10:30])
    chunked = pa.chunked_array([vals.slice(0, 50), vals.slice(50)])
    assert list(hash_values(chunked, 1000, "s")) == list(whole)


def test_stable_across_processes_with_different_hash_seeds() -> None:
    code = (
        "import json, pyarrow as pa; from exfm_trainer.data.hashing import hash_values;"
        "print(json.dumps(hash_values(pa.array(['a','bb','ccc', '42']), 10**6, 'x').tolist()))"
    )
    outs = []
    for seed in ("1", "987"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        res = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outs.append(json.loads(res.stdout))
    assert outs[0] == outs[1] == hash_values(pa.array(["a", "bb", "ccc", "42"]), 10**6, "x").tolist()


def test_multi_valued_lengths_and_ids() -> None:
    arr = pa.array([[1, 2], [], None, [3]], type=pa.list_(pa.int64()))
    ids, lengths = hash_column(arr, 100, "hist", multi_valued=True)
    assert lengths.tolist() == [2, 0, 0, 1]
    assert ids.tolist() == hash_values(pa.array([1, 2, 3]), 100, "hist").tolist()


def test_type_errors_name_the_fix() -> None:
    with pytest.raises(HashingError, match="cast floats"):
        hash_values(pa.array([1.5]), 10, "f")
    with pytest.raises(HashingError, match="multi_valued"):
        hash_column(pa.array([1, 2]), 10, "f", multi_valued=True)
    with pytest.raises(HashingError, match="multi_valued: true"):
        hash_column(pa.array([[1]]), 10, "f", multi_valued=False)
