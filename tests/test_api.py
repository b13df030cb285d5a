"""API models and the manifest loader: defaults, aliases, validation messages."""

from __future__ import annotations

import pytest

from exfm_operator.api import (
    DataAugmentation,
    FoundationModel,
    ManifestError,
    VerticalModel,
    load_manifests,
    load_paths,
    load_yaml,
    parse_resource,
)

SCHEMA = {"dense": ["d0", "d1"], "sparse": [{"name": "s0", "hash_buckets": 1000, "embedding_dim": 8}]}


def fm_doc(**spec) -> dict:
    base = {
        "dataset": {"uri": "s3://data/clicks", "schema": SCHEMA},
        "storage": {"uri": "s3://exfm/artifacts", "secretRef": "minio-creds"},
    }
    return {
        "apiVersion": "exfm.io/v1alpha1",
        "kind": "FoundationModel",
        "metadata": {"name": "fm-main", "namespace": "ads"},
        "spec": {**base, **spec},
    }


def vm_doc(**spec) -> dict:
    return {
        "apiVersion": "exfm.io/v1alpha1",
        "kind": "VerticalModel",
        "metadata": {"name": "vm-feed", "namespace": "ads"},
        "spec": {"dasRef": {"name": "das"}, **spec},
    }


def problems(docs: list) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifests(docs, "m.yaml")
    return info.value.problems


def test_defaults_and_camel_case_round_trip():
    fm = parse_resource(fm_doc(resources={"cpu": 2, "gpu": 1, "priorityClassName": "high"}))
    assert isinstance(fm, FoundationModel)
    assert fm.spec.resources.cpu == "2"  # ints become quantities
    assert fm.spec.resources.priority_class_name == "high"
    assert fm.spec.cadence.windows_per_job == 1
    assert fm.spec.retention.keep_checkpoints == 3
    assert fm.spec.preset == "small"
    out = fm.to_json()
    assert out["spec"]["storage"]["secretRef"] == "minio-creds"
    assert out["spec"]["dataset"]["schema"]["sparse"][0]["hash_buckets"] == 1000
    assert "windowsPerJob" in out["spec"]["cadence"]
    assert parse_resource(out).spec == fm.spec


def test_field_paths_name_kind_object_and_field_one_per_problem():
    bad_vm = vm_doc(distillation={"alpha": -1, "mode": "kd"}, resources={"replicas": 0})
    msgs = problems([fm_doc(), bad_vm])
    assert len(msgs) == 2
    assert msgs[0].startswith('VerticalModel "ads/vm-feed" (m.yaml#1): spec.distillation.alpha:')
    assert "greater than 0" in msgs[0]
    assert "spec.resources.replicas:" in msgs[1]


def test_list_indices_in_paths():
    msgs = problems([fm_doc(retention={"pinnedVersions": ["00001", 7]})])
    assert msgs == [
        'FoundationModel "ads/fm-main" (m.yaml#0): spec.retention.pinnedVersions[1]: '
        "Input should be a valid string"
    ]


def test_unknown_kind_and_bad_api_version_and_non_mapping():
    msgs = problems(
        [{"apiVersion": "exfm.io/v1alpha1", "kind": "Teacher"}, {**fm_doc(), "apiVersion": "v1"}, 3]
    )
    assert (
        "unknown kind 'Teacher'" in msgs[0] and "FoundationModel, DataAugmentation, VerticalModel" in msgs[0]
    )
    assert "apiVersion: expected 'exfm.io/v1alpha1', got 'v1'" in msgs[1]
    assert "expected a mapping" in msgs[2]


def test_unknown_spec_field_rejected():
    msgs = problems([fm_doc(windowsPerJob=4)])
    assert msgs == [
        'FoundationModel "ads/fm-main" (m.yaml#0): spec.windowsPerJob: Extra inputs are not permitted; '
        "did you mean 'cadence.windowsPerJob'?"
    ]


