"""Helpers for the Helm chart tests: real Helm v4 rendering (helm-python-sdk's libhelm), file paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "exfm"
EXAMPLE_VALUES = sorted((CHART / "examples").glob("values-*.yaml"))
RELEASE = "exfm"
NAMESPACE = "exfm-system"

# Values scenarios rendered by the tests: the defaults, every example file, and namespaced RBAC.
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    **{p.stem: yaml.safe_load(p.read_text()) or {} for p in EXAMPLE_VALUES},
    "namespaced": {"operator": {"watchNamespaces": ["team-a", "team-b"]}},
}


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    """``helm template`` of the chart: template path -> rendered text (schema-checked by Helm)."""
    with helm_python.Chart.load(CHART) as chart:
        return chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def manifests(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rendered Kubernetes objects (NOTES.txt and empty documents dropped)."""
    docs: list[dict[str, Any]] = []
    for path, text in sorted(render(values).items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def find(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
