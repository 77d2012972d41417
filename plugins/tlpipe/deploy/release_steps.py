"""The deploy group's safety steps, each called by one thin task of the deploy DAG: the endpoint's alarms, its
Application Auto Scaling registration, and the shadow test. Clients come from the Airflow connection when a task
runs (never at parse time)."""

from __future__ import annotations

from typing import Any, Mapping

from plugins.tlpipe import aws
from plugins.tlpipe.config import PipelineConfig
from plugins.tlpipe.deploy import autoscaling, guardrails, shadow

NO_SHADOW = {"ran": False, "passed": True, "reason": "no shadow test asked (Param shadow_test)"}


def put_alarms(cfg: PipelineConfig, alarms: list) -> list[str]:
    return guardrails.put_alarms(aws.cloudwatch_client(cfg.s3.aws_conn_id), alarms)


def release_autoscaling(cfg: PipelineConfig, request: Mapping[str, Any], config: Mapping[str, Any]) -> dict | None:
    conn = cfg.s3.aws_conn_id
    return autoscaling.release_for_update(
        aws.autoscaling_client(conn),
        aws.sagemaker_client(conn),
        endpoint=request["EndpointName"],
        instance_type=config["ProductionVariants"][0]["InstanceType"],
    )


def autoscale(cfg: PipelineConfig, scaling: Mapping[str, Any] | None) -> dict | None:
    return autoscaling.apply_scaling(aws.autoscaling_client(cfg.s3.aws_conn_id), scaling)


def restore_autoscaling(cfg: PipelineConfig, endpoint: str, saved: Mapping[str, Any] | None) -> bool:
    conn = cfg.s3.aws_conn_id
    return autoscaling.restore_scaling(aws.autoscaling_client(conn), aws.sagemaker_client(conn), endpoint, saved)


def shadow_test(
    cfg: PipelineConfig, params: Mapping[str, Any], requests: Mapping[str, Any], validation_uri: str, poll: float
) -> dict:
    """The shadow test's verdict (raises ``shadow.ShadowTestError`` when it cannot run)."""
    if not params["shadow_test"]:
        return dict(NO_SHADOW)
    conn = cfg.s3.aws_conn_id
    clients = {
        "sagemaker": aws.sagemaker_client(conn),
        "sagemaker-runtime": aws.runtime_client(conn),
        "s3": aws.s3_client(conn),
        "cloudwatch": aws.cloudwatch_client(conn),
    }
    return shadow.run_shadow_test(cfg, clients, requests=requests, validation_uri=validation_uri, poll=poll)
