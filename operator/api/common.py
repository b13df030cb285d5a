"""Spec and status parts shared by the three kinds."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from exfm_operator.api.base import DNS_SUBDOMAIN, ApiModel, cel
from exfm_trainer.jobs import WindowRange as JobWindowRange
from exfm_trainer.schema import FeatureSchema
from exfm_trainer.validation import suggest_field

QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
Preset = Literal["tiny", "small", "medium", "large"]
Device = Literal["auto", "cpu", "cuda"]
ConditionType = Literal["Ready", "Progressing", "Degraded", "Suspended", "QuotaExceeded"]
CONDITION_TYPES: tuple[str, ...] = ("Ready", "Progressing", "Degraded", "Suspended", "QuotaExceeded")
Phase = Literal["Pending", "Running", "Waiting", "Succeeded", "Failed", "Suspended", "Degraded"]


def _quantity(value: Any) -> Any:
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


class Resources(ApiModel):
    """Compute of one job: ``replicas`` pods, each with ``cpu``, ``memory`` and ``gpu``."""

    replicas: int = Field(default=1, ge=1, le=64, description="Pods (DDP workers) per job.")
    cpu: str = Field(
        default="1",
        pattern=QUANTITY,
        description="CPU per replica (Kubernetes quantity, e.g. `2` or `500m`).",
        json_schema_extra={"x-kubernetes-int-or-string": True},
    )
    memory: str = Field(
        default="4Gi",
        pattern=QUANTITY,
        description="Memory per replica (Kubernetes quantity, e.g. `8Gi`).",
        json_schema_extra={"x-kubernetes-int-or-string": True},
    )
    gpu: int = Field(default=0, ge=0, le=16, description="GPUs per replica (`nvidia.com/gpu`).")
    queue: str | None = Field(default=None, max_length=253, description="Volcano queue of the job.")
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="PriorityClass of the job's pods."
    )

    _q = field_validator("cpu", "memory", mode="before")(_quantity)

    @property
    def total_gpus(self) -> int:
        return self.replicas * self.gpu


class StorageSpec(ApiModel):
    """Artifact root. Credentials live in a Secret named by ``secretRef``, never in the spec."""

    uri: str = Field(min_length=1, max_length=1024, description="`s3://bucket/prefix` or a filesystem path.")
    secret_ref: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Secret whose keys become the job's environment (e.g. AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, S3_ENDPOINT_URL).",
    )

    @field_validator("uri")
    @classmethod
    def _no_inline_credentials(cls, uri: str) -> str:
        if uri.startswith("s3://") and "@" in uri.split("/", 3)[2]:
            raise ValueError("credentials in the URI are not allowed: put them in a Secret (secretRef)")
        if uri.startswith("s3://") and not uri[len("s3://") :].split("/", 1)[0]:
            raise ValueError("s3 URI needs a bucket: s3://bucket/prefix")
        return uri


class DatasetSpec(ApiModel):
    """A windowed Parquet dataset (``<uri>/window=NNNNN/``) and its feature schema.

    ``synthetic`` holds ``exfm_trainer.data.synthetic.SyntheticConfig`` parameters (snake_case) for a
    dataset generated into ``uri``; then ``schema`` may be omitted: it is the generator's schema.
    """

    model_config = {"json_schema_extra": {"x-kubernetes-validations": [
        cel("has(self.schema) || has(self.synthetic)",
            "dataset needs a schema (or synthetic generator params)", fieldPath=".schema"),
    ]}}  # fmt: skip

    uri: str = Field(min_length=1, max_length=1024, description="Root of the window folders.")
    feature_schema: FeatureSchema | None = Field(
        default=None, alias="schema", description="Feature schema (label, dense, sparse columns)."
    )
    synthetic: dict[str, Any] | None = Field(
        default=None,
        description="Synthetic generator parameters (`SyntheticConfig`, snake_case; local runner and demos).",
    )

    @field_validator("synthetic")
    @classmethod
    def _valid_generator(cls, params: dict[str, Any] | None) -> dict[str, Any] | None:
        if params is not None:
            _synthetic_config(params)
        return params

    @model_validator(mode="after")
    def _schema_or_synthetic(self) -> DatasetSpec:
        if self.feature_schema is None and self.synthetic is None:
            raise ValueError("dataset needs a schema (or synthetic generator params)")
        return self

    def resolved_schema(self) -> FeatureSchema | None:
        """``schema``, or the schema the synthetic generator writes (None if neither is known)."""
        if self.feature_schema is not None:
            return self.feature_schema
        if self.synthetic is None:
            return None
        from exfm_trainer.data.synthetic import synthetic_schema

        return synthetic_schema(_synthetic_config(self.synthetic))


def _synthetic_config(params: dict[str, Any]) -> Any:
    """``exfm_trainer.data.synthetic.SyntheticConfig`` (torch-free), errors as one ValueError."""
    from exfm_trainer.data.synthetic import SyntheticConfig

    try:
        return SyntheticConfig.model_validate(params)
    except ValidationError as err:
        parts = [
            f"{'.'.join(str(x) for x in e['loc']) or '<root>'}: {e['msg']}{suggest_field(SyntheticConfig, e)}"
            for e in err.errors()
        ]
        raise ValueError("invalid synthetic generator params: " + "; ".join(parts)) from None


class WindowRange(ApiModel, JobWindowRange):
    """Windows ``[start, end)``; no ``end`` means every window from ``start`` on (streaming).

    The job contract's range with API bounds and CEL rules: ``end >= start`` and ``contains`` are inherited.
    """

    model_config = {"json_schema_extra": {"x-kubernetes-validations": [
        cel("!has(self.end) || self.end >= self.start", "windows.end must be >= windows.start",
            fieldPath=".end"),
    ]}}  # fmt: skip

    start: int = Field(default=0, ge=0, le=10_000_000, description="First window.")
    end: int | None = Field(default=None, ge=0, le=10_000_000, description="One past the last window.")


class Cadence(ApiModel):
    """How many windows one job covers. An open-ended range waits for a full chunk; the last chunk
    of a closed range may be shorter."""

    windows_per_job: int = Field(default=1, ge=1, le=1000, description="Windows per job.")


class RetryPolicy(ApiModel):
    """Failed jobs are retried with exponential backoff; after ``limit`` failures the phase is Failed."""

    limit: int = Field(default=3, ge=0, le=100, description="Retries of one window range.")
    backoff_seconds: int = Field(default=30, ge=0, le=86400, description="First backoff; doubles per try.")
    max_backoff_seconds: int = Field(default=900, ge=0, le=86400, description="Backoff cap.")


class Retention(ApiModel):
    """Checkpoint retention: the newest ``keepCheckpoints`` plus every pinned version."""

    keep_checkpoints: int = Field(default=3, ge=1, le=1000, description="Newest checkpoints kept.")
    pinned_versions: list[str] = Field(
        default_factory=list, max_length=100, description="Versions never deleted (e.g. `00042`)."
    )


class Training(ApiModel):
    """Trainer knobs passed to the job config."""

    batch_size: int = Field(default=2048, ge=1, le=1_048_576, description="Examples per step.")
    embedding_lr: float = Field(default=0.02, gt=0, description="Rowwise Adagrad LR of the embeddings.")
    dense_lr: float | None = Field(
        default=None, gt=0, description="LR of the dense layers (default: the model preset's)."
    )
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(default=100, ge=0, le=1_000_000, description="Linear warm-up of the dense LR.")
    clip_grad_norm: float | None = Field(
        default=1.0, gt=0, description="Clip the dense gradients' global norm (null: no clipping)."
    )
    seed: int = Field(default=0, ge=0)
    device: Device = Field(default="auto", description="`auto` uses a GPU when the pod has one.")
    max_bad_row_fraction: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Bad rows (NaN/unparsable dense values, labels outside {0,1}...; docs/data.md) are "
        "skipped and counted; a window with a larger skipped fraction fails the job.",
    )


class ObjectRef(ApiModel):
    """A resource in the same namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)


