"""Feature schema of a dataset: which columns are the label, dense and sparse features."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Encoding = Literal["hash", "vocabulary", "identity"]
OOV_ROW = 0
"""Embedding row of values outside a declared vocabulary or identity range."""


class SparseFeature(BaseModel):
    """A categorical feature and how its raw values become embedding rows.

    Three encodings (see docs/data.md):

    - ``hash`` (default): values are hashed into ``hash_buckets`` rows (collisions possible);
    - ``vocabulary``: the declared values map to rows ``1..len(vocabulary)`` in order, anything
      else (and null) to the out-of-vocabulary row 0 — no collisions;
    - ``identity``: integer ids ``0..identity-1`` map to rows ``1..identity``; other values (and
      null) to row 0.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Column name in the Parquet windows.")
    hash_buckets: int = Field(
        default=100_000, ge=1, description="Rows of the embedding table when the column is hashed."
    )
    vocabulary: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Declared values (text form: the int 3 is '3'), each its own row; others share "
        "the out-of-vocabulary row.",
    )
    identity: int | None = Field(
        default=None, ge=1, description="Integer ids in [0, identity) used as rows directly (+1 for OOV)."
    )
    embedding_dim: int = Field(default=16, ge=1, le=4096, description="Embedding width.")
    multi_valued: bool = Field(default=False, description="True when the column holds a list of ids per row.")

    @model_validator(mode="after")
    def _one_encoding(self) -> SparseFeature:
        if self.vocabulary is not None and self.identity is not None:
            raise ValueError(
                f"sparse feature {self.name!r} declares both `vocabulary` and `identity`: keep one"
            )
        if self.vocabulary is not None and len(set(self.vocabulary)) != len(self.vocabulary):
            dupes = sorted({v for v in self.vocabulary if self.vocabulary.count(v) > 1})
            raise ValueError(f"sparse feature {self.name!r}: vocabulary lists {dupes} twice; list each once")
        return self

    @property
    def encoding(self) -> Encoding:
        if self.vocabulary is not None:
            return "vocabulary"
        return "identity" if self.identity is not None else "hash"

    @property
    def num_rows(self) -> int:
        """Rows of the embedding table (the OOV row included for vocabulary/identity)."""
        if self.vocabulary is not None:
            return len(self.vocabulary) + 1
        if self.identity is not None:
            return self.identity + 1
        return self.hash_buckets

    def id_mapping(self) -> tuple:
        """What decides a value's row (two features with equal mappings encode identically)."""
        return (self.encoding, self.num_rows, tuple(self.vocabulary or ()), self.multi_valued)


class FeatureSchema(BaseModel):
    """Columns of a windowed dataset.

    Raw categorical values (ints or strings) become embedding rows by each feature's encoding
    (hash, vocabulary or identity), deterministically, so training, the DAS and serving map the
    same value to the same row. The schema travels with the dataset, the checkpoints and the
    serving export; :meth:`fingerprint` identifies its id mapping.
    """

    model_config = ConfigDict(extra="forbid")

    label: str = Field(default="label", min_length=1, description="Binary label column (0/1).")
    dense: list[str] = Field(default_factory=list, description="Float feature columns.")
    sparse: list[SparseFeature] = Field(default_factory=list, description="Categorical columns.")
    vertical: str | None = Field(
        default=None, description="Optional column naming the vertical (product surface) of a row."
    )
    timestamp: str | None = Field(default=None, description="Optional event-time column.")

    @model_validator(mode="after")
    def _unique_columns(self) -> FeatureSchema:
        names = [self.label, *self.dense, *(f.name for f in self.sparse)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"columns appear twice in the schema: {dupes}; each column has one role")
        if not self.dense and not self.sparse:
            raise ValueError("schema has no features: declare at least one of `dense` or `sparse`")
        return self

    @property
    def sparse_names(self) -> list[str]:
        return [f.name for f in self.sparse]

    def feature_columns(self) -> list[str]:
        """Columns a model reads (label included)."""
        cols = [self.label, *self.dense, *self.sparse_names]
        if self.vertical:
            cols.append(self.vertical)
        return cols

    def vertical_values(self) -> list[str] | None:
        """The declared values of the vertical column (its sparse feature's vocabulary), if known."""
        if not self.vertical:
            return None
        feat = next((f for f in self.sparse if f.name == self.vertical), None)
        return list(feat.vocabulary) if feat is not None and feat.vocabulary is not None else None

    def fingerprint(self) -> str:
        """Short sha256 of every column's role and id mapping (equal fingerprints encode alike)."""
        spec = {
            "label": self.label,
            "dense": self.dense,
            "sparse": [[f.name, *f.id_mapping()] for f in self.sparse],
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def with_embedding_dim(self, dim: int, max_buckets: int | None = None) -> FeatureSchema:
        """A copy with every table's width set to ``dim`` (hashed rows capped), for smaller models."""
        sparse = [
            f.model_copy(
                update={
                    "embedding_dim": dim,
                    "hash_buckets": min(f.hash_buckets, max_buckets or f.hash_buckets),
                }
            )
            for f in self.sparse
        ]
        return self.model_copy(update={"sparse": sparse})

    def feature_names(self) -> list[str]:
        """Model input columns: dense then sparse (no label, vertical or timestamp)."""
        return [*self.dense, *self.sparse_names]

    def select(self, names: list[str]) -> FeatureSchema:
        """The schema restricted to the features ``names`` (label, vertical, timestamp kept).

        Order follows this schema, not ``names``. Raises ValueError naming any unknown or repeated
        column and listing the valid ones; an empty list is an error too.
        """
        if not names:
            raise ValueError(
                f"features is empty: name at least one of the dataset's features {self.feature_names()}"
            )
        valid = self.feature_names()
        unknown = [n for n in names if n not in valid]
        if unknown:
            raise ValueError(f"features {unknown} are not feature columns of the dataset; valid: {valid}")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"features lists {dupes} more than once; list each column once")
        keep = set(names)
        return self.model_copy(
            update={
                "dense": [c for c in self.dense if c in keep],
                "sparse": [f for f in self.sparse if f.name in keep],
            }
        )
