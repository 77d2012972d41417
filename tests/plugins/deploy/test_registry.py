"""The Model Registry requests and decisions of the deploy DAG (no AWS: the DAG tests run them on moto)."""

from __future__ import annotations

import pytest
from botocore.validate import ParamValidator

from plugins.tlpipe.config import load_config
from plugins.tlpipe.deploy import registry
from plugins.tlpipe.deploy import sagemaker_requests as req

MANAGED_TFS = "763104351884.dkr.ecr.us-east-1.amazonaws.com/tensorflow-inference:2.19-cpu"


@pytest.mark.parametrize(
    "deploy, approval, status",
    [(True, "auto", "Approved"), (True, "manual", "PendingManualApproval"), (False, "auto", "Rejected")]
    + [(False, "manual", "Rejected")],
)
def test_the_gate_and_the_approval_mode_decide_the_status(deploy, approval, status):
    assert registry.approval_status(deploy, approval) == status


@pytest.mark.parametrize("profile", ["local", "production"])
def test_the_version_request_passes_botocore_and_carries_container_metrics_and_lineage(profile):
    cfg = load_config(profile, environ={"TLPIPE__SAGEMAKER__SERVING_IMAGE_URI": MANAGED_TFS})
    request = registry.model_package_request(
        cfg.sagemaker,
        group=cfg.sagemaker.package_group("tlpipe-domain"),
        model_data_url="s3://tlpipe/finetune/job-1/output/model.tar.gz",
        status="Approved",
        metrics={"validation:accuracy": 0.912345678, "transfer:gain": 0.25},
        lineage={"training-job": "job-1", "run-id": "r" * 400, "unset": None},
        description="validation:accuracy 0.9123 >= threshold 0.6",
    )
    shape = req.service_model().operation_model("CreateModelPackage").input_shape
    assert not ParamValidator().validate(request, shape).has_errors()
    assert request["ModelPackageGroupName"] == "tlpipe-domain"
    (container,) = request["InferenceSpecification"]["Containers"]
    assert container == registry.serving_container(cfg.sagemaker, "s3://tlpipe/finetune/job-1/output/model.tar.gz")
    assert container["Environment"]  # the managed TFS container's batching settings travel with the version
    metadata = request["CustomerMetadataProperties"]
    assert metadata["metric:validation:accuracy"] == "0.912346" and metadata["training-job"] == "job-1"
    assert len(metadata["run-id"]) == registry.MAX_METADATA_VALUE and "unset" not in metadata


def test_a_request_sagemaker_would_refuse_is_refused_before_it_is_sent():
    cfg = load_config("local", environ={})
    with pytest.raises(req.RequestError, match="CreateModelPackage"):
        registry.model_package_request(
            cfg.sagemaker,
            group="not a valid group name!",
            model_data_url="s3://b/m.tar.gz",
            status="Approved",
            metrics={},
            lineage={},
            description="",
        )


def test_the_approval_sensor_passes_only_an_approved_version():
    from airflow.sdk.exceptions import AirflowFailException

    from plugins.tlpipe.deploy.sensors import ModelApprovalSensor

    sensor = ModelApprovalSensor(task_id="wait", model_package_arn="arn:aws:sagemaker:r:1:model-package/g/1")
    assert sensor._decided("Approved", None) is True
    assert sensor._decided("PendingManualApproval", None) is False
    with pytest.raises(AirflowFailException, match="Rejected: not on a Friday"):
        sensor._decided("Rejected", "not on a Friday")
