"""Serving budget: ``VerticalModel.spec.features`` → ``VMTrainJob.features`` → a VM, export and DAS."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from planner_fixtures import das, dwin, fm, published_das, vm, world
from trainer_data import SCHEMA, fm_job, make_dataset, vm_job, window_table
from typer.testing import CliRunner

from exfm_operator.api import ManifestError, load_manifests
from exfm_operator.cli import app
from exfm_operator.planner import plan_data_augmentation, plan_vertical_model
from exfm_trainer import layout
from exfm_trainer.das import run_das
from exfm_trainer.data.batches import iter_batches
from exfm_trainer.data.windows import DataError, iter_record_batches, write_window
from exfm_trainer.jobs import DatasetRef, JobConfigError, VMTrainJob, parse_job
from exfm_trainer.models.checkpoint import load_model, read_checkpoint
from exfm_trainer.models.export import load_serving
from exfm_trainer.schema import FeatureSchema
from exfm_trainer.storage import open_storage
from exfm_trainer.storage.commit import read_manifest
from exfm_trainer.train.loop import run_training

BUDGET = ["item", "d0", "tags"]


def test_select_keeps_roles_and_schema_order_and_names_bad_columns() -> None:
    sub = SCHEMA.select(BUDGET)
    assert sub.dense == ["d0"] and sub.sparse_names == ["item", "tags"]
    assert (sub.label, sub.vertical, sub.timestamp) == (SCHEMA.label, "vertical", None)
    assert sub.sparse[0] == SCHEMA.sparse[1]  # encodings untouched
    with pytest.raises(ValueError, match=r"\['price'\] are not feature columns.*valid: \['d0', 'd1', 'user'"):
        SCHEMA.select(["d0", "price"])
    with pytest.raises(ValueError, match="features is empty"):
        SCHEMA.select([])
    with pytest.raises(ValueError, match=r"\['d0'\] more than once"):
        SCHEMA.select(["d0", "d0"])
    with pytest.raises(ValueError, match="not feature columns"):
        SCHEMA.select(["label"])  # the label is no feature


def test_job_config_rejects_unknown_and_empty_features(tmp_path: Path) -> None:
    ds = DatasetRef(uri=str(tmp_path), schema=SCHEMA)
    with pytest.raises(JobConfigError, match=r"features \['price'\] are not feature columns.*'tags'\]"):
        parse_job(vm_job(tmp_path, ds, features=["d0", "price"]))
    with pytest.raises(JobConfigError, match="features is empty"):
        parse_job(vm_job(tmp_path, ds, features=[]))
    job = parse_job(vm_job(tmp_path, ds, features=BUDGET))
    assert isinstance(job, VMTrainJob) and job.model_dataset().feature_schema == SCHEMA.select(BUDGET)
    assert job.dataset.feature_schema == SCHEMA  # the job keeps the dataset's full schema


def _vm_doc(**spec: object) -> dict:
    return {
        "apiVersion": "exfm.io/v1alpha1",
        "kind": "VerticalModel",
        "metadata": {"name": "feed"},
        "spec": {"dasRef": {"name": "das"}, **spec},
    }


def test_api_rejects_empty_and_repeated_features() -> None:
    with pytest.raises(ManifestError) as info:
        load_manifests([_vm_doc(features=[]), _vm_doc(features=["a", "a"])], "m.yaml")
    text = "\n".join(info.value.problems)
    assert "spec.features" in text and "at least 1" in text and "['a'] more than once" in text
    (ok,) = load_manifests([_vm_doc(features=["a", "b"])], "m.yaml")
    assert ok.spec.features == ["a", "b"] and ok.to_json()["spec"]["features"] == ["a", "b"]


def test_planner_maps_features_and_degrades_on_unknown_columns() -> None:
    sub_plan = plan_vertical_model(
        vm({"features": ["s0"]}), published_das(), world(das_windows=(dwin(2, 1),))
    )
    (submit,) = [a for a in sub_plan.actions if type(a).__name__ == "SubmitJob"]
    cfg = parse_job(submit.config)  # type: ignore[attr-defined]
    assert isinstance(cfg, VMTrainJob) and cfg.features == ["s0"]
    assert cfg.dataset.feature_schema.dense == ["d0"]  # the DAS's schema is passed whole
    d = das()
    d.status = plan_data_augmentation(d, fm(), world()).status
    plan = plan_vertical_model(vm({"features": ["s0", "price"]}), d, world(das_windows=(dwin(2, 1),)))
    assert plan.status.phase == "Degraded" and not [
        a for a in plan.actions if type(a).__name__ == "SubmitJob"
    ]
    msg = next(c.message for c in plan.status.conditions if c.type == "Degraded")
    assert msg.startswith("spec.features: features ['price'] are not feature columns") and "'s0'" in msg


def test_validate_names_an_unknown_feature(tmp_path: Path) -> None:
    text = """\
