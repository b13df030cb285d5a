"""``kubernetes`` backend: trainer jobs as Volcano jobs through TorchX's kubernetes scheduler.

TorchX names Volcano jobs randomly; before ``schedule`` we rewrite the dry-run request so the
job is named after the planner's deterministic job name and labelled with its owner, then
``find``/``list_jobs`` look jobs up by name/label and a restarted operator never duplicates them.
Storage credentials come from the resource's Secret: its keys become the container's environment
(``envFrom``) and are also mounted as files for ``EXFM_S3_CREDENTIALS_DIR``; the kubelet resolves
both, so the operator never reads the Secret and nothing secret lands in the job spec.

Observation is cheap: one Volcano job list per namespace serves every resource's ``list_jobs`` for
``list_ttl`` seconds (concurrent callers share one request), jobs this launcher submitted or cancelled
update that cached list at once, and ``submit`` creates straight away (a 409 means the job exists).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from torchx.runner import get_runner
from torchx.schedulers.kubernetes_scheduler import JOB_STATE
from urllib3.exceptions import HTTPError

from exfm_operator.launcher.appdef import LABEL_KIND, build_appdef, dns_name, job_labels
from exfm_operator.launcher.base import JobRef, JobStatus, Launcher, LauncherError, state_name

SCHEDULER = "kubernetes"
GROUP, VERSION, PLURAL = "batch.volcano.sh", "v1alpha1", "jobs"
CREDENTIALS_DIR = "/etc/exfm/s3"
CREDENTIALS_VOLUME = "exfm-s3-credentials"
ANNOTATION_SUBMITTED = "exfm.io/submitted-at"
ANNOTATION_WINDOWS = "exfm.io/windows"


def load_api_client() -> Any:
    """A kubernetes ``ApiClient`` from KUBECONFIG/~/.kube/config, or the in-cluster service account."""
    import os

    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
    except config.ConfigException:
        config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration)


def _secret_name(ref: Any) -> str | None:
    if ref is None or isinstance(ref, str):
        return ref or None
    if isinstance(ref, dict):
        return ref.get("name")
    return getattr(ref, "name", None)


def _phase(obj: dict) -> str | None:
    return ((obj.get("status") or {}).get("state") or {}).get("phase")


def _job_state(obj: dict) -> JobStatus:
    phase = _phase(obj)
    if phase is None:
        return JobStatus("PENDING", "submitted; Volcano has not reported a phase yet")
    state = JOB_STATE.get(phase)
    if state is None:
        return JobStatus("UNKNOWN", f"unknown Volcano phase {phase!r}")
    message = ((obj.get("status") or {}).get("state") or {}).get("message") or ""
    return JobStatus(state_name(state), message)


class _NamespaceJobs:
    """The jobs of one namespace as last listed (``at``: monotonic time of the list request)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # one list request at a time per namespace
        self.at = float("-inf")
        self.jobs: dict[str, JobRef] = {}
        self.submitted: dict[str, tuple[float, JobRef]] = {}  # name → (when, ref): not yet listed


