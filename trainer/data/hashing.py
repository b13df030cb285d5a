"""Deterministic, vectorised mapping of raw categorical values into embedding rows.

:func:`encode_column` applies a feature's encoding (hash, vocabulary or identity; see
:class:`~exfm_trainer.schema.SparseFeature`); the rest of this module is the hash.

A value is hashed by its *text form*: the int ``123`` and the string ``"123"`` land in the same
bucket, so a column read as int from Parquet and as text from CSV hashes identically. Nulls hash
like the empty string. The hash is 64-bit FNV-1a over the UTF-8 bytes, mixed with a per-feature
salt (FNV-1a of the feature name) through the splitmix64 finaliser, then reduced modulo the
bucket count. Only numpy/pyarrow arithmetic is used (never Python's ``hash()``), so results are
identical across processes, machines and runs. Each batch hashes its distinct values only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from exfm_trainer.schema import OOV_ROW, SparseFeature

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_MASK_SHIFT_30 = np.uint64(30)
_MASK_SHIFT_27 = np.uint64(27)
_MASK_SHIFT_31 = np.uint64(31)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


class HashingError(TypeError):
    """A column's type cannot be hashed as a categorical feature."""


def _fnv1a_bytes(data: bytes) -> np.uint64:
    h = np.array([_FNV_OFFSET], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for byte in data:
            h ^= np.uint64(byte)
            h *= _FNV_PRIME
    return h[0]


def salt_of(name: str) -> np.uint64:
    """The 64-bit salt of a feature name."""
    return _fnv1a_bytes(name.encode("utf-8"))


def _splitmix(h: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = h + _GOLDEN
        h = (h ^ (h >> _MASK_SHIFT_30)) * _MIX_1
        h = (h ^ (h >> _MASK_SHIFT_27)) * _MIX_2
        return h ^ (h >> _MASK_SHIFT_31)


def _fnv1a_strings(arr: pa.Array) -> np.ndarray:
    """FNV-1a of each element of a string/binary array (no nulls), vectorised over rows."""
    arr = arr.cast(pa.large_binary())
    n = len(arr)
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64, count=n + 1, offset=arr.offset * 8)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    starts = offsets[:-1]
    lengths = offsets[1:] - starts
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    max_len = int(lengths.max()) if n else 0
    with np.errstate(over="ignore"):
        for j in range(max_len):
            live = np.nonzero(lengths > j)[0]
            h[live] = (h[live] ^ data[starts[live] + j].astype(np.uint64)) * _FNV_PRIME
    return h


def _as_text(arr: pa.Array) -> pa.Array:
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.dictionary_decode()
        t = arr.type
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        if pa.types.is_boolean(t):
            arr = arr.cast(pa.int8())
        return arr.cast(pa.large_string())
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t):
        return arr
    if pa.types.is_large_binary(t) or pa.types.is_string_view(t):
        return arr.cast(pa.large_binary())
    raise HashingError(
        f"cannot hash values of type {t}: categorical columns must hold integers or strings "
        "(cast floats to int or string before writing the window)"
    )


def text_values(values: pa.Array | pa.ChunkedArray | np.ndarray | Sequence) -> pa.Array:
    """Flat categorical values in their text form (the form vocabularies and the hash use)."""
    return _as_text(_to_arrow(values)).cast(pa.large_string())


def hash64(values: pa.Array | pa.ChunkedArray | np.ndarray | Sequence, salt: str) -> np.ndarray:
    """64-bit hashes (uint64) of flat categorical values, salted by a feature name."""
    arr = _to_arrow(values)
    if len(arr) == 0:
        return np.zeros(0, dtype=np.uint64)
    text = _as_text(arr).fill_null("")
    encoded = pc.dictionary_encode(text)
    uniques = encoded.dictionary
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    unique_hash = _splitmix(_fnv1a_strings(uniques) ^ salt_of(salt))
    return unique_hash[codes]


def hash_values(
    values: pa.Array | pa.ChunkedArray | np.ndarray | Sequence, buckets: int, salt: str
) -> np.ndarray:
    """Bucket ids (int64 in ``[0, buckets)``) of flat categorical values."""
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    return (hash64(values, salt) % np.uint64(buckets)).astype(np.int64)


def vocabulary_ids(values: pa.Array | np.ndarray | Sequence, vocabulary: Sequence[str]) -> np.ndarray:
    """Rows ``1..len(vocabulary)`` of declared values (by text form); OOV and null -> row 0."""
    arr = _to_arrow(values)
    if len(arr) == 0:
        return np.zeros(0, dtype=np.int64)
    text = _as_text(arr).cast(pa.large_string())
    index = pc.index_in(text, value_set=pa.array(list(vocabulary), type=pa.large_string()))
    return (pc.fill_null(index, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1).clip(min=OOV_ROW)


def identity_ids(values: pa.Array | np.ndarray | Sequence, size: int, name: str) -> np.ndarray:
    """Rows ``1..size`` of integer ids ``0..size-1``; other ids and null -> row 0."""
    arr = _to_arrow(values)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if not (pa.types.is_integer(arr.type) or pa.types.is_boolean(arr.type)):
        raise HashingError(
            f"column {name!r} holds {arr.type} but declares an identity encoding, which takes integer "
            "ids: write the column as integers, or declare a `vocabulary` instead"
        )
    ids = pc.fill_null(arr.cast(pa.int64()), -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.where((ids >= 0) & (ids < size), ids + 1, OOV_ROW)


def _flat_values(arr: pa.Array, feature: SparseFeature) -> tuple[pa.Array, np.ndarray]:
    """The column's values as one flat array and the number of values per row."""
    is_list = pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)
    if not feature.multi_valued:
        if is_list:
            raise HashingError(
                f"column {feature.name!r} holds lists but the schema declares it single-valued: "
                "set multi_valued: true for this sparse feature"
            )
        return arr, np.ones(len(arr), dtype=np.int32)
    if not is_list:
        raise HashingError(
            f"column {feature.name!r} is declared multi_valued but holds {arr.type}, not lists: "
            "write a list column or set multi_valued: false"
        )
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int32)
    return pc.list_flatten(arr), lengths


def encode_column(
    values: pa.Array | pa.ChunkedArray, feature: SparseFeature
) -> tuple[np.ndarray, np.ndarray]:
    """Embedding rows of one column for a jagged tensor: ``(ids int64, lengths int32 per row)``.

    Single-valued columns give one id per row (nulls hash like "", or go to the OOV row).
    Multi-valued columns must be list arrays; a null list counts as empty.
    """
    flat, lengths = _flat_values(_to_arrow(values), feature)
    if feature.vocabulary is not None:
        return vocabulary_ids(flat, feature.vocabulary), lengths
    if feature.identity is not None:
        return identity_ids(flat, feature.identity, feature.name), lengths
    return hash_values(flat, feature.hash_buckets, feature.name), lengths


def hash_column(
    values: pa.Array | pa.ChunkedArray, buckets: int, salt: str, multi_valued: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Hash one column (feature ``salt``) into ``buckets`` rows: :func:`encode_column` for hashing."""
    feature = SparseFeature(name=salt, hash_buckets=buckets, multi_valued=multi_valued)
    return encode_column(values, feature)


def _to_arrow(values: pa.Array | pa.ChunkedArray | np.ndarray | Sequence) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if isinstance(values, pa.Array):
        return values
    return pa.array(values)
