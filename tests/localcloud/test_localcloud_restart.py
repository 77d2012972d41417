"""localcloud restarts: nothing lost after SIGTERM, and jobs and endpoints carried on after SIGKILL."""

from __future__ import annotations

import json
import signal

import psutil
import pytest
from localcloud_fixtures import (
    COLOURS,
    ROLE_ARN,
    TEST_IMAGE,
    image_bytes,
    running_localcloud,
    start_localcloud,
    training_job_request,
    upload_dataset,
    wait_for_endpoint,
    wait_for_job,
)

BUCKET = "tlpipe-restart"


def children_of(data_dir) -> list[psutil.Process]:
    """Training job wrappers and model servers started for this data directory (not localcloud itself)."""
    marker = str(data_dir)
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline[1:3] != ["-m", "localcloud"] and any(marker in part for part in cmdline):
            found.append(proc)
    return found


def described(response: dict) -> dict:
    return {k: v for k, v in response.items() if k != "ResponseMetadata"}


def invoke(runtime, endpoint: str, colour: str) -> dict:
    response = runtime.invoke_endpoint(
        EndpointName=endpoint, ContentType="application/x-image", Body=image_bytes(COLOURS[colour])
    )
    return json.loads(response["Body"].read())


def deploy(sm, name: str, artifacts: str, tags: list[dict] | None = None) -> None:
    sm.create_model(
        ModelName=f"{name}-model",
        ExecutionRoleArn=ROLE_ARN,
        PrimaryContainer={"Image": TEST_IMAGE, "ModelDataUrl": artifacts},
        Tags=tags or [],
    )
    sm.create_endpoint_config(
        EndpointConfigName=f"{name}-config",
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": f"{name}-model",
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": 1,
            }
        ],
    )
    sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-config")


def test_clean_restart_loses_nothing(tmp_path):
    data_dir, log = tmp_path / "data", tmp_path / "localcloud.log"
    with running_localcloud(data_dir, log) as cloud:
        s3, sm, logs = cloud.client("s3"), cloud.client("sagemaker"), cloud.client("logs")
        upload_dataset(s3, BUCKET, "images")
        s3.put_object(
            Bucket=BUCKET, Key="notes/readme.txt", Body=b"kept", ContentType="text/plain", Metadata={"owner": "tlpipe"}
        )
        sm.create_training_job(**training_job_request("restart-job", BUCKET, "images", version="4"))
        job = wait_for_job(sm, "restart-job")
        assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
        deploy(sm, "restart-endpoint", job["ModelArtifacts"]["S3ModelArtifacts"], [{"Key": "accuracy", "Value": "1.0"}])
        assert wait_for_endpoint(sm, "restart-endpoint")["EndpointStatus"] == "InService"
        assert invoke(cloud.client("sagemaker-runtime"), "restart-endpoint", "green")["model_version"] == "4"
        assert children_of(data_dir)
        stream = logs.describe_log_streams(logGroupName="/aws/sagemaker/TrainingJobs")["logStreams"][0]["logStreamName"]
        before = {
            "job": described(job),
            "model": sm.describe_model(ModelName="restart-endpoint-model"),
            "config": sm.describe_endpoint_config(EndpointConfigName="restart-endpoint-config"),
            "objects": sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]),
            "events": [
                e["message"]
                for e in logs.get_log_events(
                    logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=stream, startFromHead=True
                )["events"]
            ],
        }
    assert cloud.proc.returncode == 0
    assert children_of(data_dir) == []

    with running_localcloud(data_dir, log) as cloud:
        s3, sm, logs = cloud.client("s3"), cloud.client("sagemaker"), cloud.client("logs")
        assert described(sm.describe_training_job(TrainingJobName="restart-job")) == before["job"]
        assert sm.describe_model(ModelName="restart-endpoint-model")["ModelArn"] == before["model"]["ModelArn"]
        model_arn = before["model"]["ModelArn"]
        assert sm.list_tags(ResourceArn=model_arn)["Tags"] == [{"Key": "accuracy", "Value": "1.0"}]
        assert (
            sm.describe_endpoint_config(EndpointConfigName="restart-endpoint-config")["ProductionVariants"]
            == (before["config"]["ProductionVariants"])
        )
        assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]) == before["objects"]
        note = s3.get_object(Bucket=BUCKET, Key="notes/readme.txt")
        assert (note["Body"].read(), note["ContentType"], note["Metadata"]) == (
            b"kept",
            "text/plain",
            {"owner": "tlpipe"},
        )
        events = logs.get_log_events(
            logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=stream, startFromHead=True
        )["events"]
        assert [e["message"] for e in events] == before["events"]

        endpoint = wait_for_endpoint(sm, "restart-endpoint")
        assert (endpoint["EndpointStatus"], endpoint["EndpointConfigName"]) == ("InService", "restart-endpoint-config")
        assert invoke(cloud.client("sagemaker-runtime"), "restart-endpoint", "blue") == {
            "predictions": [{"label": "blue"}],
            "model_version": "4",
        }
    assert children_of(data_dir) == []


