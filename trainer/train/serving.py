"""Serving export after a VM job: rebuild the newest checkpoint unsharded and export it (rank 0)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

from exfm_trainer import layout
from exfm_trainer.models.checkpoint import latest_version, load_model
from exfm_trainer.models.export import export_serving
from exfm_trainer.models.vm import VerticalModel
from exfm_trainer.storage.commit import is_committed

if TYPE_CHECKING:
    from exfm_trainer.train.loop import StreamingTrainer


def export_latest(trainer: StreamingTrainer, out: TextIO | None) -> str | None:
    """Export the newest VM checkpoint to ``layout.vm_serving``; returns the version (None off rank 0)."""
    from exfm_trainer.train.loop import emit

    if not trainer.ctx.is_main:
        return None
    job = trainer.job
    version = latest_version(trainer.storage, trainer.ckpt_parent)
    if version is None:
        return None
    target = layout.vm_serving(job.namespace, job.name, version)
    if is_committed(trainer.storage, target):
        return version
    model, manifest = load_model(trainer.storage, f"{trainer.ckpt_parent}/{version}")
    assert isinstance(model, VerticalModel)
    export_serving(
        model,
        trainer.storage,
        target,
        {
            "namespace": job.namespace,
            "name": job.name,
            "version": version,
            "preset": job.preset,
            "features": model.schema.feature_names(),
            "schema_fingerprint": model.schema.fingerprint(),
            "windows": manifest.windows,
            "checkpoint": trainer.storage.uri(f"{trainer.ckpt_parent}/{version}"),
        },
    )
    emit(out, "export", version=version, uri=trainer.storage.uri(target))
    return version
