"""The three kinds: FoundationModel, DataAugmentation, VerticalModel (spec + status)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from exfm_operator.api.base import API_VERSION, ApiModel, ObjectMeta, cel, sub
from exfm_operator.api.common import (
    Cadence,
    CheckpointStatus,
    DatasetSpec,
    ObjectRef,
    Preset,
    Resources,
    Retention,
    RetryPolicy,
    StatusBase,
    StorageSpec,
    Training,
    WindowRange,
    WindowSpan,
)
from exfm_trainer.schema import FeatureSchema

DEFAULT_IMAGE = "exfm:latest"
IMMUTABLE = [cel("self == oldSelf", "is immutable; delete and recreate the resource to change it")]


def _image() -> str:
    return Field(default=DEFAULT_IMAGE, min_length=1, max_length=1024, description="Trainer container image.")


# ---------------------------------------------------------------- FoundationModel


GPU_RULES = [
    cel("self.resources.gpu == 0 || self.training.device != 'cpu'",
        "resources.gpu > 0 requires training.device auto or cuda", fieldPath=".training.device"),
    cel("self.training.device != 'cuda' || self.resources.gpu > 0",
        "training.device cuda requires resources.gpu > 0", fieldPath=".resources.gpu"),
]  # fmt: skip


def check_gpu_device(resources: Resources, training: Training) -> None:
    """The pydantic twin of :data:`GPU_RULES`."""
    if resources.gpu > 0 and training.device == "cpu":
        raise ValueError("resources.gpu > 0 requires training.device auto or cuda")
    if training.device == "cuda" and resources.gpu == 0:
        raise ValueError("training.device cuda requires resources.gpu > 0")


class FoundationModelSpec(ApiModel):
    """The teacher: trained on every vertical's windows, in time order, one job per chunk."""

    model_config = {"json_schema_extra": {"x-kubernetes-validations": GPU_RULES}}

    dataset: DatasetSpec = Field(description="Input windows (union of all verticals).")
    preset: Preset = Field(default="small", description="Model size preset.")
    cadence: Cadence = sub(Cadence, "Windows per training job.")
    windows: WindowRange = sub(WindowRange, "Window range to train on.")
    resources: Resources = sub(Resources, "Compute per job.")
    image: str = _image()
    storage: StorageSpec = Field(description="Artifact root for checkpoints and metrics.")
    retention: Retention = sub(Retention, "Checkpoint retention.")
    training: Training = sub(Training, "Trainer knobs.")
    retry: RetryPolicy = sub(RetryPolicy, "Retries of failed jobs.")
    suspend: bool = Field(default=False, description="Cancel the active job and submit no new ones.")

    @model_validator(mode="after")
    def _gpu_device(self) -> FoundationModelSpec:
        check_gpu_device(self.resources, self.training)
        return self


class FMLineage(ApiModel):
    windows: list[WindowSpan] = Field(default_factory=list, description="Trained windows, as ranges.")


class FoundationModelStatus(StatusBase):
    latest_checkpoint: CheckpointStatus | None = None
    lineage: FMLineage = Field(default_factory=FMLineage)


# ---------------------------------------------------------------- DataAugmentation


class DataAugmentationSpec(ApiModel):
    """FM inference over each new window with the newest FM checkpoint older than the window."""

    fm_ref: ObjectRef = Field(
        description="FoundationModel (same namespace).",
        json_schema_extra={"x-kubernetes-validations": IMMUTABLE},
    )
    dataset: DatasetSpec | None = Field(default=None, description="Input windows; default: the FM's dataset.")
    output: StorageSpec | None = Field(
        default=None,
        description="Artifact root of the augmented windows; default (and required value): the FM's storage.",
    )
    max_staleness: int | None = Field(
        default=None,
        ge=0,
        le=100_000,
        description="Wait for an FM checkpoint at most this many windows behind a window (0 = freshest).",
    )
    windows: WindowRange = sub(WindowRange, "Window range to augment.")
    cadence: Cadence = sub(Cadence, "Windows per augmentation job.")
    resources: Resources = sub(Resources, "Compute per job.")
    image: str = _image()
    batch_size: int = Field(default=8192, ge=1, le=1_048_576, description="Inference batch size.")
    max_bad_row_fraction: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Bad input rows are kept with a null fm_logit and counted; a window with a larger "
        "fraction fails the job.",
    )
    retry: RetryPolicy = sub(RetryPolicy, "Retries of failed jobs.")
    suspend: bool = Field(default=False, description="Cancel the active job and submit no new ones.")


class DASWindowLineage(ApiModel):
    window: int
    fm_version: str
    staleness: int


class StalenessSummary(ApiModel):
    count: int = 0
    min: int | None = None
    max: int | None = None
    mean: float | None = None


class DASLineage(ApiModel):
    windows: list[DASWindowLineage] = Field(
        default_factory=list, description="Newest augmented windows (at most 32) and their FM version."
    )
    staleness: StalenessSummary = Field(default_factory=StalenessSummary)


