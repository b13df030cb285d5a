"""Manifest loading glue for local mode: the operator's API models, plus local ``Dataset`` documents.

``exfm run -f`` takes the same multi-document YAML a user applies to a cluster. FoundationModel,
DataAugmentation and VerticalModel documents are validated by :mod:`exfm_operator.api` (the models
the operator uses). One more kind, ``Dataset`` (apiVersion ``local.exfm.io/v1alpha1``: no CRD
exists for it, so a cluster rejects it rather than storing it), is understood by the local runner
only: it names a window root (``spec.uri``) to materialise before the pipeline starts, from a CSV/
Parquet import (``spec.import``), synthetic generator parameters (``spec.synthetic``) or nothing
(an existing root). Cross-references (``fmRef``, ``dasRef``) are checked here too, because a local
run has no API server to wait on. Every problem gets one message; nothing starts when any exists.
"""

from __future__ import annotations

import difflib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from exfm_operator.api import (
    KINDS,
    SHORT_NAMES,
    ApiModel,
    DataAugmentation,
    FoundationModel,
    ManifestError,
    ObjectMeta,
    Resource,
    VerticalModel,
    parse_resource,
)
from exfm_operator.api.load import UniqueNames, read_yaml_documents, validation_problems
from exfm_trainer.schema import FeatureSchema

DATASET_KIND = "Dataset"
LOCAL_API_VERSION = "local.exfm.io/v1alpha1"
ORDER = {"FoundationModel": 0, "DataAugmentation": 1, "VerticalModel": 2}


class ImportSpec(ApiModel):
    """Import a local table file into windows by event time (``python -m exfm_trainer import table``)."""

    path: str = Field(min_length=1, description="CSV/TSV/Parquet file, relative to the manifest file.")
    format: Literal["csv", "tsv", "parquet"] | None = Field(default=None, description="Default: by suffix.")
    window_seconds: int = Field(default=86_400, ge=1, description="Window length in seconds.")
    origin: int | None = Field(default=None, description="Start of window 0 (epoch s); default: earliest.")
    vocabulary_threshold: int = Field(
        default=1000,
        ge=0,
        description="Hashed categorical columns with at most this many distinct values get a vocabulary "
        "(no id collisions); 0: keep hashing.",
    )


class DatasetDocSpec(ApiModel):
    uri: str = Field(min_length=1, description="Root of the window folders (rebased like every URI).")
    feature_schema: FeatureSchema | None = Field(default=None, alias="schema")
    import_: ImportSpec | None = Field(default=None, alias="import")
    synthetic: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DatasetDocSpec:
        if self.import_ is not None and self.synthetic is not None:
            raise ValueError("set at most one of `import` and `synthetic`")
        return self


class DatasetDoc(ApiModel):
    """A local-only document: a dataset the runner materialises before the pipeline starts."""

    api_version: Literal["local.exfm.io/v1alpha1"] = Field(default=LOCAL_API_VERSION, alias="apiVersion")
    kind: Literal["Dataset"] = DATASET_KIND
    metadata: ObjectMeta
    spec: DatasetDocSpec
    source_dir: str = Field(default=".", exclude=True, description="Folder of the manifest file.")


@dataclass
class Bundle:
    """Validated resources (in FM, DAS, VM order) and local dataset documents."""

    resources: list[Resource] = field(default_factory=list)
    datasets: list[DatasetDoc] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Any]:
        return [r for r in self.resources if r.kind == kind]

    def find(self, kind: str, namespace: str, name: str) -> Any:
        return next(
            (
                r
                for r in self.resources
                if r.kind == kind and r.metadata.namespace == namespace and r.metadata.name == name
            ),
            None,
        )


def _parse_dataset(doc: dict[str, Any], where: str, source_dir: Path) -> DatasetDoc:
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    label = f'Dataset "{name}" ({where})' if name else f"Dataset (unnamed) ({where})"
    if doc.get("apiVersion") != LOCAL_API_VERSION:
        raise ManifestError(
            [f"{label}: apiVersion: expected {LOCAL_API_VERSION!r}, got {doc.get('apiVersion')!r}"]
        )
    try:
        obj = DatasetDoc.model_validate(doc)
    except ValidationError as err:
        raise ManifestError(validation_problems(err, label, DatasetDoc)) from None
    obj.source_dir = str(source_dir.resolve())
    return obj


