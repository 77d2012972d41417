"""Smoke test of a freshly deployed endpoint with held-out validation images, through ``sagemaker-runtime``.

    report = run_smoke_test(runtime, s3, endpoint="tlpipe-domain",
                            validation_uri="s3://bucket/tlpipe/domain/<fp>/validation/",
                            images=20, training_accuracy=0.91, tolerance=0.1, latency_bound_ms=2000)
    report.passed, report.reason, report.accuracy, report.latency_p50_ms, report.latency_p95_ms

Images are ``<validation_uri>/<class>/<file>``; the test takes up to ``images`` of them, spread evenly over the
classes in a fixed order, sends each as ``{"instances": [{"b64": ...}]}`` (the endpoint's JSON form) and reads
``{"predictions": [[{"label", "probability"}, ...]]}``. It passes when every invocation
succeeds, the top-1 accuracy is at least the training job's validation accuracy minus the tolerance, and the
95th-percentile latency (client side, after one untimed warm-up request) is within the bound.
"""

from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

from plugins.tlpipe.aws import split_s3

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


@dataclass(frozen=True)
class Sample:
    key: str
    label: str


@dataclass(frozen=True)
class Invocation:
    sample: Sample
    predicted: str | None
    latency_ms: float
    error: str | None = None

    @property
    def correct(self) -> bool:
        return self.error is None and self.predicted == self.sample.label


@dataclass
class SmokeReport:
    passed: bool
    reason: str
    images: int
    correct: int
    errors: int
    accuracy: float | None
    training_accuracy: float
    tolerance: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_bound_ms: float
    failures: list[str] = field(default_factory=list)
    mistakes: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def samples_from_keys(keys: Iterable[str], prefix: str) -> list[Sample]:
    """``<prefix><class>/<file>`` image keys -> samples (other files, e.g. index.json, are not images)."""
    prefix = prefix if prefix.endswith("/") or not prefix else prefix + "/"
    out = []
    for key in keys:
        rest = key[len(prefix) :] if key.startswith(prefix) else None
        if not rest or "/" not in rest:
            continue
        label, name = rest.split("/", 1)
        suffix = name[name.rfind(".") :].lower() if "." in name else ""
        if label and name and suffix in IMAGE_SUFFIXES:
            out.append(Sample(key=key, label=label))
    return out


def select_samples(samples: Iterable[Sample], n: int) -> list[Sample]:
    """Up to ``n`` samples, round-robin over the classes (each class's files in key order): deterministic."""
    by_class: dict[str, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: s.key):
        by_class.setdefault(s.label, []).append(s)
    chosen: list[Sample] = []
    depth = 0
    while len(chosen) < n and any(depth < len(v) for v in by_class.values()):
        for label in sorted(by_class):
            if depth < len(by_class[label]) and len(chosen) < n:
                chosen.append(by_class[label][depth])
        depth += 1
    return chosen


