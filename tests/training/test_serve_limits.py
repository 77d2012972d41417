"""training.serve against hostile clients: decompression bombs, trickled headers, idle connections held open, more
connections than it serves, and the address it binds by default."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import psutil
import pytest
from _finetune_helpers import REPO, image_bytes, subprocess_env
from serve_client import free_port, invoke, png_of_size, request, wait_ready

from training.sagemaker import extract_tar, make_tar

pytestmark = pytest.mark.slow
MAX_CONNECTIONS = 6


@pytest.fixture(scope="module")
def guarded(finetuned, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guarded")
    model_dir = extract_tar(make_tar(finetuned["model_dir"], tmp / "model.tar.gz"), tmp / "model")
    port = free_port()
    # No --host: the default must be loopback.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "training.serve",
            "--model-dir",
            str(model_dir),
            "--port",
            str(port),
            "--max-connections",
            str(MAX_CONNECTIONS),
            "--header-timeout",
            "1",
            "--idle-timeout",
            "2",
            "--max-request-pixels",
            str(3 * 2000 * 2000),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=subprocess_env(),
        cwd=REPO,
    )
    try:
        wait_ready(proc, port)
        yield SimpleNamespace(port=port, proc=proc)
    finally:
        proc.kill()
        proc.wait()


def test_binds_loopback_unless_told_otherwise(guarded):
    listening = [
        c.laddr for c in psutil.Process(guarded.proc.pid).net_connections("inet") if c.status == psutil.CONN_LISTEN
    ]
    assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", guarded.port)]


def test_an_image_too_large_to_decode_is_refused_from_its_header(guarded, world):
    bomb = png_of_size(20000, 20000)
    assert len(bomb) < 6 * 1024 * 1024  # under the payload limit: only the pixel count can stop it
    before = psutil.Process(guarded.proc.pid).memory_info().rss
    for body, ctype in (
        (bomb, "application/x-image"),
        (json.dumps({"instances": [{"b64": base64.b64encode(bomb).decode()}]}).encode(), "application/json"),
    ):
        status, _, doc = invoke(guarded.port, body, ctype)
        assert status == 400 and "400,000,000 pixels is over the 16,777,216-pixel limit" in doc["error"], doc
    grown = psutil.Process(guarded.proc.pid).memory_info().rss - before
    assert grown < 200 * 2**20, f"the server grew by {grown / 2**20:.0f} MB: it decoded the image"
    # Within the per-image limit, but together over the request's: refused as a whole.
    big = png_of_size(2000, 2000)
    status, _, doc = invoke(
        guarded.port,
        json.dumps({"instances": [{"b64": base64.b64encode(big).decode()}] * 4}).encode(),
        "application/json",
    )
    assert status == 400 and "over the 12,000,000-pixel limit" in doc["error"], doc
    _, data = image_bytes(world, ".png")
    assert invoke(guarded.port, data, "application/x-image")[0] == 200  # and real images are served


def _closed_by_server(sock: socket.socket, trickle: bytes = b"", within: float = 30.0) -> bool:
    """Send ``trickle`` one byte at a time until the server closes the connection (True) or ``within`` passes."""
    deadline = time.monotonic() + within
    sock.settimeout(0.25)
    sent = 0
    while time.monotonic() < deadline:
        try:
            if sent < len(trickle):
                sock.send(trickle[sent : sent + 1])
                sent += 1
            data = sock.recv(4096)
            if data == b"" or b"408" in data or b"400" in data:
                return True
        except socket.timeout:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return True
    return False


def test_a_client_that_trickles_its_headers_is_cut_off(guarded):
    headers = (b"POST /invocations HTTP/1.1\r\nHost: x\r\n" + b"X-Padding: " + b"a" * 400 + b"\r\n") * 3
    with socket.create_connection(("127.0.0.1", guarded.port)) as sock:
        assert _closed_by_server(sock, headers), "a client trickling its headers kept the connection"


def test_idle_connections_are_closed(guarded):
    with socket.create_connection(("127.0.0.1", guarded.port)) as sock:
        assert _closed_by_server(sock), "an idle connection stayed open"


def test_connections_past_the_limit_get_503_and_real_requests_recover(guarded, world):
    _, data = image_bytes(world, ".png")
    idle = [socket.create_connection(("127.0.0.1", guarded.port)) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.5)  # the server has accepted them all
        with socket.create_connection(("127.0.0.1", guarded.port)) as extra:
            extra.settimeout(10)
            answer = extra.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503") and b"too many connections" in answer
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 30
    while True:  # the server notices the closed connections and serves again
        try:
            if invoke(guarded.port, data, "application/x-image")[0] == 200:
                break
        except (ConnectionError, OSError):
            pass
        assert time.monotonic() < deadline, "the server did not recover after the idle connections closed"
        time.sleep(0.2)
    assert request(guarded.port, "GET", "/ping")[0] == 200