def check_references(
    bundle: Bundle, invalid: set[tuple[str, str, str]] | None = None, report_empty: bool = True
) -> list[str]:
    """One problem per ``fmRef``/``dasRef`` naming no resource of the bundle, and per bad dataset.

    ``invalid`` holds ``(kind, namespace, name)`` of documents that failed validation: a reference
    to one of them is not reported again (its own problems already are)."""
    invalid = invalid or set()
    problems = []
    refs = [  # (kind, its reference field, the kind it names)
        ("DataAugmentation", "fm_ref", "fmRef", "FoundationModel"),
        ("VerticalModel", "das_ref", "dasRef", "DataAugmentation"),
    ]
    for kind, attr, field_name, upstream in refs:
        for res in bundle.of_kind(kind):
            ns, ref = res.metadata.namespace, getattr(res.spec, attr).name
            if bundle.find(upstream, ns, ref) is None and (upstream, ns, ref) not in invalid:
                problems.append(
                    f'{kind} "{ns}/{res.metadata.name}": spec.{field_name}.name: {upstream} "{ref}" is not '
                    f'defined in namespace "{ns}" by these manifests; add it or fix the name'
                )
    problems.extend(feature_budget_problems(bundle))
    for ds in bundle.datasets:
        if ds.spec.import_ is not None:
            src = Path(ds.source_dir) / ds.spec.import_.path
            if not src.is_file():
                problems.append(
                    f'Dataset "{ds.metadata.name}": spec.import.path: file {src} does not exist '
                    "(paths are relative to the manifest file)"
                )
        if ds.spec.synthetic is not None:
            problems.extend(
                synthetic_problems(ds.spec.synthetic, f'Dataset "{ds.metadata.name}": spec.synthetic')
            )
    problems.extend(vertical_problems(bundle))
    if report_empty and not bundle.resources and not bundle.datasets and not invalid:
        problems.append("no FoundationModel, DataAugmentation, VerticalModel or Dataset documents found")
    return problems


def vm_dataset(bundle: Bundle, vm: VerticalModel) -> Any:
    """The ``DatasetSpec`` a VM's rows come from (its DAS's dataset, else the FM's), or None."""
    ns = vm.metadata.namespace
    das = bundle.find("DataAugmentation", ns, vm.spec.das_ref.name)
    if das is None:
        return None
    if das.spec.dataset is not None:
        return das.spec.dataset
    fm = bundle.find("FoundationModel", ns, das.spec.fm_ref.name)
    return fm.spec.dataset if fm is not None else None


