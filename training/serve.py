"""The endpoint server: the SageMaker inference-container contract around the fine-tuned SavedModel.

    python -m training.serve --model-dir D --port 8080 [--max-batch-size 32 --max-wait-ms 5 --workers 1]

``D`` is the untarred ``model.tar.gz`` root (``<version>/saved_model.pb``, ``code/inference.py``,
``code/labels.json``), by default ``/opt/ml/model``; the port defaults to ``SAGEMAKER_BIND_TO_PORT`` or
8080. A leading ``serve`` argument (how SageMaker starts an inference image) is accepted and ignored.

  GET  /ping                   200 once the model is loaded and warmed up; 503 before that and while stopping
  POST /invocations            the artifact's own ``code/inference.py``: ``input_handler(data, context)`` turns
                               the request into a TensorFlow Serving REST request, which is run here on the
                               newest SavedModel version's ``serving_default`` signature; ``output_handler
                               (response, context)`` turns the TFS-shaped response into the reply
  GET  /execution-parameters   batch-transform hints (SageMaker asks for them)

Bad requests are answered, never fatal: a handler exception with a ``status`` attribute answers with that
status (400 malformed JSON or image, 415 unsupported content type), other ``ValueError``s with 400,
anything else with 500; a body over ``--max-payload-mb`` (SageMaker's 6 MB) gets 413 without being read.
Every error body is JSON: ``{"error": "..."}``.

Dynamic micro-batching: requests that arrive together are run as one batch of up to ``--max-batch-size``
images. A batch waits at most ``--max-wait-ms`` for requests that are already being received, and for its
share of the clients that sent a request in the last second (keep-alive connections under load come straight
back), but not at all when neither is pending, so a lone client pays no batching delay. ``--workers`` threads
run batches (TensorFlow releases the GIL, so while one worker predicts the next batch forms and starts on
another, and the Python HTTP work overlaps inference); ``--threads`` sets TensorFlow's per-op threads, by
default the cores divided among the workers. If an image in a batch fails to decode, the batch's requests are
retried one by one, so only the bad request fails.

Limits against clients that would exhaust it: an image whose header (read before anything is decoded) gives
more than ``--max-image-pixels`` (counting every GIF frame), or a request whose images add up to more than
``--max-request-pixels``, is refused with 400; a connection has ``--header-timeout`` seconds from its first
byte to send its headers and ``--idle-timeout`` seconds of silence before it is closed (a stalled body too);
past ``--max-connections`` open connections a new one gets 503 and is closed. It binds to 127.0.0.1 unless
``--host`` says otherwise; the image's ``serve`` entrypoint binds 0.0.0.0, as SageMaker's container contract
needs.

SIGTERM (or SIGINT) stops cleanly: ``/ping`` turns 503, the listener closes, requests in flight finish (up
to ``--grace-seconds``), then the process exits 0.
"""
from __future__ import annotations

import argparse
import base64
import collections
import importlib.util
import io
import json
import os
import resource
import socket
import signal
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SIGNATURE = "serving_default"
# The context object the SageMaker TFS container passes to input_handler/output_handler, same fields.
Context = collections.namedtuple(
    "Context", "model_name model_version method rest_uri grpc_uri custom_attributes request_content_type "
               "accept_header content_length")


def log(msg: str) -> None:
    print(f"[serve] {msg}", flush=True)


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class TFSResponse:
    """What ``output_handler`` receives: the parts of a ``requests.Response`` from TensorFlow Serving it uses."""

    def __init__(self, status_code: int, body):
        self.status_code = status_code
        self.content = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.headers = {"Content-Type": "application/json"}

    @property
    def text(self) -> str:
        return self.content.decode("utf-8")

    def json(self):
        return json.loads(self.content)


# -- the model ----------------------------------------------------------------------------------------------
def image_pixels(raw: bytes) -> int:
    """Pixels a decode of ``raw`` would produce (width × height × frames), from its header alone."""
    from PIL import Image, UnidentifiedImageError

    # Pillow's own bomb check would refuse before the size is known; --max-image-pixels is the limit here.
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(io.BytesIO(raw)) as img:
            width, height = img.size
            frames = getattr(img, "n_frames", 1) if img.format == "GIF" else 1
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"unreadable image header: {err}") from None
    return width * height * max(1, frames)


def check_pixels(images: list[bytes], max_image: int, max_request: int) -> None:
    """Refuse images that would decode into more memory than allowed, before decoding any of them."""
    total = 0
    for i, raw in enumerate(images):
        pixels = image_pixels(raw)
        if pixels > max_image:
            raise ValueError(f"instance {i}: {pixels:,} pixels is over the {max_image:,}-pixel limit per image")
        total += pixels
    if total > max_request:
        raise ValueError(f"the request's images hold {total:,} pixels, over the {max_request:,}-pixel limit")


