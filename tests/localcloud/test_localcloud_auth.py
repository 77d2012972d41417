"""localcloud's front door: SigV4 on every request, no CORS for foreign origins, no browser form uploads, and
training jobs and models that run only what the image map names."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError
from localcloud_fixtures import REGION, TEST_IMAGE, running_localcloud, signed_headers, training_job_request

BUCKET = "tlpipe-localcloud-auth"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def raw(url: str, body: bytes, headers: dict, method: str = "POST", path: str = "/"):
    """(status, headers, body) of one plain HTTP request, errors included."""
    request = urllib.request.Request(url + path, data=body if method != "GET" else None, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, dict(answer.headers.items()), answer.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers.items()), err.read()


def create_job_body(name: str, marker: Path) -> dict:
    request = training_job_request(name, BUCKET, "images")
    request["AlgorithmSpecification"]["ContainerEntrypoint"] = ["/bin/sh", "-c", f"id > {marker}"]
    return request


def client(url: str, service: str, key: str = "test", secret: str = "test", **config):
    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}, **config),
    )


def test_an_unsigned_training_job_with_a_command_is_refused_and_runs_nothing(localcloud_server, tmp_path):
    marker = tmp_path / "pwned"
    name = unique("unsigned")
    body = json.dumps(create_job_body(name, marker)).encode()
    status, headers, answer = raw(
        localcloud_server.url,
        body,
        {"X-Amz-Target": "SageMaker.CreateTrainingJob", "Content-Type": "application/x-amz-json-1.1"},
    )
    assert status == 403
    assert json.loads(answer)["__type"] == "MissingAuthenticationTokenException"
    # Signed with an unknown key, or with the right key and a wrong secret: refused the same way.
    for key, secret, code in (
        ("AKIAOTHER", "test", "UnrecognizedClientException"),
        ("test", "not-the-secret", "InvalidSignatureException"),
    ):
        headers = signed_headers(
            localcloud_server.url,
            body,
            {"X-Amz-Target": "SageMaker.CreateTrainingJob", "Content-Type": "application/x-amz-json-1.1"},
            key=key,
            secret=secret,
        )
        status, _, answer = raw(localcloud_server.url, body, headers)
        assert (status, json.loads(answer)["__type"]) == (403, code)
    with pytest.raises(ClientError) as missing:
        localcloud_server.client("sagemaker").describe_training_job(TrainingJobName=name)
    assert missing.value.response["Error"]["Message"] == "Requested resource not found."
    assert not marker.exists()


def test_a_signed_request_cannot_change_the_command_either(localcloud_server, tmp_path):
    sm = localcloud_server.client("sagemaker")
    marker = tmp_path / "pwned"
    name = unique("entrypoint")
    with pytest.raises(ClientError) as refused:
        sm.create_training_job(**create_job_body(name, marker))
    error = refused.value.response["Error"]
    assert error["Code"] == "ValidationException" and "ContainerEntrypoint is not accepted" in error["Message"]
    request = training_job_request(unique("arguments"), BUCKET, "images")
    request["AlgorithmSpecification"]["ContainerArguments"] = ["--evil"]
    with pytest.raises(ClientError, match="ContainerArguments is not accepted"):
        sm.create_training_job(**request)
    request = training_job_request(unique("preload"), BUCKET, "images")
    request["Environment"] = {"LD_PRELOAD": "/tmp/evil.so", "PYTHONSTARTUP": "/tmp/evil.py", "MY_SETTING": "1"}
    with pytest.raises(ClientError, match=r"LD_PRELOAD, PYTHONSTARTUP would change the command"):
        sm.create_training_job(**request)
    with pytest.raises(ClientError, match=r"PYTHONPATH would change the command"):
        sm.create_model(
            ModelName=unique("model"),
            ExecutionRoleArn="arn:aws:iam::123456789012:role/x",
            PrimaryContainer={"Image": TEST_IMAGE, "Environment": {"PYTHONPATH": "/tmp"}},
        )
    assert not marker.exists()
    with pytest.raises(ClientError, match="Requested resource not found"):
        sm.describe_training_job(TrainingJobName=name)


def test_an_image_map_entry_may_allow_its_own_entrypoint(tmp_path):
    from localcloud.images import ImageMap

    images = ImageMap([{"match": "debug-*", "train": ["python", "-c", "pass"], "allow": ["ContainerEntrypoint"]}])
    debug = images.resolve("123456789012.dkr.ecr.us-east-1.amazonaws.com/debug-tools:1")
    assert debug.refusal({"ContainerEntrypoint": ["sh"]}, {}) is None
    assert "ContainerArguments is not accepted" in debug.refusal({"ContainerArguments": ["x"]}, {})
    assert "LD_LIBRARY_PATH" in debug.refusal({}, {"LD_LIBRARY_PATH": "/x", "EPOCHS": "3"})
    assert images.resolve("tlpipe-sagemaker:1").refusal({}, {"EPOCHS": "3", "PYTHONUNBUFFERED": "1"}) is None
    with pytest.raises(ValueError, match="'allow' takes"):
        ImageMap([{"match": "x", "train": ["y"], "allow": ["Everything"]}])


@pytest.mark.parametrize(
    "service, call",
    [
        ("s3", lambda c: c.list_buckets()),
        ("sagemaker", lambda c: c.list_endpoints()),
        ("logs", lambda c: c.describe_log_groups()),
        ("sts", lambda c: c.get_caller_identity()),
        ("iam", lambda c: c.list_roles()),
    ],
)
def test_every_service_wants_the_configured_key(localcloud_server, service, call):
    url = localcloud_server.url
    call(client(url, service))  # the configured pair works
    codes = []
    for key, secret in (("AKIAOTHER", "test"), ("test", "wrong")):
        with pytest.raises(ClientError) as refused:
            call(client(url, service, key, secret))
        codes.append(
            (refused.value.response["ResponseMetadata"]["HTTPStatusCode"], refused.value.response["Error"]["Code"])
        )
    with pytest.raises(ClientError) as refused:
        call(
            boto3.client(
                service,
                endpoint_url=url,
                region_name=REGION,
                config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1}),
            )
        )
    codes.append(
        (refused.value.response["ResponseMetadata"]["HTTPStatusCode"], refused.value.response["Error"]["Code"])
    )
    expected = {
        "s3": ["InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"],
        "sagemaker": [
            "UnrecognizedClientException",
            "InvalidSignatureException",
            "MissingAuthenticationTokenException",
        ],
        "logs": ["UnrecognizedClientException", "InvalidSignatureException", "MissingAuthenticationTokenException"],
        "sts": ["InvalidClientTokenId", "SignatureDoesNotMatch", "MissingAuthenticationToken"],
        "iam": ["InvalidClientTokenId", "SignatureDoesNotMatch", "MissingAuthenticationToken"],
    }[service]
    assert codes == [(403, code) for code in expected]


def test_s3_keys_that_need_encoding_presigned_urls_and_a_stale_clock(localcloud_server, monkeypatch):
    s3 = client(localcloud_server.url, "s3", signature_version="s3v4", s3={"addressing_style": "path"})
    s3.create_bucket(Bucket=BUCKET)
    for key in ("a b/c+d=e~f.txt", "ünï/çødé", "q?x=1&y", "%41"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=key.encode())
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == key.encode()
    url = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "a b/c+d=e~f.txt"})
    with urllib.request.urlopen(url, timeout=30) as answer:
        assert answer.read() == b"a b/c+d=e~f.txt"
    with pytest.raises(urllib.error.HTTPError) as tampered:  # another key with the same signature
        urllib.request.urlopen(url.replace("c%2Bd", "c%2Be"), timeout=30)
    assert tampered.value.code == 403 and b"SignatureDoesNotMatch" in tampered.value.read()
    # A request signed 20 minutes ago (a replay, or a clock that is off) is refused.
    import datetime as dt

    import botocore.auth

    stale = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(minutes=20)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: stale)
    with pytest.raises(ClientError) as refused:
        s3.list_buckets()
    assert refused.value.response["Error"]["Code"] == "RequestTimeTooSkewed"


def test_browsers_get_no_cors_answers_and_no_form_uploads(localcloud_server):
    url = localcloud_server.url
    status, headers, _ = raw(
        url,
        b"",
        {
            "Origin": "http://attacker.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-amz-target",
        },
        method="OPTIONS",
    )
    assert status == 403
    assert not any(k.lower().startswith("access-control-") for k in headers)
    # A signed answer carries no CORS header for a foreign origin either (moto adds them to everything).
    body = b"{}"
    hdrs = signed_headers(
        url, body, {"X-Amz-Target": "SageMaker.ListEndpoints", "Content-Type": "application/x-amz-json-1.1"}
    )
    status, headers, _ = raw(url, body, {**hdrs, "Origin": "http://attacker.example"})
    assert status == 200 and not any(k.lower().startswith("access-control-") for k in headers)
    # An S3 form upload, as a page on any origin can post it: refused, nothing written.
    s3 = client(url, "s3", s3={"addressing_style": "path"})
    s3.create_bucket(Bucket=BUCKET)
    boundary = "xyzzy"
    form = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="key"\r\n\r\ntlpipe/pretrained/latest.json\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n'
        f'Content-Type: application/json\r\n\r\n{{"uri": "s3://evil/model"}}\r\n--{boundary}--\r\n'
    ).encode()
    status, headers, answer = raw(
        url,
        form,
        {"Content-Type": f"multipart/form-data; boundary={boundary}", "Origin": "http://attacker.example"},
        path=f"/{BUCKET}",
    )
    assert status == 403 and b"<Code>AccessDenied</Code>" in answer
    assert "Access-Control-Allow-Origin" not in headers
    with pytest.raises(ClientError):
        s3.head_object(Bucket=BUCKET, Key="tlpipe/pretrained/latest.json")


def test_a_configured_origin_gets_its_cors_answers(tmp_path):
    with running_localcloud(tmp_path / "data", tmp_path / "lc.log", "--cors-origin", "http://127.0.0.1:3000") as lc:
        preflight = {"Access-Control-Request-Method": "PUT", "Access-Control-Request-Headers": "authorization"}
        status, headers, _ = raw(lc.url, b"", {"Origin": "http://127.0.0.1:3000", **preflight}, method="OPTIONS")
        assert status == 200 and headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:3000"
        status, headers, _ = raw(lc.url, b"", {"Origin": "http://attacker.example", **preflight}, method="OPTIONS")
        assert status == 403 and "Access-Control-Allow-Origin" not in headers
        # Signing is still required of the allowed origin.
        status, headers, _ = raw(lc.url, b"", {"Origin": "http://127.0.0.1:3000"}, method="GET")
        assert status == 403 and headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:3000"
        ready = json.loads((tmp_path / "data" / "ready.json").read_text())
        assert (ready["access_key_id"], ready["secret_access_key"]) == ("test", "test")
        assert (tmp_path / "data" / "ready.json").stat().st_mode & 0o077 == 0


def test_localcloud_takes_its_key_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALCLOUD_ACCESS_KEY_ID", "AKIALOCAL")
    monkeypatch.setenv("LOCALCLOUD_SECRET_ACCESS_KEY", "s3cr3t-value")
    with running_localcloud(tmp_path / "data", tmp_path / "lc.log") as lc:
        ready = json.loads((tmp_path / "data" / "ready.json").read_text())
        assert (ready["access_key_id"], ready["secret_access_key"]) == ("AKIALOCAL", "s3cr3t-value")
        assert client(lc.url, "sts", "AKIALOCAL", "s3cr3t-value").get_caller_identity()["Account"]
        with pytest.raises(ClientError):
            client(lc.url, "sts").get_caller_identity()  # test/test is not accepted any more
    assert "s3cr3t-value" not in (tmp_path / "lc.log").read_text()


@pytest.mark.skipif(shutil.which("aws") is None, reason="the AWS CLI is not installed")
def test_the_aws_cli_works_with_the_configured_key(localcloud_server, tmp_path):
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin:" + str(Path(shutil.which("aws")).parent),
        "HOME": str(tmp_path),
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": REGION,
    }
    out = subprocess.run(
        ["aws", "--endpoint-url", localcloud_server.url, "sts", "get-caller-identity"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and json.loads(out.stdout)["Account"] == "123456789012", out.stderr
    wrong = subprocess.run(
        ["aws", "--endpoint-url", localcloud_server.url, "sagemaker", "list-endpoints"],
        env={**env, "AWS_SECRET_ACCESS_KEY": "wrong"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert wrong.returncode != 0 and "InvalidSignatureException" in wrong.stderr


def test_a_channel_key_that_leaves_the_channel_fails_the_job(localcloud_server):
    from localcloud_fixtures import upload_dataset, wait_for_job

    s3, sm = localcloud_server.client("s3"), localcloud_server.client("sagemaker")
    prefix = unique("planted")
    upload_dataset(s3, BUCKET, prefix, per_class=1)
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/train/../../../../escaped.txt", Body=b"owned")
    name = unique("traversal")
    sm.create_training_job(**training_job_request(name, BUCKET, prefix))
    job = wait_for_job(sm, name)
    assert job["TrainingJobStatus"] == "Failed"
    assert f"object key '{prefix}/train/../../../../escaped.txt'" in job["FailureReason"]
    assert "outside the channel directory" in job["FailureReason"]
    assert not list(localcloud_server.data_dir.rglob("escaped.txt"))
    assert not list(localcloud_server.data_dir.parent.rglob("escaped.txt"))
