# ruff: noqa: E501  (wide rows keep the case tables readable)
"""Table-driven planner tests: (resource, upstream, world) → (actions, status)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from planner_fixtures import NOW, ckpt, das, dwin, fm, job, published_das, vm, world

from exfm_operator.planner import (
    CancelJob,
    EmitEvent,
    Plan,
    SubmitJob,
    job_name,
    plan_data_augmentation,
    plan_delete,
    plan_foundation_model,
    plan_vertical_model,
)
from exfm_operator.planner.naming import DNS_LABEL_RE, MAX_JOB_NAME
from exfm_trainer.jobs import DASJob, FMTrainJob, VMTrainJob, parse_job


def submits(plan: Plan) -> list[SubmitJob]:
    return plan.of_type(SubmitJob)


def cond(plan: Plan, ctype: str) -> tuple[str, str, str]:
    c = plan.status.condition(ctype)
    assert c is not None
    return c.status, c.reason, c.message


def only_submit(plan: Plan) -> SubmitJob:
    (sub,) = submits(plan)
    assert DNS_LABEL_RE.match(sub.job_name) and len(sub.job_name) <= MAX_JOB_NAME
    parse_job(sub.config)  # a valid exfm_trainer job config
    return sub


# ------------------------------------------------------------------ FoundationModel

FM_CASES = [
    # id, spec, world kwargs, expected submitted windows (or None), phase, progressing reason
    ("no-data", {}, {}, None, "Waiting", "WaitingForData"),
    ("first-window", {}, {"data_windows": (0, 1, 2)}, (0, 1), "Running", "JobSubmitted"),
    ("data-starts-late", {}, {"data_windows": (4, 5)}, (4, 5), "Running", "JobSubmitted"),
    ("chunk-of-3", {"cadence": {"windowsPerJob": 3}}, {"data_windows": (0, 1, 2, 3)}, (0, 3), "Running", ""),
    ("waits-full-chunk", {"cadence": {"windowsPerJob": 3}},
     {"data_windows": (0, 1, 2, 3), "fm_checkpoints": (ckpt(2),)}, None, "Waiting", "WaitingForData"),
    ("gap-waits", {"cadence": {"windowsPerJob": 2}},
     {"data_windows": (0, 1, 3, 4), "fm_checkpoints": (ckpt(0),)}, None, "Waiting", "WaitingForData"),
    ("resume-after-ckpt", {}, {"data_windows": tuple(range(6)), "fm_checkpoints": (ckpt(1), ckpt(3))},
     (4, 5), "Running", ""),
    ("closed-range-partial", {"cadence": {"windowsPerJob": 4}, "windows": {"start": 0, "end": 6}},
     {"data_windows": tuple(range(8)), "fm_checkpoints": (ckpt(3),)}, (4, 6), "Running", ""),
    ("closed-range-done", {"windows": {"end": 4}}, {"data_windows": tuple(range(8)), "fm_checkpoints": (ckpt(3),)},
     None, "Succeeded", "Complete"),
    ("start-moved-forward", {"windows": {"start": 6}}, {"data_windows": tuple(range(8)), "fm_checkpoints": (ckpt(2),)},
     (6, 7), "Running", ""),
    ("outside-range-ignored", {"windows": {"start": 2, "end": 3}}, {"data_windows": (0, 1)}, None, "Waiting", ""),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "w", "expected", "phase", "reason"), [c[1:] for c in FM_CASES],
                         ids=[c[0] for c in FM_CASES])  # fmt: skip
def test_fm_table(spec, w, expected, phase, reason):
    plan = plan_foundation_model(fm(spec), world(**w))
    assert plan.status.phase == phase
    assert plan.status.observed_generation == 3
    if reason:
        assert cond(plan, "Progressing")[1] == reason
    if expected is None:
        assert submits(plan) == []
        return
    sub = only_submit(plan)
    assert sub.windows == expected and sub.job_kind == "fm-train"
    cfg = parse_job(sub.config)
    assert isinstance(cfg, FMTrainJob)
    assert (cfg.windows.start, cfg.windows.end) == expected
    assert plan.status.active_job is not None and plan.status.active_job.name == sub.job_name


def test_fm_submit_details():
    f = fm({"resources": {"replicas": 2, "gpu": 1, "queue": "gpu-q"}, "training": {"batchSize": 512, "seed": 7},
            "retention": {"keepCheckpoints": 5}, "preset": "medium"})  # fmt: skip
    sub = only_submit(plan_foundation_model(f, world(data_windows=(0,))))
    cfg = parse_job(sub.config)
    assert isinstance(cfg, FMTrainJob)
    assert cfg.storage == "s3://exfm/art" and cfg.namespace == "ads" and cfg.name == "fm"
    assert cfg.dataset.uri == "s3://data/clicks" and cfg.dataset.feature_schema.dense == ["d0"]
    assert (cfg.batch_size, cfg.seed, cfg.keep_checkpoints, cfg.preset) == (512, 7, 5, "medium")
    assert sub.env_from_secret == "minio" and sub.image == "exfm:latest"
    assert sub.resources.queue == "gpu-q" and sub.gpus == 2
    assert sub.labels == {
        "app.kubernetes.io/managed-by": "exfm",
        "exfm.io/owner-kind": "FoundationModel",
        "exfm.io/owner-name": "fm",
        "exfm.io/owner-uid": "uid-fm",
        "exfm.io/job-kind": "fm-train",
        "exfm.io/window-start": "0",
        "exfm.io/window-end": "1",
        "exfm.io/attempt": "0",
    }
    assert sub.job_name == job_name("fm-train", "ads", "fm", "uid-fm", (0, 1))
    # deterministic: the same world gives the same name
    assert only_submit(plan_foundation_model(f, world(data_windows=(0,)))).job_name == sub.job_name


def test_job_names_are_dns_labels_and_unique_per_uid():
    long = "a" * 200 + ".b_c"
    names = {job_name("vm-train", "ns", long, uid, (1234567, 1234599), attempt=12) for uid in ("u1", "u2")}
    assert len(names) == 2
    for n in names:
        assert DNS_LABEL_RE.match(n) and len(n) <= MAX_JOB_NAME, n
    assert job_name("fm-train", "ns", "x", "u", (0, 1)) != job_name("fm-train", "ns", "x", "u", (0, 1), 1)


def test_fm_active_job_blocks_submission():
    running = job("fm-train", (0, 1), "RUNNING", name="fm-job-a")
    plan = plan_foundation_model(fm(), world(data_windows=(0, 1, 2), jobs=(running,)))
    assert submits(plan) == [] and plan.status.phase == "Running"
    assert plan.status.active_job.name == "fm-job-a" and plan.status.active_job.handle.endswith("fm-job-a")
    assert cond(plan, "Progressing")[:2] == ("True", "JobRunning")


def test_fm_extra_active_jobs_are_cancelled():
    a = job("fm-train", (0, 1), "RUNNING", name="older", ago=50)
    b = job("fm-train", (1, 2), "PENDING", name="newer", ago=0)
    plan = plan_foundation_model(fm(), world(data_windows=(0, 1, 2), jobs=(b, a)))
    assert [c.job_name for c in plan.of_type(CancelJob)] == ["newer"]
    assert plan.status.active_job.name == "older"


def test_jobs_of_other_kinds_are_ignored():
    other = job("vm-train", (0, 1), "RUNNING")
    assert submits(plan_foundation_model(fm(), world(data_windows=(0,), jobs=(other,))))


def test_suspend_cancels_active_job():
    running = job("fm-train", (0, 1), "RUNNING", name="fm-job-a")
    plan = plan_foundation_model(fm({"suspend": True}), world(data_windows=(0, 1), jobs=(running,)))
    (cancel,) = plan.of_type(CancelJob)
    assert cancel.job_name == "fm-job-a" and cancel.handle == running.handle and "suspend" in cancel.reason
    assert plan.status.phase == "Suspended" and plan.status.active_job is None
    assert cond(plan, "Suspended")[0] == "True"
    assert any(e.reason == "Suspended" for e in plan.of_type(EmitEvent))
    assert submits(plan) == []


def test_failed_job_backs_off_then_retries_then_gives_up():
    spec = {"retry": {"limit": 2, "backoffSeconds": 30, "maxBackoffSeconds": 40}}
    failed = job("fm-train", (0, 1), "FAILED", name="fm-a0", ago=10, message="OOMKilled")
    plan = plan_foundation_model(fm(spec), world(data_windows=(0, 1), jobs=(failed,)))
    assert submits(plan) == [] and plan.status.phase == "Degraded"
    status, reason, msg = cond(plan, "Degraded")
    assert (status, reason) == ("True", "JobFailed") and "OOMKilled" in msg and "retry 1/2" in msg
    assert plan.status.next_retry_time == NOW + timedelta(seconds=20)
    assert plan.status.counters.retries == 1 and plan.status.counters.jobs_failed == 1
    assert [e.type for e in plan.of_type(EmitEvent)] == ["Warning"]

    later = plan_foundation_model(
        fm(spec), world(data_windows=(0, 1), jobs=(replace(failed, finished_at=NOW - timedelta(seconds=31)),))
    )
    sub = only_submit(later)
    assert sub.attempt == 1 and sub.job_name.endswith("-r1") and sub.labels["exfm.io/attempt"] == "1"
    assert cond(later, "Degraded")[:2] == ("True", "Retrying")

    # the second failure waits 60s, capped at 40s
    second = job("fm-train", (0, 1), "FAILED", name="fm-a1", ago=35, message="OOMKilled")
    plan = plan_foundation_model(
        fm(spec),
        world(data_windows=(0, 1), jobs=(replace(failed, finished_at=NOW - timedelta(hours=1)), second)),
    )
    assert submits(plan) == [] and plan.status.next_retry_time == NOW + timedelta(seconds=5)

    third = job("fm-train", (0, 1), "FAILED", name="fm-a2", ago=3600)
    plan = plan_foundation_model(fm(spec), world(data_windows=(0, 1), jobs=(failed, second, third)))
    assert plan.status.phase == "Failed" and submits(plan) == []
    assert cond(plan, "Degraded")[1] == "RetriesExhausted"


def test_succeeded_job_without_output_counts_as_failure():
    done = job("fm-train", (0, 1), "SUCCEEDED", name="fm-a0", ago=3600)
    plan = plan_foundation_model(fm(), world(data_windows=(0, 1), jobs=(done,)))
    sub = only_submit(plan)
    assert sub.attempt == 1
    assert "succeeded but the output of windows [0, 1) is not committed" in plan.status.last_error


def test_cancelled_job_is_resubmitted_under_a_new_name_without_counting_a_failure():
    cancelled = job("fm-train", (0, 1), "CANCELLED", name="fm-a0", ago=5)
    plan = plan_foundation_model(fm(), world(data_windows=(0, 1), jobs=(cancelled,)))
    sub = only_submit(plan)
    assert sub.attempt == 1 and plan.status.counters.retries == 0
    assert cond(plan, "Degraded")[0] == "False"


def test_retry_running_keeps_degraded():
    failed = job("fm-train", (0, 1), "FAILED", name="a0", ago=100, message="boom")
    running = job("fm-train", (0, 1), "RUNNING", name="a1")
    plan = plan_foundation_model(fm(), world(data_windows=(0, 1), jobs=(failed, running)))
    assert plan.status.phase == "Running" and plan.status.active_job.attempt == 1
    assert cond(plan, "Degraded")[:2] == ("True", "Retrying")


@pytest.mark.parametrize(
    ("budget", "in_use", "need", "submitted", "text"),
    [
        (None, 100, (2, 4), True, ""),
        (8, 0, (2, 4), True, ""),
        (8, 1, (2, 4), False, "job needs 8 GPUs (2 replicas x 4); namespace ads uses 1 of its 8 GPU budget"),
        (4, 0, (2, 4), False, "can never fit"),
        (1, 1, (1, 0), True, ""),  # CPU jobs ignore the GPU budget
    ],
)
def test_fm_gpu_quota(budget, in_use, need, submitted, text):
    f = fm({"resources": {"replicas": need[0], "gpu": need[1]}})
    plan = plan_foundation_model(
        f, world(data_windows=(0,), gpu_budget=budget, gpu_in_use=in_use, pending_fm_gpus=8)
    )
    assert bool(submits(plan)) == submitted
    status, reason, msg = cond(plan, "QuotaExceeded")
    if submitted:
        assert status == "False"
    else:
        assert (status, reason) == ("True", "GPUQuotaExceeded") and text in msg
        assert plan.status.phase == "Pending"
        assert "held for waiting FoundationModel" not in msg  # FM does not reserve for itself


def test_status_facts_and_ready():
    c = ckpt(3, metrics={"ne": 0.81, "auc": 0.74})
    plan = plan_foundation_model(
        fm({"windows": {"end": 4}}), world(data_windows=(0, 1, 2, 3), fm_checkpoints=(ckpt(1), c))
    )
    st = plan.status
    assert st.phase == "Succeeded" and st.last_window == 3
    assert st.latest_checkpoint.version == "00003" and st.latest_checkpoint.metrics == {
        "ne": 0.81,
        "auc": 0.74,
    }
    assert [(s.start, s.end) for s in st.lineage.windows] == [(0, 4)]
    assert st.counters.windows_processed == 4
    assert cond(plan, "Ready")[0] == "True"
    assert [e.reason for e in plan.of_type(EmitEvent)] == ["Succeeded"]
    out = st.to_json()
    assert out["latestCheckpoint"]["metrics"]["ne"] == 0.81 and out["observedGeneration"] == 3


def test_conditions_keep_transition_time_and_events_fire_once():
    failed = job("fm-train", (0, 1), "FAILED", name="a0", ago=1, message="boom")
    f = fm()
    first = plan_foundation_model(f, world(data_windows=(0,), jobs=(failed,)))
    f.status = first.status
    later = replace(world(data_windows=(0,), jobs=(failed,)), now=NOW + timedelta(seconds=5))
    second = plan_foundation_model(f, later)
    assert second.of_type(EmitEvent) == []
    assert second.status.condition("Degraded").last_transition_time == NOW
    assert second.status.condition("Degraded").status == "True"


def test_jobs_submitted_counter_accumulates():
    f = fm()
    f.status.counters.jobs_submitted = 4
    assert plan_foundation_model(f, world(data_windows=(0,))).status.counters.jobs_submitted == 5


def test_deletion_and_plan_delete_cancel_active_jobs():
    running = job("fm-train", (0, 1), "RUNNING", name="a1")
    finished = job("fm-train", (0, 1), "FAILED", name="a0")
    w = world(jobs=(running, finished))
    f = fm(deletionTimestamp=NOW.isoformat())
    plan = plan_foundation_model(f, w)
    assert [c.job_name for c in plan.of_type(CancelJob)] == ["a1"] and submits(plan) == []
    assert [c.job_name for c in plan_delete(fm(), w)] == ["a1"]
    assert plan_delete(vm(), w) == []


def test_synthetic_dataset_schema_comes_from_the_generator():
    f = fm({"dataset": {"uri": "/tmp/d", "schema": None, "synthetic": {"windows": 3, "verticals": 2}}})
    sub = only_submit(plan_foundation_model(f, world(data_windows=(0,))))
    assert sub.config["dataset"]["schema"]["vertical"] == "vertical"


def test_max_bad_row_fraction_is_a_manifest_field_mapped_to_every_job():
    """Issue 11, items 4/5: the bad-row limit the job error names is settable in the manifests."""
    f = fm({"training": {"maxBadRowFraction": 0.2}})
    assert (
        only_submit(plan_foundation_model(f, world(data_windows=(0,)))).config["max_bad_row_fraction"] == 0.2
    )
    d = das({"maxBadRowFraction": 0.3})
    w = world(data_windows=(0, 1), fm_checkpoints=(ckpt(0),))
    assert only_submit(plan_data_augmentation(d, fm(), w)).config["max_bad_row_fraction"] == 0.3
    v = vm({"training": {"maxBadRowFraction": 0.05}})
    sub = only_submit(plan_vertical_model(v, published_das("Running"), world(das_windows=(dwin(1, 0),))))
    assert sub.config["max_bad_row_fraction"] == 0.05


# ------------------------------------------------------------------ DataAugmentation


DAS_CASES = [
    # id, spec, world kwargs, expected windows, phase, reason
    ("no-fm-ckpt", {}, {"data_windows": (0, 1, 2)}, None, "Waiting", "WaitingForFM"),
    ("first-eligible", {}, {"data_windows": tuple(range(5)), "fm_checkpoints": (ckpt(1),)}, (2, 3), "Running", ""),
    ("chunked", {"cadence": {"windowsPerJob": 3}}, {"data_windows": tuple(range(5)), "fm_checkpoints": (ckpt(1),)},
     (2, 5), "Running", ""),
    ("eager-partial", {"cadence": {"windowsPerJob": 3}}, {"data_windows": (0, 1, 2), "fm_checkpoints": (ckpt(1),)},
     (2, 3), "Running", ""),
    ("resume", {}, {"data_windows": tuple(range(6)), "fm_checkpoints": (ckpt(1),), "das_windows": (dwin(2, 1),)},
     (3, 4), "Running", ""),
    ("waits-input", {}, {"data_windows": (0, 1, 2), "fm_checkpoints": (ckpt(1),), "das_windows": (dwin(2, 1),)},
     None, "Waiting", "WaitingForData"),
    ("too-stale", {"maxStaleness": 0},
     {"data_windows": tuple(range(6)), "fm_checkpoints": (ckpt(1),), "das_windows": (dwin(2, 1),)},
     None, "Waiting", "WaitingForFreshFM"),
    ("stale-ok", {"maxStaleness": 1},
     {"data_windows": tuple(range(6)), "fm_checkpoints": (ckpt(1),), "das_windows": (dwin(2, 1),)},
     (3, 4), "Running", ""),
    ("stale-stops-chunk", {"maxStaleness": 1, "cadence": {"windowsPerJob": 5}},
     {"data_windows": tuple(range(9)), "fm_checkpoints": (ckpt(1),)}, (2, 4), "Running", ""),
    ("retention-skips-old", {}, {"data_windows": tuple(range(12)), "fm_checkpoints": (ckpt(8), ckpt(9))},
     (9, 10), "Running", ""),
    ("closed-done", {"windows": {"end": 4}},
     {"data_windows": tuple(range(6)), "fm_checkpoints": (ckpt(1),), "das_windows": (dwin(2, 1), dwin(3, 1))},
     None, "Succeeded", "Complete"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "w", "expected", "phase", "reason"), [c[1:] for c in DAS_CASES],
                         ids=[c[0] for c in DAS_CASES])  # fmt: skip
def test_das_table(spec, w, expected, phase, reason):
    plan = plan_data_augmentation(das(spec), fm(), world(**w))
    assert plan.status.phase == phase, plan.status.conditions
    if reason:
        assert cond(plan, "Progressing")[1] == reason
    assert plan.status.output is not None
    assert plan.status.output.uri == "s3://exfm/art/das/ads/das"
    if expected is None:
        assert submits(plan) == []
        return
    sub = only_submit(plan)
    assert sub.windows == expected and sub.job_kind == "das"
    cfg = parse_job(sub.config)
    assert isinstance(cfg, DASJob)
    assert cfg.storage == "s3://exfm/art" and cfg.fm.name == "fm" and cfg.fm.namespace == "ads"
    assert cfg.dataset.uri == "s3://data/clicks" and cfg.max_staleness == das(spec).spec.max_staleness


def test_new_fm_checkpoint_triggers_das():
    w = world(data_windows=tuple(range(6)), fm_checkpoints=(ckpt(1),), das_windows=(dwin(2, 1),))
    d = das({"maxStaleness": 0})
    assert submits(plan_data_augmentation(d, fm(), w)) == []
    fresher = replace(w, fm_checkpoints=(ckpt(1), ckpt(2)))
    assert only_submit(plan_data_augmentation(d, fm(), fresher)).windows == (3, 4)


def test_das_missing_fm_names_the_field():
    plan = plan_data_augmentation(das(), None, world())
    status, reason, msg = cond(plan, "Degraded")
    assert (status, reason) == ("True", "UpstreamMissing")
    assert msg == "spec.fmRef: FoundationModel 'fm' not found in namespace 'ads'"
    assert plan.status.phase == "Degraded" and plan.status.last_error == msg and submits(plan) == []
    assert [e.type for e in plan.of_type(EmitEvent)] == ["Warning"]


def test_das_output_must_be_the_fm_storage():
    plan = plan_data_augmentation(
        das({"output": {"uri": "s3://other/place"}}), fm(), world(fm_checkpoints=(ckpt(1),))
    )
    assert plan.status.phase == "Degraded"
    assert cond(plan, "Degraded")[2].startswith(
        "spec.output.uri: must equal FoundationModel 'fm' spec.storage.uri"
    )
    same = plan_data_augmentation(
        das({"output": {"uri": "s3://exfm/art/"}}), fm(), world(data_windows=(2,), fm_checkpoints=(ckpt(1),))
    )
    assert only_submit(same).windows == (2, 3)


def test_das_own_dataset_and_lineage():
    d = das({"dataset": {"uri": "/data/feed", "schema": {"dense": ["x"]}}, "batchSize": 100})
    w = world(
        data_windows=tuple(range(8)),
        fm_checkpoints=(ckpt(1), ckpt(3)),
        das_windows=(dwin(2, 1), dwin(3, 1), dwin(4, 3)),
    )
    plan = plan_data_augmentation(d, fm(), w)
    cfg = parse_job(only_submit(plan).config)
    assert (
        cfg.dataset.uri == "/data/feed"
        and cfg.batch_size == 100
        and cfg.dataset.feature_schema.dense == ["x"]
    )
    st = plan.status
    assert st.last_window == 4 and st.fm_version == "00003"
    assert [(x.window, x.fm_version, x.staleness) for x in st.lineage.windows] == [
        (2, "00001", 0),
        (3, "00001", 1),
        (4, "00003", 0),
    ]
    assert (st.lineage.staleness.count, st.lineage.staleness.min, st.lineage.staleness.max) == (3, 0, 1)
    assert st.lineage.staleness.mean == pytest.approx(1 / 3, abs=1e-3)
    assert st.output.feature_schema.dense == ["x"] and st.output.storage.secret_ref == "minio"
    assert cond(plan, "Ready")[0] == "True" and st.counters.windows_processed == 3


def test_das_and_vm_leave_room_for_waiting_fm_jobs():
    w = world(data_windows=(2,), fm_checkpoints=(ckpt(1),), gpu_budget=8, gpu_in_use=4, pending_fm_gpus=4)
    plan = plan_data_augmentation(das({"resources": {"gpu": 1}}), fm(), w)
    assert submits(plan) == []
    assert "4 are held for waiting FoundationModel jobs" in cond(plan, "QuotaExceeded")[2]
    assert submits(
        plan_data_augmentation(das({"resources": {"gpu": 1}}), fm(), replace(w, pending_fm_gpus=0))
    )
    v = vm({"resources": {"gpu": 2}})
    w_vm = world(das_windows=(dwin(2, 1),), gpu_budget=8, gpu_in_use=4, pending_fm_gpus=4)
    assert submits(plan_vertical_model(v, published_das(), w_vm)) == []
    assert cond(plan_vertical_model(v, published_das(), w_vm), "QuotaExceeded")[0] == "True"


# ------------------------------------------------------------------ VerticalModel

VM_CASES = [
    ("no-das-windows", {}, {}, "Running", None, "Waiting", "WaitingForDAS"),
    ("first", {}, {"das_windows": (dwin(2, 1), dwin(3, 1))}, "Running", (2, 3), "Running", ""),
    ("resume-chunk", {"cadence": {"windowsPerJob": 2}},
     {"das_windows": tuple(dwin(w, 1) for w in (2, 3, 4, 5)), "vm_checkpoints": (ckpt(2, first=2),)},
     "Running", (3, 5), "Running", ""),
    ("waits-full-chunk", {"cadence": {"windowsPerJob": 2}},
     {"das_windows": (dwin(2, 1), dwin(3, 1)), "vm_checkpoints": (ckpt(2, first=2),)}, "Running", None, "Waiting", ""),
    ("upstream-done-partial", {"cadence": {"windowsPerJob": 2}},
     {"das_windows": (dwin(2, 1), dwin(3, 1)), "vm_checkpoints": (ckpt(2, first=2),)}, "Succeeded", (3, 4),
     "Running", ""),
    ("upstream-done-complete", {},
     {"das_windows": (dwin(2, 1),), "vm_checkpoints": (ckpt(2, first=2),)}, "Succeeded", None, "Succeeded", ""),
    ("closed-range", {"windows": {"start": 3, "end": 4}},
     {"das_windows": tuple(dwin(w, 1) for w in (2, 3, 4))}, "Running", (3, 4), "Running", ""),
    ("closed-done", {"windows": {"end": 3}},
     {"das_windows": (dwin(2, 1), dwin(3, 1)), "vm_checkpoints": (ckpt(2, first=2),)}, "Running", None,
     "Succeeded", "Complete"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "w", "das_phase", "expected", "phase", "reason"), [c[1:] for c in VM_CASES],
                         ids=[c[0] for c in VM_CASES])  # fmt: skip
def test_vm_table(spec, w, das_phase, expected, phase, reason):
    plan = plan_vertical_model(vm(spec), published_das(das_phase), world(**w))
    assert plan.status.phase == phase, plan.status.conditions
    if reason:
        assert cond(plan, "Progressing")[1] == reason
    if expected is None:
        assert submits(plan) == []
        return
    sub = only_submit(plan)
    assert sub.windows == expected and sub.job_kind == "vm-train"
    cfg = parse_job(sub.config)
    assert isinstance(cfg, VMTrainJob)
    assert cfg.dataset.uri == "s3://exfm/art/das/ads/das" and cfg.das.name == "das"
    assert cfg.storage == "s3://exfm/art" and sub.env_from_secret == "minio"


def test_vm_config_carries_distillation_and_vertical():
    v = vm({"vertical": "feed", "preset": "small", "export": False, "storage": {"uri": "/vm-art"},
            "distillation": {"mode": "kd", "alpha": 0.5, "beta": 0.2, "weight": 2, "adapter": True, "adapterShare": 0.3,
                             "adapterLr": 0.02, "adapterDecay": 0.1, "adapterHidden": 4, "auxTower": [8, 4]}})  # fmt: skip
    sub = only_submit(plan_vertical_model(v, published_das(), world(das_windows=(dwin(2, 1),))))
    cfg = parse_job(sub.config)
    assert isinstance(cfg, VMTrainJob)
    assert cfg.distillation.model_dump() == {
        "mode": "kd", "alpha": 0.5, "beta": 0.2, "weight": 2.0, "aux_tower": [8, 4], "adapter": True,
        "adapter_share": 0.3, "adapter_lr": 0.02, "adapter_decay": 0.1, "adapter_hidden": 4,
    }  # fmt: skip
    assert (cfg.vertical, cfg.preset, cfg.export, cfg.storage) == ("feed", "small", False, "/vm-art")
    assert sub.env_from_secret is None


def test_new_das_window_triggers_vm():
    v = vm()
    w = world(
        das_windows=(dwin(2, 1),),
        vm_checkpoints=(ckpt(2, first=2, das_windows=(2,), fm_versions=("00001",)),),
    )
    plan = plan_vertical_model(v, published_das(), w)
    assert submits(plan) == []
    assert [(s.start, s.end) for s in plan.status.lineage.das_windows] == [(2, 3)]
    assert plan.status.lineage.fm_versions == ["00001"]
    plan = plan_vertical_model(v, published_das(), replace(w, das_windows=(dwin(2, 1), dwin(3, 2))))
    assert only_submit(plan).windows == (3, 4)


def test_vm_missing_das_and_unpublished_output():
    plan = plan_vertical_model(vm(), None, world())
    assert cond(plan, "Degraded") == (
        "True", "UpstreamMissing", "spec.dasRef: DataAugmentation 'das' not found in namespace 'ads'"
    )  # fmt: skip
    plan = plan_vertical_model(vm(), das(), world())
    assert plan.status.phase == "Pending" and cond(plan, "Degraded")[0] == "False"
    assert (
        cond(plan, "Progressing")[1] == "WaitingForUpstream"
        and "status.output" in cond(plan, "Progressing")[2]
    )


def test_vm_vertical_without_column_is_degraded_not_an_exception():
    d = das({"dataset": {"uri": "/d", "schema": {"dense": ["x"]}}})
    d.status = plan_data_augmentation(d, fm(), world()).status
    plan = plan_vertical_model(vm({"vertical": "feed"}), d, world(das_windows=(dwin(2, 1),)))
    assert plan.status.phase == "Degraded" and submits(plan) == []
    assert cond(plan, "Degraded")[2].startswith("spec.vertical: the dataset schema")


def test_one_pipeline_round_trip():
    """FM trains → checkpoint → DAS augments → VM trains, each plan feeding the next."""
    f, d, v = fm(), das(), vm()
    fm_plan = plan_foundation_model(f, world(data_windows=(0, 1, 2)))
    assert only_submit(fm_plan).windows == (0, 1)
    d.status = plan_data_augmentation(d, f, world(data_windows=(0, 1, 2))).status
    assert d.status.phase == "Waiting"  # no FM checkpoint yet
    das_plan = plan_data_augmentation(d, f, world(data_windows=(0, 1, 2), fm_checkpoints=(ckpt(0),)))
    assert only_submit(das_plan).windows == (1, 2)
    d.status = das_plan.status
    vm_plan = plan_vertical_model(v, d, world(das_windows=(dwin(1, 0),)))
    assert only_submit(vm_plan).windows == (1, 2)


def test_planner_is_pure():
    """No torch, kopf, torchx or kubernetes behind the planner (it runs in the operator and locally)."""
    import subprocess
    import sys

    code = (
        "import sys, exfm_operator.planner, exfm_operator.api.crd\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'kopf', 'torchx', 'kubernetes'})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
