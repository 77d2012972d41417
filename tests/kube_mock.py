"""An in-memory Kubernetes API server for tests: kmock's emulator on a loopback port, in a background thread.

    with KubeServer() as kube:
        kubernetes_connection(kube.url, namespace="ml")       # from tests.airflow_env
        ... code under test talks to kube.url with the kubernetes client ...
        kube.objects("pods", namespace="ml")                  # what it created, as dicts
        kube.patch_status("pods", "ml", name, {"phase": "Failed", ...})

Like a real API server, it gives every new pod ``status.phase: Pending``; a pod's ``/log`` answers with the lines
set in ``pod_log``. Everything else (create, get, list, patch, delete, custom resources) is kmock's own.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time

from kmock import KubernetesEmulator, Server
from kmock._internal import enums


class _Emulator(KubernetesEmulator):
    async def _handle(self, request):
        res = request.resource
        if (
            res is not None
            and request.action == enums.action.CREATE
            and getattr(res, "plural", None) == "pods"
            and isinstance(request.data, dict)
        ):
            request.data.setdefault("status", {"phase": "Pending"})
        return await super()._handle(request)


class KubeServer:
    RESOURCES = ("v1/pods", "v1/events", "kubeflow.org/v2beta1/mpijobs")

    def __init__(self, pod_log: bytes = b"") -> None:
        self.pod_log = pod_log
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)
        self.url = ""
        self.emulator: _Emulator | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as err:  # noqa: BLE001 - surfaced in __enter__
            self._error = err
            self._ready.set()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with _Emulator() as emulator, Server(emulator) as server:
            emulator["get", re.compile(r"/api/v1/namespaces/[^/]+/pods/[^/]+/log")] << (lambda: self.pod_log)
            # Known before any object exists, as installed CRDs are: listing an empty kind gives [] and not 404.
            for resource in self.RESOURCES:
                emulator.resources[resource] = {}
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> "KubeServer":
        self._thread.start()
        self._ready.wait(30)
        if self._error or not self.url:
            raise RuntimeError(f"kmock did not start: {self._error!r}")
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    # -- inspection and status writes (through the API, as a controller would) ---------------------------------
    def client(self):
        from kubernetes import client

        conf = client.Configuration()
        conf.host = self.url
        return client.ApiClient(conf)

    def objects(self, plural: str, namespace: str | None = None, group: str = "", version: str = "v1") -> list[dict]:
        from kubernetes import client

        api = self.client()
        if plural == "pods":
            items = client.CoreV1Api(api).list_namespaced_pod(namespace).items
            return [api.sanitize_for_serialization(i) for i in items]
        return client.CustomObjectsApi(api).list_namespaced_custom_object(group, version, namespace, plural)["items"]

    def patch_status(
        self, plural: str, namespace: str, name: str, status: dict, group: str = "", version: str = "v1"
    ) -> None:
        from kubernetes import client

        api = self.client()
        if plural == "pods":
            client.CoreV1Api(api).patch_namespaced_pod_status(name, namespace, {"status": status})
        else:
            client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
                group, version, namespace, plural, name, {"status": status}
            )

    def wait_for(self, plural: str, namespace: str, timeout: float = 60, **kw) -> dict:
        """The first object of a kind to appear (polls the API)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            items = self.objects(plural, namespace, **kw)
            if items:
                return items[0]
            time.sleep(0.2)
        raise TimeoutError(f"no {plural} in {namespace} after {timeout}s")