def latest_version(model_dir: Path) -> Path:
    """The highest numeric version directory holding a SavedModel, as TensorFlow Serving picks it."""
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file()]
    if not versions:
        raise FileNotFoundError(f"{model_dir} has no <version>/saved_model.pb")
    return max(versions, key=lambda p: int(p.name))


def load_handlers(model_dir: Path):
    """The artifact's ``code/inference.py`` as a module (its own directory on sys.path for its imports)."""
    path = model_dir / "code" / "inference.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("model_inference", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    spec.loader.exec_module(module)
    missing = [f for f in ("input_handler", "output_handler") if not callable(getattr(module, f, None))]
    if missing:
        raise AttributeError(f"{path} lacks {', '.join(missing)}")
    return module


class Model:
    def __init__(self, model_dir: Path, threads: int = 0):
        import tensorflow as tf

        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        self.tf = tf
        self.version_dir = latest_version(model_dir)
        self.version = self.version_dir.name
        self.name = model_dir.name or "model"
        loaded = tf.saved_model.load(str(self.version_dir))
        if SIGNATURE not in loaded.signatures:
            raise KeyError(f"{self.version_dir} has no {SIGNATURE!r} signature")
        self._loaded = loaded  # keeps the variables alive
        self.fn = loaded.signatures[SIGNATURE]
        inputs = self.fn.structured_input_signature[1]
        if len(inputs) != 1:
            raise ValueError(f"{SIGNATURE} must take one input, takes {sorted(inputs)}")
        self.input_name = next(iter(inputs))
        self.output_name = next(iter(self.fn.structured_outputs))
        self.handlers = load_handlers(model_dir)

    def predict(self, images: list[bytes]):
        out = self.fn(**{self.input_name: self.tf.constant(images, dtype=self.tf.string)})
        return out[self.output_name].numpy()

    def warm_up(self) -> None:
        png = self.tf.io.encode_png(self.tf.zeros([8, 8, 3], self.tf.uint8)).numpy()
        self.predict([png, png])


# -- micro-batching -----------------------------------------------------------------------------------------
class _Job:
    __slots__ = ("images", "done", "result", "error")

    def __init__(self, images: list[bytes]):
        self.images = images
        self.done = threading.Event()
        self.result = None
        self.error: BaseException | None = None


