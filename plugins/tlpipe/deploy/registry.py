"""The SageMaker Model Registry side of a deploy run: every fine-tuned model becomes a version of the endpoint's
model package group, carrying its inference container, its metrics and its lineage; the quality gate sets its
approval; only an approved version is deployed.

``auto`` approval: the gate's verdict is the approval (``Approved``, or ``Rejected`` with the gate's reason).
``manual``: a version the gate passes waits as ``PendingManualApproval`` until a person approves it (console,
``aws sagemaker update-model-package --model-approval-status Approved``) or rejects it; one the gate refuses
is ``Rejected`` either way.
"""

from __future__ import annotations

from typing import Any, Mapping

from plugins.tlpipe.config import SageMakerConfig
from plugins.tlpipe.deploy import sagemaker_requests as requests

APPROVED, REJECTED, PENDING = "Approved", "Rejected", "PendingManualApproval"
CONTENT_TYPES = ["application/x-image", "application/json"]
MAX_METADATA_VALUE = 256  # CustomerMetadataProperties values


def serving_container(sm: SageMakerConfig, model_data_url: str) -> dict:
    """The serving image on the fine-tuned artifact; on SageMaker's managed TensorFlow Serving image with its
    batching environment. A Model Registry version's inference container is this one."""
    container = {"Image": sm.serving_image_uri, "ModelDataUrl": model_data_url}
    environment = sm.serving_batching.container_environment() if sm.serving_image_is_managed_tfs else {}
    if environment:
        container["Environment"] = environment
    return container


def approval_status(deploy: bool, approval: str) -> str:
    """The status a new version is registered with: the gate's verdict, or a person's call when asked for."""
    if not deploy:
        return REJECTED
    return PENDING if approval == "manual" else APPROVED


def _metadata(values: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v)[:MAX_METADATA_VALUE] for k, v in values.items() if v is not None}


def model_package_request(
    sm: SageMakerConfig,
    *,
    group: str,
    model_data_url: str,
    status: str,
    metrics: Mapping[str, float],
    lineage: Mapping[str, Any],
    description: str,
) -> dict:
    """CreateModelPackage: a version of ``group`` with the serving container, its metrics and its lineage."""
    request = {
        "ModelPackageGroupName": group,
        "ModelPackageDescription": description[:1000],
        "ModelApprovalStatus": status,
        "InferenceSpecification": {
            "Containers": [serving_container(sm, model_data_url)],
            "SupportedContentTypes": CONTENT_TYPES,
            "SupportedResponseMIMETypes": ["application/json"],
            "SupportedRealtimeInferenceInstanceTypes": [sm.serving_instance_type],
        },
        "CustomerMetadataProperties": _metadata(
            {**{f"metric:{k}": round(float(v), 6) for k, v in metrics.items()}, **lineage}
        ),
    }
    found = requests.botocore_problems("CreateModelPackage", request)
    found += requests.model_constraint_problems("CreateModelPackage", request)
    if found:
        raise requests.RequestError("CreateModelPackage", found)
    return request


def recorded_metrics(metadata: Mapping[str, str]) -> dict[str, float]:
    """The job's metrics a version carries (``metric:<name>`` entries of its customer metadata)."""
    return {k[len("metric:") :]: float(v) for k, v in metadata.items() if k.startswith("metric:")}


def version_summary(package: Mapping[str, Any]) -> dict:
    """What the run records of a version (DescribeModelPackage)."""
    return {
        "arn": package["ModelPackageArn"],
        "group": package.get("ModelPackageGroupName"),
        "version": package.get("ModelPackageVersion"),
        "status": package.get("ModelApprovalStatus"),
        "description": package.get("ApprovalDescription"),
        "container": (package.get("InferenceSpecification") or {}).get("Containers", [{}])[0],
        "metadata": dict(package.get("CustomerMetadataProperties") or {}),
    }


def settle_rejection(client, arn: str, reason: str) -> dict:
    """Record why the gate rejected the version (CreateModelPackage has no member for it)."""
    client.update_model_package(ModelPackageArn=arn, ModelApprovalStatus=REJECTED, ApprovalDescription=reason[:1000])
    return version_summary(client.describe_model_package(ModelPackageName=arn))


def approved_version(client, arn: str) -> dict:
    """The version to deploy: it must be Approved (a person may have changed it since the gate)."""
    summary = version_summary(client.describe_model_package(ModelPackageName=arn))
    if summary["status"] != APPROVED:
        raise ValueError(f"model package {arn} is {summary['status']}, not Approved: not deploying it")
    return summary