# ---------------------------------------------------------------- status parts


class Condition(ApiModel):
    """Kubernetes-style condition."""

    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(default="", max_length=1024)
    message: str = Field(default="", max_length=32768)
    last_transition_time: datetime | None = None
    observed_generation: int | None = None


class WindowSpan(ApiModel):
    """Windows ``[start, end)``."""

    start: int
    end: int


class CheckpointStatus(ApiModel):
    """A committed checkpoint."""

    version: str
    uri: str
    last_window: int
    metrics: dict[str, float] = Field(default_factory=dict, description="e.g. ne, auc of the last window.")


class JobStatus(ApiModel):
    """The job the resource is running now."""

    name: str
    handle: str | None = Field(default=None, description="TorchX app handle.")
    kind: Literal["fm-train", "das", "vm-train"]
    windows: WindowSpan
    start_time: datetime | None = None
    state: str = "PENDING"
    attempt: int = 0


class Counters(ApiModel):
    jobs_submitted: int = 0
    jobs_succeeded: int = 0
    jobs_failed: int = 0
    retries: int = Field(default=0, description="Failures of the current window range.")
    windows_processed: int = 0


class StatusBase(ApiModel):
    """Fields common to every kind's status."""

    model_config = {"extra": "allow"}

    phase: Phase = "Pending"
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    last_window: int | None = Field(default=None, description="Last processed window.")
    active_job: JobStatus | None = None
    last_error: str | None = None
    next_retry_time: datetime | None = None
    counters: Counters = Field(default_factory=Counters)

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def is_true(self, type_: str) -> bool:
        cond = self.condition(type_)
        return cond is not None and cond.status == "True"