class MicroBatcher:
    """Groups concurrent requests' images into batches for ``predict`` (a list of bytes -> array [N, K])."""

    def __init__(self, predict, max_batch_size: int = 32, max_wait_ms: float = 5.0, workers: int = 1,
                 active_clients=None):
        self.predict = predict
        # How many clients are likely to send again soon (a callable); a batch waits for that many requests.
        self.active_clients = active_clients or (lambda: 0)
        self.max_batch_size = max(1, max_batch_size)
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self.workers = max(1, workers)
        self._cv = threading.Condition()
        self._queue: collections.deque[_Job] = collections.deque()
        self._arriving = 0  # requests being read/parsed right now: worth a short wait
        self._closed = False
        self.batches = 0
        self.images = 0
        self._threads = [threading.Thread(target=self._work, name=f"batcher-{i}", daemon=True)
                         for i in range(max(1, workers))]
        for t in self._threads:
            t.start()

    def arriving(self) -> None:
        with self._cv:
            self._arriving += 1

    def arrived(self) -> None:
        """A request announced with ``arriving`` will not submit (it failed, or it was not a predict)."""
        with self._cv:
            self._arriving -= 1
            self._cv.notify_all()

    def submit(self, images: list[bytes], announced: bool = True) -> _Job:
        job = _Job(images)
        with self._cv:
            if self._closed:
                raise HTTPError(503, "server is shutting down")
            self._queue.append(job)
            if announced:
                self._arriving -= 1
            self._cv.notify_all()
        return job

    def __call__(self, images: list[bytes], announced: bool = True):
        job = self.submit(images, announced)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def close(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout)

    def _take(self) -> list[_Job] | None:
        with self._cv:
            while not self._queue:
                if self._closed:
                    return None
                self._cv.wait()
            batch = [self._queue.popleft()]
            n = len(batch[0].images)
            deadline = time.monotonic() + self.max_wait
            # The active clients' requests are shared among the workers, so that while one worker predicts, the
            # next batch forms and runs on another instead of queueing behind it.
            active = self.active_clients()
            limit = self.max_batch_size if active <= 0 else min(self.max_batch_size, -(-active // self.workers))
            while n < limit:
                if self._queue:
                    if n + len(self._queue[0].images) > self.max_batch_size:
                        break
                    job = self._queue.popleft()
                    batch.append(job)
                    n += len(job.images)
                    continue
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    break
                if self._arriving <= 0 and len(batch) * self.workers >= active:
                    break
                self._cv.wait(remaining)
            return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        import numpy as np

        images = [b for job in batch for b in job.images]
        try:
            step = self.max_batch_size
            parts = [self.predict(images[i:i + step]) for i in range(0, len(images), step)]
            probs = parts[0] if len(parts) == 1 else np.concatenate(parts)
        except Exception as err:  # noqa: BLE001 - isolate the request that broke the batch
            if len(batch) > 1:
                for job in batch:
                    self._run([job])
                return
            batch[0].error = err
            batch[0].done.set()
            return
        self.batches += 1
        self.images += len(images)
        start = 0
        for job in batch:
            job.result = probs[start:start + len(job.images)]
            start += len(job.images)
            job.done.set()


# -- HTTP -----------------------------------------------------------------------------------------------------
class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 35\r\n"
            b"Connection: close\r\n\r\n" + b'{"error": "too many connections"}\r\n')

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

    def drain(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._inflight_cv:
            while self._inflight > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._inflight_cv.wait(remaining)
        return True

    def load(self) -> None:
        try:
            t0 = time.perf_counter()
            # Workers share the cores: each batch gets its slice rather than all of them oversubscribed.
            threads = self.args.threads or max(1, (os.cpu_count() or 1) // max(1, self.args.workers))
            model = Model(Path(self.args.model_dir), threads)
            model.warm_up()
            a = self.args
            self.batcher = MicroBatcher(model.predict, a.max_batch_size, a.max_wait_ms, a.workers,
                                        active_clients=self.active_clients)
            self.model = model
            self.ready.set()
            log(f"model {model.name} version {model.version} loaded in {time.perf_counter() - t0:.1f}s "
                f"(handlers: {'code/inference.py' if model.handlers else 'none, TFS pass-through'}); ready")
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


def _op_error_message(err: BaseException) -> str:
    """The op's own words from a TensorFlow error, without the graph-location boilerplate around them."""
    text = getattr(err, "message", None) or str(err)
    noise = ("Graph execution error", "Detected at node", "<stack traces", "[[")
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith(noise)]
    return lines[0] if lines else (text.strip().splitlines() or [type(err).__name__])[0]


def _instance_bytes(instance, input_name: str) -> bytes:
    if isinstance(instance, dict) and input_name in instance and len(instance) == 1:
        instance = instance[input_name]
    if isinstance(instance, dict) and "b64" in instance:
        return base64.b64decode(instance["b64"], validate=True)
    raise ValueError(f'instances must be {{"b64": ...}} objects for the string input {input_name!r}')


class _DeadlineReader(io.RawIOBase):
    """The connection's reads, each bounded by the handler's current deadline (see ``Handler.timeout_now``)."""

    def __init__(self, sock: socket.socket, handler: "Handler"):
        self._sock = sock
        self._handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self._sock.settimeout(self._handler.timeout_now())
        try:
            n = self._sock.recv_into(buffer)
        except socket.timeout:
            raise TimeoutError("client too slow") from None
        self._handler.received()
        return n


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tlpipe-serve"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server: Server
    _header_deadline: float | None = None  # set by the first byte of a request, cleared once its headers are in

    def setup(self):
        super().setup()
        # Every read waits at most until the current deadline: a client that trickles its headers (or goes quiet)
        # loses the connection instead of holding a thread and a descriptor for ever.
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self), 64 * 1024)

    def timeout_now(self) -> float:
        idle = self.server.args.idle_timeout
        if self._header_deadline is None:
            return idle
        return max(0.001, min(idle, self._header_deadline - time.monotonic()))

    def received(self) -> None:
        if self._header_deadline is None and self._between_requests:
            self._header_deadline = time.monotonic() + self.server.args.header_timeout
            self._between_requests = False

    _between_requests = True

    def handle_one_request(self):
        self._between_requests, self._header_deadline = True, None
        super().handle_one_request()

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self._header_deadline = None  # headers are in; the body has --idle-timeout per read
        return ok

    def log_message(self, fmt, *args):  # access log only when asked: it costs more than the request
        if self.server.args.access_log:
            sys.stderr.write(f"[serve] {self.address_string()} {fmt % args}\n")

    def _send(self, status: int, body: bytes | str, content_type: str = "application/json", close: bool = False):
        body = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if close or self.server.stopping.is_set():
            self.send_header("Connection", "close")
            self.close_connection = True
        # Headers and body in one write (http.server buffers headers in _headers_buffer until flush): a second
        # sendall per response cost a syscall and a GIL round trip, a fifth of the server's own work.
        self._headers_buffer.extend((b"\r\n", body))
        self.flush_headers()

    def _error(self, status: int, message: str, close: bool = False):
        self._send(status, json.dumps({"error": message}), close=close)

    def finish(self):
        self.server.client_gone(id(self))
        super().finish()

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/ping":
            if self.server.ready.is_set() and not self.server.stopping.is_set():
                self._send(200, b"{}")
            else:
                self._error(503, "stopping" if self.server.stopping.is_set() else "loading")
        elif path == "/execution-parameters":
            self._send(200, json.dumps({"MaxConcurrentTransforms": self.server.args.workers,
                                        "BatchStrategy": "MULTI_RECORD",
                                        "MaxPayloadInMB": int(self.server.args.max_payload_mb)}))
        elif path == "/invocations":
            self._error(405, "use POST")
        else:
            self._error(404, f"no route {path}")

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        if path != "/invocations":
            self._discard_body()
            self._error(404 if path != "/ping" else 405, f"no route POST {path}")
            return
        server = self.server
        if not server.ready.is_set() or server.stopping.is_set():
            self._discard_body()
            self._error(503, "model not loaded" if not server.stopping.is_set() else "stopping")
            return
        self._body_read = False
        server.enter()
        server.client_request(id(self))
        server.batcher.arriving()
        announced = True
        try:
            body = self._read_body()
            status, payload, ctype = self._invoke(body)
            announced = False  # _invoke consumed the announcement
            self._send(status, payload, ctype)
        except HTTPError as err:
            if announced:
                server.batcher.arrived()
                announced = False
            unread = not self._body_read and err.status in (400, 411, 413)
            self._error(err.status, str(err), close=unread)
            if unread and err.status == 413:
                self._drain_unread()
        except (ConnectionError, TimeoutError):
            if announced:
                server.batcher.arrived()
            self.close_connection = True
        finally:
            server.leave()

    _body_read = False
    DRAIN_LIMIT = 64 * 1024 * 1024

    def _drain_unread(self) -> None:
        """Read (and drop) a refused body before closing: closing on unread data resets the connection, and the
        client could lose the 413 it has not read yet."""
        length = self.headers.get("Content-Length", "")
        left = int(length) if length.isdigit() else 0
        if left > self.DRAIN_LIMIT:
            return
        self.connection.settimeout(10)
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    def _discard_body(self):
        length = self.headers.get("Content-Length")
        if length and length.isdigit() and int(length) <= self.server.max_payload:
            self.rfile.read(int(length))
        else:
            self.close_connection = True

    def _read_body(self) -> bytes:
        limit = self.server.max_payload
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(1026)
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise HTTPError(400, "malformed chunked body") from None
                if size == 0:
                    while self.rfile.readline(1026) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > limit:
                    raise HTTPError(413, f"payload over {self.server.args.max_payload_mb:g} MB")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(3)
            self._body_read = True
            return b"".join(chunks)
        length = self.headers.get("Content-Length")
        if length is None:
            raise HTTPError(411, "Content-Length required")
        if not length.strip().isdigit():
            raise HTTPError(400, "invalid Content-Length")
        n = int(length)
        if n > limit:
            raise HTTPError(413, f"payload of {n} bytes is over the {self.server.args.max_payload_mb:g} MB limit")
        body = self.rfile.read(n)
        if len(body) < n:
            raise ConnectionError("client closed the connection mid-body")
        self._body_read = True
        return body

    def _invoke(self, body: bytes) -> tuple[int, bytes | str, str]:
        server = self.server
        model = server.model
        ctx = Context(model.name, model.version, "predict",
                      f"http://127.0.0.1/v1/models/{model.name}/versions/{model.version}:predict", None,
                      self.headers.get("X-Amzn-SageMaker-Custom-Attributes"), self.headers.get("Content-Type"),
                      self.headers.get("Accept"), len(body))
        handlers = model.handlers
        try:
            if handlers is None:  # no code/inference.py: the TFS container forwards JSON as it is
                if (ctx.request_content_type or "").split(";")[0].strip() != "application/json":
                    raise HTTPError(415, "this model takes application/json")
                request = body
            else:
                request = handlers.input_handler(_Body(body), ctx)
        except BaseException as err:
            server.batcher.arrived()
            return self._handler_error(err)
        response = server.tfs_predict(request, announced=True)
        try:
            if handlers is None:
                return response.status_code, response.content, "application/json"
            out, ctype = handlers.output_handler(response, ctx)
            return 200, out, ctype or "application/json"
        except BaseException as err:  # noqa: BLE001
            return self._handler_error(err)

    def _handler_error(self, err: BaseException) -> tuple[int, str, str]:
        status = getattr(err, "status", None)
        if not (isinstance(status, int) and 400 <= status <= 599):
            status = 400 if isinstance(err, ValueError) else 500
        if status >= 500:
            traceback.print_exc()
        message = str(err) or type(err).__name__
        return status, json.dumps({"error": message}), "application/json"