def vertical_problem(vm: VerticalModel, values: list[str] | None, column: str | None, uri: str) -> str | None:
    """The problem when ``spec.vertical`` names no vertical of the data (``values``: the known ones)."""
    label = f'VerticalModel "{vm.metadata.namespace}/{vm.metadata.name}": spec.vertical'
    if vm.spec.vertical is None:
        return None
    if column is None:
        return (
            f"{label}: {vm.spec.vertical!r} is set but the schema of {uri} has no vertical column "
            "(schema.vertical); remove spec.vertical or declare the column"
        )
    if values is None or vm.spec.vertical in values:
        return None
    close = difflib.get_close_matches(vm.spec.vertical, values, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else "use one of them"
    return (
        f"{label}: vertical {vm.spec.vertical!r} not in [{', '.join(values)}] (the values of column "
        f"{column!r} of {uri}); {hint}"
    )


def vm_vertical_problems(
    bundle: Bundle, lookup: Callable[[Any], tuple[str | None, list[str] | None] | None]
) -> list[str]:
    """Each VM whose ``spec.vertical`` is not among the values ``lookup(dataset)`` knows.

    ``lookup`` returns ``(vertical column, values)`` of a VM's dataset, or None when it cannot tell.
    """
    problems = []
    for vm in bundle.of_kind("VerticalModel"):
        ds = vm_dataset(bundle, vm)
        if ds is None or vm.spec.vertical is None:
            continue
        found = lookup(ds)
        if found is None:
            continue
        problem = vertical_problem(vm, found[1], found[0], ds.uri)
        if problem:
            problems.append(problem)
    return problems


def _declared_verticals(ds: Any) -> tuple[str | None, list[str] | None] | None:
    try:
        schema = ds.resolved_schema()
    except ValueError:
        return None  # an invalid generator config is reported on its own
    return None if schema is None else (schema.vertical, schema.vertical_values())


def vertical_problems(bundle: Bundle) -> list[str]:
    """A VM whose vertical the dataset's schema does not know (declared vocabulary/synthetic names)."""
    return vm_vertical_problems(bundle, _declared_verticals)


def _identity(doc: Any) -> tuple[str, str, str]:
    """``(kind, namespace, name)`` of a raw document (empty strings where absent)."""
    if not isinstance(doc, dict):
        return ("", "", "")
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    return (str(doc.get("kind") or ""), str(meta.get("namespace") or "default"), str(meta.get("name") or ""))


def synthetic_problems(params: dict[str, Any], label: str) -> list[str]:
    """Validate synthetic generator parameters with the generator's own config model (numpy only)."""
    from exfm_trainer.data.synthetic import SyntheticConfig

    try:
        SyntheticConfig.model_validate(params)
    except ValidationError as err:
        return validation_problems(err, label, SyntheticConfig)
    return []


def load_bundle(paths: list[str | Path]) -> Bundle:
    """Load and validate files/directories; raises :class:`ManifestError` listing every problem."""
    problems: list[str] = []
    bundle = Bundle()
    names = UniqueNames()
    invalid: set[tuple[str, str, str]] = set()
    for doc, where, f in read_yaml_documents(paths, problems):
        invalid.add(_identity(doc))
        try:
            if isinstance(doc, dict) and doc.get("kind") == DATASET_KIND:
                obj: Any = _parse_dataset(doc, where, f.parent)
            elif isinstance(doc, dict) and doc.get("kind") not in KINDS:
                kinds = ", ".join([*KINDS, DATASET_KIND])
                raise ManifestError([f"{where}: unknown kind {doc.get('kind')!r}; expected one of {kinds}"])
            else:
                obj = parse_resource(doc, where)
        except ManifestError as err:
            problems.extend(err.problems)
            continue
        invalid.discard(_identity(doc))
        repeated = names.repeated(obj.kind, obj.metadata.namespace, obj.metadata.name, where)
        if repeated:
            problems.append(repeated)
        elif isinstance(obj, DatasetDoc):
            bundle.datasets.append(obj)
        else:
            bundle.resources.append(obj)
    # Cross-references are checked even when some documents are invalid: every problem at once.
    problems.extend(check_references(bundle, invalid, report_empty=not problems))
    if problems:
        raise ManifestError(problems)
    bundle.resources.sort(key=lambda r: (ORDER[r.kind], r.metadata.namespace, r.metadata.name))
    return bundle


def feature_budget_problems(bundle: Bundle) -> list[str]:
    """One problem per VerticalModel whose ``spec.features`` names a column its DAS's dataset lacks."""
    problems = []
    for vm in bundle.of_kind("VerticalModel"):
        if vm.spec.features is None:
            continue
        ns = vm.metadata.namespace
        das = bundle.find("DataAugmentation", ns, vm.spec.das_ref.name)
        fm = das and bundle.find("FoundationModel", ns, das.spec.fm_ref.name)
        if das is None or fm is None:
            continue  # reported as a missing reference
        schema = (das.spec.dataset or fm.spec.dataset).resolved_schema()
        if schema is None:
            continue
        try:
            schema.select(vm.spec.features)
        except ValueError as err:
            problems.append(f'VerticalModel "{ns}/{vm.metadata.name}": spec.features: {err}')
    return problems


# ------------------------------------------------------------------------------------- local URIs


def local_uri(uri: str, root: str | None) -> str:
    """Where ``uri`` lives in a local run rooted at ``root`` (None: the manifests' URIs as they are).

    ``s3://bucket/path`` → ``<root>/bucket/path``; a relative path → ``<root>/path``; an absolute
    path or ``file://`` URI is kept (the user asked for exactly that place).
    """
    if root is None:
        return uri
    if uri.startswith("file://") or uri.startswith("/"):
        return uri
    rest = uri[len("s3://") :] if uri.startswith("s3://") else uri
    return f"{root.rstrip('/')}/{rest.strip('/')}"


def local_uid(kind: str, namespace: str, name: str) -> str:
    """A stable uid per resource, so a re-run finds the jobs (owner labels) of the previous run."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"exfm-local/{kind}/{namespace}/{name}"))


def _rebase_dataset(ds: dict[str, Any] | None, root: str | None) -> None:
    if ds is not None:
        ds["uri"] = local_uri(ds["uri"], root)


def localize(bundle: Bundle, root: str | None) -> Bundle:
    """A copy with every storage/dataset URI rebased under ``root`` and local uids/generations set."""
    resources: list[Resource] = []
    for res in bundle.resources:
        doc = res.to_json()
        spec = doc["spec"]
        if res.kind == "FoundationModel":
            spec["storage"]["uri"] = local_uri(spec["storage"]["uri"], root)
            _rebase_dataset(spec["dataset"], root)
        elif res.kind == "DataAugmentation":
            _rebase_dataset(spec.get("dataset"), root)
            if spec.get("output"):
                spec["output"]["uri"] = local_uri(spec["output"]["uri"], root)
        elif res.kind == "VerticalModel" and spec.get("storage"):
            spec["storage"]["uri"] = local_uri(spec["storage"]["uri"], root)
        doc["metadata"]["uid"] = local_uid(res.kind, res.metadata.namespace, res.metadata.name)
        doc["metadata"]["generation"] = doc["metadata"].get("generation") or 1
        doc.pop("status", None)
        resources.append(KINDS[res.kind].model_validate(doc))
    datasets = []
    for ds in bundle.datasets:
        copy = ds.model_copy(deep=True)
        copy.spec.uri = local_uri(ds.spec.uri, root)
        datasets.append(copy)
    return Bundle(resources=resources, datasets=datasets)


def resource_label(res: FoundationModel | DataAugmentation | VerticalModel | DatasetDoc) -> str:
    """``fm/<name>``, ``das/<name>``, ``vm/<name>`` or ``dataset/<name>``."""
    short = SHORT_NAMES.get(res.kind, "dataset")
    return f"{short}/{res.metadata.name}"
