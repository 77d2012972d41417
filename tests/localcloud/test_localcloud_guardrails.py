"""Deployment guardrails on localcloud: UpdateEndpoint's DeploymentConfig shifts traffic in its steps,
CloudWatch alarms on the endpoint's metrics roll a bad model back, and a client never sees a failed request."""

from __future__ import annotations

import datetime
import threading
import time

import pytest
from botocore.exceptions import ClientError
from localcloud_fixtures import COLOURS, image_bytes, wait_for_endpoint
from test_localcloud_api import deployable, ensure_bucket, error_of, unique

VARIANT = "AllTraffic"


@pytest.fixture(scope="module")
def clients(localcloud_server):
    names = ("s3", "sagemaker", "sagemaker-runtime", "cloudwatch")
    out = {name: localcloud_server.client(name) for name in names}
    # One attempt per request: a retry would hide a failed invocation from the client's count.
    out["once"] = localcloud_server.client("sagemaker-runtime", retries={"max_attempts": 1, "mode": "standard"})
    ensure_bucket(out["s3"])
    return out


class Client(threading.Thread):
    """Sends requests one after another until stopped; records (time, model version or error)."""

    def __init__(self, runtime, endpoint: str):
        super().__init__(daemon=True)
        self.runtime, self.endpoint = runtime, endpoint
        self.answers: list[tuple[float, str]] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.body = image_bytes(COLOURS["red"])

    def run(self) -> None:
        import json

        while not self.stop.is_set():
            try:
                response = self.runtime.invoke_endpoint(
                    EndpointName=self.endpoint, ContentType="application/x-image", Body=self.body
                )
                self.answers.append((time.monotonic(), json.loads(response["Body"].read())["model_version"]))
            except Exception as err:  # every failure counts
                self.failures.append(repr(err))


def latency_alarm(cw, endpoint: str, threshold_ms: float = 100) -> str:
    name = unique("latency")
    cw.put_metric_alarm(
        AlarmName=name,
        Namespace="AWS/SageMaker",
        MetricName="ModelLatency",
        Dimensions=[{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": VARIANT}],
        ExtendedStatistic="p99",
        Period=10,
        EvaluationPeriods=1,
        Threshold=threshold_ms * 1000,  # ModelLatency is in microseconds
        ComparisonOperator="GreaterThanThreshold",
        TreatMissingData="notBreaching",
    )
    return name


def live_endpoint(clients, version: str) -> str:
    sm, s3 = clients["sagemaker"], clients["s3"]
    endpoint = unique("guarded")
    sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=deployable(sm, s3, version))
    assert wait_for_endpoint(sm, endpoint)["EndpointStatus"] == "InService"
    return endpoint


def blue_green(routing: dict, alarms: list[str], termination: int = 0) -> dict:
    return {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": routing,
            "TerminationWaitInSeconds": termination,
            "MaximumExecutionTimeoutInSeconds": 600,
        },
        **({"AutoRollbackConfiguration": {"Alarms": [{"AlarmName": a} for a in alarms]}} if alarms else {}),
    }


def statuses_while_updating(sm, endpoint: str) -> list[str]:
    seen: list[str] = []
    while True:
        found = sm.describe_endpoint(EndpointName=endpoint)
        for variant in (found.get("PendingDeploymentSummary") or {}).get("ProductionVariants", []):
            for status in variant.get("VariantStatus", []):
                text = f"{status['Status']}: {status.get('StatusMessage', '')}"
                if not seen or seen[-1] != text:
                    seen.append(text)
        if found["EndpointStatus"] not in ("Updating", "RollingBack"):
            return seen
        time.sleep(0.2)


