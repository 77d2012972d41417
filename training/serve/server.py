"""The HTTP server: model loading in the background, readiness, connection accounting and limits, and the
TensorFlow Serving predict that the handlers call."""

from __future__ import annotations

import json
import os
import select
import threading
import time
import traceback
from http.server import ThreadingHTTPServer
from pathlib import Path

from training.serve.batching import MicroBatcher
from training.serve.handler import Handler
from training.serve.model import (
    SIGNATURE,
    HTTPError,
    Model,
    TFSResponse,
    _instance_bytes,
    _op_error_message,
    check_pixels,
    log,
)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    BUSY = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 35\r\n"
        b"Connection: close\r\n\r\n" + b'{"error": "too many connections"}\r\n'
    )

    def __init__(self, addr, args):
        super().__init__(addr, Handler)
        self.args = args
        self._connections: set[int] = set()
        self._connections_lock = threading.Lock()
        self.max_payload = int(args.max_payload_mb * 1024 * 1024)
        self.model: Model | None = None
        self.batcher: MicroBatcher | None = None
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.failed: str | None = None
        self._inflight = 0
        self._inflight_cv = threading.Condition()
        self._last_request: dict[int, float] = {}  # connection -> when it last sent a predict request

    RECENT = 1.0  # seconds: a connection that sent a request this recently counts as an active client
    STOP_IDLE_GRACE = 1.0  # seconds a kept-alive connection may still send one request once stopping

    def verify_request(self, request, client_address) -> bool:
        """Past ``--max-connections`` a new connection gets 503 and is closed, before a thread is spent on it."""
        with self._connections_lock:
            if len(self._connections) < self.args.max_connections:
                self._connections.add(id(request))
                return True
        try:
            request.settimeout(1.0)
            request.sendall(self.BUSY)
        except OSError:
            pass
        return False

    def shutdown_request(self, request) -> None:
        with self._connections_lock:
            self._connections.discard(id(request))
        super().shutdown_request(request)

    def open_connections(self) -> int:
        return len(self._connections)

    def client_request(self, conn_id: int) -> None:
        self._last_request[conn_id] = time.monotonic()

    def client_gone(self, conn_id: int) -> None:
        self._last_request.pop(conn_id, None)

    def active_clients(self) -> int:
        since = time.monotonic() - self.RECENT
        return sum(1 for t in list(self._last_request.values()) if t >= since)

    def enter(self) -> None:
        with self._inflight_cv:
            self._inflight += 1

    def leave(self) -> None:
        with self._inflight_cv:
            self._inflight -= 1
            self._inflight_cv.notify_all()

    def stop_listening(self) -> None:
        """Stop accepting without dropping a client: the connections already queued in the listen backlog are
        accepted and served, then the listener closes, so a new client is refused (and a load balancer retries
        it elsewhere) rather than accepted and reset. Call after ``shutdown()``."""
        while select.select([self.socket], [], [], 0)[0]:
            self._handle_request_noblock()
        self.socket.close()

    def drain(self, timeout: float) -> bool:
        """Wait until every accepted connection has been answered and closed (kept-alive ones close after
        their next answer, or ``STOP_IDLE_GRACE`` seconds idle); False if ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while self.open_connections() > 0 or self._inflight > 0:
            if time.monotonic() >= deadline:
                return False
            with self._inflight_cv:
                self._inflight_cv.wait(0.05)
        return True

    def load(self) -> None:
        try:
            t0 = time.perf_counter()
            # Workers share the cores: each batch gets its slice rather than all of them oversubscribed.
            threads = self.args.threads or max(1, (os.cpu_count() or 1) // max(1, self.args.workers))
            model = Model(Path(self.args.model_dir), threads)
            model.warm_up()
            a = self.args
            self.batcher = MicroBatcher(
                model.predict, a.max_batch_size, a.max_wait_ms, a.workers, active_clients=self.active_clients
            )
            self.model = model
            self.ready.set()
            log(
                f"model {model.name} version {model.version} loaded in {time.perf_counter() - t0:.1f}s "
                f"(handlers: {'code/inference.py' if model.handlers else 'none, TFS pass-through'}); ready"
            )
        except Exception as err:  # noqa: BLE001 - a model that cannot load ends the server
            traceback.print_exc()
            self.failed = f"{type(err).__name__}: {err}"
            log(f"error: cannot load the model: {self.failed}")
            self.stopping.set()

    def tfs_predict(self, request, announced: bool) -> TFSResponse:
        """What TensorFlow Serving's REST ``:predict`` would answer to ``request`` (JSON text)."""
        try:
            doc = json.loads(request)
            if not isinstance(doc, dict):
                raise ValueError("request must be a JSON object")
            signature = doc.get("signature_name", SIGNATURE)
            if signature != SIGNATURE:
                raise ValueError(f"signature {signature!r} is not served here; use {SIGNATURE!r}")
            instances = doc.get("instances", doc.get("inputs"))
            if not isinstance(instances, list) or not instances:
                raise ValueError("'instances' must be a non-empty list")
            images = [_instance_bytes(inst, self.model.input_name) for inst in instances]
            check_pixels(images, self.args.max_image_pixels, self.args.max_request_pixels)
        except (ValueError, TypeError, KeyError) as err:
            if announced:
                self.batcher.arrived()
            return TFSResponse(400, {"error": str(err)})
        try:
            probs = self.batcher(images, announced)
        except HTTPError:
            raise
        except Exception as err:  # noqa: BLE001 - TFS reports op errors (undecodable image) as 400
            status = 400 if type(err).__name__ == "InvalidArgumentError" else 500
            return TFSResponse(status, {"error": _op_error_message(err)})
        return TFSResponse(200, {"predictions": probs.tolist()})
