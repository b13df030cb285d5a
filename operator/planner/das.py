"""Planner of a DataAugmentation: augment each ready window, in order, once an FM checkpoint trained
only on earlier windows exists (and, with ``maxStaleness``, is fresh enough)."""

from __future__ import annotations

from exfm_operator.api.resources import (
    DASLineage,
    DASOutput,
    DASWindowLineage,
    DataAugmentation,
    DataAugmentationStatus,
    FoundationModel,
    StalenessSummary,
)
from exfm_operator.planner.actions import Plan
from exfm_operator.planner.core import Chunk, Target, reconcile
from exfm_operator.planner.resolve import (
    SpecProblem,
    das_input,
    das_output_uri,
    das_storage,
    dataset_schema,
)
from exfm_operator.planner.world import World
from exfm_trainer.jobs import ArtifactRef, DASJob, DatasetRef
from exfm_trainer.jobs import WindowRange as JobWindows

LINEAGE_WINDOWS = 32


def next_das_chunk(das: DataAugmentation, fm: FoundationModel, world: World) -> Chunk:
    """The next windows to augment, or why there are none."""
    rng = das.spec.windows
    fm_name = fm.metadata.name
    ckpts = sorted({c.last_window for c in world.fm_checkpoints})
    if not ckpts:
        return Chunk(None, "WaitingForFM", f"FoundationModel {fm_name!r} has no committed checkpoint yet")
    base = max(rng.start, ckpts[0] + 1)  # earlier windows have no FM checkpoint older than them
    done = {d.window for d in world.das_windows}
    ready = {w for w in world.data_windows if rng.contains(w)}
    done_after = [w for w in done if w >= base]
    start = max(done_after) + 1 if done_after else min((w for w in ready if w >= base), default=base)
    if rng.end is not None and start >= rng.end:
        return Chunk(None, "Complete", f"augmented every window of [{rng.start}, {rng.end})", done=True)
    per_job = das.spec.cadence.windows_per_job
    max_stale = das.spec.max_staleness
    n = 0
    stale_note = ""
    while n < per_job and (start + n) in ready and rng.contains(start + n) and (start + n) not in done:
        t = start + n
        fm_last = max(c for c in ckpts if c < t)
        staleness = t - fm_last - 1
        if max_stale is not None and staleness > max_stale:
            stale_note = (
                f"window {t}: the newest FM checkpoint trained before it ends at window {fm_last} "
                f"(staleness {staleness} > maxStaleness {max_stale}); waiting for FoundationModel "
                f"{fm_name!r} to train window {t - 1 - max_stale}"
            )
            break
        n += 1
    if n > 0:
        return Chunk((start, start + n))
    if stale_note:
        return Chunk(None, "WaitingForFreshFM", stale_note)
    return Chunk(None, "WaitingForData", f"waiting for input window {start}")


def _observed_status(
    das: DataAugmentation, fm: FoundationModel | None, world: World
) -> DataAugmentationStatus:
    wins = sorted(world.das_windows, key=lambda d: d.window)
    stale = [d.staleness for d in wins]
    status = DataAugmentationStatus(
        last_window=wins[-1].window if wins else None,
        fm_version=wins[-1].fm_version if wins else None,
        lineage=DASLineage(
            windows=[
                DASWindowLineage(window=d.window, fm_version=d.fm_version, staleness=d.staleness)
                for d in wins[-LINEAGE_WINDOWS:]
            ],
            staleness=StalenessSummary(
                count=len(stale),
                min=min(stale, default=None),
                max=max(stale, default=None),
                mean=round(sum(stale) / len(stale), 4) if stale else None,
            ),
        ),
        output=das.status.output,
    )
    status.counters.windows_processed = len(wins)
    if fm is not None:
        try:
            schema = dataset_schema(das_input(das, fm), "spec.dataset")
            status.output = DASOutput(
                storage=das_storage(das, fm), uri=das_output_uri(das, fm), schema=schema
            )
        except SpecProblem:
            pass  # reported by the target below
    return status


def plan_data_augmentation(
    das: DataAugmentation, fm: FoundationModel | None, world: World
) -> Plan[DataAugmentationStatus]:
    """Reconcile one DataAugmentation; ``fm`` is the FoundationModel named by ``spec.fmRef`` (or None)."""
    meta, spec = das.metadata, das.spec

    def target() -> Target:
        if fm is None:
            raise SpecProblem(
                "spec.fmRef",
                f"FoundationModel {spec.fm_ref.name!r} not found in namespace {meta.namespace!r}",
                reason="UpstreamMissing",
            )
        storage = das_storage(das, fm)
        dataset = das_input(das, fm)
        field = (
            "spec.dataset"
            if spec.dataset is not None
            else f"FoundationModel {fm.metadata.name!r} spec.dataset"
        )
        schema = dataset_schema(dataset, field)

        def build(windows: tuple[int, int]) -> dict:
            job = DASJob(
                storage=storage.uri,
                namespace=meta.namespace,
                name=meta.name,
                windows=JobWindows(start=windows[0], end=windows[1]),
                batch_size=spec.batch_size,
                dataset=DatasetRef(uri=dataset.uri, schema=schema),
                fm=ArtifactRef(namespace=fm.metadata.namespace, name=fm.metadata.name),
                max_staleness=spec.max_staleness,
                max_bad_row_fraction=spec.max_bad_row_fraction,
            )
            return job.model_dump(mode="json", by_alias=True)

        return Target(chunk=next_das_chunk(das, fm, world), build_config=build, secret=storage.secret_ref)

    status = _observed_status(das, fm, world)
    return reconcile(status, das, world, target, has_output=bool(world.das_windows))
