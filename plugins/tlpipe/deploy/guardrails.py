"""Deployment guardrails: the CloudWatch alarms on an endpoint, and the blue/green ``DeploymentConfig`` an update
sends so that SageMaker shifts traffic in steps and rolls back by itself when one of them goes into ALARM.

    alarms = alarm_requests(cfg.sagemaker, endpoint="tlpipe-domain")   # PutMetricAlarm requests
    config = deployment_config(cfg.sagemaker, "CANARY", [a["AlarmName"] for a in alarms])

The alarms watch the endpoint's variant (``EndpointName``/``VariantName``, both fleets during an update):
``Invocation5XXErrors`` above ``max_5xx_errors`` per period, and p99 ``ModelLatency`` above ``max_latency_ms``.
A period without requests is not breaching: a quiet endpoint is not a failing one. The project's own
verify/smoke test/rollback stays the second line behind them.

Every endpoint config also captures data (``data_capture_config``): the sampled requests and responses as
SageMaker's JSON Lines under ``<s3 prefix>/data-capture/``, what a person or a monitoring job inspects later.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from plugins.tlpipe.config import TRAFFIC_ROUTING as ROUTING_TYPES
from plugins.tlpipe.config import S3Config, SageMakerConfig
from plugins.tlpipe.deploy.sagemaker_requests import VARIANT
from plugins.tlpipe.sagemaker_config import DataCaptureConfig

log = logging.getLogger(__name__)
NAMESPACE = "AWS/SageMaker"
DATA_CAPTURE_FOLDER = "data-capture"  # under the pipeline's S3 prefix
__all__ = [
    "ROUTING_TYPES",
    "alarm_requests",
    "check_alarm_requests",
    "data_capture_config",
    "deployment_config",
    "put_alarms",
]


def alarm_name(prefix: str, endpoint: str, what: str) -> str:
    """``<prefix>-<endpoint>-<what>``: the resource prefix first, as the IAM policy scopes alarms by it."""
    return f"{prefix}-{endpoint}-{what}"


def alarm_requests(sm: SageMakerConfig, *, endpoint: str) -> list[dict]:
    """The PutMetricAlarm requests of the endpoint's alarms (idempotent: the same name updates the alarm)."""
    alarms = sm.deployment.alarms
    common = {
        "Namespace": NAMESPACE,
        "Dimensions": [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": VARIANT}],
        "Period": alarms.period_seconds,
        "EvaluationPeriods": alarms.evaluation_periods,
        "ComparisonOperator": "GreaterThanThreshold",
        "TreatMissingData": "notBreaching",
    }
    out = [
        {
            "AlarmName": alarm_name(sm.resource_prefix, endpoint, "5xx-errors"),
            "AlarmDescription": f"{endpoint}: the model answers 5xx errors; an update in progress is rolled back",
            "MetricName": "Invocation5XXErrors",
            "Statistic": "Sum",
            "Threshold": float(alarms.max_5xx_errors),
            **common,
        }
    ]
    if alarms.max_latency_ms is not None:
        out.append(
            {
                "AlarmName": alarm_name(sm.resource_prefix, endpoint, "model-latency"),
                "AlarmDescription": f"{endpoint}: p99 model latency above {alarms.max_latency_ms:g} ms; an update "
                "in progress is rolled back",
                "MetricName": "ModelLatency",
                "ExtendedStatistic": "p99",
                "Threshold": alarms.max_latency_ms * 1000,  # ModelLatency is in microseconds
                **common,
            }
        )
    return out


def deployment_config(sm: SageMakerConfig, routing: str, alarm_names: list[str]) -> dict:
    """UpdateEndpoint's ``DeploymentConfig``: blue/green with the routing's steps, rolled back on the alarms."""
    deploy = sm.deployment
    traffic: dict[str, Any] = {"Type": routing, "WaitIntervalInSeconds": deploy.wait_interval_seconds}
    if routing == "CANARY":
        traffic["CanarySize"] = {"Type": "CAPACITY_PERCENT", "Value": _percent(deploy.canary_percent)}
    elif routing == "LINEAR":
        traffic["LinearStepSize"] = {"Type": "CAPACITY_PERCENT", "Value": _percent(deploy.linear_step_percent)}
    config: dict[str, Any] = {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": traffic,
            "TerminationWaitInSeconds": deploy.termination_wait_seconds,
            "MaximumExecutionTimeoutInSeconds": deploy.maximum_execution_timeout_seconds,
        }
    }
    if alarm_names:
        config["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": name} for name in alarm_names]}
    return config


def data_capture_config(capture: DataCaptureConfig, s3: S3Config) -> dict | None:
    """CreateEndpointConfig's ``DataCaptureConfig``: inputs and outputs, JSON bodies kept as text."""
    if not capture.enabled:
        return None
    return {
        "EnableCapture": True,
        "InitialSamplingPercentage": capture.sampling_percent,
        "DestinationS3Uri": s3.uri(DATA_CAPTURE_FOLDER),
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
    }


def _percent(value: float) -> int:
    return max(1, int(round(value)))  # CapacitySize.Value is an integer


def put_alarms(cloudwatch, requests: list[Mapping[str, Any]]) -> list[str]:
    for request in requests:
        cloudwatch.put_metric_alarm(**request)
        log.info("alarm %s: %s > %g", request["AlarmName"], request["MetricName"], request["Threshold"])
    return [r["AlarmName"] for r in requests]


def check_alarm_requests(requests: list[Mapping[str, Any]]) -> None:
    """botocore's own validation of PutMetricAlarm (the checks boto3 runs before sending)."""
    import botocore.session
    from botocore.validate import ParamValidator

    shape = botocore.session.get_session().get_service_model("cloudwatch").operation_model("PutMetricAlarm")
    for request in requests:
        report = ParamValidator().validate(request, shape.input_shape)
        if report.has_errors():
            raise ValueError(f"PutMetricAlarm {request.get('AlarmName')}: {report.generate_report()}")