def top_label(body: bytes | str | dict) -> str:
    """The most probable label of the first instance in the endpoint's reply."""
    payload = json.loads(body) if isinstance(body, (bytes, str)) else body
    try:
        first = payload["predictions"][0]
        best = max(first, key=lambda p: float(p["probability"]))
        return str(best["label"])
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise ValueError(
            f"unexpected reply (want {{'predictions': [[{{'label', 'probability'}}]]}}): {str(payload)[:200]}"
        ) from err


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 1]."""
    if not values:
        raise ValueError("percentile of nothing")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def evaluate(
    invocations: Sequence[Invocation], training_accuracy: float, tolerance: float, latency_bound_ms: float
) -> SmokeReport:
    """Pass/fail of a smoke test from its invocations."""
    failures = []
    images = len(invocations)
    errors = [i for i in invocations if i.error]
    correct = sum(i.correct for i in invocations)
    ok = [i.latency_ms for i in invocations if not i.error]
    accuracy = correct / images if images else None
    p50 = percentile(ok, 0.5) if ok else None
    p95 = percentile(ok, 0.95) if ok else None
    floor = training_accuracy - tolerance
    if not images:
        failures.append("no validation images to test with")
    if errors:
        failures.append(f"{len(errors)} of {images} invocations failed (first: {errors[0].error})")
    if accuracy is not None and accuracy < floor - 1e-12:
        failures.append(
            f"accuracy {accuracy:.4f} on {images} images is below the training accuracy "
            f"{training_accuracy:.4f} minus the tolerance {tolerance:.4f}"
        )
    if p95 is not None and p95 > latency_bound_ms:
        failures.append(f"p95 latency {p95:.1f} ms exceeds the bound {latency_bound_ms:.1f} ms")
    if failures:
        reason = "smoke test failed: " + "; ".join(failures)
    else:
        reason = (
            f"smoke test passed: accuracy {accuracy:.4f} on {images} images (training {training_accuracy:.4f}, "
            f"tolerance {tolerance:.4f}), latency p50 {p50:.1f} ms, p95 {p95:.1f} ms "
            f"(bound {latency_bound_ms:.1f} ms)"
        )
    mistakes = [
        {"key": i.sample.key, "label": i.sample.label, "predicted": i.predicted, "error": i.error}
        for i in invocations
        if not i.correct
    ][:20]
    return SmokeReport(
        passed=not failures,
        reason=reason,
        images=images,
        correct=correct,
        errors=len(errors),
        accuracy=accuracy,
        training_accuracy=training_accuracy,
        tolerance=tolerance,
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        latency_bound_ms=latency_bound_ms,
        failures=failures,
        mistakes=mistakes,
    )


def list_validation_samples(s3, validation_uri: str) -> list[Sample]:
    bucket, prefix = split_s3(validation_uri)
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return samples_from_keys(keys, prefix)


def request_body(image: bytes) -> bytes:
    """The endpoint's JSON form: ``{"instances": [{"b64": …}]}`` (the raw ``application/x-image`` form works too)."""
    return json.dumps({"instances": [{"b64": base64.b64encode(image).decode("ascii")}]}).encode()


def invoke(
    runtime, endpoint: str, sample: Sample, body: bytes, clock: Callable[[], float] = time.perf_counter
) -> Invocation:
    from botocore.exceptions import BotoCoreError, ClientError

    start = clock()
    try:
        response = runtime.invoke_endpoint(
            EndpointName=endpoint, ContentType="application/json", Accept="application/json", Body=request_body(body)
        )
        payload = response["Body"].read()
        latency = (clock() - start) * 1000.0
    except (ClientError, BotoCoreError) as err:
        return Invocation(sample, None, (clock() - start) * 1000.0, f"{type(err).__name__}: {err}")
    try:
        return Invocation(sample, top_label(payload), latency)
    except ValueError as err:
        return Invocation(sample, None, latency, str(err))


def run_smoke_test(
    runtime,
    s3,
    *,
    endpoint: str,
    validation_uri: str,
    images: int,
    training_accuracy: float,
    tolerance: float,
    latency_bound_ms: float,
    log: Callable[[str], Any] = print,
    clock: Callable[[], float] = time.perf_counter,
) -> SmokeReport:
    """Invoke ``endpoint`` with up to ``images`` validation images and evaluate the replies."""
    bucket, _ = split_s3(validation_uri)
    chosen = select_samples(list_validation_samples(s3, validation_uri), images)
    bodies = {s.key: s3.get_object(Bucket=bucket, Key=s.key)["Body"].read() for s in chosen}
    if chosen:
        # One untimed request first: the bound is about serving, not about the first connection.
        invoke(runtime, endpoint, chosen[0], bodies[chosen[0].key], clock)
    results = []
    for sample in chosen:
        result = invoke(runtime, endpoint, sample, bodies[sample.key], clock)
        log(
            f"{sample.key}: label {sample.label}, predicted {result.predicted}, {result.latency_ms:.1f} ms"
            + (f", error {result.error}" if result.error else "")
        )
        results.append(result)
    return evaluate(results, training_accuracy, tolerance, latency_bound_ms)
