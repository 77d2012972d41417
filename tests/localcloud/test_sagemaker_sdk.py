"""localcloud driven as SageMaker users drive SageMaker: the SageMaker Python SDK (``Estimator.fit`` with logs,
``deploy``, ``Predictor``, ``TensorFlowPredictor``) and a training container read by the real
``sagemaker-training`` toolkit. Both live in ``.venv-sagemaker`` (their pins clash with Airflow's), which
``make setup`` creates; the test runs them as subprocesses against a localcloud of its own."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
from localcloud_fixtures import (
    COLOURS,
    IMAGES,
    ROLE_ARN,
    TEST_IMAGE,
    image_bytes,
    running_localcloud,
    training_job_request,
    upload_dataset,
    wait_for_job,
)

ROOT = Path(__file__).resolve().parents[2]
SDK_PYTHON = ROOT / ".venv-sagemaker" / "bin" / "python"
PROBE_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/tlpipe-toolkit-probe:latest"


@pytest.fixture(scope="module")
def sdk_cloud(tmp_path_factory):
    assert SDK_PYTHON.exists(), f"{SDK_PYTHON} is missing: `make setup` creates it"
    base = tmp_path_factory.mktemp("sdk-cloud")
    images = json.loads(IMAGES.read_text())
    # The probe image runs under the SDK's interpreter, where the toolkit is installed.
    images["images"].append(
        {"match": "tlpipe-toolkit-probe", "train": [str(SDK_PYTHON), "{project}/tests/containers/toolkit_probe.py"]}
    )
    (base / "images.json").write_text(json.dumps(images))
    with running_localcloud(base / "data", base / "localcloud.log", "--images", str(base / "images.json")) as cloud:
        s3 = cloud.client("s3")
        upload_dataset(s3, "sdk-bucket", "data")
        yield cloud


def _sdk_env(cloud) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW"))}
    return {
        **env,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": cloud.url,  # the SDK's S3 client too
        "TLPIPE_PROJECT_ROOT": str(ROOT),
        "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
    }


def test_estimator_fit_deploy_and_predictors(sdk_cloud, tmp_path):
    image = tmp_path / "green.png"
    image.write_bytes(image_bytes(COLOURS["green"]))
    r = subprocess.run(
        [str(SDK_PYTHON), str(ROOT / "tests/containers/sdk_client.py")]
        + [sdk_cloud.url, "sdk-bucket", TEST_IMAGE, ROLE_ARN, str(image)],
        capture_output=True,
        text=True,
        env=_sdk_env(sdk_cloud),
        timeout=600,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:] + sdk_cloud.log_tail()
    found = re.search(r"^RESULT (\{.*\})$", r.stdout, re.M)
    assert found, out[-5000:]
    result = json.loads(found.group(1))
    assert result["job_status"] == "Completed" and result["job"].startswith("sdk-estimator-")
    # fit(logs="All") streamed the container's log from CloudWatch Logs.
    assert "loaded 6 training images" in out and "training complete" in out
    assert result["model_data"] == f"s3://sdk-bucket/sdk-output/{result['job']}/output/model.tar.gz"
    assert 0.0 <= result["metrics"]["train:accuracy"] <= 1.0
    assert result["endpoint_status"] == "InService"
    # The model the estimator trained ("version": "sdk") answered, through both predictors.
    expected = {"predictions": [{"label": "green"}], "model_version": "sdk"}
    assert result["predict_bytes"] == expected and result["predict_tfs"] == expected


def test_the_training_toolkit_and_the_project_read_the_same_job(sdk_cloud):
    """Fine-tune hyperparameters as the SDK sends them (every value JSON-encoded, strings quoted) and as boto3
    callers send them (plain strings): the toolkit's decoding and the project's typed model agree."""
    from training.finetune.hyperparameters import parse_hyperparameters

    sm, s3 = sdk_cloud.client("sagemaker"), sdk_cloud.client("s3")
    request = training_job_request("toolkit-probe-1", "sdk-bucket", "data")
    request["AlgorithmSpecification"]["TrainingImage"] = PROBE_IMAGE
    sent = {
        "epochs_head": "3",
        "learning_rate_head": "0.01",
        "baseline_policy": json.dumps("best"),
        "augment": "false",
        "model_version": json.dumps("7"),
        "seed": "11",
    }
    request["HyperParameters"] = sent
    sm.create_training_job(**request)
    job = wait_for_job(sm, "toolkit-probe-1", timeout=180)
    assert job["TrainingJobStatus"] == "Completed", _job_log(sdk_cloud, "toolkit-probe-1")
    body = s3.get_object(Bucket="sdk-bucket", Key="data/output/toolkit-probe-1/output/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        views = json.loads(tar.extractfile("views.json").read())
    toolkit, ours = views["toolkit"], views["project"]
    typed = parse_hyperparameters(ours["hyperparameters"])
    assert sorted(toolkit["hyperparameters"]) == sorted(sent)
    for name, value in toolkit["hyperparameters"].items():
        assert getattr(typed, name) == value, name
    assert (typed.epochs_head, typed.baseline_policy, typed.augment, typed.model_version) == (3, "best", False, "7")
    assert toolkit["channels"] == ours["channels"] and sorted(ours["channels"]) == ["train", "validation"]
    for name, path in ours["channels"].items():
        assert path.endswith(f"/input/data/{name}")
    assert toolkit["model_dir"] == ours["model_dir"] and toolkit["output_data_dir"] == ours["output_data_dir"]
    assert toolkit["current_host"] == "algo-1" and toolkit["hosts"] == ["algo-1"]


def _job_log(cloud, job: str) -> str:
    logs = cloud.client("logs")
    group = "/aws/sagemaker/TrainingJobs"
    lines = []
    for stream in logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=job)["logStreams"]:
        events = logs.get_log_events(logGroupName=group, logStreamName=stream["logStreamName"])["events"]
        lines += [e["message"] for e in events]
    return "\n".join(lines[-60:])
