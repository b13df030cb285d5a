"""Where each resource reads and writes: pure functions the planner, observe and the runner share."""

from __future__ import annotations

from exfm_operator.api.common import DatasetSpec, StorageSpec
from exfm_operator.api.resources import DataAugmentation, FoundationModel, VerticalModel
from exfm_trainer import layout
from exfm_trainer.schema import FeatureSchema


class SpecProblem(ValueError):
    """A schema-valid spec the planner cannot act on; ``field`` is the path to fix."""

    def __init__(self, field: str, message: str, reason: str = "InvalidSpec"):
        self.field = field
        self.message = message
        self.reason = reason
        super().__init__(f"{field}: {message}")


def join_uri(root: str, path: str) -> str:
    """``s3://b/p`` + ``fm/ns/x`` → ``s3://b/p/fm/ns/x`` (also for paths)."""
    return f"{root.rstrip('/')}/{path.lstrip('/')}"


def fm_checkpoints_uri(fm: FoundationModel) -> str:
    """URI of the folder holding the FM's checkpoint versions."""
    return join_uri(fm.spec.storage.uri, layout.fm_checkpoints(fm.metadata.namespace, fm.metadata.name))


def das_input(das: DataAugmentation, fm: FoundationModel) -> DatasetSpec:
    """The DAS's input dataset: its own ``spec.dataset`` or the FM's."""
    return das.spec.dataset or fm.spec.dataset


def das_storage(das: DataAugmentation, fm: FoundationModel) -> StorageSpec:
    """The DAS's artifact root: it must be the FM's (the DAS job reads FM checkpoints under it)."""
    if das.spec.output is not None and das.spec.output.uri.rstrip("/") != fm.spec.storage.uri.rstrip("/"):
        raise SpecProblem(
            "spec.output.uri",
            f"must equal FoundationModel {fm.metadata.name!r} spec.storage.uri ({fm.spec.storage.uri!r}), "
            "because the DAS job reads the FM checkpoints under its own storage root; omit spec.output",
        )
    return das.spec.output or fm.spec.storage


def das_output_uri(das: DataAugmentation, fm: FoundationModel) -> str:
    """Root of the DAS's ``window=NNNNN`` output folders."""
    return join_uri(das_storage(das, fm).uri, layout.das_output(das.metadata.namespace, das.metadata.name))


def dataset_schema(dataset: DatasetSpec, field: str) -> FeatureSchema:
    """The dataset's schema: from the spec, else the one the synthetic generator writes."""
    try:
        schema = dataset.resolved_schema()
    except ValueError as err:
        raise SpecProblem(f"{field}.synthetic", str(err)) from None
    if schema is not None:
        return schema
    raise SpecProblem(f"{field}.schema", "not set: declare the schema (label, dense, sparse columns)")


def vm_storage(vm: VerticalModel, das: DataAugmentation) -> StorageSpec | None:
    """The VM's artifact root: ``spec.storage`` or the DAS's (None until the DAS publishes its output)."""
    if vm.spec.storage is not None:
        return vm.spec.storage
    return das.status.output.storage if das.status.output is not None else None


def vm_checkpoints_uri(vm: VerticalModel, das: DataAugmentation) -> str | None:
    """URI of the folder holding the VM's checkpoint versions (None until its storage is known)."""
    storage = vm_storage(vm, das)
    if storage is None:
        return None
    return join_uri(storage.uri, layout.vm_checkpoints(vm.metadata.namespace, vm.metadata.name))