class KubernetesLauncher(Launcher):
    """Submits Volcano jobs into ``namespace`` (per call) on ``queue``."""

    scheduler = SCHEDULER

    def __init__(
        self,
        namespace: str = "default",
        queue: str = "default",
        image: str = "exfm:latest",
        service_account: str | None = None,
        env: dict[str, str] | None = None,
        api_client: Any = None,
        list_ttl: float = 1.0,
    ) -> None:
        """``list_ttl``: seconds a namespace's job list answers ``list_jobs``/``find``/``status``
        (0: every call asks the API server)."""
        super().__init__()
        self.namespace = namespace
        self.queue = queue
        self.image = image
        self.service_account = service_account
        self.env = dict(env or {})
        self._client = api_client or load_api_client()
        self._runner = get_runner(client=self._client)
        self._name_locks: dict[str, threading.Lock] = {}
        self.list_ttl = list_ttl
        self._namespaces: dict[str, _NamespaceJobs] = {}

    def _name_lock(self, key: str) -> Any:
        with self._lock:
            return self._name_locks.setdefault(key, threading.Lock())

    def _api(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self._client)

    def _handle(self, namespace: str, name: str) -> str:
        return f"{SCHEDULER}://{self._runner.name()}/{namespace}:{name}"

    # -- submit --------------------------------------------------------------------------------
    def build_request(
        self, action: Any, namespace: str | None = None, extra_labels: dict[str, str] | None = None
    ) -> Any:
        """The TorchX dry-run of ``action`` with our name, labels, queue and credential mount."""
        from kubernetes.client.models import (
            V1EnvFromSource,
            V1EnvVar,
            V1SecretEnvSource,
            V1SecretVolumeSource,
            V1Volume,
            V1VolumeMount,
        )

        ns = namespace or self.namespace
        resources = getattr(action, "resources", None)
        queue = (getattr(resources, "queue", None) if resources is not None else None) or self.queue
        app = build_appdef(action, image=action.image or self.image, env=self.env)
        cfg: dict[str, Any] = {"namespace": ns, "queue": queue}
        if self.service_account:
            cfg["service_account"] = self.service_account
        priority = getattr(resources, "priority_class_name", None) if resources is not None else None
        if priority:
            cfg["priority_class"] = priority
        info = self._runner.dryrun(app, SCHEDULER, cfg=cfg)
        name = dns_name(action.job_name)
        labels = {**job_labels(action), **(extra_labels or {})}
        windows = getattr(action, "windows", None)
        resource = info.request.resource
        resource["metadata"] = {
            "name": name,
            "namespace": ns,
            "labels": labels,
            "annotations": {
                ANNOTATION_SUBMITTED: f"{time.time():.3f}",
                ANNOTATION_WINDOWS: ",".join(str(w) for w in (windows or [])),
            },
        }
        secret = _secret_name(getattr(action, "env_from_secret", None))
        for task in resource["spec"]["tasks"]:
            pod = task["template"]
            pod.metadata.labels.update(labels)
            if secret:
                pod.spec.volumes.append(
                    V1Volume(name=CREDENTIALS_VOLUME, secret=V1SecretVolumeSource(secret_name=secret))
                )
                for container in pod.spec.containers:
                    container.volume_mounts.append(
                        V1VolumeMount(name=CREDENTIALS_VOLUME, mount_path=CREDENTIALS_DIR, read_only=True)
                    )
                    container.env.append(V1EnvVar(name="EXFM_S3_CREDENTIALS_DIR", value=CREDENTIALS_DIR))
                    container.env_from = [V1EnvFromSource(secret_ref=V1SecretEnvSource(name=secret))]
        return info

    def submit(
        self, action: Any, namespace: str | None = None, extra_labels: dict[str, str] | None = None
    ) -> str:
        ns = namespace or self.namespace
        name = dns_name(action.job_name)
        with self._name_lock(f"{ns}/{name}"):
            known = self._cached(ns).get(name)
            if known is not None:
                return known.handle
            info = self.build_request(action, ns, extra_labels)
            try:
                handle = self._runner.schedule(info)
            except Exception as err:  # e.g. TorchX's ValueError on a 409: the job exists already
                obj = self._get(ns, name)  # (earlier run or another reconcile)
                if obj is not None:
                    self._remember(ns, obj)
                    return self._handle(ns, name)
                raise LauncherError(f"could not submit job {action.job_name}: {err}") from err
            self._remember(ns, {"metadata": info.request.resource["metadata"]})
            return handle

    # -- the per-namespace job list -----------------------------------------------------------
    def _ns(self, namespace: str) -> _NamespaceJobs:
        with self._lock:
            return self._namespaces.setdefault(namespace, _NamespaceJobs())

    def _cached(self, namespace: str) -> dict[str, JobRef]:
        """Jobs of ``namespace`` from a list at most ``list_ttl`` old (empty when there is none)."""
        entry = self._ns(namespace)
        with self._lock:
            fresh = time.monotonic() - entry.at < self.list_ttl
            return dict(entry.jobs) if fresh else {}

    def _remember(self, namespace: str, obj: dict) -> None:
        ref = self._ref(namespace, obj)
        entry = self._ns(namespace)
        with self._lock:
            entry.jobs[ref.job_name] = ref
            entry.submitted[ref.job_name] = (time.monotonic(), ref)

    def _forget(self, namespace: str, name: str) -> None:
        entry = self._ns(namespace)
        with self._lock:
            entry.jobs.pop(name, None)
            entry.submitted.pop(name, None)

    def _namespace_jobs(self, namespace: str) -> dict[str, JobRef]:
        """All exfm jobs of ``namespace``: one list request per ``list_ttl``, shared by concurrent callers."""
        entry = self._ns(namespace)
        with entry.lock:
            with self._lock:
                if time.monotonic() - entry.at < self.list_ttl:
                    return dict(entry.jobs)
            started = time.monotonic()
            listed = {ref.job_name: ref for ref in self._list(namespace, LABEL_KIND)}  # every exfm job has it
            with self._lock:
                # a job submitted while the list was in flight may be missing from it: keep it
                for name, (when, ref) in list(entry.submitted.items()):
                    if when < started:  # created before the list began: the list has it (or it is gone)
                        entry.submitted.pop(name)
                    else:
                        listed.setdefault(name, ref)
                entry.jobs, entry.at = listed, started
                return dict(listed)

    def _ref(self, namespace: str, obj: dict) -> JobRef:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        st = _job_state(obj)
        submitted = annotations.get(ANNOTATION_SUBMITTED)
        return JobRef(
            job_name=meta["name"],
            handle=self._handle(namespace, meta["name"]),
            kind=labels.get(LABEL_KIND, ""),
            state=st.state,
            message=st.message,
            labels=labels,
            annotations=annotations,
            submitted_at=float(submitted) if submitted else None,
        )

    def _list(self, namespace: str, selector: str) -> list[JobRef]:
        from kubernetes.client.rest import ApiException

        try:
            resp = self._api().list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, label_selector=selector
            )
        except (ApiException, HTTPError) as err:
            reason = getattr(err, "reason", None) or err
            raise LauncherError(f"listing Volcano jobs in {namespace} failed: {reason}") from err
        return [self._ref(namespace, obj) for obj in resp.get("items", [])]

    # -- queries -------------------------------------------------------------------------------
    def _get(self, namespace: str, name: str) -> dict | None:
        from kubernetes.client.rest import ApiException

        try:
            return self._api().get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as err:
            if err.status == 404:
                return None
            raise LauncherError(f"reading Volcano job {namespace}/{name} failed: {err.reason}") from err
        except HTTPError as err:
            raise LauncherError(f"reading Volcano job {namespace}/{name} failed: {err}") from err

    def find(self, job_name: str, namespace: str | None = None) -> str | None:
        ns = namespace or self.namespace
        name = dns_name(job_name)
        known = self._cached(ns).get(name)
        if known is not None:
            return known.handle
        obj = self._get(ns, name)
        return None if obj is None else self._handle(ns, obj["metadata"]["name"])

    def status(self, handle: str) -> JobStatus:
        from kubernetes.client.rest import ApiException

        ns, name = handle.rsplit("/", 1)[-1].split(":", 1)
        known = self._cached(ns).get(name)
        if known is not None:  # listed moments ago: no describe round trip
            return JobStatus(known.state, known.message)
        try:
            live = self._runner.status(handle)
        except ApiException as err:
            if err.status == 404:
                return JobStatus("UNKNOWN", f"job {handle} not found")
            raise LauncherError(f"status of {handle} failed: {err.reason}") from err
        except HTTPError as err:
            raise LauncherError(f"status of {handle} failed: {err}") from err
        if live is None:
            return JobStatus("UNKNOWN", f"job {handle} not found")
        state = state_name(live.state)
        if state == "UNKNOWN":  # TorchX reports UNKNOWN until Volcano writes a status
            return JobStatus("PENDING", "submitted; Volcano has not reported a phase yet")
        msg = live.msg if live.msg and live.msg != "<NONE>" else ""
        return JobStatus(state, msg)

    def list_jobs(self, labels: dict[str, str], namespace: str | None = None) -> list[JobRef]:
        ns = namespace or self.namespace
        if self.list_ttl > 0:
            jobs = list(self._namespace_jobs(ns).values())
        else:
            jobs = self._list(ns, ",".join(f"{k}={v}" for k, v in sorted(labels.items())))
        # (also guards against servers that ignore labelSelector)
        return [job for job in jobs if all(job.labels.get(k) == v for k, v in labels.items())]

    def cancel(self, handle: str) -> None:
        from kubernetes.client.rest import ApiException

        ns, name = handle.rsplit("/", 1)[-1].split(":", 1)
        try:
            self._api().delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        except ApiException as err:
            if err.status != 404:
                raise LauncherError(f"cancelling {handle} failed: {err.reason}") from err
        except HTTPError as err:
            raise LauncherError(f"cancelling {handle} failed: {err}") from err
        self._forget(ns, name)

    def logs(self, handle: str, tail: int = 100) -> list[str]:
        try:
            return list(self._runner.log_lines(handle, "trainer", 0))[-tail:]
        except Exception:  # pods may be gone; logs are best effort
            return []

    def close(self) -> None:
        self._client.close()
