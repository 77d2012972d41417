"""The model server (``training.serve``, the project's endpoint container) under load and hostile clients:
200 connections at once, slow clients holding connections open, SIGTERM with requests in flight, and every
malformed request kind. What holds: no good request fails, the server stays up and answers the bad ones 4xx."""

from __future__ import annotations

import http.client
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
from _finetune_helpers import REPO, image_bytes, subprocess_env
from serve_client import as_json, free_port, invoke, png_of_size, request, wait_ready

from training.sagemaker import extract_tar, make_tar

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


@pytest.fixture(scope="module")
def chaos_model_dir(finetuned, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chaos-endpoint")
    return extract_tar(make_tar(finetuned["model_dir"], tmp / "model.tar.gz"), tmp / "model")


def _serve(model_dir, *extra: str) -> SimpleNamespace:
    port = free_port()
    argv = [sys.executable, "-m", "training.serve", "--model-dir", str(model_dir), "--port", str(port), *extra]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=subprocess_env(), cwd=REPO
    )
    wait_ready(proc, port)
    return SimpleNamespace(port=port, proc=proc)


def _stop(server) -> None:
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.communicate(timeout=60)


@pytest.fixture(scope="module")
def loaded(chaos_model_dir):
    server = _serve(chaos_model_dir, "--header-timeout", "2", "--max-batch-size", "16", "--workers", "2")
    yield server
    _stop(server)


def _good(world) -> bytes:
    return image_bytes(world, ".jpg")[1]


def test_200_concurrent_connections(loaded, world, chaos):
    chaos.fault("serving", "200 concurrent keep-alive connections, 3 requests each", "every request answered 200")
    body, barrier = _good(world), threading.Barrier(200)

    def client(_):
        conn = http.client.HTTPConnection("127.0.0.1", loaded.port, timeout=120)
        conn.connect()
        barrier.wait(60)  # all 200 connections open at once
        out = []
        for _ in range(3):
            t0 = time.perf_counter()
            status = invoke(loaded.port, body, "application/x-image", conn=conn)[0]
            out.append((status, time.perf_counter() - t0))
        conn.close()
        return out

    started = time.perf_counter()
    with ThreadPoolExecutor(200) as pool:
        results = [r for rs in pool.map(client, range(200)) for r in rs]
    wall = time.perf_counter() - started
    statuses = [s for s, _ in results]
    latencies = sorted(t for _, t in results)
    assert statuses.count(200) == 600, {s: statuses.count(s) for s in set(statuses)}
    assert loaded.proc.poll() is None
    chaos.figure("requests failed", 600 - statuses.count(200))
    chaos.figure("p50 latency (s)", statistics.median(latencies))
    chaos.figure("p99 latency (s)", latencies[int(0.99 * len(latencies)) - 1])
    chaos.figure("requests/s", 600 / wall)


def test_slow_clients_holding_connections_open(loaded, world, chaos):
    chaos.fault(
        "serving",
        "60 clients trickling their headers a byte a second, beside real traffic",
        "the slow ones are cut off at the header timeout; no real request fails",
    )
    slow = []
    for _ in range(60):
        s = socket.create_connection(("127.0.0.1", loaded.port), timeout=30)
        s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
        slow.append(s)
    opened = time.monotonic()
    cut = {}

    def trickle(i, s):
        try:
            while time.monotonic() - opened < 30:
                s.sendall(b"X")
                time.sleep(1)
                if s.recv(1024, socket.MSG_DONTWAIT) == b"":
                    break
        except BlockingIOError:
            pass
        except OSError:
            pass
        cut[i] = time.monotonic() - opened

    threads = [threading.Thread(target=trickle, args=(i, s), daemon=True) for i, s in enumerate(slow)]
    for t in threads:
        t.start()
    body = _good(world)
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: invoke(loaded.port, body, "application/x-image")[0], range(120)))
    for t in threads:
        t.join(40)
    for s in slow:
        s.close()
    assert statuses.count(200) == 120
    assert len(cut) == 60 and max(cut.values()) < 20, cut
    assert loaded.proc.poll() is None
    chaos.figure("real requests failed", 120 - statuses.count(200))
    chaos.figure("slow connections cut after (s, max)", max(cut.values()))