def test_canary_with_a_slow_model_rolls_back_and_no_request_fails(clients):
    sm, cw = clients["sagemaker"], clients["cloudwatch"]
    endpoint = live_endpoint(clients, "1")
    old_config = sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    alarm = latency_alarm(cw, endpoint)
    slow = deployable(sm, clients["s3"], "2", env={"SERVE_DELAY_SECONDS": "0.3"})
    client = Client(clients["once"], endpoint)
    client.start()
    try:
        time.sleep(1)
        canary = {
            "Type": "CANARY",
            "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 25},
            "WaitIntervalInSeconds": 60,
        }
        sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=slow, DeploymentConfig=blue_green(canary, [alarm]))
        seen = statuses_while_updating(sm, endpoint)
        rolled_back_at = time.monotonic()
        found = sm.describe_endpoint(EndpointName=endpoint)
        time.sleep(2)
    finally:
        client.stop.set()
        client.join(timeout=30)

    assert found["EndpointStatus"] == "InService"
    assert found["EndpointConfigName"] == old_config
    assert alarm in found["FailureReason"] and "ALARM" in found["FailureReason"], found["FailureReason"]
    assert found["LastDeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]["Type"] == "CANARY"
    assert any("25% of the traffic" in s for s in seen), seen
    assert not any("100%" in s for s in seen), seen  # it never went past the canary

    assert client.failures == []
    versions = [v for _, v in client.answers]
    assert "2" in versions  # the canary took a share of the traffic ...
    assert versions.count("1") > versions.count("2")  # ... the smaller one
    after = [v for t, v in client.answers if t > rolled_back_at]
    assert after and set(after) == {"1"}  # and the old model answers everything once it rolled back


def test_linear_update_completes_in_its_steps(clients):
    sm, cw = clients["sagemaker"], clients["cloudwatch"]
    endpoint = live_endpoint(clients, "1")
    alarm = latency_alarm(cw, endpoint, threshold_ms=5000)
    config = deployable(sm, clients["s3"], "2")
    client = Client(clients["once"], endpoint)
    client.start()
    try:
        linear = {
            "Type": "LINEAR",
            "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 50},
            "WaitIntervalInSeconds": 3,
        }
        sm.update_endpoint(
            EndpointName=endpoint, EndpointConfigName=config, DeploymentConfig=blue_green(linear, [alarm], 1)
        )
        seen = statuses_while_updating(sm, endpoint)
        done_at = time.monotonic()
        time.sleep(1)
    finally:
        client.stop.set()
        client.join(timeout=30)

    found = sm.describe_endpoint(EndpointName=endpoint)
    assert found["EndpointStatus"] == "InService" and found["EndpointConfigName"] == config
    assert "FailureReason" not in found
    steps = [s for s in seen if "of the traffic on the new fleet" in s]
    assert [s.split(": ")[1].split("%")[0] for s in steps] == ["50", "100"], seen
    assert client.failures == []
    versions = [v for _, v in client.answers]
    assert {"1", "2"} <= set(versions)  # both answered while the traffic was split
    assert {v for t, v in client.answers if t > done_at} == {"2"}

    # The invocations are CloudWatch metrics of the endpoint's variant.
    now = datetime.datetime.now(datetime.timezone.utc)
    dims = [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": VARIANT}]
    deadline = time.monotonic() + 30
    while True:
        points = cw.get_metric_statistics(
            Namespace="AWS/SageMaker",
            MetricName="Invocations",
            Dimensions=dims,
            StartTime=now - datetime.timedelta(minutes=10),
            EndTime=now + datetime.timedelta(minutes=1),
            Period=60,
            Statistics=["Sum"],
        )["Datapoints"]
        if sum(p["Sum"] for p in points) >= len(client.answers) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert sum(p["Sum"] for p in points) >= len(client.answers)


def test_deployment_config_is_checked(clients):
    sm = clients["sagemaker"]
    endpoint = live_endpoint(clients, "1")
    config = deployable(sm, clients["s3"], "2")
    too_big = {"Type": "CANARY", "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 60}, "WaitIntervalInSeconds": 1}
    with pytest.raises(ClientError) as err:
        sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=config, DeploymentConfig=blue_green(too_big, []))
    code, message, _ = error_of(err)
    assert code == "ValidationException" and "50%" in message

    # An alarm that does not exist rolls the update back before any traffic moves.
    all_at_once = {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 1}
    sm.update_endpoint(
        EndpointName=endpoint, EndpointConfigName=config, DeploymentConfig=blue_green(all_at_once, ["no-such-alarm"])
    )
    found = wait_for_endpoint(sm, endpoint)
    assert found["EndpointStatus"] == "InService" and found["EndpointConfigName"] != config
    assert "no-such-alarm" in found["FailureReason"]
