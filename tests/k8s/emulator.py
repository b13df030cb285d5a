"""A Kubernetes API for tests: kmock's ``KubernetesEmulator`` made realistic enough for kopf and TorchX.

Additions over kmock: object metadata (uid, resourceVersion, generation, creationTimestamp) on
create and a resourceVersion bump on every change, 201 on create, JSON-patch (RFC 6902) with
422 on a failed ``test`` op, RFC 7386 merge-patch, 409 on a stale ``metadata.resourceVersion``,
``status`` subresource semantics (spec and status are patched through separate endpoints),
``?watch=True`` (the kubernetes client's spelling) as a watch, equality ``labelSelector``s on
lists, and finalizer-aware deletion.

:class:`EmulatorServer` serves it on loopback from a background thread and writes a kubeconfig,
so kopf (in-process) and the kubernetes client (TorchX) talk to it over real HTTP. Tests act as
``kubectl`` through :meth:`EmulatorServer.apply` / :meth:`EmulatorServer.patch`, which change
objects inside the emulator without HTTP, so ``requests`` only holds the operator's own calls.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import enums, parsing, rendering

EXFM_GROUP, EXFM_VERSION = "exfm.io", "v1alpha1"
EXFM_KINDS = {
    "foundationmodels": "FoundationModel",
    "dataaugmentations": "DataAugmentation",
    "verticalmodels": "VerticalModel",
}
VOLCANO = "batch.volcano.sh/v1alpha1/jobs"

_MISSING = object()
_kmock_parse_path = parsing.parse_path


def _parse_path(path: str) -> parsing.ParsedPath:
    """kmock 0.8 cannot parse ``/api/v1/namespaces`` and ``/api/v1/namespaces/<name>`` (the Namespace
    resource itself: it takes ``namespaces`` as the namespace marker and fails). Handle those here."""
    parts = path.strip("/").split("/")
    if parts[:2] == ["api", "v1"] and len(parts) in (3, 4) and parts[2] == "namespaces":
        return parsing.ParsedPath("", "v1", "namespaces", None, parts[3] if len(parts) == 4 else None, None)
    if parts[:1] == ["apis"] and len(parts) in (4, 5) and parts[3] == "namespaces":
        return parsing.ParsedPath(
            parts[1], parts[2], "namespaces", None, parts[4] if len(parts) == 5 else None
        )
    return _kmock_parse_path(path)


parsing.parse_path = _parse_path  # rendering.Request._parse looks it up through the module


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge recursively, ``null`` removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class PatchTestFailed(Exception):
    pass


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def json_patch(doc: dict, ops: list[dict]) -> dict:
    """RFC 6902 subset kopf uses: test, add, remove, replace."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = _pointer(op["path"])
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last = parts[-1] if parts else None
        kind = op["op"]
        if kind == "test":
            current: Any = doc
            for part in parts:
                try:
                    current = current[int(part)] if isinstance(current, list) else current[part]
                except (KeyError, IndexError, ValueError):
                    current = _MISSING
                    break
            if current != op.get("value"):
                raise PatchTestFailed(f"test failed at {op['path']}: {current!r} != {op.get('value')!r}")
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                idx = len(parent) if last == "-" else int(last)
                if kind == "add":
                    parent.insert(idx, op["value"])
                else:
                    parent[idx] = op["value"]
            else:
                parent[last] = op["value"]
        elif kind == "remove":
            if isinstance(parent, list):
                parent.pop(int(last))
            else:
                parent.pop(last, None)
        else:
            raise ValueError(f"unsupported JSON-patch op {kind!r}")
    return doc


def _status_error(code: int, reason: str, message: str) -> aiohttp.web.Response:
    body = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "code": code, "reason": reason, "message": message}  # fmt: skip
    return aiohttp.web.json_response(body, status=code)


