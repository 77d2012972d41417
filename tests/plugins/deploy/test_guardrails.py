"""The endpoint's alarms and UpdateEndpoint's DeploymentConfig, built from the configuration."""

from __future__ import annotations

import pytest

from plugins.tlpipe.config import get_config
from plugins.tlpipe.deploy import guardrails
from plugins.tlpipe.deploy import sagemaker_requests as requests


def sagemaker(**deployment):
    cfg = get_config()
    merged = {**cfg.sagemaker.deployment.model_dump(), **deployment}
    return cfg.sagemaker.model_copy(update={"deployment": type(cfg.sagemaker.deployment)(**merged)})


def test_the_alarms_watch_errors_and_p99_latency_of_the_endpoints_variant():
    sm = sagemaker(alarms={"period_seconds": 30, "evaluation_periods": 2, "max_5xx_errors": 3, "max_latency_ms": 750})
    errors, latency = guardrails.alarm_requests(sm, endpoint="shop")
    guardrails.check_alarm_requests([errors, latency])
    assert errors["AlarmName"] == f"{sm.resource_prefix}-shop-5xx-errors"
    assert (errors["MetricName"], errors["Statistic"], errors["Threshold"]) == ("Invocation5XXErrors", "Sum", 3.0)
    assert (latency["MetricName"], latency["ExtendedStatistic"]) == ("ModelLatency", "p99")
    assert latency["Threshold"] == 750_000  # microseconds
    for alarm in (errors, latency):
        assert alarm["Dimensions"] == [
            {"Name": "EndpointName", "Value": "shop"},
            {"Name": "VariantName", "Value": requests.VARIANT},
        ]
        assert (alarm["Period"], alarm["EvaluationPeriods"]) == (30, 2)
        assert alarm["TreatMissingData"] == "notBreaching"  # a quiet endpoint is not failing


def test_no_latency_alarm_when_its_bound_is_null():
    [only] = guardrails.alarm_requests(sagemaker(alarms={"max_latency_ms": None}), endpoint="shop")
    assert only["MetricName"] == "Invocation5XXErrors"


@pytest.mark.parametrize(
    "routing, size_key, value",
    [("CANARY", "CanarySize", 20), ("LINEAR", "LinearStepSize", 25), ("ALL_AT_ONCE", None, None)],
)
def test_deployment_config_per_routing_is_a_valid_update(routing, size_key, value):
    sm = sagemaker(canary_percent=20, linear_step_percent=25, wait_interval_seconds=120, termination_wait_seconds=30)
    config = guardrails.deployment_config(sm, routing, ["a-5xx", "a-latency"])
    policy = config["BlueGreenUpdatePolicy"]
    traffic = policy["TrafficRoutingConfiguration"]
    assert (traffic["Type"], traffic["WaitIntervalInSeconds"]) == (routing, 120)
    if size_key:
        assert traffic[size_key] == {"Type": "CAPACITY_PERCENT", "Value": value}
    else:
        assert "CanarySize" not in traffic and "LinearStepSize" not in traffic
    assert (policy["TerminationWaitInSeconds"], policy["MaximumExecutionTimeoutInSeconds"]) == (30, 3600)
    assert config["AutoRollbackConfiguration"] == {"Alarms": [{"AlarmName": "a-5xx"}, {"AlarmName": "a-latency"}]}
    request = {"EndpointName": "shop", "EndpointConfigName": "shop-config", "DeploymentConfig": config}
    assert requests.problems("UpdateEndpoint", request) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"canary_percent": 60},  # SageMaker's canary is at most half the fleet
        {"linear_step_percent": 5},
        {"maximum_execution_timeout_seconds": 60},
        {"alarms": {"period_seconds": 45}},  # CloudWatch periods: 10, 30 or multiples of 60
    ],
)
def test_the_configuration_refuses_what_sagemaker_or_cloudwatch_would(bad):
    with pytest.raises(ValueError):
        sagemaker(**bad)
