"""Parse manifests (dicts or YAML) into typed resources, with one clear message per problem."""

from __future__ import annotations

import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from exfm_operator.api.base import API_VERSION
from exfm_operator.api.resources import KINDS, Resource
from exfm_trainer.validation import suggest_field


class ManifestError(ValueError):
    """One or more manifest documents are invalid; ``problems`` holds one message per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid manifest:\n" + "\n".join(f"  - {p}" for p in problems))


def field_path(loc: Iterable[Any]) -> str:
    """``('spec', 'retention', 'pinnedVersions', 0)`` → ``spec.retention.pinnedVersions[0]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _clean(msg: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg


def validation_problems(err: ValidationError, prefix: str, model: type[BaseModel] | None = None) -> list[str]:
    """One ``<prefix>: <field path>: <message>`` line per pydantic error (an unknown field gets the
    nearest valid name of ``model`` at that place, when ``model`` is given)."""
    return [
        f"{prefix}: {field_path(e['loc'])}: {_clean(e['msg'])}{suggest_field(model, e)}" for e in err.errors()
    ]


def _label(doc: dict[str, Any], where: str) -> str:
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    ns = meta.get("namespace", "default") if isinstance(meta, dict) else "default"
    who = f'"{ns}/{name}"' if name else "(unnamed)"
    return f"{doc.get('kind')} {who} ({where})"


def parse_resource(doc: Any, where: str = "<dict>") -> Resource:
    """Validate one document; raises :class:`ManifestError` naming the kind, object and field."""
    if not isinstance(doc, dict):
        raise ManifestError(
            [f"{where}: expected a mapping with apiVersion/kind/metadata/spec, got {type(doc).__name__}"]
        )
    kind = doc.get("kind")
    if kind not in KINDS:
        raise ManifestError(
            [f"{where}: unknown kind {kind!r}; expected one of {', '.join(KINDS)} (apiVersion {API_VERSION})"]
        )
    label = _label(doc, where)
    if doc.get("apiVersion") != API_VERSION:
        raise ManifestError([f"{label}: apiVersion: expected {API_VERSION!r}, got {doc.get('apiVersion')!r}"])
    try:
        return KINDS[kind].model_validate(doc)
    except ValidationError as err:
        raise ManifestError(validation_problems(err, label, KINDS[kind])) from None


def load_manifests(docs: Iterable[Any], source: str = "<manifest>") -> list[Resource]:
    """Validate every document (``None`` documents are skipped); all problems are reported together.

    Raises :class:`ManifestError` if any document is invalid or two documents name the same object.
    """
    return _load_located([(doc, f"{source}#{i}") for i, doc in enumerate(docs)])


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects a mapping key given twice (YAML 1.2 forbids it; last-wins hides typos)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice in one mapping (lines {seen[key]} and {line}); keep one",
                    key_node.start_mark,
                )
            if isinstance(key, typing.Hashable):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _yaml_error(err: yaml.YAMLError) -> str:
    """One line: ``line L, column C: <problem>``."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{' '.join(str(problem).split())}"


def parse_yaml_documents(text: str) -> list[Any]:
    """Every document of a YAML string (duplicate keys are an error); raises ``yaml.YAMLError``."""
    return list(yaml.load_all(text, Loader=_UniqueKeyLoader))


def load_yaml(text: str, source: str = "<yaml>") -> list[Resource]:
    """Parse a multi-document YAML string."""
    try:
        docs = parse_yaml_documents(text)
    except yaml.YAMLError as err:
        raise ManifestError([f"{source}: not valid YAML: {_yaml_error(err)}"]) from None
    return load_manifests(docs, source)


def load_paths(paths: Iterable[str | Path]) -> list[Resource]:
    """Load YAML files, or every ``*.yaml``/``*.yml`` file of a directory (sorted)."""
    problems: list[str] = []
    docs = [(doc, where) for doc, where, _ in read_yaml_documents(paths, problems)]
    resources: list[Resource] = []
    try:
        resources = _load_located(docs)
    except ManifestError as err:
        problems.extend(err.problems)
    if problems:
        raise ManifestError(problems)
    return resources


def read_yaml_documents(paths: Iterable[str | Path], problems: list[str]) -> list[tuple[Any, str, Path]]:
    """Every non-empty document of YAML files or directories (their ``*.yaml``/``*.yml``, sorted), as
    ``(document, "file#index", file)``; a missing path or invalid YAML appends to ``problems``."""
    out: list[tuple[Any, str, Path]] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
            if not files:
                problems.append(f"{path}: directory has no *.yaml files")
        elif path.is_file():
            files = [path]
        else:
            problems.append(f"{path}: does not exist (no such file or directory)")
            continue
        for f in files:
            try:
                docs = parse_yaml_documents(f.read_bytes().decode("utf-8"))
            except UnicodeDecodeError as err:
                line = f.read_bytes()[: err.start].count(b"\n") + 1
                problems.append(
                    f"{f}: line {line}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
                    f"{err.start}); save the manifest as UTF-8"
                )
                continue
            except FileNotFoundError:
                problems.append(f"{f}: cannot be read (a dangling symlink?); fix or remove it")
                continue
            except OSError as err:
                problems.append(f"{f}: cannot be read ({err.strerror or err}); fix its permissions")
                continue
            except yaml.YAMLError as err:
                problems.append(f"{f}: not valid YAML: {_yaml_error(err)}")
                continue
            out.extend((doc, f"{f}#{i}", f) for i, doc in enumerate(docs) if doc is not None)
    return out


class UniqueNames:
    """Remembers where each kind/namespace/name was defined, to report the documents that repeat one."""

    def __init__(self) -> None:
        self._first: dict[tuple[str, str, str], str] = {}

    def repeated(self, kind: str, namespace: str, name: str, where: str) -> str | None:
        """The problem when the object was already defined, else None (and remember ``where``)."""
        first = self._first.get((kind, namespace, name))
        if first is None:
            self._first[(kind, namespace, name)] = where
            return None
        return f'{kind} "{namespace}/{name}" ({where}): defined twice (first at {first})'


def _load_located(docs: list[tuple[Any, str]]) -> list[Resource]:
    problems: list[str] = []
    out: list[Resource] = []
    names = UniqueNames()
    for doc, where in docs:
        if doc is None:
            continue
        try:
            res = parse_resource(doc, where)
        except ManifestError as err:
            problems.extend(err.problems)
            continue
        repeated = names.repeated(res.kind, res.metadata.namespace, res.metadata.name, where)
        if repeated:
            problems.append(repeated)
            continue
        out.append(res)
    if problems:
        raise ManifestError(problems)
    return out
