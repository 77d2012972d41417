"""One HTTP/1.1 connection: deadlines on every read, the SageMaker inference routes, bodies read within limits."""

from __future__ import annotations

import io
import json
import select
import socket
import sys
import time
import traceback
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING

from training.serve.model import DEFAULT_ACCEPT, DEFAULT_CONTENT_TYPE, Context, HTTPError

if TYPE_CHECKING:
    from training.serve.server import Server


class _DeadlineReader(io.RawIOBase):
    """The connection's reads, each bounded by the handler's current deadline (see ``Handler.timeout_now``)."""

    def __init__(self, sock: socket.socket, handler: "Handler"):
        self._sock = sock
        self._handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._handler.awaiting_request() and not self._request_comes(self._handler.server):
            return 0  # stopping and the client sent nothing more: close the kept-alive connection cleanly
        self._sock.settimeout(self._handler.timeout_now())
        try:
            n = self._sock.recv_into(buffer)
        except socket.timeout:
            raise TimeoutError("client too slow") from None
        self._handler.received()
        return n

    def _request_comes(self, server: "Server") -> bool:
        """Between requests, wait for the next one's first byte in short slices, up to ``--idle-timeout``. Once
        the server is stopping, a client gets ``STOP_IDLE_GRACE`` more seconds to send one (it is served, with
        ``Connection: close``); then the connection closes with no byte of an answer on it, which HTTP clients
        retry on a new connection."""
        idle_deadline = time.monotonic() + server.args.idle_timeout
        stop_deadline = None
        poller = select.poll()  # not select(): descriptors past 1024 are common with --max-connections
        poller.register(self._sock, select.POLLIN)
        while not poller.poll(100):
            now = time.monotonic()
            if now >= idle_deadline:
                raise TimeoutError("client idle")
            if server.stopping.is_set():
                stop_deadline = stop_deadline or now + server.STOP_IDLE_GRACE
                if now >= stop_deadline:
                    return False
        return True


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

    def awaiting_request(self) -> bool:
        return self._between_requests and self._header_deadline is None

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
            self._send(
                200,
                json.dumps(
                    {
                        "MaxConcurrentTransforms": self.server.args.workers,
                        "BatchStrategy": "MULTI_RECORD",
                        "MaxPayloadInMB": int(self.server.args.max_payload_mb),
                    }
                ),
            )
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
        if not server.ready.is_set():  # while stopping, a request that reached a handler is still served
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
        ctx = Context(
            model_name=model.name,
            model_version=model.version,
            method="predict",
            rest_uri=f"http://127.0.0.1/v1/models/{model.name}/versions/{model.version}:predict",
            grpc_port=None,
            channel=None,
            custom_attributes=self.headers.get("X-Amzn-SageMaker-Custom-Attributes"),
            request_content_type=self.headers.get("Content-Type") or DEFAULT_CONTENT_TYPE,
            accept_header=self.headers.get("Accept") or DEFAULT_ACCEPT,
            content_length=len(body),
        )
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
