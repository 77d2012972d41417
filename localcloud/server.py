"""One loopback port for every AWS API the pipeline uses.

Requests are routed by what identifies the service on AWS:

- ``X-Amz-Target: SageMaker.*``, or a request signed for ``sagemaker`` -> the SageMaker control plane
  (:mod:`localcloud.sagemaker`);
- ``POST /endpoints/<name>/invocations`` signed for ``sagemaker`` (the runtime signs with the same name) or
  unsigned (``curl``) -> the SageMaker runtime;
- everything else -> moto's server application mounted in-process (S3, CloudWatch Logs, STS, IAM, ...),
  which itself routes by the signed service name and host, as ``moto_server`` does.

Any credentials are accepted. ``GET /_localcloud/health`` answers once the server is ready.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from .endpoints import Endpoints
from .images import ImageMap
from .jobs import TrainingJobs
from .sagemaker import RUNTIME_PATH, SageMaker
from .snapshot import Snapshot
from .state import State

log = logging.getLogger("localcloud")

INTERNAL_HEADER = "X-Localcloud-Internal"
_SIGNED_SERVICE = re.compile(r"Credential=[^/,]+/\d{8}/[^/]+/([^/]+)/aws4_request")
_LOGS_WRITES = re.compile(r"^Logs_\d+\.(Put|Create|Delete)")


@dataclass
class Settings:
    stop_grace: float = 30.0  # seconds between SIGTERM and SIGKILL when a job or model server stops
    health_timeout: float = 600.0  # default ContainerStartupHealthCheckTimeoutInSeconds
    invoke_timeout: float = 60.0  # SageMaker's InvokeEndpoint limit
    poll_interval: float = 0.5
    snapshot_interval: float = 10.0  # seconds between S3/Logs snapshots while something changed


class _Handler(MotoRequestHandler):
    def log_request(self, code="-", size="-"):
        if log.isEnabledFor(logging.DEBUG):
            super().log_request(code, size)


def signed_service(environ: dict) -> str | None:
    match = _SIGNED_SERVICE.search(environ.get("HTTP_AUTHORIZATION", ""))
    return match.group(1).lower() if match else None


class LocalCloud:
    def __init__(
        self,
        data_dir: str | os.PathLike,
        host: str = "127.0.0.1",
        port: int = 4566,
        images: ImageMap | None = None,
        settings: Settings | None = None,
    ):
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port
        self.url = ""
        self.images = images if images is not None else ImageMap.load()
        self.settings = settings or Settings()
        self.python = sys.executable
        self.shutting_down = threading.Event()
        self._lock_file = open(self.data_dir / "lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise RuntimeError(f"another localcloud is using {self.data_dir}") from None
        (self.data_dir / "ready.json").unlink(missing_ok=True)  # left behind by a crash
        self.state = State(self.data_dir / "state.sqlite3")
        self.jobs = TrainingJobs(self)
        self.endpoints = Endpoints(self)
        self.sagemaker = SageMaker(self)
        self.moto = DomainDispatcherApplication(create_backend_app)
        self._token = secrets.token_hex(16)
        self._ready = False
        self._dirty = threading.Event()
        self._stopped = threading.Event()
        self._clients: dict[str, object] = {}
        self._clients_lock = threading.Lock()
        self._server = None
        self._thread: threading.Thread | None = None
        self._snapshotter: threading.Thread | None = None
        self.snapshot: Snapshot | None = None

    # -- routing -----------------------------------------------------------------------------------------
    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/_localcloud/health":
            body = json.dumps({"status": "ready" if self._ready else "starting", "url": self.url}).encode()
            start_response("200 OK" if self._ready else "503 Service Unavailable",
                           [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if not self._ready and environ.get("HTTP_" + INTERNAL_HEADER.upper().replace("-", "_")) != self._token:
            body = json.dumps({"__type": "ServiceUnavailable", "message": "localcloud is starting"}).encode()
            start_response("503 Service Unavailable",
                           [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        service = signed_service(environ)
        host = environ.get("HTTP_HOST", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if target.startswith("SageMaker."):
            return self.sagemaker.control(environ, start_response)
        if RUNTIME_PATH.match(path) and method == "POST" and (
            service in (None, "sagemaker") or host.startswith("runtime.sagemaker.")
        ):
            return self.sagemaker.runtime(environ, start_response)
        if service == "sagemaker" or host.startswith("api.sagemaker."):
            return self.sagemaker.control(environ, start_response)
        if (service in (None, "s3") and method in ("PUT", "POST", "DELETE")) or _LOGS_WRITES.match(target):
            self._dirty.set()
        return self.moto(environ, start_response)

    # -- clients for localcloud's own use ----------------------------------------------------------------
    def client(self, service: str):
        with self._clients_lock:
            if service not in self._clients:
                session = boto3.session.Session(
                    aws_access_key_id="localcloud", aws_secret_access_key="localcloud", region_name="us-east-1"
                )
                client = session.client(
                    service,
                    endpoint_url=self.url,
                    config=Config(
                        retries={"max_attempts": 5, "mode": "standard"},
                        max_pool_connections=16,
                        s3={"addressing_style": "path"},
                    ),
                )
                token = self._token

                def mark(request, **_):
                    request.headers[INTERNAL_HEADER] = token

                client.meta.events.register_first("before-sign", mark)
                self._clients[service] = client
            return self._clients[service]

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> str:
        self._server = make_server(self.host, self.port, self, threaded=True, request_handler=_Handler)
        self.port = self._server.server_port
        # Bound to every interface: clients on this machine (and localcloud itself) use loopback.
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="localcloud-http", daemon=True)
        self._thread.start()
        self.snapshot = Snapshot(self.data_dir / "snapshot", self.client("s3"), self.client("logs"))
        objects, events = self.snapshot.restore()
        if objects or events:
            log.info("restored %d S3 objects and %d log events", objects, events)
        self.jobs.recover()
        self.endpoints.recover()
        self._ready = True
        self._snapshotter = threading.Thread(target=self._snapshot_loop, name="localcloud-snapshot", daemon=True)
        self._snapshotter.start()
        ready = {"url": self.url, "pid": os.getpid(), "port": self.port}
        tmp = self.data_dir / "ready.json.tmp"
        tmp.write_text(json.dumps(ready))
        os.replace(tmp, self.data_dir / "ready.json")
        return self.url

    def persist(self) -> None:
        """Snapshot S3 and CloudWatch Logs now (localcloud's own writes must be durable before it reports them)."""
        if self.snapshot is not None:
            self._dirty.clear()
            self.snapshot.save()

    def _snapshot_loop(self) -> None:
        while not self._stopped.wait(self.settings.snapshot_interval):
            if self._dirty.is_set():
                try:
                    self.persist()
                except Exception:
                    log.exception("snapshot failed")

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        log.info("stopping")
        self.shutting_down.set()
        self._stopped.set()
        (self.data_dir / "ready.json").unlink(missing_ok=True)
        self.jobs.shutdown()
        self.endpoints.shutdown()
        if self._snapshotter is not None:
            self._snapshotter.join()
        try:
            self.persist()
        except Exception:
            log.exception("final snapshot failed")
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.state.close()
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()
        log.info("stopped")


def wait_ready(data_dir: str | os.PathLike, timeout: float = 60.0, pid: int | None = None) -> dict:
    """Wait for ``<data_dir>/ready.json`` (written by ``python -m localcloud``) and return it."""
    path = Path(data_dir) / "ready.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            info = json.loads(path.read_text())
            if pid is None or info.get("pid") == pid:
                return info
        time.sleep(0.05)
    raise TimeoutError(f"localcloud did not become ready within {timeout:.0f}s ({path} missing)")
