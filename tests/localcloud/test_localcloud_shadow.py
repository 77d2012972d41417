"""The shadow test on localcloud: a new model runs as a shadow variant beside the live one, gets a copy of the
traffic, and is promoted only when its answers agree and it is not much slower (plugins.tlpipe.deploy.shadow)."""

from __future__ import annotations

import json

import pytest
from localcloud_fixtures import COLOURS, ROLE_ARN, TEST_IMAGE, image_bytes, upload_dataset, wait_for_endpoint
from test_localcloud_api import BUCKET, deployable, ensure_bucket, model_tarball, unique

from plugins.tlpipe.config import load_config
from plugins.tlpipe.deploy import shadow

PREFIX = "shadow-tests"
SWAPPED = {"red": COLOURS["blue"], "green": COLOURS["red"], "blue": COLOURS["green"]}  # a mislabelled model


@pytest.fixture(scope="module")
def clients(localcloud_server):
    out = {n: localcloud_server.client(n) for n in ("s3", "sagemaker", "sagemaker-runtime", "cloudwatch")}
    ensure_bucket(out["s3"])
    upload_dataset(out["s3"], BUCKET, f"{PREFIX}/data")
    return out


@pytest.fixture(scope="module")
def cfg():
    return load_config(
        "local",
        environ={
            "TLPIPE__S3__BUCKET": BUCKET,
            "TLPIPE__S3__PREFIX": PREFIX,
            "TLPIPE__SAGEMAKER__SHADOW__REPLAY_IMAGES": "6",
            "TLPIPE__SAGEMAKER__SHADOW__MIN_REQUESTS": "6",
            "TLPIPE__SAGEMAKER__SHADOW__MIN_AGREEMENT": "0.9",
            "TLPIPE__SAGEMAKER__SHADOW__MAX_LATENCY_RATIO": "10",
            "TLPIPE__SAGEMAKER__SHADOW__DURATION_SECONDS": "60",
        },
    )


def candidate(clients, colours: dict, env: dict | None = None) -> dict:
    """A new model and its CreateEndpointConfig request, as the deploy DAG builds them."""
    sm, s3 = clients["sagemaker"], clients["s3"]
    model = unique("model-candidate")
    url = model_tarball(s3, f"models/{model}/model.tar.gz", "2", colours)
    container = {"Image": TEST_IMAGE, "ModelDataUrl": url, **({"Environment": env} if env else {})}
    sm.create_model(ModelName=model, ExecutionRoleArn=ROLE_ARN, PrimaryContainer=container)
    variant = {
        "VariantName": "AllTraffic",
        "ModelName": model,
        "InstanceType": "ml.m5.large",
        "InitialInstanceCount": 1,
    }
    return {"EndpointConfigName": unique("config-candidate"), "ProductionVariants": [variant], "Tags": []}


def shadow_run(clients, cfg, colours: dict, env: dict | None = None) -> tuple[dict, str, str]:
    sm = clients["sagemaker"]
    endpoint = unique("shadowed")
    live_config = deployable(sm, clients["s3"], "1")
    sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=live_config)
    assert wait_for_endpoint(sm, endpoint)["EndpointStatus"] == "InService"
    requests = {
        "endpoint": {"EndpointName": endpoint, "EndpointConfigName": "unused"},
        "endpoint_config": candidate(clients, colours, env),
        "previous_config": live_config,
        "action": "update",
    }
    verdict = shadow.run_shadow_test(
        cfg, clients, requests=requests, validation_uri=f"s3://{BUCKET}/{PREFIX}/data/validation/", poll=0.5
    )
    return verdict, endpoint, live_config


def test_a_model_that_agrees_is_promoted_and_clients_only_see_the_live_model(clients, cfg):
    sm, s3, runtime = clients["sagemaker"], clients["s3"], clients["sagemaker-runtime"]
    verdict, endpoint, _ = shadow_run(clients, cfg, COLOURS)
    assert verdict["passed"] and verdict["ran"], verdict["reason"]
    assert verdict["paired"] >= 6 and verdict["agreement"] == 1.0
    assert verdict["latency_ratio"] is not None and verdict["production_latency_ms"] > 0

    # The endpoint now runs the shadow config: the live model answers, the new one shadows it.
    found = sm.describe_endpoint(EndpointName=endpoint)
    assert found["EndpointConfigName"] == verdict["shadow_config"]
    assert [v["VariantName"] for v in found["ShadowProductionVariants"]] == ["Shadow"]
    body = image_bytes(COLOURS["green"])
    for _ in range(3):
        answer = runtime.invoke_endpoint(EndpointName=endpoint, ContentType="application/x-image", Body=body)
        assert answer["InvokedProductionVariant"] == "AllTraffic"
        assert json.loads(answer["Body"].read())["model_version"] == "1"
    # The shadow's answers are captured under its own variant, the same requests as the live model's.
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/data-capture/{endpoint}/Shadow/")["Contents"]
    lines = [
        json.loads(x) for o in listed for x in s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read().splitlines()
    ]
    assert {json.loads(r["captureData"]["endpointOutput"]["data"])["model_version"] for r in lines} == {"2"}


def test_a_model_that_disagrees_is_refused_and_the_live_config_restored(clients, cfg):
    verdict, endpoint, live_config = shadow_run(clients, cfg, SWAPPED)
    assert not verdict["passed"] and verdict["agreement"] == 0.0
    assert "agrees with the live model on 0.0%" in verdict["reason"]
    found = clients["sagemaker"].describe_endpoint(EndpointName=endpoint)
    assert found["EndpointStatus"] == "InService" and found["EndpointConfigName"] == live_config
    assert "ShadowProductionVariants" not in found


def test_a_model_that_agrees_but_is_slow_is_refused(clients, cfg):
    verdict, _, _ = shadow_run(clients, cfg, COLOURS, env={"SERVE_DELAY_SECONDS": "0.3"})
    assert not verdict["passed"] and verdict["agreement"] == 1.0
    assert "slower than the live model" in verdict["reason"] and verdict["latency_ratio"] > 10
