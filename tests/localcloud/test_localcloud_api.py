"""boto3 against localcloud: training jobs and endpoints that really run, and AWS-shaped errors."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.request
import uuid

import psutil
import pytest
from botocore.exceptions import ClientError
from localcloud_fixtures import (
    COLOURS,
    REGION,
    ROLE_ARN,
    TEST_IMAGE,
    image_bytes,
    signed_headers,
    training_job_request,
    upload_dataset,
    wait_for_endpoint,
    wait_for_job,
)

BUCKET = "tlpipe-localcloud-api"


def ensure_bucket(s3) -> None:
    """The tests' bucket, made by whichever localcloud test comes first."""
    try:
        s3.head_bucket(Bucket=BUCKET)
    except ClientError:
        s3.create_bucket(Bucket=BUCKET)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def clients(localcloud_server):
    return {name: localcloud_server.client(name) for name in ("s3", "sagemaker", "sagemaker-runtime", "logs")}


@pytest.fixture(scope="module")
def dataset(clients):
    upload_dataset(clients["s3"], BUCKET, "images")
    return "images"


def read_tar(s3, uri: str) -> dict[str, bytes]:
    bucket, key = uri[len("s3://") :].split("/", 1)
    data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def error_of(excinfo) -> tuple[str, str, int]:
    err = excinfo.value.response
    return err["Error"]["Code"], err["Error"]["Message"], err["ResponseMetadata"]["HTTPStatusCode"]


