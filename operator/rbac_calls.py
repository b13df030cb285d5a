"""RBAC coverage contract: every Kubernetes API call the operator's service account makes, as data.

The Helm chart's ClusterRoles (``helm/exfm/templates/rbac.yaml``) must grant exactly these calls:
``tests/test_helm_rbac.py`` fails on a wildcard, on a declared call the chart does not grant, and on a
grant that nothing here declares. Whoever adds an API call to the operator adds it here (and the test
tells them which chart rule to add). Pure data: no kopf, kubernetes or torch import.

The operator runs kopf with ``--standalone`` (one replica, ``Recreate`` strategy), so kopf's peering
resources (``kopf.dev`` ``clusterkopfpeerings``/``kopfpeerings``) are neither used nor granted. Secrets
are not read: the S3 credentials reach the operator and the training pods as ``secretKeyRef`` env
entries that the kubelet resolves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

API_GROUP = "exfm.io"
API_VERSION = "v1alpha1"
CR_PLURALS = ("foundationmodels", "dataaugmentations", "verticalmodels")
VOLCANO_GROUP = "batch.volcano.sh"

Scope = Literal["cluster", "namespaced"]


@dataclass(frozen=True)
class ApiCall:
    """One kind of request: ``verbs`` on ``group``/``resource`` (``/subresource``), and why."""

    group: str  # "" is the core API group
    resource: str
    verbs: tuple[str, ...]
    subresource: str | None = None
    reason: str = ""
    scope: Scope = "namespaced"

    @property
    def rbac_resource(self) -> str:
        """The resource name as an RBAC rule spells it, e.g. ``pods/log``."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def _cr_calls() -> list[ApiCall]:
    calls: list[ApiCall] = []
    for plural in CR_PLURALS:
        calls.append(
            ApiCall(
                API_GROUP,
                plural,
                ("get", "list", "watch", "patch"),
                reason="kopf watches the CRs and patches finalizers/annotations; the planner reads "
                "referenced CRs (e.g. a VerticalModel's FoundationModel)",
            )
        )
        calls.append(
            ApiCall(
                API_GROUP,
                plural,
                ("patch",),
                subresource="status",
                reason="the operator writes only .status (phase, conditions, versions, jobs)",
            )
        )
    return calls


OPERATOR_API_CALLS: list[ApiCall] = [
    *_cr_calls(),
    ApiCall(
        VOLCANO_GROUP,
        "jobs",
        ("create", "get", "list", "watch", "delete"),
        reason="TorchX kubernetes scheduler: schedule (create), list, cancel (delete); the launcher "
        "gets/watches the Volcano jobs it owns",
    ),
    ApiCall(
        VOLCANO_GROUP,
        "jobs",
        ("get",),
        subresource="status",
        reason="TorchX KubernetesScheduler.describe() reads get_namespaced_custom_object_status",
    ),
    ApiCall("", "pods", ("get", "list", "watch"), reason="job progress and failure reasons of trainer pods"),
    ApiCall("", "pods", ("get",), subresource="log", reason="TorchX log_iter: read_namespaced_pod_log"),
    ApiCall(
        "",
        "resourcequotas",
        ("get", "list"),
        reason="GPU budget: requests.nvidia.com/gpu quota of the namespace before launching",
    ),
    ApiCall("", "events", ("create",), reason="kopf posts handler progress/errors as Events"),
    ApiCall(
        "",
        "namespaces",
        ("list", "watch"),
        scope="cluster",
        reason="kopf namespace scanning for --namespace patterns",
    ),
    ApiCall(
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        ("list", "watch"),
        scope="cluster",
        reason="kopf resource observation (CRDs added/removed at runtime)",
    ),
]

# Grants the chart may hold beyond OPERATOR_API_CALLS, each with its reason. Keep this empty unless
# a grant is needed by something other than the operator's own code.
DOCUMENTED_EXTRAS: list[ApiCall] = []


def _rule_grants(rule: Mapping[str, Any], call: ApiCall, verb: str) -> bool:
    return (
        call.group in rule.get("apiGroups", [])
        and call.rbac_resource in rule.get("resources", [])
        and verb in rule.get("verbs", [])
        and not rule.get("resourceNames")
    )


def missing_grants(rules: Iterable[Mapping[str, Any]], calls: Iterable[ApiCall]) -> list[str]:
    """``group/resource:verb`` for each declared call that no rule grants (empty when covered)."""
    rules = list(rules)
    return [
        f"{call.group or 'core'}/{call.rbac_resource}:{verb}"
        for call in calls
        for verb in call.verbs
        if not any(_rule_grants(rule, call, verb) for rule in rules)
    ]


def undeclared_grants(rules: Iterable[Mapping[str, Any]], calls: Iterable[ApiCall]) -> list[str]:
    """``group/resource:verb`` for each grant in ``rules`` that no declared call needs."""
    declared = {(c.group, c.rbac_resource, v) for c in calls for v in c.verbs}
    extra: list[str] = []
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    if (group, resource, verb) not in declared:
                        extra.append(f"{group or 'core'}/{resource}:{verb}")
    return extra


def wildcards(rules: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every ``*`` (or non-resource URL) in ``rules``, described; empty for least-privilege rules."""
    found: list[str] = []
    for i, rule in enumerate(rules):
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            if any("*" in str(v) for v in rule.get(field, []) or []):
                found.append(f"rule {i}: '*' in {field}")
        if rule.get("nonResourceURLs"):
            found.append(f"rule {i}: nonResourceURLs")
    return found
