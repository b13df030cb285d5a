"""ExFM API (group ``exfm.io``, version ``v1alpha1``): pydantic models, CRD generation, manifest loading."""

from exfm_operator.api.base import API_VERSION, CATEGORY, GROUP, VERSION, ApiModel, ObjectMeta
from exfm_operator.api.common import (
    CONDITION_TYPES,
    Cadence,
    CheckpointStatus,
    Condition,
    Counters,
    DatasetSpec,
    JobStatus,
    ObjectRef,
    Resources,
    Retention,
    RetryPolicy,
    StatusBase,
    StorageSpec,
    Training,
    WindowRange,
    WindowSpan,
)
from exfm_operator.api.load import ManifestError, load_manifests, load_paths, load_yaml, parse_resource
from exfm_operator.api.resources import (
    KINDS,
    PLURALS,
    SHORT_NAMES,
    DASLineage,
    DASOutput,
    DASWindowLineage,
    DataAugmentation,
    DataAugmentationSpec,
    DataAugmentationStatus,
    Distillation,
    FMLineage,
    FoundationModel,
    FoundationModelSpec,
    FoundationModelStatus,
    Resource,
    StalenessSummary,
    VerticalModel,
    VerticalModelSpec,
    VerticalModelStatus,
    VMLineage,
)

__all__ = [
    "API_VERSION", "CATEGORY", "CONDITION_TYPES", "GROUP", "KINDS", "PLURALS", "SHORT_NAMES", "VERSION",
    "ApiModel", "Cadence", "CheckpointStatus", "Condition", "Counters", "DASLineage", "DASOutput",
    "DASWindowLineage", "DataAugmentation", "DataAugmentationSpec", "DataAugmentationStatus", "DatasetSpec",
    "Distillation", "FMLineage", "FoundationModel", "FoundationModelSpec", "FoundationModelStatus",
    "JobStatus", "ManifestError", "ObjectMeta", "ObjectRef", "Resource", "Resources", "Retention",
    "RetryPolicy", "StalenessSummary", "StatusBase", "StorageSpec", "Training", "VMLineage", "VerticalModel",
    "VerticalModelSpec", "VerticalModelStatus", "WindowRange", "WindowSpan", "load_manifests", "load_paths",
    "load_yaml", "parse_resource",
]  # fmt: skip
