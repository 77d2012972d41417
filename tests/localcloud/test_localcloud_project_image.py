"""The project's own training and serving code through localcloud, under the project's image name.

``…/tlpipe-sagemaker:<tag>`` maps to ``python -m training.finetune`` and ``python -m training.serve`` (the
built-in image map entry), so this is the fine-tune job and endpoint the deploy DAG runs, on a tiny
pretrained model: S3 channels in, metrics and ``model.tar.gz`` out, then a real image classified through
the SageMaker runtime.
"""

from __future__ import annotations

import json
from pathlib import Path

from _finetune_helpers import FINETUNE_HP, image_bytes
from localcloud_fixtures import ROLE_ARN, wait_for_endpoint, wait_for_job

from training.finetune import METRIC_DEFINITIONS

BUCKET = "tlpipe-project-image"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/tlpipe-sagemaker:latest"


def upload_tree(s3, root: Path, prefix: str) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(root).as_posix()}")


def test_finetune_and_serve_the_project_image(localcloud, world):
    s3, sm = localcloud.client("s3"), localcloud.client("sagemaker")
    s3.create_bucket(Bucket=BUCKET)
    for channel in ("pretrained", "train", "validation"):
        upload_tree(s3, Path(world[channel]), f"domain/{channel}")

    sm.create_training_job(
        TrainingJobName="project-finetune",
        RoleArn=ROLE_ARN,
        AlgorithmSpecification={
            "TrainingImage": IMAGE,
            "TrainingInputMode": "File",
            "MetricDefinitions": METRIC_DEFINITIONS,
        },
        HyperParameters=FINETUNE_HP,
        InputDataConfig=[
            {
                "ChannelName": channel,
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/domain/{channel}"}},
            }
            for channel in ("pretrained", "train", "validation")
        ],
        OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/jobs"},
        ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 5},
        StoppingCondition={"MaxRuntimeInSeconds": 1800},
    )
    job = wait_for_job(sm, "project-finetune", timeout=900)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    metrics = {m["MetricName"]: m["Value"] for m in job["FinalMetricDataList"]}
    assert 0.0 <= metrics["validation:accuracy"] <= 1.0 and metrics["validation:loss"] >= 0.0
    artifacts = job["ModelArtifacts"]["S3ModelArtifacts"]
    assert artifacts == f"s3://{BUCKET}/jobs/project-finetune/output/model.tar.gz"

    sm.create_model(
        ModelName="project-model",
        ExecutionRoleArn=ROLE_ARN,
        PrimaryContainer={"Image": IMAGE, "ModelDataUrl": artifacts},
    )
    sm.create_endpoint_config(
        EndpointConfigName="project-config",
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": "project-model",
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": 1,
            }
        ],
    )
    sm.create_endpoint(EndpointName="project-endpoint", EndpointConfigName="project-config")
    try:
        endpoint = wait_for_endpoint(sm, "project-endpoint", timeout=600)
        assert endpoint["EndpointStatus"] == "InService", endpoint.get("FailureReason")
        label, data = image_bytes(world, ".jpg")
        response = localcloud.client("sagemaker-runtime").invoke_endpoint(
            EndpointName="project-endpoint", ContentType="application/x-image", Body=data
        )
        predictions = json.loads(response["Body"].read())["predictions"]
        assert len(predictions) == 1
        top = predictions[0]
        assert top and {p["label"] for p in top} <= set(world["classes"])
        probabilities = [p["probability"] for p in top]
        assert probabilities == sorted(probabilities, reverse=True) and all(0.0 <= x <= 1.0 for x in probabilities)
    finally:
        sm.delete_endpoint(EndpointName="project-endpoint")
        sm.get_waiter("endpoint_deleted").wait(
            EndpointName="project-endpoint", WaiterConfig={"Delay": 1, "MaxAttempts": 120}
        )