class _Body:
    """The request stream the TFS container hands to ``input_handler``: ``read()`` gives the body."""

    def __init__(self, data: bytes):
        self._data = data

    def read(self, size: int = -1) -> bytes:
        data, self._data = (self._data, b"") if size is None or size < 0 else (self._data[:size], self._data[size:])
        return data

    def decode(self, *args):
        return self._data.decode(*args)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="SageMaker-compatible endpoint server for the fine-tuned model.")
    p.add_argument("command", nargs="?", choices=["serve"], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (the image's serve entrypoint binds 0.0.0.0 for SageMaker)")
    p.add_argument("--port", type=int, default=int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080")),
                   help="0 picks a free port (printed)")
    p.add_argument("--max-batch-size", type=int, default=int(os.environ.get("TLPIPE_MAX_BATCH_SIZE", "32")))
    p.add_argument("--max-wait-ms", type=float, default=float(os.environ.get("TLPIPE_MAX_WAIT_MS", "5")))
    p.add_argument("--workers", type=int, default=int(os.environ.get("SAGEMAKER_MODEL_SERVER_WORKERS", "2")),
                   help="threads running batches (2: one predicts while the next batch forms)")
    p.add_argument("--threads", type=int, default=0,
                   help="TensorFlow intra/inter-op threads (0: the cores divided among the workers)")
    p.add_argument("--max-payload-mb", type=float, default=6.0)
    p.add_argument("--max-image-pixels", type=int, default=int(os.environ.get("TLPIPE_MAX_IMAGE_PIXELS", 4096 * 4096)),
                   help="largest image (width × height × frames, from its header) decoded; larger gets 400")
    p.add_argument("--max-request-pixels", type=int,
                   default=int(os.environ.get("TLPIPE_MAX_REQUEST_PIXELS", 4 * 4096 * 4096)),
                   help="largest sum of pixels over one request's images")
    p.add_argument("--max-connections", type=int, default=int(os.environ.get("TLPIPE_MAX_CONNECTIONS", "256")),
                   help="open connections served at once; more get 503 and are closed")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds from a request's first byte until its headers must be complete")
    p.add_argument("--idle-timeout", type=float, default=60.0,
                   help="seconds a connection may stay silent (between requests or mid-body) before it is closed")
    p.add_argument("--grace-seconds", type=float, default=20.0, help="how long SIGTERM waits for requests in flight")
    p.add_argument("--access-log", action="store_true")
    return p.parse_args(argv)


def _raise_open_file_limit(connections: int) -> None:
    """Room for every allowed connection plus the model's own files (the soft limit is often 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + 512
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError):
            pass


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _raise_open_file_limit(args.max_connections)
    if not Path(args.model_dir).is_dir():
        log(f"error: model directory {args.model_dir} does not exist")
        return 1
    server = Server((args.host, args.port), args)
    host, port = server.server_address[:2]
    log(f"listening on http://{host}:{port} (model {args.model_dir}; batch <= {args.max_batch_size}, "
        f"wait <= {args.max_wait_ms:g} ms, {args.workers} worker(s)); loading")

    def stop(signum, _frame):
        if not server.stopping.is_set():
            log(f"{signal.Signals(signum).name}: stopping")
        server.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=server.load, name="load", daemon=True).start()
    accept = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="accept", daemon=True)
    accept.start()
    while not server.stopping.wait(0.5):
        pass
    server.shutdown()  # no new connections
    drained = server.drain(args.grace_seconds)
    if server.batcher:
        server.batcher.close()
    server.server_close()
    if server.failed:
        return 1
    b = server.batcher
    served = f"; {b.images} images in {b.batches} batches (mean {b.images / b.batches:.1f})" if b and b.batches else ""
    log("stopped" + served + ("" if drained else
                              f" (requests still running after {args.grace_seconds:g}s were dropped)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
