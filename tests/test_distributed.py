"""Two CPU processes under torchrun: DMP-sharded tables (gloo), rank-split data, resume, checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port
from trainer_data import fm_job, make_dataset

from exfm_trainer import layout
from exfm_trainer.data.batches import iter_batches
from exfm_trainer.models.checkpoint import load_fm_for_inference, read_checkpoint
from exfm_trainer.storage import open_storage
from exfm_trainer.train.metrics import window_metrics


def _torchrun(cfg: Path) -> list[dict]:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "exfm_trainer", "fm-train", "--config", str(cfg),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_two_process_dmp_training_checkpoints_and_resumes(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "data", range(3), rows=600)
    cfg = tmp_path / "fm.json"
    cfg.write_text(json.dumps(fm_job(tmp_path, ds, windows={"start": 0, "end": 2})))
    events = _torchrun(cfg)
    start = next(e for e in events if e["event"] == "start")
    assert start["world_size"] == 2
    windows = [e for e in events if e["event"] == "window"]
    assert [e["window"] for e in windows] == [0, 1]  # rank 0 reports once per window
    assert all(e["rows"] == 600 for e in windows)  # metrics are all-reduced over both ranks
    st = open_storage(tmp_path / "store")
    state, _, manifest = read_checkpoint(st, layout.fm_checkpoint("default", "fm1", "00001"))
    assert manifest.windows == [0, 1] and manifest.world_size == 2
    # full (gathered) tables and their fused rowwise-Adagrad state, every table trained
    assert set(state["embedding_optim"]) == {"t0", "t1", "t2"}
    assert all(float(v.sum()) > 0 for v in state["embedding_optim"].values())
    assert state["model"]["sparse.embedding_bags.t0.weight"].shape == (200, 8)

    # resume on 2 ranks: window 2's progressive eval uses exactly the committed model
    cfg.write_text(json.dumps(fm_job(tmp_path, ds)))
    events = _torchrun(cfg)
    assert next(e for e in events if e["event"] == "start")["resumed_from"] == "00001"
    (w2,) = [e for e in events if e["event"] == "window"]
    module, _, _ = load_fm_for_inference(st, layout.fm_checkpoint("default", "fm1", "00001"))
    batches = list(iter_batches(ds, 2, 128))
    logits = torch.cat([module(b) for b in batches]).numpy()
    labels = torch.cat([b.labels for b in batches]).numpy()
    ref = window_metrics(2, logits, labels)
    assert w2["window"] == 2 and abs(w2["ne"] - ref.ne) < 1e-6 and abs(w2["auc"] - ref.auc) < 1e-9