def test_hostile_requests_get_4xx_and_the_server_stays_up(loaded, world, chaos):
    chaos.fault(
        "serving",
        "oversized, truncated, decompression-bomb and non-image bodies; malformed JSON; wrong and missing types",
        "each answered 4xx with a JSON error; the server keeps serving",
    )
    good = _good(world)
    cases = [
        (b"\xff\xd8\xff" + bytes(7 * 2**20), "application/x-image"),  # over the 6 MB payload limit
        (good[: len(good) // 2], "application/x-image"),  # truncated
        (png_of_size(20_000, 20_000), "application/x-image"),  # 400 M pixels in ~4 MB
        (as_json(png_of_size(20_000, 20_000)), "application/json"),
        (b"plain text", "application/x-image"),
        (b"{not json", "application/json"),
        (b'{"instances": [{"b64": "***"}]}', "application/json"),
        (b"hello", "text/plain"),
        (b"hello", None),  # no Content-Type: read as JSON, as in the TFS container
    ]
    statuses = []
    for body, ctype in cases:
        status, rtype, doc = invoke(loaded.port, body, ctype)
        assert 400 <= status < 500 and rtype == "application/json" and doc["error"], (ctype, body[:20], status)
        statuses.append(status)
        assert invoke(loaded.port, good, "application/x-image")[0] == 200  # still serving
    assert request(loaded.port, "GET", "/ping")[0] == 200 and loaded.proc.poll() is None
    chaos.figure("bad requests answered 4xx", f"{len(statuses)}/{len(cases)}")
    chaos.figure("server restarts", 0)


@pytest.mark.parametrize("keep_alive", [False, True])
def test_sigterm_under_load_answers_every_request_in_flight(chaos_model_dir, world, chaos, keep_alive):
    chaos.fault(
        "serving",
        f"SIGTERM while 16 clients send ({'keep-alive connections' if keep_alive else 'a connection per request'})",
        "every request the server accepted is answered; then it exits 0",
    )
    server = _serve(chaos_model_dir, "--workers", "2", "--grace-seconds", "20")
    body, stop_at = _good(world), []
    answered, refused, failed, reopened = [], [], [], []

    def client(_):
        conn = None
        while not stop_at or time.monotonic() < stop_at[0] + 5:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
                    conn.connect()
                answered.append(invoke(server.port, body, "application/x-image", conn=conn)[0])
                if not keep_alive:
                    conn.close()
                    conn = None
            except ConnectionRefusedError:
                refused.append(1)  # not accepted: a load balancer sends it elsewhere
                return
            except http.client.RemoteDisconnected:
                # A kept-alive connection the server closed before reading the next request (no byte of an
                # answer): every HTTP client opens a new one and sends again, which is then answered or refused.
                if not keep_alive:
                    failed.append("RemoteDisconnected")
                reopened.append(1)
                conn = None
            except (ConnectionResetError, BrokenPipeError, TimeoutError) as err:
                failed.append(repr(err))
                conn = None

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(client, i) for i in range(16)]
        time.sleep(3)
        stop_at.append(time.monotonic())
        server.proc.send_signal(signal.SIGTERM)
        for f in futures:
            f.result(120)
    try:
        out, _ = server.proc.communicate(timeout=60)  # it exits by itself once drained
    finally:
        _stop(server)
    assert server.proc.returncode == 0, out[-2000:]
    assert failed == [] and set(answered) == {200}, (failed[:5], set(answered))
    assert "[serve] SIGTERM: stopping" in out and "dropped" not in out
    chaos.figure("requests answered", len(answered))
    chaos.figure("requests failed", len(failed))
    chaos.figure("refused after SIGTERM", len(refused))
    if keep_alive:
        chaos.figure("idle connections closed, reopened", len(reopened))
