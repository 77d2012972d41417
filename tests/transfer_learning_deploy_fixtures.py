"""Test helpers of the deploy DAG: moto's server on loopback, clients on it, and the botocore hooks that
record every SageMaker request and stand in for what moto leaves out.

moto's SageMaker records calls and reports jobs Completed at once, without running them: it reports no
``FinalMetricDataList``. ``sagemaker_hooks`` adds one to DescribeTrainingJob answers (a botocore
``after-call`` hook on every SageMaker client the process creates, the provider's included) and records the
parameters of every SageMaker request before it is sent. moto's runtime answers InvokeEndpoint from a queue
of canned replies (``queue_predictions``).

    from transfer_learning_deploy_fixtures import moto_server   # module fixture: Moto(url, client(...))
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from dataclasses import dataclass, field

import pytest

REGION = "us-east-1"


@dataclass
class Moto:
    url: str

    def client(self, service: str):
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def queue_predictions(self, labels: list[str]) -> None:
        """The next InvokeEndpoint calls answer with these top-1 labels, in order, one per distinct body.

        moto's runtime remembers the answer it gave to each body, process-wide and across endpoints, so the
        answers earlier tests were given are forgotten first (the server runs in this process).
        """
        from moto.sagemakerruntime.models import sagemakerruntime_backends

        for regions in sagemakerruntime_backends.values():
            for backend in regions.values():
                backend.results.clear()
                backend.results_queue.clear()
        results = [
            {
                "Body": json.dumps(
                    {"predictions": [[{"label": label, "probability": 0.9}, {"label": "other", "probability": 0.1}]]}
                ),
                "ContentType": "application/json",
            }
            for label in labels
        ]
        body = json.dumps({"region": REGION, "results": results}).encode()
        req = urllib.request.Request(
            f"{self.url}/moto-api/static/sagemaker/endpoint-results",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(req).read()


@pytest.fixture(scope="module")
def moto_server():
    """moto's server on a free loopback port. Its state is the process's moto state, shared with other
    servers in the same process: tests use names of their own rather than resetting it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
        }.items():
            mp.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            mp.delenv(name, raising=False)
        try:
            yield Moto(url=f"http://{host}:{port}")
        finally:
            server.stop()


@dataclass
class SageMakerHooks:
    """What the hooks inject and what they saw."""

    metrics: dict[str, float] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)  # job name -> TrainingJobStatus to report
    requests: list[tuple[str, dict]] = field(default_factory=list)

    def sent(self, operation: str) -> list[dict]:
        return [params for op, params in self.requests if op == operation]

    def install(self, client) -> None:
        events = client.meta.events

        def record(params, model, **_):
            self.requests.append((model.name, json.loads(json.dumps(params, default=str))))

        def describe(parsed, **_):
            if "TrainingJobName" not in parsed:
                return
            if self.metrics:
                parsed["FinalMetricDataList"] = [{"MetricName": k, "Value": v} for k, v in self.metrics.items()]
            if parsed["TrainingJobName"] in self.status:
                parsed["TrainingJobStatus"] = self.status[parsed["TrainingJobName"]]

        events.register("provide-client-params.sagemaker.*", record)
        events.register("after-call.sagemaker.DescribeTrainingJob", describe)


@contextlib.contextmanager
def sagemaker_hooks(monkeypatch):
    """Install ``SageMakerHooks`` on every SageMaker client boto3 creates while the context is open."""
    import boto3.session

    hooks = SageMakerHooks()
    original = boto3.session.Session.client

    def client(self, *args, **kwargs):
        made = original(self, *args, **kwargs)
        if made.meta.service_model.service_name == "sagemaker":
            hooks.install(made)
        return made

    monkeypatch.setattr(boto3.session.Session, "client", client)
    yield hooks
