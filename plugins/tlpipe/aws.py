"""The AWS helpers both wings use, each written once: clients from Airflow connections (created when a task runs,
never at parse time), describe-or-none, NextToken pagination, S3 URIs and S3's "not found" answers."""

from __future__ import annotations

from typing import Any, Callable

from training.store import split_s3

# What S3 (and S3-compatible stores) answer for a key or bucket that is not there.
S3_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})

__all__ = [
    "S3_MISSING",
    "autoscaling_client",
    "cloudwatch_client",
    "describe_or_none",
    "error_code",
    "paginate",
    "runtime_client",
    "s3_client",
    "sagemaker_client",
    "split_s3",
]


def sagemaker_client(conn_id: str):
    from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

    return SageMakerHook(aws_conn_id=conn_id).conn


def cloudwatch_client(conn_id: str):
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    return AwsBaseHook(aws_conn_id=conn_id, client_type="cloudwatch").conn


def autoscaling_client(conn_id: str):
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    return AwsBaseHook(aws_conn_id=conn_id, client_type="application-autoscaling").conn


def runtime_client(conn_id: str):
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    # Retries would hide a failing model and blur the latency the smoke test measures.
    return AwsBaseHook(
        aws_conn_id=conn_id,
        client_type="sagemaker-runtime",
        config={"retries": {"max_attempts": 1, "mode": "standard"}, "read_timeout": 70},
    ).conn


def s3_client(conn_id: str):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=conn_id).get_conn()


def error_code(err: Exception) -> str | None:
    """The AWS error code of a botocore ``ClientError``."""
    return getattr(err, "response", {}).get("Error", {}).get("Code")


def describe_or_none(describe: Callable[..., dict], **kwargs) -> dict | None:
    """A describe call's answer, or None when SageMaker says there is no such resource."""
    from botocore.exceptions import ClientError

    try:
        return describe(**kwargs)
    except ClientError as err:
        # SageMaker answers a missing resource with ValidationException ("Could not find …", "Requested
        # resource not found"), a missing tuning job with ResourceNotFound; the request was validated before.
        if error_code(err) in ("ValidationException", "ResourceNotFound"):
            return None
        raise


def paginate(client, operation: str, key: str, **kwargs: Any) -> list[dict]:
    """Every item under ``key`` of a NextToken-paginated List* call."""
    out, token = [], None
    while True:
        page = getattr(client, operation)(**kwargs, **({"NextToken": token} if token else {}))
        out.extend(page.get(key, []))
        token = page.get("NextToken")
        if not token:
            return out
