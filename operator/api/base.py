"""Shared base of the API models: camelCase JSON aliases, strict fields, API group constants."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "exfm.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "exfm"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


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