class DASOutput(BaseModel):
    """Where the augmented windows are, for VerticalModels to read (published by the planner)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    storage: StorageSpec = Field(description="Artifact root (the FM's storage).")
    uri: str = Field(description="Root of the augmented window folders.")
    feature_schema: FeatureSchema = Field(alias="schema", description="Schema of the input features.")


class DataAugmentationStatus(StatusBase):
    lineage: DASLineage = Field(default_factory=DASLineage)
    output: DASOutput | None = None
    fm_version: str | None = Field(default=None, description="FM version of the newest augmented window.")


# ---------------------------------------------------------------- VerticalModel


class Distillation(ApiModel):
    """``L = BCE(y_s, y) + weight * BCE(y_aux, clip(alpha * p_fm, <= 1))``; aux gradient scaled by beta."""

    model_config = {"json_schema_extra": {"x-kubernetes-validations": [
        cel("self.mode != 'none' || !self.adapter", "the student adapter needs distillation (mode kd or aux)",
            fieldPath=".adapter"),
    ]}}  # fmt: skip

    mode: Literal["none", "kd", "aux"] = Field(default="aux", description="none, kd (one head) or aux head.")
    alpha: float = Field(default=1.0, gt=0, le=100, description="Scale of the FM probability target.")
    beta: float = Field(default=1.0, ge=0, le=100, description="Aux-loss gradient scale into the backbone.")
    weight: float = Field(default=1.0, ge=0, le=100, description="Weight of the distillation loss.")
    aux_tower: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [16],
        max_length=8,
        description="Hidden widths of the aux head's tower ([]: one linear layer).",
    )
    adapter: bool = Field(default=False, description="Student adapter on the FM logit.")
    adapter_share: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Share of the distillation weight given to the adapter's target (the FM's: the rest).",
    )
    adapter_lr: float = Field(default=0.01, gt=0, le=10, description="LR of the adapter's own optimizer.")
    adapter_decay: float = Field(
        default=0.01, ge=0, le=10, description="Weight decay pulling the adapter toward the identity."
    )
    adapter_hidden: int = Field(default=8, ge=1, le=256, description="Width of the adapter's residual MLP.")

    @model_validator(mode="after")
    def _adapter_needs_distillation(self) -> Distillation:
        if self.mode == "none" and self.adapter:
            raise ValueError("the student adapter needs distillation (mode kd or aux)")
        return self


class VerticalModelSpec(ApiModel):
    """A small student for one vertical, trained on the DAS's augmented windows in order."""

    model_config = {"json_schema_extra": {"x-kubernetes-validations": GPU_RULES}}

    das_ref: ObjectRef = Field(
        description="DataAugmentation (same namespace).",
        json_schema_extra={"x-kubernetes-validations": IMMUTABLE},
    )
    vertical: str | None = Field(default=None, max_length=253, description="Keep rows of this vertical only.")
    preset: Preset = Field(default="tiny", description="Model size preset.")
    distillation: Distillation = sub(Distillation, "How the student learns from the FM.")
    features: list[Annotated[str, Field(min_length=1, max_length=253)]] | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="Serving budget: the DAS dataset's feature columns (dense and sparse) this student "
        "may use; default: all of them (the FM always uses all).",
    )
    storage: StorageSpec | None = Field(
        default=None, description="Artifact root; default: the DAS's storage."
    )
    windows: WindowRange = sub(WindowRange, "Window range to train on.")
    cadence: Cadence = sub(Cadence, "Windows per training job.")
    resources: Resources = sub(Resources, "Compute per job.")
    image: str = _image()
    training: Training = sub(Training, "Trainer knobs.")
    retention: Retention = sub(Retention, "Checkpoint retention.")
    retry: RetryPolicy = sub(RetryPolicy, "Retries of failed jobs.")
    export: bool = Field(
        default=True, description="Write a serving export (serving head only) per checkpoint."
    )
    suspend: bool = Field(default=False, description="Cancel the active job and submit no new ones.")

    @model_validator(mode="after")
    def _gpu_device(self) -> VerticalModelSpec:
        check_gpu_device(self.resources, self.training)
        return self

    @field_validator("features")
    @classmethod
    def _distinct_features(cls, names: list[str] | None) -> list[str] | None:
        if names is not None:
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"lists {dupes} more than once; list each column once")
        return names


class VMLineage(ApiModel):
    das_windows: list[WindowSpan] = Field(default_factory=list, description="DAS windows trained on.")
    fm_versions: list[str] = Field(default_factory=list, description="FM versions behind those windows.")


class VerticalModelStatus(StatusBase):
    latest_checkpoint: CheckpointStatus | None = None
    lineage: VMLineage = Field(default_factory=VMLineage)


# ---------------------------------------------------------------- resources


class _Resource(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    api_version: Literal["exfm.io/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    metadata: ObjectMeta

    def to_json(self) -> dict:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class FoundationModel(_Resource):
    """A foundation model (teacher) trained continuously on time-ordered data windows."""

    kind: Literal["FoundationModel"] = "FoundationModel"
    spec: FoundationModelSpec
    status: FoundationModelStatus = Field(default_factory=FoundationModelStatus)


class DataAugmentation(_Resource):
    """Augments each new data window with FM predictions, for the vertical models to distill from."""

    kind: Literal["DataAugmentation"] = "DataAugmentation"
    spec: DataAugmentationSpec
    status: DataAugmentationStatus = Field(default_factory=DataAugmentationStatus)


class VerticalModel(_Resource):
    """A small vertical (student) model distilled from the FM through a DataAugmentation."""

    kind: Literal["VerticalModel"] = "VerticalModel"
    spec: VerticalModelSpec
    status: VerticalModelStatus = Field(default_factory=VerticalModelStatus)


Resource = FoundationModel | DataAugmentation | VerticalModel
KINDS: dict[str, type[FoundationModel] | type[DataAugmentation] | type[VerticalModel]] = {
    "FoundationModel": FoundationModel,
    "DataAugmentation": DataAugmentation,
    "VerticalModel": VerticalModel,
}
SHORT_NAMES = {"FoundationModel": "fm", "DataAugmentation": "das", "VerticalModel": "vm"}
PLURALS = {
    "FoundationModel": "foundationmodels",
    "DataAugmentation": "dataaugmentations",
    "VerticalModel": "verticalmodels",
}
