"""HTTP helpers for the tests that talk to ``training.serve``: a free port, one request, waiting for /ping."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import struct
import subprocess
import time
import zlib


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict | None = None,
    conn: http.client.HTTPConnection | None = None,
):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    if conn is None:
        c.close()
    return r.status, r.getheader("Content-Type"), (json.loads(data) if data else None)


def invoke(port, body, content_type, **kw):
    headers = {"Content-Type": content_type} if content_type else {}
    headers.update(kw.pop("headers", {}))
    return request(port, "POST", "/invocations", body, headers, **kw)


def as_json(*images: bytes) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(b).decode()} for b in images]}).encode()


def wait_ready(proc: subprocess.Popen, port: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            if request(port, "GET", "/ping")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("server never became ready")


def png_of_size(width: int, height: int) -> bytes:
    """A small, valid PNG whose header says ``width`` × ``height``, grayscale: a decompression bomb of ~1 MB
    per 100 M pixels (one zlib stream of zero rows)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * width
    compressor = zlib.compressobj(9)
    rows = 64
    data = b"".join(compressor.compress(row * rows) for _ in range(height // rows)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
