"""The training loop's checkpoints, metrics, resume and serving export on both storage backends."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer_data import SCHEMA, fm_job, vm_job, window_table

from exfm_trainer import layout
from exfm_trainer.data.windows import write_window
from exfm_trainer.jobs import DatasetRef, parse_job
from exfm_trainer.models.checkpoint import load_fm_for_inference
from exfm_trainer.models.export import load_serving
from exfm_trainer.storage.commit import list_committed
from exfm_trainer.train.loop import run_training


class _Crash(RuntimeError):
    pass


def test_fm_and_vm_jobs_round_trip_and_resume(storage, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = storage.join("data")
    for w in range(3):
        write_window(data, w, window_table(w, 200))
        write_window(storage.join("aug"), w, window_table(w, 200, fm=True))
    ds = DatasetRef(uri=data.uri(), schema=SCHEMA)
    job = parse_job(
        fm_job(tmp_path, ds, storage=storage.uri("art"), keep_checkpoints=2, retention_min_age_s=0)
    )

    def crash_after_window_1(window: int) -> None:
        if window == 1:
            raise _Crash("killed")

    with pytest.raises(_Crash):
        run_training(job, out=None, on_window_done=crash_after_window_1)
    again = run_training(job, out=None)
    assert again.resumed_from == "00001" and again.trained == [2]
    art = storage.join("art")
    assert list_committed(art, layout.fm_checkpoints("default", "fm1")) == ["00001", "00002"]
    assert art.exists(layout.metrics_key("fm", "default", "fm1", 2))
    module, schema, manifest = load_fm_for_inference(art, layout.fm_checkpoint("default", "fm1", "00002"))
    assert schema == SCHEMA and manifest.windows == [0, 1, 2] and not module.training

    aug = DatasetRef(uri=storage.uri("aug"), schema=SCHEMA)
    vm = parse_job(vm_job(tmp_path, aug, storage=storage.uri("art"), vertical="ads"))
    result = run_training(vm, out=None)
    assert result.trained == [0, 1, 2]
    serving = list_committed(art, f"{layout.model_root('vm', 'default', 'vm1')}/serving")
    assert serving == ["00002"]
    predictor = load_serving(art, layout.vm_serving("default", "vm1", "00002"))
    assert predictor is not None
