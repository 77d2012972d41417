"""Shared localcloud fixtures: a session-wide server on a free port, and helpers to start more.

Import the fixtures into a test module (``from localcloud_fixtures import localcloud, localcloud_server``;
pytest puts ``tests/`` on ``sys.path``) or into a conftest. ``localcloud_server`` is the session-wide server;
``localcloud`` is the same server with the AWS environment (``AWS_ENDPOINT_URL``, credentials, region) and
the Airflow connection ``aws_default`` pointing at it for the duration of the test.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from localcloud.server import wait_ready

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "tests" / "containers" / "images.json"
TEST_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/tlpipe-localcloud-test:latest"
ROLE_ARN = "arn:aws:iam::123456789012:role/SageMakerExecution"
REGION = "us-east-1"
COLOURS = {"red": (230, 20, 20), "green": (20, 200, 40), "blue": (20, 30, 230)}


@dataclass
class Running:
    url: str
    data_dir: Path
    proc: subprocess.Popen
    log_path: Path

    def client(self, service: str, **config):
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(**{"retries": {"max_attempts": 3, "mode": "standard"}, **config}),
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"localcloud did not stop within {timeout}s:\n{self.log_tail()}")
        return self.proc.returncode


def start_localcloud(data_dir: Path, log_path: Path, *extra: str) -> Running:
    """Start ``python -m localcloud`` on a free port with the test image map and wait until it is ready."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "localcloud",
                "--port",
                "0",
                "--data-dir",
                str(data_dir),
                "--images",
                str(IMAGES),
                "--stop-grace",
                "5",
                "--health-timeout",
                "60",
                "--snapshot-interval",
                "1",
                *extra,
            ],
            cwd=str(ROOT),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 90
    while True:
        try:
            info = wait_ready(data_dir, timeout=0.5, pid=proc.pid)
            break
        except TimeoutError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"localcloud did not start:\n{log_path.read_text(errors='replace')}") from None
    return Running(url=info["url"], data_dir=data_dir, proc=proc, log_path=log_path)


@contextlib.contextmanager
def running_localcloud(data_dir: Path, log_path: Path, *extra: str):
    cloud = start_localcloud(data_dir, log_path, *extra)
    try:
        yield cloud
    finally:
        cloud.stop()


def aws_environment(url: str) -> dict[str, str]:
    connection = {
        "conn_type": "aws",
        "login": "test",
        "password": "test",
        "extra": {"endpoint_url": url, "region_name": REGION},
    }
    return {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": url,
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
    }


@pytest.fixture(scope="session")
def localcloud_server(tmp_path_factory):
    """One localcloud for the whole session, on a free port, stopped (with its children) at the end."""
    base = tmp_path_factory.mktemp("localcloud")
    with running_localcloud(base / "data", base / "localcloud.log") as cloud:
        yield cloud


@pytest.fixture
def localcloud(localcloud_server, monkeypatch):
    """The session's localcloud, with the AWS environment and ``AIRFLOW_CONN_AWS_DEFAULT`` pointing at it.

    The variables are set for the requesting test only: a session-wide ``AWS_ENDPOINT_URL`` would send other
    tests' clients (moto's in-process mocks among them) here too.
    """
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in aws_environment(localcloud_server.url).items():
        monkeypatch.setenv(name, value)
    return localcloud_server


def signed_headers(
    url: str,
    body: bytes,
    headers: dict,
    service: str = "sagemaker",
    method: str = "POST",
    key: str = "test",
    secret: str = "test",
) -> dict:
    """``headers`` plus a SigV4 signature (localcloud's test key by default), as any AWS SDK would add them."""
    from botocore.auth import S3SigV4Auth, SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(
        method=method, url=url if "/" in url[len("http://") :] else url + "/", data=body, headers=headers
    )
    signer = S3SigV4Auth if service == "s3" else SigV4Auth
    signer(Credentials(key, secret), service, REGION).add_auth(request)
    return dict(request.headers.items())


# -- data helpers ----------------------------------------------------------------------------------------------


def image_bytes(colour: tuple[int, int, int], fmt: str = "PNG", size: int = 24) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), colour)
    # A little structure, so the images are not single-colour files.
    ImageDraw.Draw(img).rectangle([size // 4, size // 4, size // 2, size // 2], outline=(255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def upload_dataset(s3, bucket: str, prefix: str, per_class: int = 2) -> None:
    """An ImageFolder dataset with ``train`` and ``validation`` splits of coloured PNG and JPEG images."""
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=bucket)
    for split in ("train", "validation"):
        for label, colour in COLOURS.items():
            for i in range(per_class):
                fmt = "PNG" if i % 2 == 0 else "JPEG"
                s3.put_object(
                    Bucket=bucket, Key=f"{prefix}/{split}/{label}/{i}.{fmt.lower()}", Body=image_bytes(colour, fmt)
                )


def training_job_request(name: str, bucket: str, prefix: str, **hyperparameters: str) -> dict:
    return {
        "TrainingJobName": name,
        "RoleArn": ROLE_ARN,
        "AlgorithmSpecification": {
            "TrainingImage": TEST_IMAGE,
            "TrainingInputMode": "File",
            "MetricDefinitions": [
                {"Name": "validation:accuracy", "Regex": r"accuracy=([0-9.]+)"},
                {"Name": "train:loss", "Regex": r"loss=([0-9.]+)"},
            ],
        },
        "HyperParameters": {"epochs": "2", **hyperparameters},
        "InputDataConfig": [
            {
                "ChannelName": channel,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": f"s3://{bucket}/{prefix}/{channel}",
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
            }
            for channel in ("train", "validation")
        ],
        "OutputDataConfig": {"S3OutputPath": f"s3://{bucket}/{prefix}/output"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
    }


def wait_for_job(sm, name: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = sm.describe_training_job(TrainingJobName=name)
        if job["TrainingJobStatus"] not in ("InProgress", "Stopping"):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"training job {name} still {job['TrainingJobStatus']} after {timeout}s")
        time.sleep(0.2)


def wait_for_endpoint(sm, name: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        endpoint = sm.describe_endpoint(EndpointName=name)
        if endpoint["EndpointStatus"] not in ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting"):
            return endpoint
        if time.monotonic() > deadline:
            raise AssertionError(f"endpoint {name} still {endpoint['EndpointStatus']} after {timeout}s")
        time.sleep(0.2)
