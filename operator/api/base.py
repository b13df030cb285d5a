"""Shared base of the API models: camelCase JSON aliases, strict fields, API group constants."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

GROUP = "exfm.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "exfm"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ANNOTATIONS_MAX_BYTES = 256 * 1024  # Kubernetes: total size of all annotation keys and values
_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def metadata_key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid label/annotation key (``[prefix/]name``), or None."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not re.match(DNS_SUBDOMAIN, prefix)):
        return f"key {key!r}: the prefix must be a DNS subdomain of at most 253 characters"
    if len(name) > 63 or not _NAME_PART.match(name):
        return (
            f"key {key!r}: the name part must be at most 63 characters of [A-Za-z0-9-_.], "
            "starting and ending with a letter or digit"
        )
    return None


class ApiModel(BaseModel):
    """Base of every spec/status part: camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, alias_generator=to_camel, validate_default=True
    )

    def to_json(self) -> dict[str, Any]:
        """The camelCase JSON form (what the API server stores), without unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def sub(model: type[BaseModel], description: str) -> Any:
    """A nested all-defaults object field; the CRD gets ``default: {}`` so the API server fills it."""
    return Field(default_factory=model, description=description, json_schema_extra={"default": {}})


def cel(rule: str, message: str, **extra: str) -> dict[str, Any]:
    """One ``x-kubernetes-validations`` entry (also enforced by the pydantic validators)."""
    return {"rule": rule, "message": message, **extra}


class ObjectMeta(BaseModel):
    """The parts of Kubernetes ``metadata`` the control plane reads; other keys are kept as is."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, alias_generator=to_camel)

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    namespace: str = Field(default="default", min_length=1, max_length=63, pattern=DNS_LABEL)
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            problem = metadata_key_problem(key)
            if problem:
                raise ValueError(problem)
            if len(value) > 63 or not _LABEL_VALUE.match(value):
                raise ValueError(
                    f"label {key!r}: value {value[:40]!r} must be at most 63 characters of [A-Za-z0-9-_.], "
                    "starting and ending with a letter or digit (Kubernetes label rules)"
                )
        return labels

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, annotations: dict[str, str]) -> dict[str, str]:
        for key in annotations:
            problem = metadata_key_problem(key)
            if problem:
                raise ValueError(problem)
        total = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
        if total > ANNOTATIONS_MAX_BYTES:
            biggest = max(annotations, key=lambda k: len(annotations[k].encode()))
            raise ValueError(
                f"annotations total {total} bytes, more than Kubernetes' limit of {ANNOTATIONS_MAX_BYTES} "
                f"(256 KiB); the largest is {biggest!r}: store big data elsewhere and reference it"
            )
        return annotations
