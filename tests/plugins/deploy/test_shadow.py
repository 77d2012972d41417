"""The shadow test's pure parts: its endpoint config, the pairing of captured answers, the verdict."""

from __future__ import annotations

import json

from plugins.tlpipe.config import get_config
from plugins.tlpipe.deploy import sagemaker_requests as requests
from plugins.tlpipe.deploy import shadow


def record(event: str, body: str, label: str, encoding: str = "JSON") -> dict:
    output = json.dumps({"predictions": [[{"label": label, "probability": 0.9}, {"label": "x", "probability": 0.1}]]})
    return {
        "captureData": {
            "endpointInput": {
                "observedContentType": "application/json",
                "mode": "INPUT",
                "data": body,
                "encoding": "JSON",
            },
            "endpointOutput": {
                "observedContentType": "application/json",
                "mode": "OUTPUT",
                "data": output,
                "encoding": encoding,
            },
        },
        "eventMetadata": {"eventId": event, "inferenceTime": "2026-12-02T10:00:00Z"},
        "eventVersion": "0",
    }


def test_the_shadow_config_keeps_the_live_variant_and_shadows_the_new_model():
    cfg = get_config()
    live = {
        "EndpointConfigName": "live",
        "ProductionVariants": [
            {
                "VariantName": "AllTraffic",
                "ModelName": "live-model",
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": 2,
                "InitialVariantWeight": 1.0,
            }
        ],
    }
    request = shadow.shadow_config_request(
        live, cfg.sagemaker, cfg.s3, config_name="new-config-shadow", model_name="new-model", tag_values={"run-id": "r"}
    )
    assert request["ProductionVariants"] == live["ProductionVariants"]  # the clients' answers do not change
    [candidate] = request["ShadowProductionVariants"]
    assert (candidate["VariantName"], candidate["ModelName"]) == ("Shadow", "new-model")
    assert candidate["InitialVariantWeight"] == cfg.sagemaker.shadow.sampling_percent / 100
    assert request["DataCaptureConfig"]["InitialSamplingPercentage"] == 100
    assert requests.botocore_problems("CreateEndpointConfig", request) == []
    assert shadow.shadow_config_name("x" * 63).endswith("-shadow") and len(shadow.shadow_config_name("x" * 63)) == 63


def test_answers_pair_by_event_id_or_by_request_and_count_agreements():
    production = [record("e1", "a", "cat"), record("e2", "b", "dog"), record("e3", "c", "dog")]
    shadowed = [
        record("e1", "a", "cat"),  # same event: agrees
        record("s2", "b", "cat"),  # another event id, same request body: disagrees
        record("s9", "zzz", "dog"),  # no production answer to compare with
        record("e3", "c", "dog", encoding="BASE64"),  # an answer that is not JSON: not compared
    ]
    got = shadow.compare(production, shadowed, {"AllTraffic": 10.0, "Shadow": 15.0})
    assert (got.production_requests, got.shadow_requests, got.paired, got.agreed) == (3, 4, 2, 1)
    assert got.agreement == 0.5 and got.latency_ratio == 1.5


def test_the_verdict_needs_enough_traffic_agreement_and_speed():
    def verdict(paired, agreed, prod_ms=10.0, shadow_ms=12.0):
        comparison = shadow.ShadowComparison(paired, paired, paired, agreed, prod_ms, shadow_ms)
        return shadow.judge(comparison, min_requests=10, min_agreement=0.9, max_latency_ratio=1.5)

    assert verdict(20, 19)["passed"]
    few = verdict(5, 5)
    assert not few["passed"] and "only 5 requests compared" in few["reason"]
    assert "agrees with the live model on 50.0%" in verdict(20, 10)["reason"]
    assert "2.00× slower" in verdict(20, 20, shadow_ms=20.0)["reason"]


def test_answers_are_read_from_every_reply_form():
    assert (
        shadow.answer({"predictions": [[{"label": "a", "probability": 0.2}, {"label": "b", "probability": 0.8}]]})
        == "b"
    )
    assert shadow.answer({"predictions": [{"label": "red"}]}) == "red"
    assert shadow.answer({"predictions": [[0.1, 0.7, 0.2]]}) == "1"  # TensorFlow Serving: the arg-max class
    assert shadow.answer({"nothing": 1}) is None


def test_capture_folders_cover_every_hour_of_the_window():
    start = 1764669000.0  # 2025-12-02T09:50:00Z
    folders = shadow.hour_prefixes("p/data-capture", "ep", "Shadow", start, start + 3600)
    assert folders == ["p/data-capture/ep/Shadow/2025/12/02/09/", "p/data-capture/ep/Shadow/2025/12/02/10/"]