@pytest.mark.chaos
def test_crash_restart_adopts_running_work(tmp_path, chaos):
    chaos.fault(
        "deploy",
        "localcloud SIGKILLed while a training job runs and an endpoint serves, then restarted",
        "the job is adopted (not rerun) and completes; the endpoint serves throughout; no object lost",
    )
    data_dir, log = tmp_path / "data", tmp_path / "localcloud.log"
    cloud = start_localcloud(data_dir, log)
    try:
        s3, sm = cloud.client("s3"), cloud.client("sagemaker")
        upload_dataset(s3, BUCKET, "images")
        sm.create_training_job(**training_job_request("first", BUCKET, "images", version="1"))
        first = wait_for_job(sm, "first")
        deploy(sm, "crash-endpoint", first["ModelArtifacts"]["S3ModelArtifacts"])
        assert wait_for_endpoint(sm, "crash-endpoint")["EndpointStatus"] == "InService"
        # A job still training when localcloud dies: its command runs on without it.
        sm.create_training_job(
            **training_job_request("survivor", BUCKET, "images", version="2", epochs="3", epoch_seconds="2")
        )
        while sm.describe_training_job(TrainingJobName="survivor")["SecondaryStatus"] != "Training":
            pass
    finally:
        cloud.stop(signal.SIGKILL)
    assert cloud.proc.returncode == -signal.SIGKILL
    orphans = children_of(data_dir)
    assert len(orphans) >= 2  # the model server and the training job outlived localcloud
    chaos.figure("jobs and servers that outlived it", len(orphans))

    with running_localcloud(data_dir, log) as cloud:
        sm = cloud.client("sagemaker")
        assert sm.describe_training_job(TrainingJobName="first")["TrainingJobStatus"] == "Completed"
        endpoint = wait_for_endpoint(sm, "crash-endpoint")
        assert endpoint["EndpointStatus"] == "InService"
        assert invoke(cloud.client("sagemaker-runtime"), "crash-endpoint", "red")["predictions"] == [{"label": "red"}]
        survivor = wait_for_job(sm, "survivor")
        assert survivor["TrainingJobStatus"] == "Completed", survivor.get("FailureReason")
        # Adopted, not run again: no restart in its history.
        assert [t["Status"] for t in survivor["SecondaryStatusTransitions"]] == [
            "Starting",
            "Downloading",
            "Training",
            "Uploading",
            "Completed",
        ]
        assert [m["Value"] for m in survivor["FinalMetricDataList"] if m["MetricName"] == "validation:accuracy"] == [
            1.0
        ]
        key = survivor["ModelArtifacts"]["S3ModelArtifacts"].split(f"s3://{BUCKET}/", 1)[1]
        assert cloud.client("s3").head_object(Bucket=BUCKET, Key=key)["ContentLength"] > 0
        # The model server that outlived the crash is the one serving now.
        assert {p.pid for p in children_of(data_dir)} <= {p.pid for p in orphans}
    assert children_of(data_dir) == []
    chaos.figure("jobs rerun", 0)
    chaos.figure("jobs lost", 0)


@pytest.mark.chaos
def test_an_acknowledged_s3_write_survives_a_crash(tmp_path, chaos):
    """Every S3 write is on disk before it is answered: SIGKILL right after the 200s loses none of them (the
    periodic snapshot is an hour away here)."""
    chaos.fault(
        "deploy",
        "localcloud SIGKILLed right after acknowledged S3 writes (a put, a delete, a 12 MB multipart upload)",
        "every acknowledged write is there after the restart",
    )
    import random

    from boto3.s3.transfer import TransferConfig

    data_dir, log = tmp_path / "lc", tmp_path / "lc.log"
    cloud = start_localcloud(data_dir, log, "--snapshot-interval", "3600")
    try:
        s3 = cloud.client("s3")
        s3.create_bucket(Bucket="durable")
        s3.put_object(Bucket="durable", Key="latest.json", Body=b'{"model": 1}', Metadata={"sha256": "abc"})
        s3.put_object(Bucket="durable", Key="gone.txt", Body=b"x")
        s3.delete_object(Bucket="durable", Key="gone.txt")
        big = random.Random(0).randbytes(12 * 2**20)
        (tmp_path / "model.tar.gz").write_bytes(big)
        config = TransferConfig(multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20)
        s3.upload_file(str(tmp_path / "model.tar.gz"), "durable", "model.tar.gz", Config=config)
    finally:
        cloud.stop(signal.SIGKILL)
    with running_localcloud(data_dir, log) as cloud:
        s3 = cloud.client("s3")
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="durable")["Contents"])
        assert keys == ["latest.json", "model.tar.gz"]
        assert s3.get_object(Bucket="durable", Key="model.tar.gz")["Body"].read() == big
        head = s3.head_object(Bucket="durable", Key="latest.json")
        assert head["Metadata"] == {"sha256": "abc"}
    chaos.figure("acknowledged writes lost", 0)
