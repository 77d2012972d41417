"""The shadow test before promotion: the new model runs as a shadow variant beside the live one, and is promoted
only when it agrees with it on the same traffic.

    request = shadow_config_request(live_config, sm, s3, config_name=..., model_name=...)   # CreateEndpointConfig
    ... UpdateEndpoint to it, traffic flows (real, or ``replay`` validation images) ...
    comparison = compare(read_captures(s3, ...production...), read_captures(s3, ...shadow...), latencies)
    verdict = judge(comparison, sm.shadow)

The shadow config keeps the live config's production variant as it is (the clients' answers do not change) and
adds ``ShadowProductionVariants`` with the new model, which SageMaker sends a copy of the traffic
(``sampling_percent``); data capture is on at 100% so both answers to each request land in S3, paired by the
capture's ``eventId`` (or, where a service does not share it, by the request body). The comparison: the share of
paired requests whose top-1 labels agree, and the shadow's average model latency over the live one's
(CloudWatch ``ModelLatency`` per variant over the test's window).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

from plugins.tlpipe.config import S3Config, SageMakerConfig
from plugins.tlpipe.deploy.guardrails import DATA_CAPTURE_FOLDER
from plugins.tlpipe.deploy.sagemaker_requests import VARIANT, tags
from plugins.tlpipe.deploy.smoke_test import top_label

SHADOW_VARIANT = "Shadow"


def shadow_config_request(
    live_config: Mapping[str, Any],
    sm: SageMakerConfig,
    s3: S3Config,
    *,
    config_name: str,
    model_name: str,
    tag_values: Mapping[str, Any],
) -> dict:
    """CreateEndpointConfig: the live production variant unchanged, the new model as its shadow."""
    [live] = [v for v in live_config["ProductionVariants"] if v["VariantName"] == VARIANT]
    keep = ("VariantName", "ModelName", "InstanceType", "InitialInstanceCount", "InitialVariantWeight")
    return {
        "EndpointConfigName": config_name,
        "ProductionVariants": [{k: live[k] for k in keep if k in live}],
        "ShadowProductionVariants": [
            {
                "VariantName": SHADOW_VARIANT,
                "ModelName": model_name,
                "InstanceType": live["InstanceType"],
                "InitialInstanceCount": 1,
                "InitialVariantWeight": float(live.get("InitialVariantWeight", 1.0)) * sm.shadow.sampling_percent / 100,
            }
        ],
        "DataCaptureConfig": {
            "EnableCapture": True,
            "InitialSamplingPercentage": 100,
            "DestinationS3Uri": s3.uri(DATA_CAPTURE_FOLDER),
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
        },
        "Tags": tags(tag_values),
    }


def hour_prefixes(prefix: str, endpoint: str, variant: str, start: float, end: float) -> list[str]:
    """The capture folders (one per UTC hour) a window's records can be in."""
    first = datetime.datetime.fromtimestamp(start, datetime.timezone.utc).replace(minute=0, second=0, microsecond=0)
    last = datetime.datetime.fromtimestamp(end, datetime.timezone.utc)
    out, hour = [], first
    while hour <= last:
        out.append(f"{prefix.strip('/')}/{endpoint}/{variant}/{hour.strftime('%Y/%m/%d/%H')}/")
        hour += datetime.timedelta(hours=1)
    return out


