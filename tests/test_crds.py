"""The generated CRDs: up to date, valid CRD objects, structural schemas, working CEL rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from exfm_operator.api import DataAugmentation, FoundationModel, VerticalModel
from exfm_operator.api.crd import crd_filename, render_crds
from exfm_operator.api.reference import render_markdown

ROOT = Path(__file__).resolve().parents[1]
RENDERED = render_crds()
CRDS = {name: yaml.safe_load(text) for name, text in RENDERED.items()}
SCHEMA_KEYS = {
    "type", "description", "properties", "items", "required", "default", "enum", "nullable", "format",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern",
    "maxItems", "minItems", "additionalProperties", "x-kubernetes-validations",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
}  # fmt: skip


def openapi(kind: str) -> dict[str, Any]:
    return CRDS[crd_filename(kind)]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crds_are_current():
    for name, text in RENDERED.items():
        path = ROOT / "crds" / name
        assert path.exists() and path.read_text() == text, f"crds/{name} is stale: run `exfm crds --out crds`"
    extra = {p.name for p in (ROOT / "crds").glob("*.yaml")} - set(RENDERED)
    assert not extra, f"crds/ has files the API does not generate: {extra}; run `exfm crds --out crds`"


def test_committed_reference_is_current():
    text = (ROOT / "docs" / "api.md").read_text()
    assert text == render_markdown(), (
        "docs/api.md is stale: run `python -c 'from exfm_operator.api.reference import write_markdown; "
        'write_markdown("docs/api.md")\'`'
    )


@pytest.mark.parametrize("name", sorted(CRDS))
def test_crd_object_validates_against_kubernetes_schema(name):
    kubernetes_validate.validate(CRDS[name], latest_version(), strict=True)


def _walk(node: dict[str, Any], path: str):
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", ["FoundationModel", "DataAugmentation", "VerticalModel"])
def test_schema_is_structural(kind):
    for path, node in _walk(openapi(kind), kind):
        unknown = set(node) - SCHEMA_KEYS
        assert not unknown, f"{path}: keys not allowed in a structural schema: {unknown}"
        special = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        assert "type" in node or special, f"{path}: every node needs a type"
        assert node.get("additionalProperties") is not False, f"{path}: additionalProperties false"
        if "additionalProperties" in node:
            assert "properties" not in node, f"{path}: properties and additionalProperties together"
        if node.get("nullable"):
            assert "type" in node, f"{path}: nullable without type"
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(key, True) is True, f"{path}: {key} must be boolean in OpenAPI v3"
        if "default" in node:
            assert node["default"] is not None, f"{path}: null default"
        for req in node.get("required", []):
            assert req in node.get("properties", {}), f"{path}: required field {req} is not a property"


def test_names_columns_and_subresources():
    fm = CRDS["exfm.io_foundationmodels.yaml"]["spec"]
    assert fm["names"]["shortNames"] == ["fm"] and fm["names"]["categories"] == ["exfm"]
    assert fm["versions"][0]["subresources"] == {"status": {}}
    cols = [c["name"] for c in fm["versions"][0]["additionalPrinterColumns"]]
    assert cols == ["Ready", "Phase", "Window", "Checkpoint", "NE", "Age"]
    assert CRDS["exfm.io_dataaugmentations.yaml"]["spec"]["names"]["shortNames"] == ["das"]
    assert CRDS["exfm.io_verticalmodels.yaml"]["spec"]["names"]["shortNames"] == ["vm"]


def _draft4(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI → JSON Schema draft 4 for jsonschema: nullable → type list; drop k8s extensions."""
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes") and k != "nullable"}
    if schema.get("nullable"):
        out["type"] = [schema["type"], "null"]
    if schema.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
        out.pop("type", None) if schema.get("type") != "object" else None
    if "properties" in out:
        out["properties"] = {k: _draft4(v) for k, v in out["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False  # the API server would prune; here unknown means a bug
    if isinstance(out.get("items"), dict):
        out["items"] = _draft4(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _draft4(out["additionalProperties"])
    return out


def _examples():
    schema = {"dense": ["d0"], "sparse": [{"name": "s0"}], "vertical": "v"}
    fm = FoundationModel.model_validate({
        "metadata": {"name": "fm", "namespace": "ads"},
        "spec": {"dataset": {"uri": "s3://b/d", "schema": schema},
                 "storage": {"uri": "s3://b/a", "secretRef": "s"},
                 "resources": {"replicas": 2, "gpu": 1, "cpu": 4}, "windows": {"start": 3, "end": 9}},
    })  # fmt: skip
    das = DataAugmentation.model_validate({"metadata": {"name": "das"}, "spec": {"fmRef": {"name": "fm"}}})
    vm = VerticalModel.model_validate({
        "metadata": {"name": "vm"},
        "spec": {"dasRef": {"name": "das"}, "vertical": "feed",
                 "distillation": {"mode": "kd", "adapter": True}},
    })  # fmt: skip
    return [fm, das, vm]


@pytest.mark.parametrize("resource", _examples(), ids=lambda r: r.kind)
def test_model_output_validates_against_crd_schema(resource):
    doc = resource.to_json()
    jsonschema.Draft4Validator(_draft4(openapi(resource.kind))).validate(doc)


def test_crd_schema_rejects_what_the_models_reject():
    (fm, _, _) = _examples()
    validator = jsonschema.Draft4Validator(_draft4(openapi("FoundationModel")))
    for path, value in [
        (("preset",), "huge"),
        (("resources", "replicas"), 0),
        (("storage",), {"secretRef": "x"}),
    ]:
        doc = fm.to_json()
        node = doc["spec"]
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(doc)


def _rules(kind: str) -> dict[str, list[dict[str, str]]]:
    return {
        path: node["x-kubernetes-validations"]
        for path, node in _walk(openapi(kind), kind)
        if "x-kubernetes-validations" in node
    }


def _cel(rule: str, self_: Any, old: Any = None) -> bool:
    env = celpy.Environment()
    act = {"self": celpy.json_to_cel(self_)}
    if old is not None:
        act["oldSelf"] = celpy.json_to_cel(old)
    return bool(env.program(env.compile(rule)).evaluate(act))


def test_cel_rules_present_and_evaluate_like_the_models():
    fm_rules, das_rules, vm_rules = (
        _rules(k) for k in ("FoundationModel", "DataAugmentation", "VerticalModel")
    )
    (window_rule,) = fm_rules["FoundationModel.spec.windows"]
    assert _cel(window_rule["rule"], {"start": 2, "end": 5})
    assert _cel(window_rule["rule"], {"start": 2})
    assert not _cel(window_rule["rule"], {"start": 5, "end": 2})
    gpu_rules = [r["rule"] for r in fm_rules["FoundationModel.spec"]]
    spec = {"resources": {"gpu": 1}, "training": {"device": "cpu"}}
    assert not all(_cel(r, spec) for r in gpu_rules)
    spec = {"resources": {"gpu": 0}, "training": {"device": "cuda"}}
    assert not all(_cel(r, spec) for r in gpu_rules)
    spec = {"resources": {"gpu": 2}, "training": {"device": "auto"}}
    assert all(_cel(r, spec) for r in gpu_rules)
    (dataset_rule,) = fm_rules["FoundationModel.spec.dataset"]
    assert not _cel(dataset_rule["rule"], {"uri": "/d"})
    assert _cel(dataset_rule["rule"], {"uri": "/d", "synthetic": {"windows": 2}})
    (immutable,) = das_rules["DataAugmentation.spec.fmRef"]
    assert _cel(immutable["rule"], {"name": "a"}, {"name": "a"})
    assert not _cel(immutable["rule"], {"name": "b"}, {"name": "a"})
    assert "VerticalModel.spec.dasRef" in vm_rules
    (adapter,) = vm_rules["VerticalModel.spec.distillation"]
    assert not _cel(adapter["rule"], {"mode": "none", "adapter": True})
    assert _cel(adapter["rule"], {"mode": "aux", "adapter": True})
