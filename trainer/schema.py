"""Feature schema of a dataset: which columns are the label, dense and sparse features."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SparseFeature(BaseModel):
    """A categorical feature, hashed into ``hash_buckets`` rows of an embedding table."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Column name in the Parquet windows.")
    hash_buckets: int = Field(default=100_000, ge=1, description="Rows of the embedding table.")
    embedding_dim: int = Field(default=16, ge=1, le=4096, description="Embedding width.")
    multi_valued: bool = Field(default=False, description="True when the column holds a list of ids per row.")


class FeatureSchema(BaseModel):
    """Columns of a windowed dataset.

    Raw categorical values (ints or strings) are hashed deterministically into
    ``[0, hash_buckets)`` by the data layer, so the same value always maps to the same row.
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

    def with_embedding_dim(self, dim: int, max_buckets: int | None = None) -> FeatureSchema:
        """A copy with every table's width set to ``dim`` (and rows capped), for smaller models."""
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
