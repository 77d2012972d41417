"""The endpoint smoke test: sample choice, reply parsing, percentiles, the pass/fail rules, and a run through
sagemaker-runtime (moto's, answering from a queue of canned replies)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from botocore.exceptions import ClientError

from plugins.tlpipe.deploy import smoke_test as st


def test_samples_from_keys_take_class_folders_and_images_only():
    keys = [
        "p/val/a/1.png",
        "p/val/a/2.JPG",
        "p/val/b/1.jpeg",
        "p/val/index.json",
        "p/val/b/notes.txt",
        "p/other/a/1.png",
    ]
    samples = st.samples_from_keys(keys, "p/val/")
    assert [(s.key, s.label) for s in samples] == [
        ("p/val/a/1.png", "a"),
        ("p/val/a/2.JPG", "a"),
        ("p/val/b/1.jpeg", "b"),
    ]
    assert st.samples_from_keys(keys, "p/val") == samples


def test_selection_is_round_robin_over_classes_and_deterministic():
    samples = [st.Sample(f"v/{c}/{i}.png", c) for c in "cab" for i in range(3)]
    chosen = st.select_samples(reversed(samples), 5)
    assert [s.key for s in chosen] == ["v/a/0.png", "v/b/0.png", "v/c/0.png", "v/a/1.png", "v/b/1.png"]
    assert st.select_samples(samples, 5) == chosen
    assert len(st.select_samples(samples, 100)) == 9
    assert st.select_samples([], 3) == []


def test_requests_use_the_endpoints_json_form():
    body = json.loads(st.request_body(b"\x89PNG\r\n"))
    assert body == {"instances": [{"b64": "iVBORw0K"}]}


def test_top_label_reads_the_endpoint_reply():
    reply = {"predictions": [[{"label": "b", "probability": 0.2}, {"label": "a", "probability": 0.7}]]}
    assert st.top_label(json.dumps(reply).encode()) == "a"
    for bad in ({"predictions": []}, {"outputs": [[{"label": "a"}]]}, {"predictions": [[{"label": "a"}]]}):
        with pytest.raises(ValueError, match="unexpected reply"):
            st.top_label(bad)


def test_percentiles_interpolate_like_numpy():
    values = [10.0, 20.0, 30.0, 40.0]
    assert st.percentile(values, 0.5) == 25.0
    assert st.percentile(values, 0.95) == pytest.approx(38.5)
    assert st.percentile([7.0], 0.95) == 7.0
    with pytest.raises(ValueError):
        st.percentile([], 0.5)


def _invocations(pairs, latency=10.0):
    return [
        st.Invocation(st.Sample(f"v/{label}/{i}.png", label), predicted, latency)
        for i, (label, predicted) in enumerate(pairs)
    ]


def test_evaluate_passes_within_tolerance_and_bound():
    report = st.evaluate(_invocations([("a", "a"), ("b", "b"), ("a", "a"), ("b", "a")]), 0.8, 0.1, 50)
    assert report.passed and report.accuracy == 0.75 and report.correct == 3
    assert report.latency_p50_ms == 10.0 and "passed" in report.reason
    assert report.mistakes == [{"key": "v/b/3.png", "label": "b", "predicted": "a", "error": None}]


def test_evaluate_fails_on_accuracy_latency_errors_or_nothing():
    low = st.evaluate(_invocations([("a", "b"), ("b", "b")]), 0.9, 0.1, 50)
    assert not low.passed and "below the training accuracy 0.9000 minus the tolerance 0.1000" in low.reason
    slow = st.evaluate(_invocations([("a", "a")] * 4, latency=80.0), 0.9, 0.1, 50)
    assert not slow.passed and "p95 latency 80.0 ms exceeds the bound 50.0 ms" in slow.reason
    broken = _invocations([("a", "a")]) + [st.Invocation(st.Sample("v/a/9.png", "a"), None, 1.0, "ModelError: 500")]
    errors = st.evaluate(broken, 0.1, 0.1, 50)
    assert not errors.passed and "1 of 2 invocations failed (first: ModelError: 500)" in errors.reason
    empty = st.evaluate([], 0.9, 0.1, 50)
    assert not empty.passed and "no validation images" in empty.reason


def _png(colour) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def validation_set(moto_server):
    s3 = moto_server.client("s3")
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket="smoke")
    for c, colour in (("red", (250, 0, 0)), ("blue", (0, 0, 250))):
        for i in range(3):
            s3.put_object(Bucket="smoke", Key=f"d/validation/{c}/{i}.png", Body=_png((colour[0], i, colour[2])))
    s3.put_object(Bucket="smoke", Key="d/validation/index.json", Body=b"{}")
    return "s3://smoke/d/validation/"


class Ticks:
    """A clock that advances ``step`` seconds per reading: latencies become exact."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_run_through_sagemaker_runtime(moto_server, validation_set):
    # Round-robin order: blue/0, red/0, blue/1, red/1; one reply per distinct image, in that order.
    moto_server.queue_predictions(["blue", "red", "blue", "blue"])

    def run(training_accuracy):
        return st.run_smoke_test(
            moto_server.client("sagemaker-runtime"),
            moto_server.client("s3"),
            endpoint="smoke-ep",
            validation_uri=validation_set,
            images=4,
            training_accuracy=training_accuracy,
            tolerance=0.1,
            latency_bound_ms=50,
            clock=Ticks(0.005),
        )

    report = run(0.95)
    assert report.images == 4 and report.correct == 3 and report.accuracy == 0.75
    assert not report.passed and "below the training accuracy 0.9500" in report.reason
    assert report.latency_p50_ms == pytest.approx(5.0) and report.latency_p95_ms == pytest.approx(5.0)
    assert report.mistakes == [{"key": "d/validation/red/1.png", "label": "red", "predicted": "blue", "error": None}]
    again = run(0.8)  # the same images get the same replies
    assert again.passed and again.accuracy == 0.75 and "passed" in again.reason


def test_runtime_errors_fail_the_smoke_test(moto_server, validation_set):
    class FailingRuntime:
        def invoke_endpoint(self, **kwargs):
            raise ClientError(
                {"Error": {"Code": "ModelError", "Message": "Received server error (500)"}}, "InvokeEndpoint"
            )

    report = st.run_smoke_test(
        FailingRuntime(),
        moto_server.client("s3"),
        endpoint="e",
        validation_uri=validation_set,
        images=2,
        training_accuracy=0.5,
        tolerance=0.5,
        latency_bound_ms=1000,
        clock=Ticks(0.001),
    )
    assert not report.passed and report.errors == 2 and "ModelError" in report.reason
