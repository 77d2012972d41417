"""Data capture on localcloud: an endpoint config's DataCaptureConfig writes the sampled requests and responses
to S3 as SageMaker's JSON Lines files."""

from __future__ import annotations

import base64
import json
import re
import time

from localcloud_fixtures import COLOURS, ROLE_ARN, TEST_IMAGE, image_bytes, wait_for_endpoint
from test_localcloud_api import BUCKET, ensure_bucket, model_tarball, unique

KEY = re.compile(
    r"^capture/(?P<endpoint>[^/]+)/AllTraffic/\d{4}/\d{2}/\d{2}/\d{2}/\d{2}-\d{2}-\d{3}-[0-9a-f-]{36}\.jsonl$"
)


def captured_endpoint(sm, s3, sampling: int, enable: bool = True) -> str:
    ensure_bucket(s3)
    model = unique("model-capture")
    url = model_tarball(s3, f"models/{model}/model.tar.gz", "7")
    sm.create_model(
        ModelName=model, ExecutionRoleArn=ROLE_ARN, PrimaryContainer={"Image": TEST_IMAGE, "ModelDataUrl": url}
    )
    config = unique("config-capture")
    sm.create_endpoint_config(
        EndpointConfigName=config,
        ProductionVariants=[
            {"VariantName": "AllTraffic", "ModelName": model, "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}
        ],
        DataCaptureConfig={
            "EnableCapture": enable,
            "InitialSamplingPercentage": sampling,
            "DestinationS3Uri": f"s3://{BUCKET}/capture",
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
        },
    )
    endpoint = unique("captured")
    sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=config)
    assert wait_for_endpoint(sm, endpoint)["EndpointStatus"] == "InService"
    return endpoint


def captured_lines(s3, endpoint: str, want: int, timeout: float = 30) -> tuple[list[str], list[dict]]:
    deadline = time.monotonic() + timeout
    while True:
        listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"capture/{endpoint}/").get("Contents", [])
        keys = [o["Key"] for o in listed]
        lines = [
            json.loads(line)
            for key in keys
            for line in s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode().splitlines()
        ]
        if len(lines) >= want or time.monotonic() > deadline:
            return keys, lines
        time.sleep(0.5)


def test_captured_requests_and_responses_land_in_s3_in_sagemakers_format(localcloud_server):
    sm, s3 = localcloud_server.client("sagemaker"), localcloud_server.client("s3")
    runtime = localcloud_server.client("sagemaker-runtime")
    endpoint = captured_endpoint(sm, s3, sampling=100)
    summary = sm.describe_endpoint(EndpointName=endpoint)["DataCaptureConfig"]
    assert summary == {
        "EnableCapture": True,
        "CaptureStatus": "Started",
        "CurrentSamplingPercentage": 100,
        "DestinationS3Uri": f"s3://{BUCKET}/capture",
    }

    image = image_bytes(COLOURS["green"])
    as_json = json.dumps({"instances": [{"b64": base64.b64encode(image).decode()}]})
    answers = [
        runtime.invoke_endpoint(EndpointName=endpoint, ContentType="application/x-image", Body=image)["Body"].read(),
        runtime.invoke_endpoint(EndpointName=endpoint, ContentType="application/json", Body=as_json)["Body"].read(),
    ]
    keys, lines = captured_lines(s3, endpoint, want=2)

    assert keys and all(KEY.match(k) and KEY.match(k)["endpoint"] == endpoint for k in keys), keys
    assert len(lines) == 2
    by_type = {line["captureData"]["endpointInput"]["observedContentType"]: line for line in lines}
    raw, js = by_type["application/x-image"], by_type["application/json"]
    # An image is base64; a JSON body (a type the header lists) is its text.
    assert raw["captureData"]["endpointInput"]["encoding"] == "BASE64"
    assert base64.b64decode(raw["captureData"]["endpointInput"]["data"]) == image
    assert js["captureData"]["endpointInput"] == {
        "observedContentType": "application/json",
        "mode": "INPUT",
        "data": as_json,
        "encoding": "JSON",
    }
    for line, answer in zip((raw, js), answers):
        output = line["captureData"]["endpointOutput"]
        assert (output["mode"], output["encoding"], output["observedContentType"]) == (
            "OUTPUT",
            "JSON",
            "application/json",
        )
        assert json.loads(output["data"]) == json.loads(answer)
        assert line["eventVersion"] == "0"
        assert re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$", line["eventMetadata"]["inferenceTime"])
        assert len(line["eventMetadata"]["eventId"]) == 36


def test_nothing_is_captured_when_capture_is_off(localcloud_server):
    sm, s3 = localcloud_server.client("sagemaker"), localcloud_server.client("s3")
    runtime = localcloud_server.client("sagemaker-runtime")
    endpoint = captured_endpoint(sm, s3, sampling=100, enable=False)
    assert sm.describe_endpoint(EndpointName=endpoint)["DataCaptureConfig"]["CaptureStatus"] == "Stopped"
    for _ in range(3):
        runtime.invoke_endpoint(
            EndpointName=endpoint, ContentType="application/x-image", Body=image_bytes(COLOURS["red"])
        )
    time.sleep(3)  # longer than the capture's flush interval
    assert captured_lines(s3, endpoint, want=1, timeout=0)[1] == []