def _label_match(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif labels.get(term) is None:
            return False
    return True


@attrs.define(kw_only=True)
class ExfmKubernetesEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the API-server behaviour kopf and the kubernetes client rely on."""

    _rv: itertools.count = attrs.field(factory=lambda: itertools.count(1), init=False)
    faults: dict[str, int] = attrs.field(factory=dict, init=False)  # "METHOD plural" → status code

    def next_rv(self) -> str:
        return str(next(self._rv))

    def register_defaults(self) -> None:
        """Namespaces, events, ResourceQuotas, pods, CRDs, Volcano jobs and the three ExFM kinds."""
        info = kmock.ResourceInfo
        verbs = {"get", "list", "watch", "create", "patch", "update", "delete"}
        self.resources["v1/namespaces"] = info(kind="Namespace", namespaced=False, verbs=verbs)
        self.resources["v1/events"] = info(kind="Event", namespaced=True, verbs=verbs)
        self.resources["v1/resourcequotas"] = info(kind="ResourceQuota", namespaced=True, verbs=verbs)
        self.resources["v1/pods"] = info(kind="Pod", namespaced=True, verbs=verbs, subresources={"log"})
        self.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = info(
            kind="CustomResourceDefinition", namespaced=False, verbs=verbs
        )
        self.resources[VOLCANO] = info(kind="Job", namespaced=True, verbs=verbs, subresources={"status"})
        for plural, kind in EXFM_KINDS.items():
            self.resources[f"{EXFM_GROUP}/{EXFM_VERSION}/{plural}"] = info(
                kind=kind, namespaced=True, verbs=verbs, subresources={"status"}, categories={"exfm"}
            )

    # -- request dispatch ----------------------------------------------------------------------
    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None:
            fault = self.faults.get(f"{request.method.value} {request.resource.plural}")
            if fault:
                return _status_error(fault, "InjectedFault", "fault injected by the test")
            if (
                request.method == enums.method.GET
                and str(request.params.get("watch", "")).lower() == "true"
                and request.action != enums.action.WATCH
            ):
                request = attrs.evolve(request, action=enums.action.WATCH)
            if request.action == enums.action.CREATE and request.subresource is None:
                return await self._create(request)
            if request.action == enums.action.UPDATE:
                return await self._update(request)
            if request.action == enums.action.DELETE and request.name is not None:
                return await self._delete(request)
        return await super()._handle(request)

    def _key(self, request: rendering.Request, name: str | None = None) -> tuple:
        return (request.resource, request.namespace, name or request.name)

    def _has_status(self, resource: Any) -> bool:
        return resource in self.resources and "status" in self.resources[resource].subresources

    async def _publish(self, resource: Any, kind: str, raw: dict) -> None:
        await self._buses[resource].put({"type": kind, "object": raw})

    async def _create(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        body = copy.deepcopy(request.data or {})
        meta = body.setdefault("metadata", {})
        if request.namespace:
            meta["namespace"] = request.namespace
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            return _status_error(422, "Invalid", "metadata.name: Required value")
        async with self._lock:
            key = self._key(request, meta["name"])
            if key in self._objects and not self._objects[key].deleted:
                return _status_error(
                    409, "AlreadyExists", f'{request.resource.plural} "{meta["name"]}" already exists'
                )
            meta.update(uid=str(uuid.uuid4()), resourceVersion=self.next_rv(), generation=1,
                        creationTimestamp=_now())  # fmt: skip
            meta.pop("deletionTimestamp", None)
            if key in self._objects:
                self._objects[key].create(body)
            else:
                self._objects[key] = body
            raw = self._objects[key].raw
            await self._publish(request.resource, "ADDED", raw)
        return aiohttp.web.json_response(raw, status=201)

    async def _update(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        ctype = request.headers.get("Content-Type", "")
        async with self._lock:
            key = self._key(request)
            if key not in self._objects or self._objects[key].deleted:
                return _status_error(404, "NotFound", f"{request.resource.plural} {request.name!r} not found")
            old = copy.deepcopy(self._objects[key].raw)
            try:
                if "json-patch" in ctype:
                    new = json_patch(old, request.data)
                else:
                    patch = dict(request.data or {})
                    wanted_rv = (patch.get("metadata") or {}).get("resourceVersion")
                    if wanted_rv and wanted_rv != old["metadata"].get("resourceVersion"):
                        return _status_error(
                            409, "Conflict", "the object has been modified; stale resourceVersion"
                        )
                    if self._has_status(request.resource):
                        if request.subresource == "status":
                            patch = {k: v for k, v in patch.items() if k in ("status", "metadata")}
                        else:
                            patch.pop("status", None)
                    new = merge_patch(old, patch)
            except PatchTestFailed as err:
                return _status_error(422, "Invalid", str(err))
            except (KeyError, IndexError, ValueError, TypeError) as err:
                return _status_error(422, "Invalid", f"patch cannot be applied: {err}")
            return await self._store(request.resource, key, old, new)

    async def _store(self, resource: Any, key: tuple, old: dict, new: dict) -> aiohttp.web.StreamResponse:
        """Save ``new`` (lock held): bump versions, publish, finish deletion without finalizers."""
        if new == old:
            return aiohttp.web.json_response(new)
        meta = new.setdefault("metadata", {})
        for immutable in ("uid", "creationTimestamp", "name", "namespace"):
            if immutable in old.get("metadata", {}):
                meta[immutable] = old["metadata"][immutable]
        meta["resourceVersion"] = self.next_rv()
        if new.get("spec") != old.get("spec"):
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        self._objects[key].history.append(new)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._objects[key].delete()
            await self._publish(resource, "DELETED", new)
        else:
            await self._publish(resource, "MODIFIED", new)
        return aiohttp.web.json_response(new)

    async def _delete(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        async with self._lock:
            key = self._key(request)
            if key not in self._objects or self._objects[key].deleted:
                return _status_error(404, "NotFound", f"{request.resource.plural} {request.name!r} not found")
            old = copy.deepcopy(self._objects[key].raw)
            if old["metadata"].get("finalizers"):
                if old["metadata"].get("deletionTimestamp"):
                    return aiohttp.web.json_response(old)
                new = merge_patch(old, {"metadata": {"deletionTimestamp": _now()}})
                return await self._store(request.resource, key, old, new)
            self._objects[key].delete()
            await self._publish(request.resource, "DELETED", old)
            return aiohttp.web.json_response(old)

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        payload = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        if selector:
            payload["items"] = [
                item
                for item in payload["items"]
                if _label_match((item.get("metadata") or {}).get("labels") or {}, selector)
            ]
        payload["metadata"] = {"resourceVersion": str(next(self._rv))}
        return payload

    # -- test-side (kubectl-like) operations, run inside the emulator's loop --------------------
    async def apply_object(self, resource: str, body: dict) -> dict:
        res = kmock.resource(resource)
        body = copy.deepcopy(body)
        meta = body.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        async with self._lock:
            key = (res, meta["namespace"], meta["name"])
            if key in self._objects and not self._objects[key].deleted:
                old = copy.deepcopy(self._objects[key].raw)
                new = merge_patch(old, {k: v for k, v in body.items() if k != "status"})
                await self._store(res, key, old, new)
                return self._objects[key].raw
            meta.update(uid=str(uuid.uuid4()), resourceVersion=self.next_rv(), generation=1,
                        creationTimestamp=_now())  # fmt: skip
            if key in self._objects:
                self._objects[key].create(body)
            else:
                self._objects[key] = body
            raw = self._objects[key].raw
            await self._publish(res, "ADDED", raw)
            return raw

    async def patch_object(self, resource: str, namespace: str, name: str, patch: dict) -> dict | None:
        res = kmock.resource(resource)
        async with self._lock:
            key = (res, namespace, name)
            if key not in self._objects or self._objects[key].deleted:
                return None
            old = copy.deepcopy(self._objects[key].raw)
            await self._store(res, key, old, merge_patch(old, patch))
            obj = self._objects[key]
            return None if obj.deleted else obj.raw

    async def delete_object(self, resource: str, namespace: str, name: str) -> None:
        res = kmock.resource(resource)
        async with self._lock:
            key = (res, namespace, name)
            if key not in self._objects or self._objects[key].deleted:
                return
            old = copy.deepcopy(self._objects[key].raw)
            if old["metadata"].get("finalizers"):
                if not old["metadata"].get("deletionTimestamp"):
                    await self._store(
                        res, key, old, merge_patch(old, {"metadata": {"deletionTimestamp": _now()}})
                    )
                return
            self._objects[key].delete()
            await self._publish(res, "DELETED", old)


class EmulatorServer:
    """Runs :class:`ExfmKubernetesEmulator` on loopback in a thread; writes a kubeconfig for it."""

    def __init__(
        self,
        workdir: str | Path,
        namespaces: tuple[str, ...] = ("default",),
        emulator_cls: type[ExfmKubernetesEmulator] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.namespaces = namespaces
        self.emulator_cls = emulator_cls or ExfmKubernetesEmulator
        self.kubeconfig = self.workdir / "kubeconfig.yaml"
        self.emulator: ExfmKubernetesEmulator | None = None
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    def __enter__(self) -> EmulatorServer:
        self._thread = threading.Thread(target=self._run, name="k8s-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the Kubernetes emulator did not start within 30 s")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig.write_text(yaml.safe_dump(self.kubeconfig_dict()))
        for ns in self.namespaces:
            self.apply("v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with self.emulator_cls() as emulator, kmock.Server(emulator) as server:
            emulator.register_defaults()
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def kubeconfig_dict(self) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "emulator", "cluster": {"server": self.url, "insecure-skip-tls-verify": True}}
            ],
            "users": [{"name": "tester", "user": {"token": "test-token"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester",
                                                          "namespace": "default"}}],
            "current-context": "emulator",
        }  # fmt: skip

    # -- thread-safe helpers -------------------------------------------------------------------
    def call(self, fn: Callable[[], Any], timeout: float = 30) -> Any:
        """Run ``fn()`` (a coroutine factory or plain callable) in the emulator's loop."""
        assert self._loop is not None

        async def runner() -> Any:
            result = fn()
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(runner(), self._loop).result(timeout)

    def apply(self, resource: str, body: dict) -> dict:
        return self.call(lambda: self.emulator.apply_object(resource, body))

    def patch(self, resource: str, namespace: str, name: str, patch: dict) -> dict | None:
        return self.call(lambda: self.emulator.patch_object(resource, namespace, name, patch))

    def delete(self, resource: str, namespace: str, name: str) -> None:
        self.call(lambda: self.emulator.delete_object(resource, namespace, name))

    def get(self, resource: str, namespace: str, name: str) -> dict | None:
        def read() -> dict | None:
            key = (kmock.resource(resource), namespace, name)
            objs = self.emulator.objects
            if key not in objs or objs[key].deleted:
                return None
            return copy.deepcopy(objs[key].raw)

        return self.call(read)

    def list(self, resource: str, namespace: str | None = None) -> list[dict]:
        def read() -> list[dict]:
            res = kmock.resource(resource)
            return [
                copy.deepcopy(obj.raw)
                for (r, ns, _), obj in self.emulator.objects.items()
                if r == res and not obj.deleted and (namespace is None or ns == namespace)
            ]

        return self.call(read)

    def requests(self) -> list[tuple[str, str, str, str | None, str | None]]:
        """(method, group, plural, subresource, action) of every request served so far."""

        def read() -> list[tuple[str, str, str, str | None, str | None]]:
            out = []
            for req in list(self.emulator._requests):
                if req.resource is None:
                    continue
                action = req.action.value if req.action is not None else None
                if req.method.value == "GET" and str(req.params.get("watch", "")).lower() == "true":
                    action = "WATCH"
                out.append((req.method.value, req.resource.group or "", req.resource.plural or "",
                            req.subresource, action))  # fmt: skip
            return out

        return self.call(read)

    def set_fault(self, method: str, plural: str, status: int | None) -> None:
        def change() -> None:
            key = f"{method.upper()} {plural}"
            if status is None:
                self.emulator.faults.pop(key, None)
            else:
                self.emulator.faults[key] = status

        self.call(change)
