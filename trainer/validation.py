"""Validation helpers shared by the API models and the job configs: "did you mean" for unknown fields.

No torch import here.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel


def _inner_models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside an annotation (``X | None``, ``list[X]``, ``dict[str, X]``...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    if typing.get_origin(annotation) is not None or isinstance(annotation, types.UnionType):
        for arg in typing.get_args(annotation):
            out.extend(_inner_models(arg))
    return out


def allowed_keys(model: type[BaseModel], loc: Iterable[Any]) -> list[str]:
    """The keys the object at ``loc`` (a pydantic error location) accepts, by their JSON names."""
    current: list[type[BaseModel]] = [model]
    for part in loc:
        if isinstance(part, int):
            continue  # a list index: same item models
        nxt: list[type[BaseModel]] = []
        for m in current:
            for name, info in m.model_fields.items():
                if part in (name, info.alias):
                    nxt.extend(_inner_models(info.annotation))
        current = nxt
    return sorted({info.alias or name for m in current for name, info in m.model_fields.items()})


def suggest_field(model: type[BaseModel] | None, error: Any) -> str:
    """For an unknown-field error of ``model``: ``; did you mean 'x'?`` (the nearest valid name, or
    the same name one level down), else the valid names; ``""`` for other errors."""
    if model is None or error.get("type") != "extra_forbidden" or not error["loc"]:
        return ""
    *parent, key = error["loc"]
    keys = allowed_keys(model, parent)
    nested = [f"{k}.{key}" for k in keys if key in allowed_keys(model, [*parent, k])]
    if nested:
        return f"; did you mean {nested[0]!r}?"
    close = difflib.get_close_matches(str(key), keys, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; valid fields: {', '.join(keys)}" if keys else ""
