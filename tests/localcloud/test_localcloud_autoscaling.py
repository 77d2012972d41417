"""Application Auto Scaling on localcloud: a variant registered as a scalable target runs between its minimum
and maximum number of model server processes, and a target-tracking policy adds instances under load."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError
from localcloud_fixtures import COLOURS, image_bytes, wait_for_endpoint
from test_localcloud_api import deployable, ensure_bucket, error_of, server_processes, unique

DIMENSION = "sagemaker:variant:DesiredInstanceCount"


@pytest.fixture(scope="module")
def clients(localcloud_server):
    out = {n: localcloud_server.client(n) for n in ("s3", "sagemaker", "sagemaker-runtime", "application-autoscaling")}
    ensure_bucket(out["s3"])
    return out


def instances(sm, endpoint: str, want: int, timeout: float = 90) -> dict:
    """Wait until the endpoint is InService with ``want`` instances; its variant summary."""
    deadline = time.monotonic() + timeout
    while True:
        found = sm.describe_endpoint(EndpointName=endpoint)
        [variant] = found["ProductionVariants"]
        if found["EndpointStatus"] == "InService" and variant["CurrentInstanceCount"] == want:
            return variant
        if time.monotonic() > deadline:
            raise AssertionError(f"{endpoint}: {found['EndpointStatus']}, {variant} after {timeout}s")
        time.sleep(0.5)


def test_a_scalable_target_and_its_policy_scale_the_variants_processes(clients, localcloud_server):
    sm, aas, runtime = clients["sagemaker"], clients["application-autoscaling"], clients["sagemaker-runtime"]
    endpoint = unique("scaled")
    sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=deployable(sm, clients["s3"], "1"))
    assert wait_for_endpoint(sm, endpoint)["EndpointStatus"] == "InService"
    assert len(server_processes(localcloud_server.data_dir, endpoint)) == 1
    resource = f"endpoint/{endpoint}/variant/AllTraffic"

    # The minimum is enforced at once: a second model server process.
    aas.register_scalable_target(
        ServiceNamespace="sagemaker", ResourceId=resource, ScalableDimension=DIMENSION, MinCapacity=2, MaxCapacity=3
    )
    variant = instances(sm, endpoint, 2)
    assert variant["DesiredInstanceCount"] == 2
    assert len(server_processes(localcloud_server.data_dir, endpoint)) == 2

    # Load above the target per instance: one more instance, not past the maximum.
    aas.put_scaling_policy(
        PolicyName=f"{endpoint}-invocations",
        ServiceNamespace="sagemaker",
        ResourceId=resource,
        ScalableDimension=DIMENSION,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": 5.0,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleOutCooldown": 0,
            "ScaleInCooldown": 600,
        },
    )
    body = image_bytes(COLOURS["blue"])
    for _ in range(40):
        runtime.invoke_endpoint(EndpointName=endpoint, ContentType="application/x-image", Body=body)
    variant = instances(sm, endpoint, 3)
    assert len(server_processes(localcloud_server.data_dir, endpoint)) == 3
    for _ in range(6):  # every instance serves
        runtime.invoke_endpoint(EndpointName=endpoint, ContentType="application/x-image", Body=body)

    # As on SageMaker, a scaled variant's instance type cannot change in an update.
    bigger = unique("config-bigger")
    model = sm.describe_endpoint_config(
        EndpointConfigName=sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    )
    sm.create_endpoint_config(
        EndpointConfigName=bigger,
        ProductionVariants=[{**model["ProductionVariants"][0], "InstanceType": "ml.m5.xlarge"}],
    )
    with pytest.raises(ClientError) as err:
        sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=bigger)
    code, message, _ = error_of(err)
    assert code == "ValidationException" and "deregister the scalable target" in message

    aas.deregister_scalable_target(ServiceNamespace="sagemaker", ResourceId=resource, ScalableDimension=DIMENSION)
    sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=bigger)
    found = wait_for_endpoint(sm, endpoint)
    assert found["EndpointConfigName"] == bigger and found["ProductionVariants"][0]["CurrentInstanceCount"] == 1


def test_update_endpoint_weights_and_capacities_removes_instances(clients, localcloud_server):
    sm = clients["sagemaker"]
    endpoint = unique("resized")
    sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=deployable(sm, clients["s3"], "1"))
    wait_for_endpoint(sm, endpoint)
    resize = {"VariantName": "AllTraffic", "DesiredInstanceCount": 2}
    sm.update_endpoint_weights_and_capacities(EndpointName=endpoint, DesiredWeightsAndCapacities=[resize])
    instances(sm, endpoint, 2)
    resize["DesiredInstanceCount"] = 1
    sm.update_endpoint_weights_and_capacities(EndpointName=endpoint, DesiredWeightsAndCapacities=[resize])
    instances(sm, endpoint, 1)
    deadline = time.monotonic() + 30
    while len(server_processes(localcloud_server.data_dir, endpoint)) != 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(server_processes(localcloud_server.data_dir, endpoint)) == 1
    with pytest.raises(ClientError) as err:
        sm.update_endpoint_weights_and_capacities(
            EndpointName=endpoint, DesiredWeightsAndCapacities=[{"VariantName": "Other", "DesiredInstanceCount": 1}]
        )
    assert error_of(err)[0] == "ValidationException"
