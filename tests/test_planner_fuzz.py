# ruff: noqa: E501  (wide strategy tables)
"""Fuzz: the loader and the planners never crash; they reject with a message or plan."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from planner_fixtures import NOW, SCHEMA

from exfm_operator.api import DataAugmentation, FoundationModel, ManifestError, VerticalModel, load_manifests
from exfm_operator.planner import (
    CheckpointInfo,
    DASWindowInfo,
    JobInfo,
    SubmitJob,
    World,
    plan_data_augmentation,
    plan_delete,
    plan_foundation_model,
    plan_vertical_model,
)
from exfm_operator.planner.naming import DNS_LABEL_RE
from exfm_trainer.jobs import parse_job

JUNK = st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=4), st.floats(allow_nan=True), st.booleans(),
                 st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))  # fmt: skip


def field(valid: st.SearchStrategy) -> st.SearchStrategy:
    # mostly valid values (1 in 20 junk), so the planners run often
    return st.sampled_from(range(20)).flatmap(lambda i: JUNK if i == 7 else valid)


def obj(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    return st.fixed_dictionaries({}, optional={k: field(v) for k, v in fields.items()})


WINDOWS = obj({"start": st.integers(0, 12), "end": st.integers(0, 14)})
RESOURCES = obj({"replicas": st.integers(1, 4), "gpu": st.integers(0, 4), "cpu": st.sampled_from(["1", 2, "500m"]),
                 "memory": st.sampled_from(["1Gi", "2G"]), "queue": st.sampled_from(["q", "gpu"])})  # fmt: skip
STORAGE = st.fixed_dictionaries({"uri": st.sampled_from(["s3://b/a", "/tmp/art", "s3://other/x", "s3://"])},
                                optional={"secretRef": st.sampled_from(["s", "Bad_", "minio"])})  # fmt: skip
DATASET = st.one_of(
    st.fixed_dictionaries({"uri": st.sampled_from(["s3://b/d", "/d"]), "schema": st.sampled_from([SCHEMA, {"dense": ["x"]}, {}])}),
    st.fixed_dictionaries({"uri": st.just("/syn"), "synthetic": st.sampled_from([{"windows": 3}, {"windows": 0}, {"nope": 1}])}),
)  # fmt: skip
COMMON = {
    "windows": WINDOWS, "resources": RESOURCES, "suspend": st.booleans(), "cadence": obj({"windowsPerJob": st.integers(1, 4)}),
    "retry": obj({"limit": st.integers(0, 3), "backoffSeconds": st.integers(0, 100)}),
}  # fmt: skip
TRAINING = obj(
    {
        "batchSize": st.integers(1, 9),
        "device": st.sampled_from(["auto", "cpu", "cuda"]),
        "seed": st.integers(0, 3),
    }
)
FM_SPEC = st.fixed_dictionaries(
    {"dataset": field(DATASET), "storage": field(STORAGE)},
    optional={**{k: field(v) for k, v in COMMON.items()}, "training": field(TRAINING),
              "preset": field(st.sampled_from(["tiny", "large"])), "retention": obj({"keepCheckpoints": st.integers(1, 4)})},
)  # fmt: skip
DAS_SPEC = st.fixed_dictionaries(
    {"fmRef": field(st.fixed_dictionaries({"name": st.sampled_from(["fm", "other"])}))},
    optional={**{k: field(v) for k, v in COMMON.items()}, "dataset": field(DATASET), "output": field(STORAGE),
              "maxStaleness": field(st.integers(0, 3)), "batchSize": field(st.integers(1, 100))},
)  # fmt: skip
VM_SPEC = st.fixed_dictionaries(
    {"dasRef": field(st.fixed_dictionaries({"name": st.sampled_from(["das", "other"])}))},
    optional={**{k: field(v) for k, v in COMMON.items()}, "training": field(TRAINING), "vertical": field(st.just("feed")),
              "storage": field(STORAGE), "export": field(st.booleans()),
              "distillation": obj({"mode": st.sampled_from(["none", "kd", "aux"]), "alpha": st.floats(0, 2),
                                   "adapter": st.booleans()})},
)  # fmt: skip


@st.composite
def worlds(draw) -> World:
    def ckpts():
        lasts = draw(st.lists(st.integers(0, 12), max_size=4, unique=True))
        return tuple(
            CheckpointInfo(f"{x:05d}", tuple(range(x + 1)), x, f"/c/{x}", {"ne": 0.9}) for x in lasts
        )

    jobs = tuple(
        JobInfo(
            name=f"j{i}",
            kind=draw(st.sampled_from(["fm-train", "das", "vm-train"])),
            windows=(a := draw(st.integers(0, 12)), a + draw(st.integers(1, 3))),
            state=draw(
                st.sampled_from(["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "UNKNOWN"])
            ),
            started_at=NOW - timedelta(seconds=draw(st.integers(0, 500))),
            finished_at=draw(st.one_of(st.none(), st.just(NOW - timedelta(seconds=10)))),
        )
        for i in range(draw(st.integers(0, 4)))
    )
    das_windows = tuple(
        DASWindowInfo(w, "00000", w - 1 - s, s)
        for w in draw(st.lists(st.integers(1, 12), max_size=5, unique=True))
        for s in [draw(st.integers(0, 2))]
    )
    return World(
        now=NOW,
        data_windows=tuple(draw(st.lists(st.integers(0, 14), max_size=10, unique=True))),
        fm_checkpoints=ckpts(),
        das_windows=das_windows,
        vm_checkpoints=ckpts(),
        jobs=jobs,
        gpu_in_use=draw(st.integers(0, 8)),
        gpu_budget=draw(st.one_of(st.none(), st.integers(0, 8))),
        pending_fm_gpus=draw(st.integers(0, 4)),
    )


def doc(kind: str, name: str, spec: dict) -> dict:
    return {
        "apiVersion": "exfm.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "uid": "u"},
        "spec": spec,
    }


def check_plan(plan) -> None:
    for action in plan.actions:
        if isinstance(action, SubmitJob):
            parse_job(action.config)
            assert DNS_LABEL_RE.match(action.job_name)
    plan.status.to_json()


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fm_spec=FM_SPEC, das_spec=DAS_SPEC, vm_spec=VM_SPEC, w=worlds())
def test_loader_and_planners_never_crash(fm_spec, das_spec, vm_spec, w):
    docs = [doc("FoundationModel", "fm", fm_spec), doc("DataAugmentation", "das", das_spec),
            doc("VerticalModel", "vm", vm_spec)]  # fmt: skip
    loaded: dict[str, object] = {}
    for d in docs:
        try:
            (res,) = load_manifests([d], "fuzz.yaml")
        except ManifestError as err:
            assert err.problems and all(p.startswith(f'{d["kind"]} "default/') for p in err.problems), (
                err.problems
            )
            assert all(": " in p for p in err.problems)
            continue
        loaded[res.kind] = res
    fm = loaded.get("FoundationModel")
    das = loaded.get("DataAugmentation")
    vm = loaded.get("VerticalModel")
    if isinstance(fm, FoundationModel):
        check_plan(plan_foundation_model(fm, w))
        plan_delete(fm, w)
    if isinstance(das, DataAugmentation):
        upstream = fm if isinstance(fm, FoundationModel) and das.spec.fm_ref.name == "fm" else None
        plan = plan_data_augmentation(das, upstream, w)
        check_plan(plan)
        das.status = plan.status
    if isinstance(vm, VerticalModel):
        upstream_das = das if isinstance(das, DataAugmentation) and vm.spec.das_ref.name == "das" else None
        check_plan(plan_vertical_model(vm, upstream_das, w))
