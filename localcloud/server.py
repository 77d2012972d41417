"""One loopback port for every AWS API the pipeline uses.

Requests are routed by what identifies the service on AWS:

- ``X-Amz-Target: SageMaker.*``, or a request signed for ``sagemaker`` -> the SageMaker control plane
  (:mod:`localcloud.sagemaker`);
- ``POST /endpoints/<name>/invocations`` signed for ``sagemaker`` (the runtime signs with the same name)
  -> the SageMaker runtime;
- everything else -> moto's server application mounted in-process (S3, CloudWatch Logs, STS, IAM, ...),
  which itself routes by the signed service name and host, as ``moto_server`` does.

Every request must be SigV4-signed with the one access key localcloud was started with
(:mod:`localcloud.auth`; ``LOCALCLOUD_ACCESS_KEY_ID`` / ``LOCALCLOUD_SECRET_ACCESS_KEY``, by default
``test`` / ``test``, written to ``ready.json``). Browsers get no CORS answers unless ``cors_origins`` names
their origin. ``GET /_localcloud/health`` (no secrets in it) answers once the server is ready.
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
from pathlib import Path

import boto3
from botocore.config import Config
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from .auth import Denied, Verifier
from .endpoints import Endpoints
from .images import ImageMap
from .jobs import TrainingJobs
from .runtime import Runtime, Settings
from .sagemaker import RUNTIME_PATH, SageMaker
from .snapshot import Snapshot
from .state import State
from .tuning import TuningJobs

log = logging.getLogger("localcloud")

INTERNAL_HEADER = "X-Localcloud-Internal"
_LOGS_WRITES = re.compile(r"^Logs_\d+\.(Put|Create|Delete)")


class _Handler(MotoRequestHandler):
    def log_request(self, code="-", size="-"):
        if log.isEnabledFor(logging.DEBUG):
            super().log_request(code, size)


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
        self.runtime = Runtime(
            state=self.state,
            settings=self.settings,
            images=self.images,
            data_dir=self.data_dir,
            python=self.python,
            shutting_down=self.shutting_down,
            clients=self.client,
            persist=self.persist,
        )
        self.jobs = TrainingJobs(self.runtime)
        self.endpoints = Endpoints(self.runtime)
        self.tuning = TuningJobs(self.runtime, self.jobs)
        self.sagemaker = SageMaker(self.runtime, self.jobs, self.endpoints, self.tuning)
        self.moto = DomainDispatcherApplication(create_backend_app)
        self.verifier = Verifier(self.settings.access_key)
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
        origin = environ.get("HTTP_ORIGIN")
        allowed = origin is not None and origin in self.settings.cors_origins
        if environ.get("REQUEST_METHOD") == "OPTIONS" and origin is not None:
            return self._preflight(environ, start_response, allowed)
        return self._route(environ, _without_cors(start_response, origin if allowed else None))

    def _preflight(self, environ, start_response, allowed: bool):
        """CORS preflight: answered only for a configured origin; any other gets 403 and no CORS headers."""
        if not allowed:
            start_response("403 Forbidden", [("Content-Length", "0")])
            return [b""]
        headers = [
            ("Access-Control-Allow-Origin", environ["HTTP_ORIGIN"]),
            ("Access-Control-Allow-Methods", "GET, PUT, POST, DELETE, HEAD"),
            ("Access-Control-Allow-Headers", environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS", "")),
            ("Access-Control-Max-Age", "600"),
            ("Vary", "Origin"),
            ("Content-Length", "0"),
        ]
        start_response("200 OK", headers)
        return [b""]

    def _route(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/_localcloud/health":
            body = json.dumps({"status": "ready" if self._ready else "starting", "url": self.url}).encode()
            start_response(
                "200 OK" if self._ready else "503 Service Unavailable",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        if not self._ready and environ.get("HTTP_" + INTERNAL_HEADER.upper().replace("-", "_")) != self._token:
            body = json.dumps({"__type": "ServiceUnavailable", "message": "localcloud is starting"}).encode()
            start_response(
                "503 Service Unavailable", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
            )
            return [body]
        try:
            service = self.verifier.verify(environ)
        except Denied as denied:
            status, headers, body = denied.render()
            log.warning("refused %s %s: %s", environ.get("REQUEST_METHOD"), path, denied.code)
            start_response(status, headers)
            return [body]
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        host = environ.get("HTTP_HOST", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if target.startswith("SageMaker."):
            return self.sagemaker.control(environ, start_response)
        if (
            RUNTIME_PATH.match(path)
            and method == "POST"
            and (service == "sagemaker" or host.startswith("runtime.sagemaker."))
        ):
            return self.sagemaker.runtime(environ, start_response)
        if service == "sagemaker" or host.startswith("api.sagemaker."):
            return self.sagemaker.control(environ, start_response)
        if service == "s3" and method in ("PUT", "POST", "DELETE"):
            return self._s3_write(environ, start_response)
        if _LOGS_WRITES.match(target):
            self._dirty.set()
        return self.moto(environ, start_response)

    def _s3_write(self, environ, start_response):
        """An S3 write, made durable before it is answered: the bucket it changed is snapshotted (write-through),
        so a crash right after a 200 loses nothing acknowledged. Parts of an upload wait for its completion."""
        self._dirty.set()
        query = environ.get("QUERY_STRING", "")
        restoring = not self._ready  # the snapshot's own restore writes what is already on disk
        if self.snapshot is None or restoring or "partNumber=" in query or query.split("&")[0] == "uploads":
            return self.moto(environ, start_response)
        answered: dict = {}

        def capture(status, headers, exc_info=None):
            answered["status"] = status
            return start_response(status, headers, exc_info)

        body = list(self.moto(environ, capture))
        bucket = _bucket_of(environ)
        if answered.get("status", "").startswith("2"):
            try:
                self.snapshot.save_bucket(bucket) if bucket else self.persist()
            except Exception:
                log.exception("write-through of s3://%s failed; the periodic snapshot will retry", bucket)
        return body

    # -- clients for localcloud's own use ----------------------------------------------------------------
    def client(self, service: str):
        with self._clients_lock:
            if service not in self._clients:
                key = self.settings.access_key
                session = boto3.session.Session(
                    aws_access_key_id=key.access_key_id,
                    aws_secret_access_key=key.secret_access_key,
                    region_name="us-east-1",
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
        # Bound to every interface only when asked (the container image): clients here use loopback.
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="localcloud-http", daemon=True)
        self._thread.start()
        self.snapshot = Snapshot(self.data_dir / "snapshot", self.client("s3"), self.client("logs"))
        objects, events = self.snapshot.restore()
        if objects or events:
            log.info("restored %d S3 objects and %d log events", objects, events)
        self.jobs.recover()
        self.tuning.recover()
        self.endpoints.recover()
        self._ready = True
        self._snapshotter = threading.Thread(target=self._snapshot_loop, name="localcloud-snapshot", daemon=True)
        self._snapshotter.start()
        key = self.settings.access_key
        ready = {
            "url": self.url,
            "pid": os.getpid(),
            "port": self.port,
            "region": "us-east-1",
            "access_key_id": key.access_key_id,
            "secret_access_key": key.secret_access_key,
        }
        tmp = self.data_dir / "ready.json.tmp"
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # it holds the secret key
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(ready))
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
        self.tuning.shutdown()
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


def _bucket_of(environ) -> str | None:
    """The bucket of a path-style S3 request (``/bucket/key``), or of a virtual-hosted one (``bucket.s3.…``)."""
    host = environ.get("HTTP_HOST", "").split(":")[0]
    if ".s3." in host or host.endswith(".s3"):
        return host.split(".s3", 1)[0] or None
    first = environ.get("PATH_INFO", "").lstrip("/").split("/", 1)[0]
    return first or None


def _without_cors(start_response, origin: str | None):
    """Drop the CORS headers moto adds to every answer; a configured origin gets its own back."""

    def wrapped(status, headers, exc_info=None):
        kept = [(k, v) for k, v in headers if not k.lower().startswith("access-control-")]
        if origin is not None:
            kept += [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        return start_response(status, kept, exc_info)

    return wrapped


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
