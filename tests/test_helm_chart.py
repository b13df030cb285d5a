"""The Helm chart: metadata, values schema, template/values consistency, rendering, pod security, CRDs."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import pytest
import yaml
from helm_testlib import CHART, EXAMPLE_VALUES, NAMESPACE, ROOT, SCENARIOS, find, manifests, render

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def test_chart_yaml_is_a_v2_application_chart() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "exfm"
    assert chart["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart["appVersion"] == "0.1.0"


def test_helm_lint_reports_no_warnings_or_errors() -> None:
    for name, values in SCENARIOS.items():
        report = helm_python.lint(CHART, values, strict=True, namespace=NAMESPACE)
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert not problems, f"{name}: {problems}"


def test_schema_is_draft7_and_strict() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert SCHEMA["additionalProperties"] is False
    for key, sub in SCHEMA["properties"].items():
        if sub.get("type") == "object":
            assert sub.get("additionalProperties") is False, f"{key} accepts unknown keys"


@pytest.mark.parametrize("path", [CHART / "values.yaml", *EXAMPLE_VALUES], ids=lambda p: p.name)
def test_values_files_validate(path: Path) -> None:
    """Each file, merged onto the chart defaults as Helm merges it, is valid against the schema."""
    with helm_python.Chart.load(CHART) as chart:
        merged = chart.merge_values(yaml.safe_load(path.read_text()))
    jsonschema.Draft7Validator(SCHEMA).validate(merged)


def test_three_example_values_files_exist() -> None:
    names = {p.name for p in EXAMPLE_VALUES}
    assert {"values-minimal.yaml", "values-production.yaml", "values-bundled-minio.yaml"} <= names


BAD_VALUES = [
    ({"operatorr": {}}, "additional properties"),
    ({"operator": {"queue": "Not_A_Queue"}}, "/operator/queue"),
    ({"operator": {"gpuBudget": -1}}, "/operator/gpuBudget"),
    ({"operator": {"watchNamespaces": ["Bad Namespace"]}}, "/operator/watchNamespaces"),
    ({"image": {"tag": "latest"}}, "/image/tag"),
    ({"storage": {"endpoint": "minio:9000"}}, "/storage/endpoint"),
    ({"minio": {"rootPassword": "short"}}, "/minio/rootPassword"),
    ({"operator": {"resources": {"requests": {"cpu": "lots", "memory": "1Gi"}}}}, "/operator/resources"),
]


@pytest.mark.parametrize(("override", "where"), BAD_VALUES, ids=[w for _, w in BAD_VALUES])
def test_bad_values_fail_at_install_time(override: dict[str, Any], where: str) -> None:
    """Helm itself (libhelm, as `helm install` does) rejects the values and names the field."""
    with pytest.raises(helm_python.HelmValuesError) as err:
        render(override)
    assert where in str(err.value)


def test_missing_storage_fails_with_a_clear_message() -> None:
    no_minio = {"minio": {"enabled": False}}
    with pytest.raises(helm_python.HelmError, match=r"storage\.endpoint is empty and minio\.enabled"):
        render({**no_minio, "storage": {"credentialsSecret": {"name": "s3"}}})
    with pytest.raises(helm_python.HelmError, match=r"storage\.credentialsSecret\.name is empty"):
        render({**no_minio, "storage": {"endpoint": "http://s3:9000"}})


def _resolves(values: Any, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(values, dict) or part not in values:
            return False
        values = values[part]
    return True


def test_every_values_path_in_templates_exists_in_values_yaml() -> None:
    referenced: set[str] = set()
    for template in (CHART / "templates").glob("*"):
        referenced |= set(re.findall(r"\.Values\.([A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)", template.read_text()))
    assert len(referenced) > 20
    missing = sorted(p for p in referenced if not _resolves(VALUES, p))
    assert not missing, f"templates reference values not in values.yaml: {missing}"


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_scenario_renders_namespaced_labelled_objects(scenario: str) -> None:
    docs = manifests(SCENARIOS[scenario])
    assert find(docs, "Deployment", "-operator")
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding"}
    for doc in docs:
        meta = doc["metadata"]
        assert meta["labels"]["app.kubernetes.io/instance"] == "exfm", meta["name"]
        if doc["kind"] not in cluster_scoped:
            assert meta.get("namespace"), f"{doc['kind']}/{meta['name']} has no namespace"


def _pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in docs if d["kind"] == "Deployment"]


@pytest.mark.parametrize("scenario", ["default", "values-production"])
def test_pods_are_hardened(scenario: str) -> None:
    pods = _pod_specs(manifests(SCENARIOS[scenario]))
    assert len(pods) == (2 if scenario == "default" else 1)  # operator (+ bundled MinIO by default)
    for name, pod in pods:
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] >= 10000, name
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", name
        tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["privileged"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", name
            assert {"/tmp"} <= {m["mountPath"] for m in c["volumeMounts"] if m["name"] in tmp_volumes}, name
            assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"], name
            assert c["livenessProbe"]["httpGet"] and c["readinessProbe"]["httpGet"], name
            assert not c["image"].endswith(":latest") and (":" in c["image"] or "@" in c["image"]), name


def test_operator_deployment_runs_standalone_kopf_with_env_contract() -> None:
    docs = manifests()
    (dep,) = find(docs, "Deployment", "-operator")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["exfm"]
    assert c["args"][:3] == ["operator", "--standalone", "--liveness=http://0.0.0.0:8080/healthz"]
    assert c["args"][-1] == "--all-namespaces"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    env = {e["name"]: e for e in c["env"]}
    assert env["EXFM_S3_ENDPOINT"]["value"] == f"http://exfm-minio.{NAMESPACE}.svc:9000"
    assert env["EXFM_STORAGE_URI"]["value"] == "s3://exfm"
    assert env["EXFM_S3_CREATE_BUCKET"]["value"] == "true"
    assert env["EXFM_S3_CREDENTIALS_SECRET"]["value"] == "exfm-minio"
    assert not [e for e in c["env"] if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]]
    # The keys are files in EXFM_S3_CREDENTIALS_DIR, named as exfm_trainer.storage.credentials expects.
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == env["EXFM_S3_CREDENTIALS_DIR"]["value"]]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "exfm-minio"
    assert {i["path"] for i in volume["secret"]["items"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert {"EXFM_SCHEDULER", "EXFM_QUEUE", "EXFM_GPU_BUDGET", "EXFM_TRAINER_IMAGE"} <= env.keys()
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "exfm-operator"


def test_production_values_use_external_s3_digest_and_namespaces() -> None:
    docs = manifests(SCENARIOS["values-production"])
    assert not find(docs, "PersistentVolumeClaim") and not find(docs, "Secret")
    (dep,) = find(docs, "Deployment", "-operator")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert "@sha256:" in c["image"]
    assert [a for a in c["args"] if a.startswith("--namespace=")] == [
        "--namespace=team-ads",
        "--namespace=team-feed",
    ]
    assert "--verbose" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["EXFM_S3_ENDPOINT"]["value"] == "https://s3.storage.example.com"
    assert env["EXFM_S3_CREDENTIALS_SECRET"]["value"] == "exfm-s3"
    assert env["EXFM_S3_REGION"]["value"] == "us-east-1" and env["EXFM_S3_CREATE_BUCKET"]["value"] == "false"
    (monitor,) = find(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    (svc,) = find(docs, "Service", "-metrics")
    assert monitor["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    assert all(
        svc["metadata"]["labels"][k] == v for k, v in monitor["spec"]["selector"]["matchLabels"].items()
    )


def test_bundled_minio_secret_and_data_are_kept_on_uninstall() -> None:
    docs = manifests(SCENARIOS["values-bundled-minio"])
    (secret,) = find(docs, "Secret", "-minio")
    (pvc,) = find(docs, "PersistentVolumeClaim", "-minio")
    for obj in (secret, pvc):
        assert obj["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert set(secret["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "EXFM_S3_ENDPOINT"}
    assert base64.b64decode(secret["data"]["AWS_SECRET_ACCESS_KEY"]).decode() == "change-me-please"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "50Gi"
    (minio,) = find(docs, "Deployment", "-minio")
    assert minio["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_network_policies_select_the_pods_they_protect() -> None:
    docs = manifests()
    deployments = {d["metadata"]["name"]: d for d in find(docs, "Deployment")}
    policies = find(docs, "NetworkPolicy")
    assert {p["metadata"]["name"] for p in policies} == set(deployments)
    for policy in policies:
        pod_labels = deployments[policy["metadata"]["name"]]["spec"]["template"]["metadata"]["labels"]
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert all(pod_labels[k] == v for k, v in selector.items())
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}


def test_disabling_optional_parts_removes_them() -> None:
    docs = manifests(
        {
            "metrics": {"enabled": False},
            "networkPolicy": {"enabled": False},
            "serviceAccount": {"create": False, "name": "existing"},
            "rbac": {"create": False},
            "minio": {"enabled": False},
            "storage": {"endpoint": "http://s3:9000", "credentialsSecret": {"name": "s3"}},
        }
    )
    assert sorted(d["kind"] for d in docs) == ["Deployment"]
    assert docs[0]["spec"]["template"]["spec"]["serviceAccountName"] == "existing"


def test_notes_explain_crd_upgrades() -> None:
    notes = render()["exfm/templates/NOTES.txt"]
    assert "kubectl apply --server-side -f crds/" in notes
    assert "exfm-minio" in notes


# --- CRDs: the chart ships byte-identical copies of the generated crds/ ----------------------------------


def _yaml_names(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.yaml")}


def test_chart_crds_are_identical_to_generated_crds() -> None:
    generated, shipped = ROOT / "crds", CHART / "crds"
    assert _yaml_names(shipped) == _yaml_names(generated), "run scripts/sync-chart-crds.sh"
    for name in _yaml_names(generated):
        assert (shipped / name).read_bytes() == (generated / name).read_bytes(), f"{name}: run sync script"
    for name in _yaml_names(generated):
        crd = yaml.safe_load((generated / name).read_text())
        assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["group"] == "exfm.io", name


def _sync_sandbox(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "sync-chart-crds.sh", tmp_path / "scripts")
    (tmp_path / "crds").mkdir()
    (tmp_path / "helm" / "exfm" / "crds").mkdir(parents=True)
    return tmp_path


def _sync(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = repo / "scripts" / "sync-chart-crds.sh"
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, check=False)


def test_sync_script_copies_checks_and_prunes(tmp_path: Path) -> None:
    repo = _sync_sandbox(tmp_path)
    assert _sync(repo).returncode == 1  # nothing generated yet: says so and fails
    (repo / "crds" / "a.yaml").write_text("kind: CustomResourceDefinition\n")
    (repo / "helm/exfm/crds/stale.yaml").write_text("old\n")
    check = _sync(repo, "--check")
    assert check.returncode == 1 and "differs" in check.stdout and "stale" in check.stdout
    assert _sync(repo).returncode == 0
    assert _yaml_names(repo / "helm/exfm/crds") == {"a.yaml"}
    assert (repo / "helm/exfm/crds/a.yaml").read_bytes() == (repo / "crds/a.yaml").read_bytes()
    assert _sync(repo, "--check").returncode == 0
