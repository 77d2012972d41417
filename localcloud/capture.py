"""Data capture: an endpoint config's ``DataCaptureConfig`` writes sampled requests and responses to S3 as
SageMaker does.

Files are JSON Lines under ``<DestinationS3Uri>/<endpoint>/<variant>/<yyyy>/<mm>/<dd>/<hh>/``, named
``<mm>-<ss>-<mmm>-<uuid>.jsonl`` after the first record's UTC time; one line per invocation::

    {"captureData": {"endpointInput": {"observedContentType": "application/x-image", "mode": "INPUT",
                                       "data": "<base64>", "encoding": "BASE64"},
                     "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                                        "data": "{\\"predictions\\": ...}", "encoding": "JSON"}},
     "eventMetadata": {"eventId": "<uuid>", "inferenceTime": "2026-12-02T21:50:01Z"}, "eventVersion": "0"}

A body whose content type ``CaptureContentTypeHeader`` lists as JSON or CSV is written as text with that
encoding; anything else is base64. ``CaptureOptions`` choose the input, the output or both;
``InitialSamplingPercentage`` of the successful invocations are captured. Records are buffered per variant and
written every ``FLUSH_SECONDS`` (or at ``FLUSH_RECORDS``), and when localcloud stops.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import random
import threading
import uuid
from collections import defaultdict

from .training_container import split_s3

log = logging.getLogger("localcloud.capture")

FLUSH_SECONDS = 2.0
FLUSH_RECORDS = 1000
DEFAULT_JSON = ("application/json",)
DEFAULT_CSV = ("text/csv",)


def capture_summary(config: dict | None) -> dict | None:
    """DescribeEndpoint's ``DataCaptureConfig`` for an endpoint config's ``DataCaptureConfig``."""
    if not config:
        return None
    enabled = bool(config.get("EnableCapture", True))
    return {
        "EnableCapture": enabled,
        "CaptureStatus": "Started" if enabled else "Stopped",
        "CurrentSamplingPercentage": int(config["InitialSamplingPercentage"]),
        "DestinationS3Uri": config["DestinationS3Uri"],
        **({"KmsKeyId": config["KmsKeyId"]} if config.get("KmsKeyId") else {}),
    }


def _encode(data: bytes, content_type: str, header: dict) -> tuple[str, str]:
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind in [t.lower() for t in header.get("JsonContentTypes") or DEFAULT_JSON]:
        return data.decode("utf-8", errors="replace"), "JSON"
    if kind in [t.lower() for t in header.get("CsvContentTypes") or DEFAULT_CSV]:
        return data.decode("utf-8", errors="replace"), "CSV"
    return base64.b64encode(data).decode("ascii"), "BASE64"


def capture_record(
    config: dict, request: tuple[bytes, str], response: tuple[bytes, str], at: float, event_id: str | None = None
) -> dict:
    modes = {
        o["CaptureMode"] for o in config.get("CaptureOptions") or [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]
    }
    header = config.get("CaptureContentTypeHeader") or {}
    data: dict = {}
    for mode, (body, content_type), key in (
        ("Input", request, "endpointInput"),
        ("Output", response, "endpointOutput"),
    ):
        if mode in modes:
            text, encoding = _encode(body, content_type, header)
            data[key] = {"observedContentType": content_type, "mode": mode.upper(), "data": text, "encoding": encoding}
    when = datetime.datetime.fromtimestamp(at, datetime.timezone.utc)
    return {
        "captureData": data,
        "eventMetadata": {
            "eventId": event_id or str(uuid.uuid4()),
            "inferenceTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "eventVersion": "0",
    }


def capture_key(prefix: str, endpoint: str, variant: str, at: float) -> str:
    when = datetime.datetime.fromtimestamp(at, datetime.timezone.utc)
    folder = "/".join(p for p in (prefix.strip("/"), endpoint, variant, when.strftime("%Y/%m/%d/%H")) if p)
    return f"{folder}/{when.strftime('%M-%S')}-{when.microsecond // 1000:03d}-{uuid.uuid4()}.jsonl"


class DataCapture:
    """Buffers captured invocations per (destination, endpoint, variant) and writes them to S3."""

    def __init__(self, s3_factory, stopping: threading.Event):
        self._s3 = s3_factory
        self._buffers: dict[tuple[str, str, str], list[tuple[float, dict]]] = defaultdict(list)
        self._lock = threading.Lock()
        self._stopping = stopping
        self._thread: threading.Thread | None = None

    def offer(
        self,
        config: dict | None,
        endpoint: str,
        variant: str,
        request,
        response,
        at: float,
        event_id: str | None = None,
    ) -> None:
        """Capture one successful invocation when the variant's config captures and the sample says so."""
        if not config or not config.get("EnableCapture", True):
            return
        if random.random() * 100 >= float(config["InitialSamplingPercentage"]):
            return
        record = capture_record(config, request, response, at, event_id)
        key = (config["DestinationS3Uri"], endpoint, variant)
        with self._lock:
            self._buffers[key].append((at, record))
            full = len(self._buffers[key]) >= FLUSH_RECORDS
        if full:
            self.flush()

    def flush(self) -> int:
        with self._lock:
            buffers, self._buffers = self._buffers, defaultdict(list)
        written = 0
        for (destination, endpoint, variant), records in buffers.items():
            bucket, prefix = split_s3(destination)
            by_hour: dict[str, list[tuple[float, dict]]] = defaultdict(list)
            for at, record in records:  # one file per hour folder, named after its first record
                by_hour[datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime("%Y%m%d%H")].append(
                    (at, record)
                )
            for group in by_hour.values():
                body = "".join(json.dumps(r, separators=(",", ":")) + "\n" for _, r in group).encode()
                key = capture_key(prefix, endpoint, variant, group[0][0])
                try:
                    self._s3().put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/jsonlines")
                    written += len(group)
                except Exception as err:  # a missing bucket: SageMaker also drops what it cannot write
                    log.warning("data capture to s3://%s/%s failed: %s", bucket, key, err)
        return written

    def start(self) -> None:
        def loop() -> None:
            while not self._stopping.wait(FLUSH_SECONDS):
                self.flush()
            self.flush()

        self._thread = threading.Thread(target=loop, name="data-capture", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=10)