def model_tarball(s3, key: str, version: str | None, colours=COLOURS) -> str:
    """A model artifact in the layout tests/containers/train.py writes (``None``: one without model.json)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        if version is None:
            content, name = b"not a model", "README"
        else:
            centroids = {label: list(colour) for label, colour in colours.items()}
            content, name = json.dumps({"version": version, "centroids": centroids}).encode(), "model.json"
        info = tarfile.TarInfo(name)
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    s3.put_object(Bucket=BUCKET, Key=key, Body=buf.getvalue())
    return f"s3://{BUCKET}/{key}"


def deployable(sm, s3, version: str | None, env: dict | None = None) -> str:
    """A model and a one-variant endpoint config for it; returns the config name."""
    model = unique(f"model-v{version or 'broken'}")
    url = model_tarball(s3, f"models/{model}/model.tar.gz", version)
    container = {"Image": TEST_IMAGE, "ModelDataUrl": url, **({"Environment": env} if env else {})}
    sm.create_model(ModelName=model, ExecutionRoleArn=ROLE_ARN, PrimaryContainer=container)
    config = unique(f"config-v{version or 'broken'}")
    sm.create_endpoint_config(
        EndpointConfigName=config,
        ProductionVariants=[
            {"VariantName": "AllTraffic", "ModelName": model, "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}
        ],
    )
    return config


def classify(runtime, endpoint: str, colour: str, fmt: str = "PNG", as_json: bool = False) -> dict:
    data = image_bytes(COLOURS[colour], fmt)
    if as_json:
        body = json.dumps({"instances": [{"b64": base64.b64encode(data).decode()}]})
        response = runtime.invoke_endpoint(EndpointName=endpoint, ContentType="application/json", Body=body)
    else:
        response = runtime.invoke_endpoint(EndpointName=endpoint, ContentType="application/x-image", Body=data)
    assert response["ContentType"] == "application/json"
    assert response["InvokedProductionVariant"] == "AllTraffic"
    return json.loads(response["Body"].read())


def server_processes(data_dir, endpoint: str) -> list[psutil.Process]:
    marker = str(data_dir / "endpoints" / endpoint.lower())
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


# -- training ----------------------------------------------------------------------------------------------


def test_training_job_runs_and_reports(clients, dataset):
    sm, s3, logs = clients["sagemaker"], clients["s3"], clients["logs"]
    name = unique("train-ok")
    request = training_job_request(name, BUCKET, dataset, version="3")
    request["Tags"] = [{"Key": "project", "Value": "tlpipe"}]
    arn = sm.create_training_job(**request)["TrainingJobArn"]
    assert arn == f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{name}"

    job = wait_for_job(sm, name)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == [
        "Starting",
        "Downloading",
        "Training",
        "Uploading",
        "Completed",
    ]
    assert job["TrainingStartTime"] <= job["TrainingEndTime"]
    assert job["HyperParameters"] == {"epochs": "2", "version": "3"}
    metrics = {m["MetricName"]: m["Value"] for m in job["FinalMetricDataList"]}
    assert metrics == {"validation:accuracy": 1.0, "train:loss": pytest.approx(1 / 3, abs=1e-4)}

    artifacts = job["ModelArtifacts"]["S3ModelArtifacts"]
    assert artifacts == f"s3://{BUCKET}/{dataset}/output/{name}/output/model.tar.gz"
    model = json.loads(read_tar(s3, artifacts)["model.json"])
    assert model["version"] == "3" and set(model["centroids"]) == set(COLOURS)
    output = read_tar(s3, artifacts.replace("model.tar.gz", "output.tar.gz"))
    assert json.loads(output["metrics.json"]) == {"accuracy": 1.0, "epochs": 2}

    streams = logs.describe_log_streams(logGroupName="/aws/sagemaker/TrainingJobs", logStreamNamePrefix=f"{name}/")[
        "logStreams"
    ]
    assert [s["logStreamName"].startswith(f"{name}/algo-1-") for s in streams] == [True]
    events = logs.get_log_events(
        logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=streams[0]["logStreamName"], startFromHead=True
    )["events"]
    messages = [e["message"] for e in events]
    assert "loaded 6 training images" in messages
    assert "epoch=2 loss=0.3333 accuracy=1.0000" in messages
    assert messages[-1] == "training complete"

    listed = sm.list_training_jobs(NameContains=name)["TrainingJobSummaries"]
    assert [(j["TrainingJobName"], j["TrainingJobStatus"]) for j in listed] == [(name, "Completed")]
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "project", "Value": "tlpipe"}]


def test_training_job_failure_reports_the_scripts_reason(clients, dataset):
    sm, s3 = clients["sagemaker"], clients["s3"]
    name = unique("train-fail")
    sm.create_training_job(**training_job_request(name, BUCKET, dataset, fail="labels file is corrupt"))
    job = wait_for_job(sm, name)
    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"] == "AlgorithmError: ValueError: labels file is corrupt"
    assert job["SecondaryStatusTransitions"][-1]["Status"] == "Failed"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{dataset}/output/{name}/")["Contents"]]
    assert keys == [f"{dataset}/output/{name}/output/output.tar.gz"]


def test_training_job_with_missing_input_fails_like_sagemaker(clients, dataset):
    sm = clients["sagemaker"]
    name = unique("train-noinput")
    request = training_job_request(name, BUCKET, dataset)
    request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] = f"s3://{BUCKET}/nothing/here"
    sm.create_training_job(**request)
    job = wait_for_job(sm, name)
    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"].startswith(
        f'ClientError: No S3 objects found under S3 URL "s3://{BUCKET}/nothing/here"'
    )


def test_stopped_training_job(clients, dataset):
    sm, s3, logs = clients["sagemaker"], clients["s3"], clients["logs"]
    name = unique("train-stop")
    sm.create_training_job(**training_job_request(name, BUCKET, dataset, epochs="50", epoch_seconds="60"))
    # Stop once the first epoch is in the log, so the script has something to save.
    while True:
        job = sm.describe_training_job(TrainingJobName=name)
        assert job["TrainingJobStatus"] == "InProgress"
        streams = logs.describe_log_streams(logGroupName="/aws/sagemaker/TrainingJobs", logStreamNamePrefix=f"{name}/")[
            "logStreams"
        ]
        if streams:
            events = logs.get_log_events(
                logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=streams[0]["logStreamName"]
            )["events"]
            if any(e["message"].startswith("epoch=1 ") for e in events):
                break
    sm.stop_training_job(TrainingJobName=name)
    assert sm.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] in ("Stopping", "Stopped")
    job = wait_for_job(sm, name)
    assert job["TrainingJobStatus"] == "Stopped"
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]][-2:] == ["Stopping", "Stopped"]
    model = json.loads(read_tar(s3, job["ModelArtifacts"]["S3ModelArtifacts"])["model.json"])
    assert model["epochs"] == 1
    with pytest.raises(ClientError) as excinfo:
        sm.stop_training_job(TrainingJobName=name)
    assert error_of(excinfo) == (
        "ValidationException",
        "The request was rejected because the training job is in status Stopped.",
        400,
    )


def test_training_job_names_are_unique(clients, dataset):
    sm = clients["sagemaker"]
    name = unique("train-twice")
    sm.create_training_job(**training_job_request(name, BUCKET, dataset))
    with pytest.raises(ClientError) as excinfo:
        sm.create_training_job(**training_job_request(name.upper(), BUCKET, dataset))
    code, message, _ = error_of(excinfo)
    assert code == "ResourceInUse"
    assert message.startswith("Training job names must be unique within an AWS account and region")
    assert wait_for_job(sm, name)["TrainingJobStatus"] == "Completed"


# -- endpoints ---------------------------------------------------------------------------------------------


def test_endpoint_create_invoke_update_rollback_delete(localcloud, clients, tmp_path):
    sm, s3, runtime = clients["sagemaker"], clients["s3"], clients["sagemaker-runtime"]
    name = unique("endpoint")
    config_v1 = deployable(sm, s3, "1")
    arn = sm.create_endpoint(EndpointName=name, EndpointConfigName=config_v1)["EndpointArn"]
    assert arn == f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{name}"
    assert sm.describe_endpoint(EndpointName=name)["EndpointStatus"] in ("Creating", "InService")
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    endpoint = sm.describe_endpoint(EndpointName=name)
    assert endpoint["EndpointConfigName"] == config_v1
    assert endpoint["ProductionVariants"][0]["DeployedImages"][0]["SpecifiedImage"] == TEST_IMAGE

    assert classify(runtime, name, "red") == {"predictions": [{"label": "red"}], "model_version": "1"}
    assert classify(runtime, name, "blue", fmt="JPEG", as_json=True)["predictions"] == [{"label": "blue"}]
    with pytest.raises(ClientError) as excinfo:
        runtime.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=b"1,2,3")
    code, message, status = error_of(excinfo)
    assert (code, status) == ("ModelError", 424)
    assert message.startswith('Received client error (415) from primary with message "{"error": "unsupported')

    # Blue/green: the new variant is up but not healthy yet, and the old one keeps answering.
    gate = tmp_path / "v2-ready"
    config_v2 = deployable(sm, s3, "2", env={"SERVE_READY_FILE": str(gate)})
    sm.update_endpoint(EndpointName=name, EndpointConfigName=config_v2)
    updating = sm.describe_endpoint(EndpointName=name)
    assert updating["EndpointStatus"] == "Updating"
    assert updating["EndpointConfigName"] == config_v1
    assert updating["PendingDeploymentSummary"]["EndpointConfigName"] == config_v2
    with pytest.raises(ClientError) as excinfo:
        sm.update_endpoint(EndpointName=name, EndpointConfigName=config_v2)
    assert error_of(excinfo)[:2] == ("ValidationException", f'Cannot update in-progress endpoint "{arn}".')
    while len(server_processes(localcloud.data_dir, name)) < 2:
        assert sm.describe_endpoint(EndpointName=name)["EndpointStatus"] == "Updating"
    assert classify(runtime, name, "green")["model_version"] == "1"
    gate.touch()
    endpoint = wait_for_endpoint(sm, name)
    assert (endpoint["EndpointStatus"], endpoint["EndpointConfigName"]) == ("InService", config_v2)
    assert "FailureReason" not in endpoint and "PendingDeploymentSummary" not in endpoint
    assert classify(runtime, name, "green") == {"predictions": [{"label": "green"}], "model_version": "2"}
    assert len(server_processes(localcloud.data_dir, name)) == 1

    # An update whose model server never gets healthy leaves the old model live.
    config_broken = deployable(sm, s3, None)
    sm.update_endpoint(EndpointName=name, EndpointConfigName=config_broken)
    endpoint = wait_for_endpoint(sm, name)
    assert (endpoint["EndpointStatus"], endpoint["EndpointConfigName"]) == ("InService", config_v2)
    assert endpoint["FailureReason"] == (
        "The primary container for production variant AllTraffic did not pass the ping health check. "
        "Please check CloudWatch logs for this endpoint."
    )
    assert classify(runtime, name, "red")["model_version"] == "2"
    server_logs = clients["logs"].filter_log_events(logGroupName=f"/aws/sagemaker/Endpoints/{name}")["events"]
    assert any("cannot load the model" in e["message"] for e in server_logs)

    sm.delete_endpoint(EndpointName=name)
    sm.get_waiter("endpoint_deleted").wait(EndpointName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    with pytest.raises(ClientError) as excinfo:
        sm.describe_endpoint(EndpointName=name)
    assert error_of(excinfo) == ("ValidationException", f'Could not find endpoint "{arn}".', 400)
    with pytest.raises(ClientError) as excinfo:
        classify(runtime, name, "red")
    assert error_of(excinfo) == ("ValidationError", f"Endpoint {name} of account 123456789012 not found.", 400)
    assert server_processes(localcloud.data_dir, name) == []


def test_variants_weights_and_signed_invocations_only(localcloud, clients):
    sm, s3, runtime = clients["sagemaker"], clients["s3"], clients["sagemaker-runtime"]
    models = []
    for version in ("1", "2"):
        model = unique(f"model-variant{version}")
        url = model_tarball(s3, f"models/{model}/model.tar.gz", version)
        sm.create_model(
            ModelName=model, ExecutionRoleArn=ROLE_ARN, PrimaryContainer={"Image": TEST_IMAGE, "ModelDataUrl": url}
        )
        models.append(model)
    config, name = unique("config-variants"), unique("endpoint-variants")
    sm.create_endpoint_config(
        EndpointConfigName=config,
        ProductionVariants=[
            {
                "VariantName": "Primary",
                "ModelName": models[0],
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": 1,
                "InitialVariantWeight": 1.0,
            },
            {
                "VariantName": "Shadow",
                "ModelName": models[1],
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": 1,
                "InitialVariantWeight": 0.0,
            },
        ],
    )
    sm.create_endpoint(EndpointName=name, EndpointConfigName=config)
    endpoint = wait_for_endpoint(sm, name)
    assert [(v["VariantName"], v["CurrentWeight"]) for v in endpoint["ProductionVariants"]] == [
        ("Primary", 1.0),
        ("Shadow", 0.0),
    ]
    data = image_bytes(COLOURS["red"])
    for _ in range(3):  # weight 0 never receives unaddressed traffic
        response = runtime.invoke_endpoint(EndpointName=name, ContentType="image/png", Body=data)
        assert response["InvokedProductionVariant"] == "Primary"
        assert json.loads(response["Body"].read())["model_version"] == "1"
    response = runtime.invoke_endpoint(EndpointName=name, ContentType="image/png", Body=data, TargetVariant="Shadow")
    assert response["InvokedProductionVariant"] == "Shadow"
    assert json.loads(response["Body"].read())["model_version"] == "2"

    # What `curl -X POST --data-binary @image.png` sends: no signature at all. Refused, as AWS refuses it.
    request = urllib.request.Request(
        f"{localcloud.url}/endpoints/{name}/invocations",
        data=data,
        headers={"Content-Type": "image/png"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 403
    assert json.loads(refused.value.read())["__type"] == "MissingAuthenticationTokenException"
    # The README's example: curl signs the request itself.
    if shutil.which("curl"):
        image = localcloud.data_dir.parent / "red.png"
        image.write_bytes(data)
        headers, answer = localcloud.data_dir.parent / "headers.txt", localcloud.data_dir.parent / "answer.json"
        subprocess.run(
            [
                "curl",
                "-sS",
                "-D",
                str(headers),
                "-o",
                str(answer),
                "-X",
                "POST",
                f"{localcloud.url}/endpoints/{name}/invocations",
                "--aws-sigv4",
                f"aws:amz:{REGION}:sagemaker",
                "--user",
                "test:test",
                "-H",
                "Content-Type: image/png",
                "--data-binary",
                f"@{image}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        head = headers.read_text()
        assert " 200 " in head.splitlines()[0] and "x-Amzn-Invoked-Production-Variant: Primary" in head, head
        assert json.loads(answer.read_text())["predictions"] == [{"label": "red"}]
    sm.delete_endpoint(EndpointName=name)


def test_endpoint_that_never_gets_healthy_fails(localcloud, clients):
    sm, s3 = clients["sagemaker"], clients["s3"]
    name = unique("endpoint-broken")
    sm.create_endpoint(EndpointName=name, EndpointConfigName=deployable(sm, s3, None))
    endpoint = wait_for_endpoint(sm, name)
    assert endpoint["EndpointStatus"] == "Failed"
    assert "did not pass the ping health check" in endpoint["FailureReason"]
    assert server_processes(localcloud.data_dir, name) == []
    with pytest.raises(ClientError) as excinfo:
        sm.update_endpoint(EndpointName=name, EndpointConfigName=deployable(sm, s3, "1"))
    assert error_of(excinfo)[:2] == (
        "ValidationException",
        f'Cannot update failed endpoint "{endpoint["EndpointArn"]}".',
    )
    sm.delete_endpoint(EndpointName=name)


def test_model_data_that_cannot_be_downloaded_fails_the_endpoint(clients):
    sm = clients["sagemaker"]
    model, config, name = unique("model-missing"), unique("config-missing"), unique("endpoint-missing")
    url = f"s3://{BUCKET}/models/{model}/model.tar.gz"
    sm.create_model(
        ModelName=model, ExecutionRoleArn=ROLE_ARN, PrimaryContainer={"Image": TEST_IMAGE, "ModelDataUrl": url}
    )
    sm.create_endpoint_config(
        EndpointConfigName=config,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": model,
                "ServerlessConfig": {"MemorySizeInMB": 1024, "MaxConcurrency": 1},
            }
        ],
    )
    sm.create_endpoint(EndpointName=name, EndpointConfigName=config)
    endpoint = wait_for_endpoint(sm, name)
    assert endpoint["EndpointStatus"] == "Failed"
    assert endpoint["FailureReason"].startswith(
        f'Failed to download model data for container "container_1" from URL: "{url}".'
    )
    sm.delete_endpoint(EndpointName=name)


# -- resources, tags, listings -----------------------------------------------------------------------------


def test_models_configs_tags_and_listings(clients):
    sm, s3 = clients["sagemaker"], clients["s3"]
    config = deployable(sm, s3, "5")
    described = sm.describe_endpoint_config(EndpointConfigName=config)
    model = described["ProductionVariants"][0]["ModelName"]
    assert described["ProductionVariants"][0]["InitialVariantWeight"] == 1.0
    model_arn = sm.describe_model(ModelName=model)["ModelArn"]
    assert model_arn == f"arn:aws:sagemaker:us-east-1:123456789012:model/{model}"

    sm.add_tags(ResourceArn=model_arn, Tags=[{"Key": "accuracy", "Value": "0.91"}, {"Key": "run", "Value": "a"}])
    sm.add_tags(ResourceArn=model_arn, Tags=[{"Key": "run", "Value": "b"}])
    assert sm.list_tags(ResourceArn=model_arn)["Tags"] == [
        {"Key": "accuracy", "Value": "0.91"},
        {"Key": "run", "Value": "b"},
    ]
    sm.delete_tags(ResourceArn=model_arn, TagKeys=["run"])
    assert sm.list_tags(ResourceArn=model_arn)["Tags"] == [{"Key": "accuracy", "Value": "0.91"}]

    for _ in range(2):
        deployable(sm, s3, "6")
    first = sm.list_models(NameContains="model-v6", MaxResults=1, SortBy="Name", SortOrder="Ascending")
    second = sm.list_models(
        NameContains="model-v6", MaxResults=1, SortBy="Name", SortOrder="Ascending", NextToken=first["NextToken"]
    )
    names = [first["Models"][0]["ModelName"], second["Models"][0]["ModelName"]]
    assert names == sorted(names) and "NextToken" not in second
    assert config in [c["EndpointConfigName"] for c in sm.list_endpoint_configs(MaxResults=100)["EndpointConfigs"]]

    sm.delete_endpoint_config(EndpointConfigName=config)
    sm.delete_model(ModelName=model)
    with pytest.raises(ClientError) as excinfo:
        sm.describe_model(ModelName=model)
    assert error_of(excinfo)[:2] == ("ValidationException", f'Could not find model "{model_arn}".')
    with pytest.raises(ClientError) as excinfo:
        sm.delete_endpoint_config(EndpointConfigName=config)
    assert error_of(excinfo)[1].startswith('Could not find endpoint configuration "arn:aws:sagemaker:us-east-1:')


# -- malformed requests ------------------------------------------------------------------------------------


def test_malformed_requests_get_aws_shaped_errors(localcloud, clients):
    sm = clients["sagemaker"]
    raw = localcloud.client("sagemaker", parameter_validation=False)
    base = training_job_request(unique("bad"), BUCKET, "images")

    with pytest.raises(ClientError) as excinfo:
        sm.describe_training_job(TrainingJobName="no-such-job")
    assert error_of(excinfo) == ("ValidationException", "Requested resource not found.", 400)

    with pytest.raises(ClientError) as excinfo:
        sm.create_training_job(**{**base, "TrainingJobName": "under_scores"})
    assert error_of(excinfo)[:2] == (
        "ValidationException",
        "1 validation error detected: Value 'under_scores' at 'trainingJobName' failed to satisfy constraint: "
        "Member must satisfy regular expression pattern: [a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}",
    )

    spec = {**base["AlgorithmSpecification"], "TrainingInputMode": "Stream"}
    with pytest.raises(ClientError) as excinfo:
        sm.create_training_job(**{**base, "AlgorithmSpecification": spec})
    assert error_of(excinfo)[1] == (
        "1 validation error detected: Value 'Stream' at 'algorithmSpecification.trainingInputMode' failed to "
        "satisfy constraint: Member must satisfy enum value set: [Pipe, File, FastFile]"
    )

    missing = {k: v for k, v in base.items() if k not in ("RoleArn", "AlgorithmSpecification")}
    with pytest.raises(ClientError) as excinfo:
        raw.create_training_job(**missing)
    assert error_of(excinfo)[:2] == (
        "ValidationException",
        "2 validation errors detected: Value null at 'roleArn' failed to satisfy constraint: Member must not be "
        "null; Value null at 'algorithmSpecification' failed to satisfy constraint: Member must not be null",
    )

    resources = {**base["ResourceConfig"], "InstanceCount": "1"}
    with pytest.raises(ClientError) as excinfo:
        raw.create_training_job(**{**base, "ResourceConfig": resources})
    assert error_of(excinfo) == ("SerializationException", "STRING_VALUE can not be converted to Integer", 400)

    spec = {**base["AlgorithmSpecification"], "TrainingImage": "public.ecr.aws/unknown/image:1"}
    with pytest.raises(ClientError) as excinfo:
        sm.create_training_job(**{**base, "AlgorithmSpecification": spec})
    assert error_of(excinfo)[0] == "ValidationException"
    assert "no training command for image 'public.ecr.aws/unknown/image:1'" in error_of(excinfo)[1]

    with pytest.raises(ClientError) as excinfo:
        sm.create_endpoint_config(
            EndpointConfigName=unique("config"),
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": "no-such-model",
                    "InstanceType": "ml.m5.large",
                    "InitialInstanceCount": 1,
                }
            ],
        )
    assert (
        error_of(excinfo)[1] == 'Could not find model "arn:aws:sagemaker:us-east-1:123456789012:model/no-such-model".'
    )

    with pytest.raises(ClientError) as excinfo:
        sm.create_endpoint(EndpointName=unique("endpoint"), EndpointConfigName="no-such-config")
    assert error_of(excinfo)[1] == (
        'Could not find endpoint configuration "arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/no-such-config".'
    )
    with pytest.raises(ClientError) as excinfo:
        sm.update_endpoint(EndpointName="no-such-endpoint", EndpointConfigName="no-such-config")
    assert (
        error_of(excinfo)[1]
        == 'Could not find endpoint "arn:aws:sagemaker:us-east-1:123456789012:endpoint/no-such-endpoint".'
    )

    with pytest.raises(ClientError) as excinfo:
        sm.describe_notebook_instance(NotebookInstanceName="nb")
    assert error_of(excinfo)[0] == "UnknownOperationException"

    with pytest.raises(ClientError) as excinfo:
        clients["sagemaker-runtime"].invoke_endpoint(EndpointName="bad_name", Body=b"x")
    assert error_of(excinfo)[:2] == (
        "ValidationError",
        "1 validation error detected: Value 'bad_name' at 'endpointName' failed to satisfy constraint: "
        "Member must satisfy regular expression pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9])*",
    )

    # A body that is not JSON at all, as a hand-written (but signed) client might send.
    request = urllib.request.Request(
        localcloud.url,
        data=b"{not json",
        headers=signed_headers(
            localcloud.url,
            b"{not json",
            {"X-Amz-Target": "SageMaker.DescribeModel", "Content-Type": "application/x-amz-json-1.1"},
        ),
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as http_error:
        urllib.request.urlopen(request, timeout=10)
    assert http_error.value.code == 400
    assert json.loads(http_error.value.read())["__type"] == "SerializationException"
