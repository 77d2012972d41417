"""training.serve and the artifact's code/inference.py: the SageMaker inference contract over real HTTP."""

from __future__ import annotations

import base64
import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
from _finetune_helpers import REPO, image_bytes, subprocess_env
from serve_client import as_json, free_port, invoke, request, wait_ready

from training import inference
from training.sagemaker import extract_tar, make_tar
from training.serve import MicroBatcher, TFSResponse

MAX_PAYLOAD_MB = 0.25


@pytest.fixture(scope="module")
def model_dir(finetuned, tmp_path_factory):
    """The artifact as an endpoint gets it: through model.tar.gz."""
    tmp = tmp_path_factory.mktemp("endpoint")
    return extract_tar(make_tar(finetuned["model_dir"], tmp / "model.tar.gz"), tmp / "model")


@pytest.fixture(scope="module")
def server(model_dir):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "training.serve",
            "serve",
            "--model-dir",
            str(model_dir),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--max-batch-size",
            "8",
            "--max-wait-ms",
            "20",
            "--workers",
            "2",
            "--max-payload-mb",
            str(MAX_PAYLOAD_MB),
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
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def reference(model_dir):
    """The SavedModel's own answer, to compare the server's with."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(model_dir / "1")).signatures["serving_default"]
    return lambda images: fn(image_bytes=tf.constant(images))["probabilities"].numpy()


# -- over HTTP ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_classifies_real_images_in_both_content_types(server, world, reference, suffix):
    cls, data = image_bytes(world, suffix)
    expected = reference([data])[0]
    labels = world["classes"]
    answers = []
    for content_type, body in (
        ("application/x-image", data),
        ("application/json", as_json(data)),
        ("image/png" if suffix == ".png" else "image/jpeg", data),
        ("application/json; charset=utf-8", as_json(data, data)),
        (None, as_json(data)),  # no Content-Type: JSON, as the TFS container takes it
    ):
        status, ctype, doc = invoke(server.port, body, content_type)
        assert status == 200 and ctype == "application/json", doc
        for preds in doc["predictions"]:
            assert [p["label"] for p in preds] == [labels[j] for j in np.argsort(-expected)]
            np.testing.assert_allclose([p["probability"] for p in preds], np.sort(expected)[::-1], atol=1e-4)
        answers.append(doc["predictions"][0])
    # The same answer whatever the content type; float noise only (a 2-image request is a batch of 2, and
    # oneDNN's kernels for another batch size may round differently in the last digits).
    for a in answers[1:]:
        assert [p["label"] for p in a] == [p["label"] for p in answers[0]]
        np.testing.assert_allclose([p["probability"] for p in a], [p["probability"] for p in answers[0]], atol=1e-5)
    status, _, doc = invoke(
        server.port, data, "application/x-image", headers={"X-Amzn-SageMaker-Custom-Attributes": "top_k=1"}
    )
    assert status == 200 and len(doc["predictions"][0]) == 1


@pytest.mark.slow
def test_bad_requests_are_answered_and_the_server_keeps_serving(server, world):
    _, good = image_bytes(world, ".jpg")
    port = server.port
    cases = [
        (b"{not json", "application/json", 400, "malformed JSON"),
        (b'{"inputs": 1}', "application/json", 400, "instances"),
        (b'{"instances": [{"b64": "***"}]}', "application/json", 400, "invalid base64"),
        (as_json(b"plain text, not an image"), "application/json", 400, "not a JPEG"),
        (b"GIF89a but not really", "application/x-image", 400, "decode|GIF|image"),
        (good[: len(good) // 2], "application/x-image", 400, "JPEG|jpeg"),
        (b"hello", "text/plain", 415, "unsupported content type"),
        (b"hello", None, 400, "malformed JSON"),  # no Content-Type: JSON, as in the TFS container
        (b"\xff\xd8\xff" + bytes(int(MAX_PAYLOAD_MB * 2**20) + 10), "application/x-image", 413, "limit"),
    ]
    for body, ctype, want, words in cases:
        status, rtype, doc = invoke(port, body, ctype)
        assert status == want and rtype == "application/json", (ctype, body[:30], status, doc)
        assert any(w.lower() in doc["error"].lower() for w in words.split("|")), doc
    assert request(port, "GET", "/invocations")[0] == 405
    assert request(port, "GET", "/nowhere")[0] == 404
    assert request(port, "GET", "/ping")[0] == 200
    # Keep-alive connections survive refused requests too.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    assert invoke(port, b"{", "application/json", conn=conn)[0] == 400
    assert invoke(port, good, "application/x-image", conn=conn)[0] == 200
    conn.close()
    assert server.proc.poll() is None


@pytest.mark.slow
def test_concurrent_requests_each_get_their_own_answer(server, world, reference):
    paths = sorted(p for p in world["validation"].rglob("*") if p.is_file())[:10]
    images = [p.read_bytes() for p in paths]
    broken = images[0][: len(images[0]) // 3]
    expected = reference(images).argmax(-1)

    def one(i):
        body = broken if i % 4 == 3 else images[i % len(images)]
        status, _, doc = invoke(server.port, body, "application/x-image")
        return i, status, doc

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(36)))
    for i, status, doc in results:
        if i % 4 == 3:
            assert status == 400, doc
        else:
            assert status == 200, doc
            assert doc["predictions"][0][0]["label"] == world["classes"][expected[i % len(images)]]


@pytest.mark.slow
def test_sigterm_stops_cleanly(server):
    server.proc.send_signal(signal.SIGTERM)
    out, _ = server.proc.communicate(timeout=60)
    assert server.proc.returncode == 0, out
    assert "[serve] SIGTERM: stopping" in out and "[serve] stopped" in out


@pytest.mark.slow
def test_a_model_that_does_not_load_ends_the_server(tmp_path):
    (tmp_path / "code").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "training.serve", "--model-dir", str(tmp_path), "--port", "0", "--host", "127.0.0.1"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "cannot load the model" in proc.stdout and "saved_model.pb" in proc.stdout


# -- micro-batching -------------------------------------------------------------------------------------------
class FakeModel:
    """predict() records batch sizes, fails on b"bad", and can be held until released."""

    def __init__(self):
        self.batches: list[list[bytes]] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def predict(self, images):
        self.batches.append(list(images))
        self.entered.set()
        self.release.wait(30)
        if b"bad" in images:
            raise ValueError("cannot decode")
        return np.array([[len(b), 1.0] for b in images])


def test_requests_that_queue_up_run_as_one_batch():
    fake = FakeModel()
    fake.release.clear()
    b = MicroBatcher(fake.predict, max_batch_size=8, max_wait_ms=0, workers=1)
    try:
        first = b.submit([b"a"], announced=False)
        assert fake.entered.wait(30)  # the worker is inside predict with the first request alone
        later = [
            b.submit([b"bb"], announced=False),
            b.submit([b"ccc", b"dddd"], announced=False),
            b.submit([b"e"], announced=False),
        ]
        fake.release.set()
        for job in [first, *later]:
            assert job.done.wait(30)
        assert [len(x) for x in fake.batches] == [1, 4]
        assert later[1].result[:, 0].tolist() == [3, 4] and later[2].result[:, 0].tolist() == [1]
    finally:
        b.close()


def test_batches_respect_the_size_limit():
    fake = FakeModel()
    fake.release.clear()
    b = MicroBatcher(fake.predict, max_batch_size=2, max_wait_ms=0, workers=1)
    try:
        jobs = [b.submit([b"x"], announced=False)]
        assert fake.entered.wait(30)
        jobs += [b.submit([b"y"], announced=False) for _ in range(5)]
        jobs.append(b.submit([b"z"] * 5, announced=False))  # larger than a batch: runs alone, in chunks
        fake.release.set()
        for job in jobs:
            assert job.done.wait(30)
        assert [len(x) for x in fake.batches] == [1, 2, 2, 1, 2, 2, 1]
        assert len(jobs[-1].result) == 5
    finally:
        b.close()


def test_a_batch_waits_for_announced_requests():
    fake = FakeModel()
    b = MicroBatcher(fake.predict, max_batch_size=8, max_wait_ms=30_000, workers=1)
    try:
        b.arriving()
        b.arriving()
        first = b.submit([b"a"])  # one request still announced: the worker waits for it
        second = b.submit([b"b"])
        assert first.done.wait(30) and second.done.wait(30)
        assert [len(x) for x in fake.batches] == [2]
    finally:
        b.close()


def test_a_bad_image_fails_only_its_own_request():
    fake = FakeModel()
    fake.release.clear()
    b = MicroBatcher(fake.predict, max_batch_size=8, max_wait_ms=0, workers=1)
    try:
        first = b.submit([b"a"], announced=False)
        assert fake.entered.wait(30)
        good, bad, good2 = (b.submit([x], announced=False) for x in (b"g", b"bad", b"gg"))
        fake.release.set()
        for job in (first, good, bad, good2):
            assert job.done.wait(30)
        assert isinstance(bad.error, ValueError) and good.error is None and good2.error is None
        assert good2.result[0, 0] == 2
    finally:
        b.close()


# -- code/inference.py --------------------------------------------------------------------------------------
@pytest.fixture()
def handlers(tmp_path, monkeypatch):
    monkeypatch.setattr(inference, "_labels", ["cat", "dog", "eel"])
    monkeypatch.delenv("TLPIPE_TOP_K", raising=False)
    return inference


def ctx(content_type, custom=None):
    return SimpleNamespace(request_content_type=content_type, custom_attributes=custom)


def test_input_handler_builds_the_tfs_request(handlers):
    png = b"\x89PNG\r\n\x1a\n" + b"rest"
    for body, ctype in (
        (png, "application/x-image"),
        (as_json(png), "application/json"),
        (json.dumps({"instances": [{"image_bytes": {"b64": base64.b64encode(png).decode()}}]}), "application/json"),
    ):
        req = json.loads(handlers.input_handler(body, ctx(ctype)))
        assert req["signature_name"] == "serving_default"
        assert [base64.b64decode(i["b64"]) for i in req["instances"]] == [png]
    with pytest.raises(handlers.UnsupportedMediaType) as err:
        handlers.input_handler(png, ctx("text/csv"))
    assert err.value.status == 415
    with pytest.raises(handlers.RequestError, match="at least one instance"):
        handlers.input_handler(b'{"instances": []}', ctx("application/json"))
    with pytest.raises(handlers.RequestError, match="instance 1: empty image"):
        handlers.input_handler(
            json.dumps({"instances": [{"b64": base64.b64encode(png).decode()}, {"b64": ""}]}), ctx("application/json")
        )


def test_output_handler_returns_top_k_labels(handlers, monkeypatch):
    response = TFSResponse(200, {"predictions": [[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]]})
    body, ctype = handlers.output_handler(response, ctx("application/json"))
    doc = json.loads(body)
    assert ctype == "application/json"
    assert doc["predictions"][0] == [
        {"label": "dog", "probability": 0.7},
        {"label": "eel", "probability": 0.2},
        {"label": "cat", "probability": 0.1},
    ]
    assert [p["label"] for p in doc["predictions"][1]] == ["cat", "eel", "dog"]
    one = json.loads(handlers.output_handler(response, ctx("application/json", "top_k=1, trace=abc"))[0])
    assert [len(p) for p in one["predictions"]] == [1, 1]
    monkeypatch.setenv("TLPIPE_TOP_K", "2")
    assert len(json.loads(handlers.output_handler(response, ctx(None))[0])["predictions"][0]) == 2
    with pytest.raises(handlers.PredictionError, match="Invalid JPEG") as err:
        handlers.output_handler(TFSResponse(400, {"error": "Invalid JPEG data"}), ctx(None))
    assert err.value.status == 400


def test_a_batch_waits_for_recently_active_clients_only_up_to_the_limit():
    fake = FakeModel()
    clients = {"n": 3}
    b = MicroBatcher(fake.predict, max_batch_size=8, max_wait_ms=30_000, workers=1, active_clients=lambda: clients["n"])
    try:
        jobs = [b.submit([b"a"], announced=False)]
        time.sleep(0.2)
        assert not fake.batches  # three clients are active: the first request waits for the others
        jobs += [b.submit([b"b"], announced=False), b.submit([b"c"], announced=False)]
        for job in jobs:
            assert job.done.wait(30)
        assert [len(x) for x in fake.batches] == [3]
        clients["n"] = 1  # a lone client: no wait at all
        lone = b.submit([b"d"], announced=False)
        assert lone.done.wait(5) and [len(x) for x in fake.batches] == [3, 1]
    finally:
        b.close()
    quick = MicroBatcher(fake.predict, max_batch_size=8, max_wait_ms=50, workers=1, active_clients=lambda: 5)
    try:
        assert quick.submit([b"e"], announced=False).done.wait(10)  # gives up after max_wait, not forever
    finally:
        quick.close()


def test_active_clients_are_shared_among_workers():
    fake = FakeModel()
    fake.release.clear()
    b = MicroBatcher(fake.predict, max_batch_size=16, max_wait_ms=30_000, workers=2, active_clients=lambda: 4)
    try:
        jobs = [b.submit([bytes([65 + k])], announced=False) for k in range(4)]
        fake.release.set()
        for job in jobs:
            assert job.done.wait(30)
        # Four active clients over two workers: two batches of two, not one batch of four.
        assert sorted(len(x) for x in fake.batches) == [2, 2]
    finally:
        b.close()
