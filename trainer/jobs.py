"""Job configs: the contract the operator (or a user) fills in for ``python -m exfm_trainer``.

Each job reads its config from ``--config <file.json>``. Unknown fields are rejected, and
validation errors name the field. No torch import here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from exfm_trainer.schema import FeatureSchema
from exfm_trainer.validation import suggest_field

ModelPreset = Literal["tiny", "small", "medium", "large"]
Device = Literal["auto", "cpu", "cuda"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class WindowRange(_Strict):
    """Windows ``[start, end)``; ``end`` None means every committed window from ``start`` on."""

    start: int = Field(default=0, ge=0)
    end: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> WindowRange:
        if self.end is not None and self.end < self.start:
            raise ValueError(f"end ({self.end}) must be >= start ({self.start})")
        return self

    def contains(self, window: int) -> bool:
        return window >= self.start and (self.end is None or window < self.end)


class DatasetRef(_Strict):
    """A windowed Parquet dataset and its feature schema."""

    uri: str = Field(min_length=1, description="Root of window=NNNNN folders (s3:// or path).")
    feature_schema: FeatureSchema = Field(alias="schema")


class ArtifactRef(_Strict):
    """A model or DAS output by namespace/name under the job's storage root."""

    namespace: str = "default"
    name: str = Field(min_length=1)


class Optim(_Strict):
    """Optimizers: rowwise Adagrad (fused into the backward pass) for embeddings, Adam for the rest."""

    embedding_lr: float = Field(default=0.02, gt=0, description="Rowwise Adagrad LR (fused TBE).")
    dense_lr: float | None = Field(
        default=None, gt=0, description="Adam LR of the dense layers; None takes the model preset's."
    )
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(
        default=100, ge=0, description="Linear warm-up of the dense LR over the job's first steps."
    )
    clip_grad_norm: float | None = Field(
        default=1.0, gt=0, description="Clip the dense gradients' global norm to this (None: no clipping)."
    )


class _JobBase(_Strict):
    storage: str = Field(min_length=1, description="Artifact root: s3://bucket/prefix or a path.")
    namespace: str = "default"
    name: str = Field(min_length=1, description="Owner resource name (FM/DAS/VM).")
    windows: WindowRange = Field(default_factory=WindowRange)
    batch_size: int = Field(default=2048, ge=1)
    seed: int = 0
    device: Device = "auto"
    checkpoint_every: int = Field(default=1, ge=1, description="Windows between checkpoints.")
    keep_checkpoints: int = Field(default=3, ge=1, description="Retention: newest K checkpoints.")
    retention_min_age_s: float = Field(
        default=900.0,
        ge=0,
        description="Retention never removes a checkpoint younger than this, so a consumer (the DAS) "
        "has time to lease the version it needs after it is committed.",
    )
    max_bad_row_fraction: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Rows with NaN features or labels outside {0,1} are skipped and counted; "
        "a window with a larger skipped fraction fails the job.",
    )


class FMTrainJob(_JobBase):
    job: Literal["fm-train"] = "fm-train"
    dataset: DatasetRef
    preset: ModelPreset = "small"
    optim: Optim = Field(default_factory=Optim)


class DASJob(_JobBase):
    job: Literal["das"] = "das"
    dataset: DatasetRef
    fm: ArtifactRef
    max_staleness: int | None = Field(
        default=None, ge=0, description="Fail when the newest usable FM is older than this."
    )


