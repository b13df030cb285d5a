"""Generate the CustomResourceDefinitions from the pydantic models.

Pydantic's JSON schema is turned into a *structural* OpenAPI v3 schema: ``$ref`` inlined,
``anyOf [X, null]`` → ``X`` + ``nullable``, ``const`` → ``enum``, numeric ``exclusiveMinimum`` →
``minimum`` + boolean, ``additionalProperties: true`` → ``x-kubernetes-preserve-unknown-fields``,
titles and ``additionalProperties: false`` dropped (the API server prunes unknown fields).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from exfm_operator.api.base import CATEGORY, GROUP, VERSION
from exfm_operator.api.resources import (
    KINDS,
    PLURALS,
    SHORT_NAMES,
    DataAugmentationSpec,
    DataAugmentationStatus,
    FoundationModelSpec,
    FoundationModelStatus,
    VerticalModelSpec,
    VerticalModelStatus,
)

HEADER = "# Generated from exfm_operator.api by `exfm crds --out crds`. Do not edit.\n"
_DROP = {"title", "examples"}
_MERGE_LISTS = ("x-kubernetes-validations",)

SPECS: dict[str, tuple[type[BaseModel], type[BaseModel]]] = {
    "FoundationModel": (FoundationModelSpec, FoundationModelStatus),
    "DataAugmentation": (DataAugmentationSpec, DataAugmentationStatus),
    "VerticalModel": (VerticalModelSpec, VerticalModelStatus),
}


class SchemaConversionError(ValueError):
    """A model uses a construct that has no structural OpenAPI form."""


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if key in _MERGE_LISTS and key in out:
            out[key] = [*out[key], *value]
        else:
            out[key] = value
    return out


def structural(node: dict[str, Any], defs: dict[str, Any], path: str = "") -> dict[str, Any]:
    """Convert one pydantic JSON-schema node (and its children) into structural OpenAPI v3."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = _merge(copy.deepcopy(target), node)
    if node.get("x-kubernetes-int-or-string"):
        keep = {k: node[k] for k in ("description", "default") if k in node}
        return {"x-kubernetes-int-or-string": True, **keep}
    if "anyOf" in node:
        every = node.pop("anyOf")
        options = [o for o in every if o.get("type") != "null"]
        if len(options) != 1:
            raise SchemaConversionError(f"{path or '<root>'}: union types have no structural form")
        node = _merge(structural(options[0], defs, path), node)
        if len(options) < len(every):
            node["nullable"] = True
    if "allOf" in node and len(node["allOf"]) == 1:
        node = _merge(structural(node.pop("allOf")[0], defs, path), node)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or key == "$defs":
            continue
        if key == "default" and value is None:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        elif key == "additionalProperties":
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif isinstance(value, dict):
                out[key] = structural(value, defs, f"{path}.*")
        elif key == "properties":
            out[key] = {k: structural(v, defs, f"{path}.{k}") for k, v in value.items()}
        elif key == "items":
            out[key] = structural(value, defs, f"{path}[]")
        else:
            out[key] = value
    if "type" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        raise SchemaConversionError(f"{path or '<root>'}: no type")
    if out.get("nullable") is True and "type" not in out:
        out.pop("nullable")
    first = {k: out.pop(k) for k in ("type", "description") if k in out}
    return {**first, **out}


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """Structural OpenAPI v3 schema of one pydantic model (camelCase field names)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}), "")


def _columns(kind: str) -> list[dict[str, Any]]:
    cols: list[dict[str, Any]] = [
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Window", "type": "integer", "jsonPath": ".status.lastWindow",
         "description": "Last processed window"},
    ]  # fmt: skip
    if kind == "DataAugmentation":
        cols += [
            {"name": "FM", "type": "string", "jsonPath": ".status.fmVersion",
             "description": "FM version of the newest augmented window"},
            {"name": "Staleness", "type": "integer", "jsonPath": ".status.lineage.staleness.max",
             "description": "Largest FM staleness (windows)"},
        ]  # fmt: skip
    else:
        cols += [
            {"name": "Checkpoint", "type": "string", "jsonPath": ".status.latestCheckpoint.version"},
            {"name": "NE", "type": "number", "jsonPath": ".status.latestCheckpoint.metrics.ne",
             "description": "Normalized entropy of the last evaluated window"},
        ]  # fmt: skip
    cols.append({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})
    return cols


def crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition object of one kind."""
    spec_model, status_model = SPECS[kind]
    status = model_schema(status_model)
    status["x-kubernetes-preserve-unknown-fields"] = True  # room for handler bookkeeping
    status.pop("required", None)
    schema = {
        "type": "object",
        "description": (KINDS[kind].__doc__ or spec_model.__doc__ or kind).strip(),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": model_schema(spec_model),
            "status": status,
        },
    }
    plural = PLURALS[kind]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "exfm"}},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [SHORT_NAMES[kind]],
                "categories": [CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _columns(kind),
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def crd_filename(kind: str) -> str:
    """``exfm.io_<plural>.yaml``: the file name of a kind's CRD under ``crds/``."""
    return f"{GROUP}_{PLURALS[kind]}.yaml"


def render_crds() -> dict[str, str]:
    """``{filename: yaml text}`` for every kind, deterministic."""
    return {
        crd_filename(kind): HEADER + yaml.safe_dump(crd(kind), sort_keys=False, width=110) for kind in KINDS
    }


def write_crds(directory: str | Path) -> list[Path]:
    """Write the CRD files into ``directory`` (created if missing); returns the paths written."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_crds().items():
        path = out / name
        path.write_text(text)
        written.append(path)
    return written
