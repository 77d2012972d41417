"""The Model Registry on localcloud through boto3: groups, numbered versions, approval, listings, a model created
from a version, and SageMaker's errors (the Amazon provider's own register operator parses one of them)."""

from __future__ import annotations

import uuid

import pytest
from botocore.exceptions import ClientError
from localcloud_fixtures import ROLE_ARN, TEST_IMAGE


@pytest.fixture(scope="module")
def sm(localcloud_server):
    return localcloud_server.client("sagemaker")


def _spec(url: str = "s3://bucket/models/m/model.tar.gz") -> dict:
    return {
        "Containers": [{"Image": TEST_IMAGE, "ModelDataUrl": url}],
        "SupportedContentTypes": ["application/x-image"],
        "SupportedResponseMIMETypes": ["application/json"],
    }


def _error(excinfo) -> tuple[str, str]:
    return excinfo.value.response["Error"]["Code"], excinfo.value.response["Error"]["Message"]


def test_versions_are_numbered_in_their_group_and_approved_by_update(sm):
    group = f"domain-{uuid.uuid4().hex[:8]}"
    group_arn = sm.create_model_package_group(ModelPackageGroupName=group)["ModelPackageGroupArn"]
    assert group_arn == f"arn:aws:sagemaker:us-east-1:123456789012:model-package-group/{group}"
    with pytest.raises(ClientError) as excinfo:
        sm.create_model_package_group(ModelPackageGroupName=group)
    assert _error(excinfo) == ("ValidationException", f"Model Package Group already exists: {group_arn}")

    first = sm.create_model_package(
        ModelPackageGroupName=group,
        InferenceSpecification=_spec(),
        CustomerMetadataProperties={"validation:accuracy": "0.91"},
    )["ModelPackageArn"]
    second = sm.create_model_package(
        ModelPackageGroupName=group, InferenceSpecification=_spec(), ModelApprovalStatus="Approved"
    )["ModelPackageArn"]
    assert first == f"arn:aws:sagemaker:us-east-1:123456789012:model-package/{group}/1"
    assert second.endswith(f"/{group}/2")
    described = sm.describe_model_package(ModelPackageName=first)
    assert described["ModelPackageVersion"] == 1 and described["ModelPackageStatus"] == "Completed"
    assert described["ModelApprovalStatus"] == "PendingManualApproval"
    assert described["CustomerMetadataProperties"] == {"validation:accuracy": "0.91"}

    sm.update_model_package(
        ModelPackageArn=first,
        ModelApprovalStatus="Rejected",
        ApprovalDescription="validation accuracy 0.91 is below the live model's 0.95",
        CustomerMetadataProperties={"gate": "rejected"},
    )
    rejected = sm.describe_model_package(ModelPackageName=first)
    assert rejected["ModelApprovalStatus"] == "Rejected"
    assert rejected["ApprovalDescription"].startswith("validation accuracy 0.91")
    assert rejected["CustomerMetadataProperties"] == {"validation:accuracy": "0.91", "gate": "rejected"}

    approved = sm.list_model_packages(
        ModelPackageGroupName=group, ModelApprovalStatus="Approved", SortBy="CreationTime", SortOrder="Descending"
    )["ModelPackageSummaryList"]
    assert [p["ModelPackageArn"] for p in approved] == [second]
    every = sm.list_model_packages(ModelPackageGroupName=group)["ModelPackageSummaryList"]
    assert [p["ModelPackageVersion"] for p in every] == [1, 2]


def test_a_model_from_a_version_serves_its_container(sm):
    group = f"served-{uuid.uuid4().hex[:8]}"
    sm.create_model_package_group(ModelPackageGroupName=group)
    version = sm.create_model_package(
        ModelPackageGroupName=group, InferenceSpecification=_spec(), ModelApprovalStatus="Approved"
    )["ModelPackageArn"]
    name = f"from-package-{uuid.uuid4().hex[:8]}"
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE_ARN, PrimaryContainer={"ModelPackageName": version})
    container = sm.describe_model(ModelName=name)["PrimaryContainer"]
    assert container["ModelPackageName"] == version and container["Image"] == TEST_IMAGE


def test_unknown_groups_and_versions_are_validation_errors(sm):
    with pytest.raises(ClientError) as excinfo:
        sm.create_model_package(ModelPackageGroupName="no-such-group", InferenceSpecification=_spec())
    assert _error(excinfo)[0] == "ValidationException" and "no-such-group does not exist" in _error(excinfo)[1]
    missing = "arn:aws:sagemaker:us-east-1:123456789012:model-package/no-such-group/7"
    with pytest.raises(ClientError) as excinfo:
        sm.describe_model_package(ModelPackageName=missing)
    assert _error(excinfo) == ("ValidationException", f"ModelPackage {missing} does not exist.")
    with pytest.raises(ClientError) as excinfo:
        sm.update_model_package(ModelPackageArn=missing, ModelApprovalStatus="Approved")
    assert _error(excinfo)[0] == "ValidationException"


def test_the_approval_trigger_fires_when_a_person_approves(localcloud, sm):
    """The deploy DAG's deferred wait for a manual approval, run as the triggerer runs it (asyncio, aiobotocore
    through the aws_default connection), against a version a person approves while it polls."""
    import asyncio
    import threading

    from plugins.tlpipe.deploy.triggers import ModelApprovalTrigger

    group = f"manual-{uuid.uuid4().hex[:8]}"
    sm.create_model_package_group(ModelPackageGroupName=group)
    version = sm.create_model_package(ModelPackageGroupName=group, InferenceSpecification=_spec())["ModelPackageArn"]
    trigger = ModelApprovalTrigger(version, "aws_default", poll_interval=0.2)
    classpath, kwargs = trigger.serialize()
    assert classpath == "plugins.tlpipe.deploy.triggers.ModelApprovalTrigger"

    def approve():
        sm.update_model_package(ModelPackageArn=version, ModelApprovalStatus="Approved", ApprovalDescription="ok")

    async def first_event():
        timer = threading.Timer(1.0, approve)
        timer.start()
        try:
            async for event in ModelApprovalTrigger(**kwargs).run():
                return event.payload
        finally:
            timer.cancel()

    payload = asyncio.run(asyncio.wait_for(first_event(), 60))
    assert payload == {"status": "Approved", "description": "ok", "arn": version}