def test_missing_required_fields_named():
    doc = fm_doc()
    del doc["spec"]["storage"]
    doc["metadata"] = {}
    msgs = problems([doc])
    assert any("metadata.name: Field required" in m for m in msgs)
    assert any("spec.storage: Field required" in m for m in msgs)
    assert all(m.startswith("FoundationModel (unnamed)") for m in msgs)


@pytest.mark.parametrize(
    ("spec", "field", "text"),
    [
        ({"windows": {"start": 5, "end": 2}}, "spec.windows", "end (2) must be >= start (5)"),
        ({"storage": {"uri": "s3://key:secret@bucket/x"}}, "spec.storage.uri", "credentials in the URI"),
        ({"storage": {"uri": "s3:///x"}}, "spec.storage.uri", "needs a bucket"),
        ({"dataset": {"uri": "/data"}}, "spec.dataset", "needs a schema"),
        ({"resources": {"gpu": 1}, "training": {"device": "cpu"}}, "spec", "requires training.device"),
        ({"training": {"device": "cuda"}}, "spec", "requires resources.gpu > 0"),
        ({"preset": "huge"}, "spec.preset", "'tiny', 'small', 'medium' or 'large'"),
        ({"resources": {"memory": "lots"}}, "spec.resources.memory", "should match pattern"),
        ({"storage": {"uri": "/x", "secretRef": "Bad_Name"}}, "spec.storage.secretRef", "pattern"),
    ],
)
def test_fm_rules(spec, field, text):
    (msg,) = problems([fm_doc(**spec)])
    assert f": {field}: " in msg and text in msg, msg


def test_adapter_requires_distillation():
    (msg,) = problems([vm_doc(distillation={"mode": "none", "adapter": True})])
    assert "spec.distillation: the student adapter needs distillation" in msg


def test_synthetic_dataset_needs_no_schema():
    params = {"windows": 4, "rows_per_window": 1000, "verticals": ["feed", "video"]}
    fm = parse_resource(fm_doc(dataset={"uri": "/tmp/data", "synthetic": params}))
    assert fm.spec.dataset.feature_schema is None and fm.spec.dataset.synthetic == params
    schema = fm.spec.dataset.resolved_schema()
    assert schema is not None and schema.vertical is not None and schema.sparse


def test_synthetic_params_validated_with_the_generator_model():
    (msg,) = problems([fm_doc(dataset={"uri": "/d", "synthetic": {"rows_per_window": 0, "colour": 1}})])
    assert "spec.dataset.synthetic: invalid synthetic generator params: rows_per_window:" in msg
    assert "colour: Extra inputs are not permitted" in msg


def test_duplicates_rejected_and_none_documents_skipped():
    msgs = problems([fm_doc(), None, fm_doc()])
    assert msgs == ['FoundationModel "ads/fm-main" (m.yaml#2): defined twice (first at m.yaml#0)']


def test_load_yaml_and_paths(tmp_path):
    text = """
apiVersion: exfm.io/v1alpha1
kind: DataAugmentation
metadata: {name: das}
spec: {fmRef: {name: fm}, maxStaleness: 2}
---
apiVersion: exfm.io/v1alpha1
kind: VerticalModel
metadata: {name: vm}
spec: {dasRef: {name: das}, distillation: {mode: aux, adapter: true}}
"""
    das, vm = load_yaml(text)
    assert isinstance(das, DataAugmentation) and das.spec.max_staleness == 2
    assert das.metadata.namespace == "default"
    assert isinstance(vm, VerticalModel) and vm.spec.distillation.adapter
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b.yml").write_text("kind: Nope\n")
    with pytest.raises(ManifestError) as info:
        load_paths([tmp_path])
    assert info.value.problems == [
        f"{tmp_path / 'b.yml'}#0: unknown kind 'Nope'; expected one of "
        "FoundationModel, DataAugmentation, VerticalModel (apiVersion exfm.io/v1alpha1)"
    ]
    assert len(load_paths([tmp_path / "a.yaml"])) == 2
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_yaml("a: [", "x.yaml")
    with pytest.raises(ManifestError, match="does not exist"):
        load_paths([tmp_path / "missing.yaml"])