class Distillation(_Strict):
    """How a VM learns from the FM: ``L = BCE(y_s, y) + w * BCE(y_aux, clip(alpha * p_fm, <= 1))``.

    With the student adapter, the distillation target mixes the FM's and the adapter's
    probabilities, ``(1 - adapter_share) * t_fm + adapter_share * t_adapter`` (each
    ``clip(alpha * p, <= 1)``), so the total distillation weight stays ``w``.
    """

    mode: Literal["none", "kd", "aux"] = "aux"
    alpha: float = Field(default=1.0, gt=0, description="Scale of the FM probability target.")
    beta: float = Field(default=1.0, ge=0, description="Aux-loss gradient scale into the backbone.")
    weight: float = Field(default=1.0, ge=0, description="w: weight of the distillation loss.")
    aux_tower: list[int] = Field(
        default_factory=lambda: [16],
        description="Hidden widths of the aux head's tower on the shared backbone ([]: one linear layer).",
    )
    adapter: bool = Field(default=False, description="Student adapter on the FM logit.")
    adapter_share: float = Field(
        default=0.5, ge=0, le=1, description="Share of the distillation weight w given to the adapter target."
    )
    adapter_lr: float = Field(default=0.01, gt=0, description="LR of the adapter's own AdamW.")
    adapter_decay: float = Field(
        default=0.01, ge=0, description="AdamW weight decay of the adapter: its pull toward the identity."
    )
    adapter_hidden: int = Field(default=8, ge=1, le=256, description="Width of the adapter's residual MLP.")


class VMTrainJob(_JobBase):
    job: Literal["vm-train"] = "vm-train"
    dataset: DatasetRef = Field(description="Augmented windows carrying the fm_logit column (a DAS output).")
    das: ArtifactRef | None = Field(
        default=None, description="The DAS whose committed windows this VM reads (lineage)."
    )
    vertical: str | None = Field(default=None, description="Keep rows of this vertical only.")
    preset: ModelPreset = "tiny"
    distillation: Distillation = Field(default_factory=Distillation)
    features: list[str] | None = Field(
        default=None,
        description="Serving budget: the dataset's feature columns (dense and sparse) the VM may use; "
        "None: all of them.",
    )
    export: bool = Field(default=True, description="Write a serving export after training.")
    optim: Optim = Field(default_factory=Optim)

    @field_validator("features")
    @classmethod
    def _known_features(cls, names: list[str] | None, info: ValidationInfo) -> list[str] | None:
        dataset = info.data.get("dataset")
        if names is not None and dataset is not None:
            dataset.feature_schema.select(names)  # raises naming the bad columns and the valid ones
        return names

    def model_dataset(self) -> DatasetRef:
        """The dataset as the VM reads it: its schema restricted to ``features`` (when set)."""
        if self.features is None:
            return self.dataset
        schema = self.dataset.feature_schema.select(self.features)
        return self.dataset.model_copy(update={"feature_schema": schema})


JobConfig = Annotated[FMTrainJob | DASJob | VMTrainJob, Field(discriminator="job")]
_ADAPTER: TypeAdapter[FMTrainJob | DASJob | VMTrainJob] = TypeAdapter(JobConfig)


class JobConfigError(ValueError):
    """A job config failed validation; the message lists each bad field and the fix."""


def format_validation_error(err: ValidationError, source: str) -> str:
    """``invalid job config <source>:`` then one ``  - <field>: <message>`` line per error (an unknown
    field gets the nearest valid name)."""
    models: dict[str, type[BaseModel]] = {"fm-train": FMTrainJob, "das": DASJob, "vm-train": VMTrainJob}
    lines = [f"invalid job config {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        tag = e["loc"][0] if e["loc"] else None
        hint = suggest_field(models[tag], {**e, "loc": e["loc"][1:]}) if tag in models else ""
        lines.append(f"  - {loc}: {e['msg']}{hint}")
    return "\n".join(lines)


def parse_job(data: dict, source: str = "<dict>") -> FMTrainJob | DASJob | VMTrainJob:
    """Validate a job config dict; raises JobConfigError naming each bad field."""
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as err:
        raise JobConfigError(format_validation_error(err, source)) from None


def load_job(path: str | Path) -> FMTrainJob | DASJob | VMTrainJob:
    """Read and validate a job config JSON file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise JobConfigError(f"job config {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise JobConfigError(f"job config {path} is not valid JSON: {err}") from None
    return parse_job(data, str(path))