def read_captures(s3, bucket: str, prefixes: Iterable[str], start: float) -> list[dict]:
    """The captured records under ``prefixes`` whose inference time is at or after ``start``."""
    since = datetime.datetime.fromtimestamp(int(start), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    records = []
    for prefix in prefixes:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                text = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read().decode("utf-8")
                records += [json.loads(line) for line in text.splitlines() if line.strip()]
    return [r for r in records if r.get("eventMetadata", {}).get("inferenceTime", "") >= since]


def _pair_key(record: Mapping[str, Any]) -> str:
    data = record["captureData"].get("endpointInput", {}).get("data", "")
    return hashlib.sha256(data.encode()).hexdigest()


def answer(payload: Any) -> str | None:
    """The first instance's answer in any of the reply forms: ``[{label, probability}, ...]`` (the project's
    server; the most probable label), ``{"label": ...}``, or TensorFlow Serving's list of probabilities (the
    arg-max index)."""
    try:
        return top_label(payload)
    except ValueError:
        pass
    first = (payload.get("predictions") or [None])[0] if isinstance(payload, dict) else None
    if isinstance(first, dict) and "label" in first:
        return str(first["label"])
    if isinstance(first, list) and first and all(isinstance(p, (int, float)) for p in first):
        return str(max(range(len(first)), key=first.__getitem__))
    return None


def _label(record: Mapping[str, Any]) -> str | None:
    output = record["captureData"].get("endpointOutput") or {}
    if output.get("encoding") != "JSON":
        return None
    try:
        return answer(json.loads(output["data"]))
    except ValueError:
        return None


@dataclass(frozen=True)
class ShadowComparison:
    production_requests: int
    shadow_requests: int
    paired: int
    agreed: int
    production_latency_ms: float | None
    shadow_latency_ms: float | None

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.paired if self.paired else None

    @property
    def latency_ratio(self) -> float | None:
        if not self.production_latency_ms or self.shadow_latency_ms is None:
            return None
        return self.shadow_latency_ms / self.production_latency_ms

    def as_dict(self) -> dict:
        return {**asdict(self), "agreement": self.agreement, "latency_ratio": self.latency_ratio}


def compare(production: list[dict], shadow: list[dict], latencies_ms: Mapping[str, float | None]) -> ShadowComparison:
    """Pair each shadow answer with the production answer to the same request and count agreements."""
    by_event = {r.get("eventMetadata", {}).get("eventId"): r for r in production}
    by_body: dict[str, list[dict]] = {}
    for r in production:
        by_body.setdefault(_pair_key(r), []).append(r)
    paired = agreed = 0
    for record in shadow:
        match = by_event.get(record.get("eventMetadata", {}).get("eventId"))
        if match is None and by_body.get(_pair_key(record)):
            match = by_body[_pair_key(record)].pop()
        if match is None:
            continue
        mine, theirs = _label(record), _label(match)
        if mine is None or theirs is None:
            continue
        paired += 1
        agreed += mine == theirs
    return ShadowComparison(
        production_requests=len(production),
        shadow_requests=len(shadow),
        paired=paired,
        agreed=agreed,
        production_latency_ms=latencies_ms.get(VARIANT),
        shadow_latency_ms=latencies_ms.get(SHADOW_VARIANT),
    )


def average_latencies_ms(cloudwatch, endpoint: str, start: float, end: float) -> dict[str, float | None]:
    """Each variant's average ``ModelLatency`` (CloudWatch, microseconds) over the window, in milliseconds."""
    out = {}
    for variant in (VARIANT, SHADOW_VARIANT):
        points = cloudwatch.get_metric_statistics(
            Namespace="AWS/SageMaker",
            MetricName="ModelLatency",
            Dimensions=[{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}],
            StartTime=datetime.datetime.fromtimestamp(start - 60, datetime.timezone.utc),
            EndTime=datetime.datetime.fromtimestamp(end + 60, datetime.timezone.utc),
            Period=60,
            Statistics=["Sum", "SampleCount"],
        )["Datapoints"]
        count = sum(p["SampleCount"] for p in points)
        out[variant] = sum(p["Sum"] for p in points) / count / 1000 if count else None
    return out


def judge(comparison: ShadowComparison, *, min_requests: int, min_agreement: float, max_latency_ratio: float) -> dict:
    """Promote only when enough traffic was compared, the answers agree, and the shadow is not much slower."""
    agreement, ratio = comparison.agreement, comparison.latency_ratio
    problems = []
    if comparison.paired < min_requests:
        problems.append(f"only {comparison.paired} requests compared (want {min_requests})")
    if agreement is not None and agreement < min_agreement:
        problems.append(
            f"the shadow agrees with the live model on {agreement:.1%} of requests (want ≥ {min_agreement:.0%})"
        )
    if ratio is not None and ratio > max_latency_ratio:
        problems.append(f"the shadow is {ratio:.2f}× slower than the live model (at most {max_latency_ratio:g}×)")
    summary = (
        f"{comparison.paired} requests compared, agreement "
        + (f"{agreement:.1%}" if agreement is not None else "n/a")
        + ", latency "
        + (f"{ratio:.2f}×" if ratio is not None else "n/a")
    )
    passed = not problems
    reason = f"shadow test passed: {summary}" if passed else f"shadow test refused the model: {'; '.join(problems)}"
    return {"passed": passed, "reason": reason, **comparison.as_dict()}


# -- the step ---------------------------------------------------------------------------------------------------
def shadow_config_name(new_config: str) -> str:
    return f"{new_config[: 63 - len('-shadow')]}-shadow"


def _switch(sm_client, endpoint: str, config_name: str, *, poll: float, timeout: float) -> None:
    """UpdateEndpoint to ``config_name`` (unless it is already there) and wait until it serves it."""
    from plugins.tlpipe.deploy.closing import wait_settled

    found = wait_settled(sm_client, endpoint, poll, timeout)
    if found is None:
        raise ShadowTestError(f"endpoint {endpoint} does not exist")
    if found["EndpointConfigName"] != config_name:
        sm_client.update_endpoint(EndpointName=endpoint, EndpointConfigName=config_name)
        time.sleep(poll)
        found = wait_settled(sm_client, endpoint, poll, timeout)
    if found is None or found["EndpointStatus"] != "InService" or found["EndpointConfigName"] != config_name:
        why = (found or {}).get("FailureReason") or (found or {}).get("EndpointStatus")
        raise ShadowTestError(f"endpoint {endpoint} did not move to {config_name}: {why}")


class ShadowTestError(RuntimeError):
    """The shadow test could not run (the endpoint would not take the shadow config)."""


def run_shadow_test(
    cfg, clients: Mapping[str, Any], *, requests: Mapping[str, Any], validation_uri: str, poll: float, log=print
) -> dict:
    """Shadow the new model beside the live one, compare, and leave the endpoint on its live config when the
    shadow is refused. ``clients``: sagemaker, sagemaker-runtime, s3, cloudwatch."""
    from plugins.tlpipe.aws import describe_or_none
    from plugins.tlpipe.deploy.smoke_test import invoke, list_validation_samples, select_samples

    shadow_cfg, sm_client = cfg.sagemaker.shadow, clients["sagemaker"]
    endpoint, live_config = requests["endpoint"]["EndpointName"], requests["previous_config"]
    if requests["action"] != "update" or not live_config:
        return {"ran": False, "passed": True, "reason": "a new endpoint: no live model to shadow"}
    new_config = requests["endpoint_config"]
    name = shadow_config_name(new_config["EndpointConfigName"])
    if describe_or_none(sm_client.describe_endpoint_config, EndpointConfigName=name) is None:
        model = new_config["ProductionVariants"][0]["ModelName"]
        live = sm_client.describe_endpoint_config(EndpointConfigName=live_config)
        tag_values = {t["Key"].split(":", 1)[-1]: t["Value"] for t in new_config.get("Tags", [])}
        request = shadow_config_request(
            live, cfg.sagemaker, cfg.s3, config_name=name, model_name=model, tag_values=tag_values
        )
        sm_client.create_endpoint_config(**request)
    timeout = float(shadow_cfg.duration_seconds) + 1800
    _switch(sm_client, endpoint, name, poll=poll, timeout=timeout)
    start = time.time()
    log(f"{endpoint}: the new model shadows the live one ({name})")
    if shadow_cfg.replay_images:
        bucket = validation_uri[len("s3://") :].split("/", 1)[0]
        s3 = clients["s3"]
        for sample in select_samples(list_validation_samples(s3, validation_uri), shadow_cfg.replay_images):
            invoke(
                clients["sagemaker-runtime"],
                endpoint,
                sample,
                s3.get_object(Bucket=bucket, Key=sample.key)["Body"].read(),
            )
    records = _collect(cfg, clients, endpoint, start, poll, log)
    latencies = _latencies(clients["cloudwatch"], endpoint, start, poll, records)
    comparison = compare(records["production"], records["shadow"], latencies)
    verdict = judge(
        comparison,
        min_requests=shadow_cfg.min_requests,
        min_agreement=shadow_cfg.min_agreement,
        max_latency_ratio=shadow_cfg.max_latency_ratio,
    )
    log(verdict["reason"])
    if not verdict["passed"]:  # the clients keep the live model, without its shadow
        _switch(sm_client, endpoint, live_config, poll=poll, timeout=timeout)
    return {"ran": True, "shadow_config": name, **verdict}


def _collect(cfg, clients, endpoint: str, start: float, poll: float, log) -> dict:
    """Both variants' captured records of the test's window, once enough pairs are in or the time is up."""
    shadow_cfg = cfg.sagemaker.shadow
    prefix = cfg.s3.key(DATA_CAPTURE_FOLDER)
    deadline = start + shadow_cfg.duration_seconds
    while True:
        now = time.time()
        records = {
            side: read_captures(
                clients["s3"], cfg.s3.bucket, hour_prefixes(prefix, endpoint, variant, start, now), start
            )
            for side, variant in (("production", VARIANT), ("shadow", SHADOW_VARIANT))
        }
        paired = compare(records["production"], records["shadow"], {}).paired
        if paired >= shadow_cfg.min_requests or now >= deadline:
            log(f"{endpoint}: {paired} requests answered by both models")
            return records
        time.sleep(poll)


def _latencies(cloudwatch, endpoint: str, start: float, poll: float, records: dict, wait: float = 120) -> dict:
    """The variants' average latencies, once CloudWatch has (most of) the window's data points."""
    deadline = time.time() + wait
    while True:
        latencies = average_latencies_ms(cloudwatch, endpoint, start, time.time())
        if all(v is not None for v in latencies.values()) or time.time() >= deadline or not records["shadow"]:
            return latencies
        time.sleep(poll)