apiVersion: exfm.io/v1alpha1
kind: FoundationModel
metadata: {name: teacher}
spec:
  dataset: {uri: s3://exfm/data, schema: {dense: [d0], sparse: [{name: s0}]}}
  storage: {uri: s3://exfm/run}
---
apiVersion: exfm.io/v1alpha1
kind: DataAugmentation
metadata: {name: augment}
spec: {fmRef: {name: teacher}}
---
apiVersion: exfm.io/v1alpha1
kind: VerticalModel
metadata: {name: feed}
spec: {dasRef: {name: augment}, features: [s0, price]}
"""
    (tmp_path / "m.yaml").write_text(text)
    result = CliRunner().invoke(app, ["validate", "-f", str(tmp_path / "m.yaml")])
    assert result.exit_code == 2
    assert (
        "spec.features: features ['price'] are not feature columns of the dataset; valid: ['d0', 's0']"
        in (result.stderr)
    )
    (tmp_path / "m.yaml").write_text(text.replace("[s0, price]", "[s0]"))
    assert CliRunner().invoke(app, ["validate", "-f", str(tmp_path / "m.yaml")]).exit_code == 0


def test_vm_trains_reads_and_exports_only_its_features(tmp_path: Path) -> None:
    root = tmp_path / "das"
    for w in range(3):  # the columns outside the budget are not even in the files
        write_window(str(root), w, window_table(w, 300, fm=True).drop_columns(["user", "d1"]))
    ds = DatasetRef(uri=str(root), schema=SCHEMA)
    with pytest.raises(DataError, match="user"):  # without a budget the VM needs every column
        run_training(parse_job(vm_job(tmp_path / "all", ds)), out=None)  # type: ignore[arg-type]
    job = parse_job(vm_job(tmp_path, ds, vertical="ads", features=BUDGET, distillation={"mode": "aux"}))
    result = run_training(job, out=None)  # type: ignore[arg-type]
    assert result.trained == [0, 1, 2]
    budget = SCHEMA.select(BUDGET)
    st = open_storage(str(tmp_path / "store"))
    ckpt = layout.vm_checkpoint("default", "vm1", "00002")
    state, config, _ = read_checkpoint(st, ckpt)
    assert FeatureSchema.model_validate(config["feature_schema"]) == budget
    tables = {k.split(".")[2] for k in state["model"] if k.startswith("sparse.embedding_bags.")}
    assert tables == {"t0", "t1"}  # item and tags only
    model, _ = load_model(st, ckpt)
    assert model.schema == budget
    serving = layout.vm_serving("default", "vm1", "00002")
    predictor = load_serving(st, serving)
    assert predictor.schema == budget
    meta = read_manifest(st, serving)
    assert meta["features"] == ["d0", "item", "tags"] and meta["schema_fingerprint"] == budget.fingerprint()
    batch = next(iter_batches(job.model_dataset(), 2, 50, vertical="ads", with_fm_logit=True))  # type: ignore[union-attr]
    assert batch.dense.shape == (50, 1) and batch.sparse.keys() == ["item", "tags"]
    torch.testing.assert_close(
        predictor(batch), torch.sigmoid(model(batch.dense, batch.sparse).serving.detach())
    )
    with pytest.raises(
        ValueError, match=r"dense input has 2 columns but the serving schema takes 1: \['d0'\]"
    ):
        predictor.predict(batch.dense.repeat(1, 2), batch.sparse)  # only the budget's inputs are served


def test_das_is_unchanged_the_fm_uses_every_feature(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", range(3), rows=200)
    fm_cfg = parse_job(fm_job(tmp_path, data, windows={"end": 2}))
    run_training(fm_cfg, out=None)  # type: ignore[arg-type]
    das_job = parse_job(
        {
            "job": "das",
            "storage": str(tmp_path / "store"),
            "name": "aug",
            "dataset": data.model_dump(mode="json", by_alias=True),
            "fm": {"name": "fm1"},
            "windows": {"start": 1, "end": 3},
            "device": "cpu",
        }
    )
    run_das(das_job, out=io.StringIO())  # type: ignore[arg-type]
    st = open_storage(str(tmp_path / "store"))
    _, fm_config, _ = read_checkpoint(st, layout.fm_checkpoint("default", "fm1", "00001"))
    assert FeatureSchema.model_validate(fm_config["feature_schema"]) == SCHEMA  # the FM sees everything
    meta = read_manifest(st, layout.das_window("default", "aug", 2))
    assert FeatureSchema.model_validate(meta["schema"]) == SCHEMA
    assert meta["schema_fingerprint"] == SCHEMA.fingerprint()
    das_uri = st.uri(layout.das_output("default", "aug"))
    cols = next(iter_record_batches(das_uri, 2)).schema.names
    assert {"user", "item", "tags", "d0", "d1", layout.FM_LOGIT_COLUMN} <= set(cols)
    vm_cfg = parse_job(
        vm_job(tmp_path, DatasetRef(uri=das_uri, schema=SCHEMA), features=["user"], windows={"start": 1})
    )
    assert run_training(vm_cfg, out=None).trained == [1, 2]  # type: ignore[arg-type]
    model, _ = load_model(st, layout.vm_checkpoint("default", "vm1", "00002"))
    assert model.schema.feature_names() == ["user"]
