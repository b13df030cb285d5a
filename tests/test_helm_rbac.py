"""Least-privilege RBAC: the chart grants exactly operator/rbac_calls.py's OPERATOR_API_CALLS, no wildcard."""

from __future__ import annotations

from typing import Any

import pytest
from helm_testlib import NAMESPACE, SCENARIOS, find, manifests

from exfm_operator.rbac_calls import (
    CR_PLURALS,
    DOCUMENTED_EXTRAS,
    OPERATOR_API_CALLS,
    ApiCall,
    missing_grants,
    undeclared_grants,
    wildcards,
)


def _rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for role in find(docs, "ClusterRole") + find(docs, "Role") for rule in role["rules"]]


@pytest.mark.parametrize("scenario", ["default", "namespaced", "values-production"])
def test_chart_rbac_equals_declared_calls(scenario: str) -> None:
    rules = _rules(manifests(SCENARIOS[scenario]))
    assert not wildcards(rules)
    assert not missing_grants(rules, OPERATOR_API_CALLS), "add these rules to helm/exfm/templates/rbac.yaml"
    assert not undeclared_grants(rules, OPERATOR_API_CALLS + DOCUMENTED_EXTRAS), "grant beyond the contract"


def test_contract_declares_the_operator_needs() -> None:
    declared = {(c.group, c.rbac_resource, v) for c in OPERATOR_API_CALLS for v in c.verbs}
    for plural in CR_PLURALS:
        assert {("exfm.io", plural, "watch"), ("exfm.io", f"{plural}/status", "patch")} <= declared
    assert {("batch.volcano.sh", "jobs", v) for v in ("create", "get", "list", "watch", "delete")} <= declared
    assert ("", "pods/log", "get") in declared and ("", "events", "create") in declared
    assert not [c for c in OPERATOR_API_CALLS if c.resource == "secrets" or c.group == "kopf.dev"]
    assert all(c.reason for c in OPERATOR_API_CALLS + DOCUMENTED_EXTRAS)


def test_contract_checkers_catch_gaps_wildcards_and_extras() -> None:
    call = ApiCall("", "pods", ("get", "list"), subresource="log")
    assert missing_grants([{"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}], [call]) == [
        "core/pods/log:list"
    ]
    named = {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get", "list"], "resourceNames": ["x"]}
    assert missing_grants([named], [call]) == ["core/pods/log:get", "core/pods/log:list"]
    extra = {"apiGroups": [""], "resources": ["pods/log", "secrets"], "verbs": ["get", "list"]}
    assert undeclared_grants([extra], [call]) == ["core/secrets:get", "core/secrets:list"]
    assert wildcards([{"apiGroups": ["*"], "resources": ["pods"], "verbs": ["*"]}]) == [
        "rule 0: '*' in apiGroups",
        "rule 0: '*' in verbs",
    ]


def test_cluster_scope_only_for_cluster_resources() -> None:
    docs = manifests()
    cluster_role = find(docs, "ClusterRole", "-operator-cluster")[0]
    granted = {r for rule in cluster_role["rules"] for r in rule["resources"]}
    assert granted == {c.rbac_resource for c in OPERATOR_API_CALLS if c.scope == "cluster"}
    workloads = find(docs, "ClusterRole", "-operator-workloads")[0]
    granted = {r for rule in workloads["rules"] for r in rule["resources"]}
    assert granted == {c.rbac_resource for c in OPERATOR_API_CALLS if c.scope == "namespaced"}


def test_cluster_wide_install_binds_workload_role_cluster_wide() -> None:
    docs = manifests()
    assert not find(docs, "RoleBinding")
    bindings = {b["roleRef"]["name"]: b for b in find(docs, "ClusterRoleBinding")}
    assert set(bindings) == {"exfm-operator-cluster", "exfm-operator-workloads"}
    for binding in bindings.values():
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "exfm-operator", "namespace": NAMESPACE}
        ]


def test_namespaced_install_grants_workload_permissions_only_in_watched_namespaces() -> None:
    docs = manifests(SCENARIOS["namespaced"])
    assert [b["roleRef"]["name"] for b in find(docs, "ClusterRoleBinding")] == ["exfm-operator-cluster"]
    role_bindings = find(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in role_bindings) == ["team-a", "team-b"]
    for binding in role_bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "exfm-operator-workloads",
        }
        assert binding["subjects"][0]["namespace"] == NAMESPACE
    (dep,) = find(docs, "Deployment", "-operator")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" not in args and "--namespace=team-a" in args and "--namespace=team-b" in args


def test_service_account_token_is_mounted_only_by_the_operator() -> None:
    docs = manifests()
    (sa,) = find(docs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    pods = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in find(docs, "Deployment")}
    assert pods["exfm-operator"]["automountServiceAccountToken"] is True
    assert pods["exfm-minio"]["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pods["exfm-minio"]
