"""Streaming training: progressive metrics, checkpoints, resume, lineage, bad input, entrypoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from trainer_data import fm_job, make_dataset, vm_job, window_table

from exfm_trainer import layout
from exfm_trainer.__main__ import main
from exfm_trainer.data.batches import iter_batches
from exfm_trainer.data.windows import DataError, write_window
from exfm_trainer.jobs import WindowRange, parse_job
from exfm_trainer.models.checkpoint import load_fm_for_inference, load_model, read_checkpoint
from exfm_trainer.models.export import load_serving
from exfm_trainer.storage import open_storage
from exfm_trainer.storage.commit import list_committed
from exfm_trainer.train.loop import run_training, windows_to_train

REPO = Path(__file__).resolve().parents[1]


def _events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_fm_stream_metrics_checkpoints_and_inference_api(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "data", range(4), rows=300)
    job = parse_job(fm_job(tmp_path, ds, keep_checkpoints=2, retention_min_age_s=0))
    result = run_training(job, out=None)
    assert result.trained == [0, 1, 2, 3] and result.waiting_for == 4
    st = open_storage(job.storage)
    parent = layout.fm_checkpoints("default", "fm1")
    assert list_committed(st, parent) == ["00002", "00003"]  # retention keeps the newest 2
    for w in range(4):
        m = layout.WindowMetrics.model_validate_json(
            st.get_bytes(layout.metrics_key("fm", "default", "fm1", w))
        )
        assert m.rows == 300 and m.ne is not None and 0 <= m.auc <= 1 and m.samples_per_s > 0
    # progressive validation learns: later windows beat the untrained first one
    assert result.metrics[-1].ne < result.metrics[0].ne
    _, _, manifest = read_checkpoint(st, f"{parent}/00003")
    assert manifest.windows == [0, 1, 2, 3] and set(manifest.metrics) == {"0", "1", "2", "3"}
    # the DAS inference API reproduces the model's logits
    module, schema, man = load_fm_for_inference(st, f"{parent}/00003")
    assert schema == ds.feature_schema and man.last_window == 3 and not module.training
    batch = next(iter_batches(ds, 0, 50))
    logits = module(batch)
    assert logits.shape == (50,) and not logits.requires_grad
    model, _ = load_model(st, f"{parent}/00003")
    torch.testing.assert_close(logits, model(batch.dense, batch.sparse).detach())


class _Crash(RuntimeError):
    pass


def test_resume_after_crash_never_retrains_a_committed_window(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "data", range(5), rows=200)
    job = parse_job(fm_job(tmp_path, ds))
    st = open_storage(job.storage)

    def crash_after_window_2(window: int) -> None:
        if window == 2:
            raise _Crash("killed")

    with pytest.raises(_Crash):
        run_training(job, out=None, on_window_done=crash_after_window_2)
    key = layout.metrics_key("fm", "default", "fm1", 1)
    metrics_before = st.get_bytes(key)
    again = run_training(job, out=None)
    assert again.resumed_from == "00002" and again.trained == [3, 4]
    assert st.get_bytes(key) == metrics_before  # window 1 was not evaluated/trained again
    _, _, manifest = read_checkpoint(st, layout.fm_checkpoint("default", "fm1", "00004"))
    assert manifest.windows == [0, 1, 2, 3, 4]
    assert run_training(job, out=None).trained == []  # nothing left


def test_checkpoint_every_k_loses_at_most_k_windows(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "data", range(5), rows=100)
    job = parse_job(fm_job(tmp_path, ds, checkpoint_every=2))

    def crash(window: int) -> None:
        if window == 2:
            raise _Crash("killed")

    with pytest.raises(_Crash):
        run_training(job, out=None, on_window_done=crash)
    st = open_storage(job.storage)
    assert list_committed(st, layout.fm_checkpoints("default", "fm1")) == ["00001"]
    again = run_training(job, out=None)
    assert again.trained == [2, 3, 4] and again.checkpoints == ["00003", "00004"]


def test_window_selection_is_contiguous_and_in_range(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "d", [0], rows=10)
    job = parse_job(fm_job(tmp_path, ds, windows={"start": 1, "end": 6}))
    assert windows_to_train([0, 1, 2, 4, 5], job, -1) == ([1, 2], 3)
    assert windows_to_train([0, 1, 2, 4, 5], job, 2) == ([], 3)
    assert windows_to_train([3, 4, 5, 6, 7], job, -1) == ([3, 4, 5], None)
    assert windows_to_train([1, 2, 3], job.model_copy(update={"windows": WindowRange(start=0)}), 3) == ([], 4)


@pytest.mark.slow
def test_subprocess_killed_after_checkpoint_resumes_at_next_window(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "data", range(6), rows=1500)
    cfg = tmp_path / "fm.json"
    cfg.write_text(json.dumps(fm_job(tmp_path, ds)))
    cmd = [sys.executable, "-m", "exfm_trainer", "fm-train", "--config", str(cfg)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        if '"event": "checkpoint"' in line and json.loads(line)["version"] == "00001":
            proc.kill()  # SIGKILL right after window 1 was committed
            break
    proc.wait(timeout=60)
    st = open_storage(tmp_path / "store")
    committed = list_committed(st, layout.fm_checkpoints("default", "fm1"))
    last = int(committed[-1])
    assert last >= 1
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=True)
    windows = [e["window"] for e in _events(rerun.stdout) if e["event"] == "window"]
    assert windows == list(range(last + 1, 6))
    _, _, manifest = read_checkpoint(st, layout.fm_checkpoint("default", "fm1", "00005"))
    assert manifest.windows == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("mode", ["none", "kd", "aux"])
def test_vm_modes_lineage_and_serving_export(tmp_path: Path, mode: str) -> None:
    ds = make_dataset(tmp_path / "das", range(3), rows=300, fm=True)
    job = parse_job(
        vm_job(tmp_path, ds, vertical="ads", distillation={"mode": mode, "adapter": mode != "none"})
    )
    result = run_training(job, out=None)
    assert result.trained == [0, 1, 2]
    assert 100 < result.metrics[0].rows < 200  # the "ads" half of each window
    st = open_storage(job.storage)
    ckpt = layout.vm_checkpoint("default", "vm1", "00002")
    _, config, manifest = read_checkpoint(st, ckpt)
    assert manifest.kind == "vm-checkpoint" and manifest.fm_versions == ["00000", "00001"]
    assert config["distillation"]["mode"] == mode
    predictor = load_serving(st, layout.vm_serving("default", "vm1", "00002"))
    model, _ = load_model(st, ckpt)
    batch = next(iter_batches(ds, 2, 40, vertical="ads", with_fm_logit=True))
    expected = torch.sigmoid(model(batch.dense, batch.sparse).serving.detach())
    torch.testing.assert_close(predictor(batch), expected)


def test_vm_without_fm_logit_column_fails_clearly(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "plain", range(1), rows=50, fm=False)
    job = parse_job(vm_job(tmp_path, ds, distillation={"mode": "aux"}))
    with pytest.raises(DataError, match="fm_logit"):
        run_training(job, out=None)


def test_empty_window_is_skipped_and_reported(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "data", [0, 2], rows=100)
    write_window(str(tmp_path / "data"), 1, window_table(1, 100).slice(0, 0))
    result = run_training(parse_job(fm_job(tmp_path, ds)), out=None)
    assert result.trained == [0, 2] and result.empty == [1]
    st = open_storage(tmp_path / "store")
    m1 = layout.WindowMetrics.model_validate_json(st.get_bytes(layout.metrics_key("fm", "default", "fm1", 1)))
    assert m1.rows == 0 and m1.ne is None


def _bad_labels(window: int, rows: int, bad: int) -> pa.Table:
    table = window_table(window, rows)
    labels = np.array(table["label"].to_pylist())
    labels[:bad] = 7
    return table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels))


def test_too_many_bad_rows_fail_the_job_and_nothing_is_committed(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    ds = make_dataset(tmp_path / "data", [0], rows=200)
    write_window(str(tmp_path / "data"), 1, _bad_labels(1, 200, 2))  # 1%: tolerated with 0.02
    write_window(str(tmp_path / "data"), 2, _bad_labels(2, 200, 40))  # 20%: fails
    cfg = tmp_path / "fm.json"
    cfg.write_text(json.dumps(fm_job(tmp_path, ds, max_bad_row_fraction=0.02)))
    assert main(["fm-train", "--config", str(cfg)]) == 3
    err = capsys.readouterr().err
    assert "window 2" in err and "max_bad_row_fraction" in err
    st = open_storage(tmp_path / "store")
    assert list_committed(st, layout.fm_checkpoints("default", "fm1")) == ["00000", "00001"]
    m1 = layout.WindowMetrics.model_validate_json(st.get_bytes(layout.metrics_key("fm", "default", "fm1", 1)))
    assert m1.skipped_rows == 2 and m1.rows == 198


def test_config_error_names_the_field(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    ds = make_dataset(tmp_path / "data", [0], rows=10)
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps(fm_job(tmp_path, ds, batch_size=0)))
    assert main(["fm-train", "--config", str(cfg)]) == 2
    assert "batch_size" in capsys.readouterr().err
    cfg.write_text(json.dumps(vm_job(tmp_path, ds, distillation={"mode": "magic"})))
    assert main(["vm-train", "--config", str(cfg)]) == 2
    assert "distillation.mode" in capsys.readouterr().err
    cfg.write_text(json.dumps(fm_job(tmp_path, ds)))
    assert main(["vm-train", "--config", str(cfg)]) == 2
    assert "job" in capsys.readouterr().err


def test_checkpoint_of_another_preset_is_refused(tmp_path: Path) -> None:
    from exfm_trainer.train.loop import TrainingError

    ds = make_dataset(tmp_path / "data", [0, 1], rows=50)
    run_training(parse_job(fm_job(tmp_path, ds, windows={"start": 0, "end": 1})), out=None)
    with pytest.raises(TrainingError, match="another model"):
        run_training(parse_job(fm_job(tmp_path, ds, preset="small")), out=None)


def test_a_vertical_with_no_rows_fails_the_job_naming_the_values_and_exports_nothing(tmp_path: Path) -> None:
    """Issue 11, item 1: a misspelled vertical is a failed job, not an untrained Succeeded export."""
    ds = make_dataset(tmp_path / "das", range(2), rows=100, fm=True)
    job = parse_job(vm_job(tmp_path, ds, vertical="adds", distillation={"mode": "aux"}))
    with pytest.raises(DataError) as err:
        run_training(job, out=None)
    msg = str(err.value)
    assert msg.startswith("vertical 'adds' not in [ads, shop] (column 'vertical' of windows [0, 2) of ")
    assert "fix spec.vertical" in msg
    st = open_storage(job.storage)
    assert st.list("") == []  # no checkpoint, no metrics, no serving export


def test_an_all_empty_input_fails_until_the_model_has_trained(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for w in (0, 1):
        write_window(str(root), w, window_table(w, 10).slice(0, 0))
    ds = make_dataset(root, [2, 3], rows=100)
    job = fm_job(tmp_path, ds)
    with pytest.raises(DataError, match=r"no rows in windows \[0, 2\) of .*every window of the job is empty"):
        run_training(parse_job({**job, "windows": {"start": 0, "end": 2}}), out=None)
    assert run_training(parse_job({**job, "windows": {"start": 2, "end": 4}}), out=None).trained == [2, 3]
    write_window(str(root), 4, window_table(4, 10).slice(0, 0))  # a later gap is fine once trained
    assert run_training(parse_job({**job, "windows": {"start": 2, "end": 5}}), out=None).empty == [4]


def test_a_failed_job_ends_with_a_structured_error_event(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    ds = make_dataset(tmp_path / "data", [0], rows=200)
    write_window(str(tmp_path / "data"), 1, _bad_labels(1, 200, 40))
    cfg = tmp_path / "fm.json"
    cfg.write_text(json.dumps(fm_job(tmp_path, ds)))
    assert main(["fm-train", "--config", str(cfg)]) == 3
    out, err = capsys.readouterr()
    last = json.loads(out.strip().splitlines()[-1])
    assert last["event"] == "error" and last["reason"] == "BadInputData" and last["exit_code"] == 3
    assert "window 1" in last["message"] and "raise spec.training.maxBadRowFraction" in last["message"]
    assert err.startswith("error: bad input data: window 1")
