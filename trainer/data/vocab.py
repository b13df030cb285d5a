"""Vocabulary inference for imported datasets (no torch import).

An importer counts the distinct values of every *hashed* sparse column over the data it imports.
A column with at most ``threshold`` distinct non-empty values gets a declared ``vocabulary``
(sorted by frequency, then by value: deterministic, so re-importing the same data gives the same
rows), so its ids never collide; a column with more keeps hashing. A column the user declared
with a ``vocabulary`` or an ``identity`` encoding keeps its declaration. Nulls and empty strings
are not vocabulary entries: they land on the out-of-vocabulary row, as values unseen at import do.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from exfm_trainer.data.hashing import HashingError, text_values
from exfm_trainer.data.windows import DataError
from exfm_trainer.schema import FeatureSchema, SparseFeature

DEFAULT_VOCABULARY_THRESHOLD = 1000
"""Columns with at most this many distinct values get a vocabulary (0 turns inference off)."""


class VocabularyCounter:
    """Counts each hashed sparse column's values, batch by batch, until it exceeds ``threshold``."""

    def __init__(self, schema: FeatureSchema, threshold: int = DEFAULT_VOCABULARY_THRESHOLD) -> None:
        if threshold < 0:
            raise ValueError(f"vocabulary threshold must be >= 0, got {threshold}")
        self.threshold = threshold
        self.counts: dict[str, Counter[str] | None] = (
            {f.name: Counter() for f in schema.sparse if f.encoding == "hash"} if threshold else {}
        )

    def update(self, table: pa.Table) -> None:
        """Count the values of one block of imported rows."""
        for name, counts in self.counts.items():
            if counts is None:
                continue
            col = table[name]
            if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
                col = pc.list_flatten(col)
            try:
                freq = pc.value_counts(text_values(col))
            except HashingError as err:
                raise DataError(f"sparse column {name!r}: {err}") from None
            if len(freq) > self.threshold + 2:  # + null and "": already too many distinct values
                self.counts[name] = None
                continue
            for value, count in zip(
                freq.field("values").to_pylist(), freq.field("counts").to_pylist(), strict=True
            ):
                if value:  # neither null nor ""
                    counts[value] += count
            if len(counts) > self.threshold:
                self.counts[name] = None

    def vocabularies(self) -> dict[str, list[str]]:
        """The inferred vocabulary of each low-cardinality column (frequency desc, then value)."""
        return {
            name: sorted(counts, key=lambda v, c=counts: (-c[v], v))
            for name, counts in self.counts.items()
            if counts
        }

    def apply(self, schema: FeatureSchema) -> FeatureSchema:
        """``schema`` with the inferred vocabularies (see :func:`with_vocabularies`)."""
        return with_vocabularies(schema, self.vocabularies())


def with_vocabularies(schema: FeatureSchema, vocabularies: dict[str, list[str]]) -> FeatureSchema:
    """A copy whose *hashed* sparse features named in ``vocabularies`` use those vocabularies.

    Features declared with a vocabulary or identity keep their declaration; widths are kept.
    """
    sparse = [
        SparseFeature.model_validate({**f.model_dump(), "vocabulary": vocabularies[f.name]})
        if f.encoding == "hash" and vocabularies.get(f.name)
        else f
        for f in schema.sparse
    ]
    return schema.model_copy(update={"sparse": sparse})


def adopt_vocabularies(schema: FeatureSchema, source: FeatureSchema) -> FeatureSchema:
    """``schema`` with the vocabularies ``source`` (e.g. an import's stored schema) declares for
    columns that ``schema`` hashes — how a pipeline picks up what its dataset's importer inferred."""
    vocabularies = {f.name: f.vocabulary for f in source.sparse if f.vocabulary}
    return with_vocabularies(schema, vocabularies)  # type: ignore[arg-type]
