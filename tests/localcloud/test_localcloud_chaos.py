"""An UpdateEndpoint to a model whose server never passes ``/ping`` while a client invokes the endpoint all along:
SageMaker's blue/green update keeps the old fleet serving, and localcloud must too (zero failed requests, every
answer from the old model), then report the failure and stay on the old config."""

from __future__ import annotations

import threading
import time

import pytest
from localcloud_fixtures import ROLE_ARN, TEST_IMAGE, wait_for_endpoint
from test_localcloud_api import classify, deployable, ensure_bucket, model_tarball, unique

pytestmark = pytest.mark.chaos


def _unhealthy_config(sm, s3, tmp_path) -> str:
    """A loadable model whose server answers /ping 503 forever (its ready file never appears)."""
    model = unique("model-unhealthy")
    url = model_tarball(s3, f"models/{model}/model.tar.gz", "2")
    env = {"SERVE_READY_FILE": str(tmp_path / "never")}
    sm.create_model(
        ModelName=model,
        ExecutionRoleArn=ROLE_ARN,
        PrimaryContainer={"Image": TEST_IMAGE, "ModelDataUrl": url, "Environment": env},
    )
    config = unique("config-unhealthy")
    variant = {
        "VariantName": "AllTraffic",
        "ModelName": model,
        "InstanceType": "ml.m5.large",
        "InitialInstanceCount": 1,
        "ContainerStartupHealthCheckTimeoutInSeconds": 60,  # the least SageMaker accepts
    }
    sm.create_endpoint_config(EndpointConfigName=config, ProductionVariants=[variant])
    return config


def test_an_update_to_a_model_failing_ping_under_traffic(localcloud_server, tmp_path, chaos):
    chaos.fault(
        "deploy",
        "UpdateEndpoint to a model whose server answers /ping 503, a client invoking throughout",
        "no request fails, every answer is the old model's; the endpoint stays InService on the old config",
    )
    sm, s3 = localcloud_server.client("sagemaker"), localcloud_server.client("s3")
    runtime = localcloud_server.client("sagemaker-runtime")
    ensure_bucket(s3)
    name = unique("endpoint-chaos")
    config_v1 = deployable(sm, s3, "1")
    sm.create_endpoint(EndpointName=name, EndpointConfigName=config_v1)
    assert wait_for_endpoint(sm, name)["EndpointStatus"] == "InService"

    versions, failures, stop = [], [], threading.Event()

    def client():
        while not stop.is_set():
            try:
                versions.append(classify(runtime, name, "green")["model_version"])
            except Exception as err:  # noqa: BLE001 - any failed invocation is what this test counts
                failures.append(repr(err))

    sender = threading.Thread(target=client, daemon=True)
    sender.start()
    try:
        time.sleep(1)
        started = time.monotonic()
        sm.update_endpoint(EndpointName=name, EndpointConfigName=_unhealthy_config(sm, s3, tmp_path))
        endpoint = wait_for_endpoint(sm, name, timeout=300)
        updating_for = time.monotonic() - started
        time.sleep(1)
    finally:
        stop.set()
        sender.join(30)
    assert (endpoint["EndpointStatus"], endpoint["EndpointConfigName"]) == ("InService", config_v1)
    assert "did not pass the ping health check" in endpoint["FailureReason"]
    assert failures == [] and set(versions) == {"1"}, (failures[:3], set(versions))
    assert len(versions) > 10
    sm.delete_endpoint(EndpointName=name)
    chaos.figure("requests sent during the update", len(versions))
    chaos.figure("requests failed", len(failures))
    chaos.figure("answers from the new model", sum(1 for v in versions if v != "1"))
    chaos.figure("update failed after (s)", updating_for)
