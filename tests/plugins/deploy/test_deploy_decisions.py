"""The deploy DAG's decisions (inputs, training attempts, gate, verify, rollback, retention, lock) and the code
that carries them out against SageMaker and S3 (moto's server; botocore's Stubber where moto has no API)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import datetime, timedelta, timezone

import pytest
from botocore.stub import Stubber
from transfer_learning_deploy_fixtures import sagemaker_hooks

from plugins.tlpipe.deploy import closing, steps
from plugins.tlpipe.deploy import decisions as d
from plugins.tlpipe.deploy.lock import EndpointLock, EndpointLocked, decide

EVENT = {
    "model_uri": "s3://b/p/pretrained/aa/model.tar.gz",
    "model_sha256": "aa" * 32,
    "manifest_uri": "s3://b/p/pretrained/aa/manifest.json",
    "metrics_uri": "s3://b/p/pretrained/aa/metrics.json",
    "domain_train_uri": "s3://b/p/domain/f00d1234/train/",
    "domain_validation_uri": "s3://b/p/domain/f00d1234/validation/",
    "domain_classes": ["x", "y"],
    "dataset_fingerprint": "f00d1234",
    "manifest_sha256": "m" * 64,
    "checkpoint_uri": "/c/best",
    "epoch": 3,
    "val_accuracy": 0.7,
    "training_params": {},
    "training_key": "k",
    "dag_id": "general_pretraining",
    "run_id": "r1",
}
NO_OVERRIDES = {"base_model_uri": "", "domain_dataset_uri": ""}
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


# -- inputs ---------------------------------------------------------------------------------------------------
def test_inputs_come_from_the_event_then_latest_then_params():
    from_event = d.resolve_inputs(NO_OVERRIDES, EVENT, None)
    assert from_event.source == "asset-event" and from_event.model_uri == EVENT["model_uri"]
    assert from_event.dataset_fingerprint == "f00d1234" and from_event.model_sha256 == EVENT["model_sha256"]

    latest = dict(EVENT, model_uri="s3://b/p/pretrained/bb/model.tar.gz")
    from_latest = d.resolve_inputs(NO_OVERRIDES, None, latest)
    assert from_latest.source == "latest" and from_latest.model_uri.endswith("/bb/model.tar.gz")

    mixed = d.resolve_inputs({"base_model_uri": "s3://o/m.tar.gz", "domain_dataset_uri": ""}, EVENT, None)
    assert mixed.source == "params" and mixed.model_uri == "s3://o/m.tar.gz"
    assert mixed.model_sha256 is None  # not the event's model any more
    assert mixed.domain_train_uri == EVENT["domain_train_uri"] and mixed.dataset_fingerprint == "f00d1234"

    explicit = d.resolve_inputs(
        {"base_model_uri": "s3://o/m.tar.gz", "domain_dataset_uri": "s3://o/domain/beef5678"}, None, None
    )
    assert explicit.domain_train_uri == "s3://o/domain/beef5678/train/"
    assert explicit.domain_validation_uri == "s3://o/domain/beef5678/validation/"
    assert explicit.dataset_fingerprint == "beef5678" and explicit.domain_classes == []


def test_inputs_refuse_nothing_or_a_malformed_event():
    with pytest.raises(ValueError, match="nothing to fine-tune"):
        d.resolve_inputs(NO_OVERRIDES, None, None)
    with pytest.raises(ValueError, match="not a pretrained-model event"):
        d.resolve_inputs(NO_OVERRIDES, {"model_uri": "s3://b/m.tar.gz"}, None)


def test_event_extra_reads_the_triggering_asset_events_accessor():
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    def event(name, extra, minute):
        return AssetEventDagRunReferenceResult(
            asset={"name": name, "uri": f"s3://b/{name}", "extra": {}},
            extra=extra,
            source_task_id="t",
            source_dag_id="g",
            source_run_id="r",
            source_map_index=-1,
            source_aliases=[],
            timestamp=T0 + timedelta(minutes=minute),
        )

    events = TriggeringAssetEventsAccessor.build(
        [
            event("pretrained-model", {"model_uri": "old"}, 1),
            event("other", {"model_uri": "no"}, 2),
            event("pretrained-model", {"model_uri": "new"}, 3),
        ]
    )
    assert d.event_extra(events) == {"model_uri": "new"}
    assert d.event_extra(TriggeringAssetEventsAccessor.build([])) is None
    assert d.event_extra(None) is None


# -- training attempts and metrics ----------------------------------------------------------------------------
NAMES = ["j", "j-r2", "j-r3"]


@pytest.mark.parametrize(
    "statuses, action, name",
    [
        ([None, None, None], "create", "j"),
        (["Completed", None, None], "reuse", "j"),
        (["InProgress", None, None], "wait", "j"),
        (["Stopping", None, None], "wait", "j"),
        (["Failed", None, None], "create", "j-r2"),
        (["Stopped", "Failed", None], "create", "j-r3"),
        (["Failed", "InProgress", None], "wait", "j-r2"),
        (["Failed", "Completed", None], "reuse", "j-r2"),
    ],
)
def test_training_attempt_plan(statuses, action, name):
    plan = d.plan_training_job(NAMES, statuses)
    assert (plan.action, plan.name) == (action, name)
    assert name in plan.reason


def test_training_attempts_run_out():
    with pytest.raises(RuntimeError, match="attempt names are used"):
        d.plan_training_job(NAMES, ["Failed", "Failed", "Failed"])


def test_final_metrics_keep_finite_values():
    job = {
        "FinalMetricDataList": [
            {"MetricName": "validation:accuracy", "Value": 0.75},
            {"MetricName": "train:loss", "Value": float("nan")},
            {"MetricName": "broken"},
        ]
    }
    assert d.final_metrics(job) == {"validation:accuracy": 0.75}
    assert d.final_metrics({}) == {}


# -- gate -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "accuracy, live, deploy, words",
    [
        (0.80, None, True, ["no model is live"]),
        (0.80, 0.75, True, [">= the live model"]),
        (0.75, 0.75, True, [">= the live model"]),  # a tie deploys
        (0.55, None, False, ["below the threshold 0.6000"]),
        (0.70, 0.72, False, ["below the live model live-m's 0.7200"]),
        (0.50, 0.72, False, ["threshold", "live model"]),
    ],
)
def test_quality_gate(accuracy, live, deploy, words):
    decision = d.quality_gate({"validation:accuracy": accuracy}, 0.6, live, "live-m" if live is not None else None)
    assert decision.deploy is deploy and decision.accuracy == accuracy
    assert decision.reason.startswith("deploying" if deploy else "not deploying")
    for word in words:
        assert word in decision.reason


def test_quality_gate_without_the_metric_or_the_live_tag():
    with pytest.raises(d.MissingMetric, match="validation:accuracy"):
        d.quality_gate({"train:loss": 0.1}, 0.5)
    untagged = d.quality_gate({"validation:accuracy": 0.9}, 0.5, None, "old-model")
    assert untagged.deploy and "has no accuracy tag" in untagged.reason
    assert d.live_accuracy({"accuracy": "0.8"}) == 0.8
    assert d.live_accuracy({"accuracy": "n/a"}) is None and d.live_accuracy({}) is None


def _job_metrics(transfer: float, scratch: float, written: str) -> dict:
    kept = scratch if written == "scratch" else transfer
    return {
        "validation:accuracy": kept,
        "transfer:validation:accuracy": transfer,
        "scratch:validation:accuracy": scratch,
        "selected:scratch": float(written == "scratch"),
    }


@pytest.mark.parametrize(
    "policy, transfer, scratch, written, deploy, kind, words",
    [
        # transfer within the margin: transfer ships whatever the policy
        ("best", 0.905, 0.91, "transfer", True, "transfer", ["transfer holds"]),
        # transfer loses: the better model ships, and the reason says by how much and why
        ("best", 0.72, 0.93, "scratch", True, "scratch", ["loses by 0.2100", "scratch baseline (policy best)"]),
        ("prefer_transfer", 0.72, 0.93, "transfer", True, "transfer", ["loses by 0.2100", "anyway"]),
        ("fail", 0.72, 0.93, "transfer", False, "transfer", ["refusing to ship (policy fail)"]),
        # a job run under another policy wrote the model this one would not ship
        ("prefer_transfer", 0.72, 0.93, "scratch", False, "scratch", ["wrote its scratch model", "ships the transfer"]),
    ],
)
def test_the_gate_judges_transfer_against_its_scratch_baseline(policy, transfer, scratch, written, deploy, kind, words):
    decision = d.quality_gate(_job_metrics(transfer, scratch, written), 0.6, baseline_policy=policy)
    assert decision.deploy is deploy and decision.model_kind == kind
    assert decision.accuracy == (scratch if written == "scratch" else transfer)
    assert decision.baseline["transfer_accuracy"] == transfer and decision.baseline["scratch_accuracy"] == scratch
    assert decision.baseline["transfer_lost"] is (scratch - transfer > 0.01)
    for word in words:
        assert word in decision.reason
    if deploy:
        assert decision.reason.startswith(f"deploying the {kind} model")


def test_the_baseline_verdict_reaches_the_run_summary():
    decision = d.quality_gate(_job_metrics(0.72, 0.93, "scratch"), 0.6)
    record = {
        "status": "deployed",
        "reason": decision.reason,
        "endpoint": {"name": "e"},
        "endpoint_config": {"name": "c"},
        "training_job": {"name": "j"},
        "metrics": {"gate": decision.as_dict(), "smoke_test": {}, "training": _job_metrics(0.72, 0.93, "scratch")},
    }
    summary = d.run_summary(record, None)
    assert summary["model_kind"] == "scratch" and "loses by 0.2100" in summary["baseline"]
    assert summary["scratch_accuracy"] == 0.93


def test_without_a_baseline_the_gate_is_unchanged():
    decision = d.quality_gate({"validation:accuracy": 0.8}, 0.6)
    assert decision.baseline is None and decision.model_kind == "transfer" and decision.deploy


# -- endpoint plan, verify, rollback --------------------------------------------------------------------------
def ep(status, config, reason=None):
    out = {"EndpointName": "e", "EndpointStatus": status, "EndpointConfigName": config}
    if reason:
        out["FailureReason"] = reason
    return out


def test_endpoint_plan():
    assert d.plan_endpoint("e", None) == d.EndpointPlan("create", "e", None, d.plan_endpoint("e", None).reason)
    update = d.plan_endpoint("e", ep("InService", "old"))
    assert (update.action, update.previous_config) == ("update", "old")
    with pytest.raises(d.EndpointBusy, match="Updating"):
        d.plan_endpoint("e", ep("Updating", "old"))
    with pytest.raises(d.EndpointBusy, match="image not found"):
        d.plan_endpoint("e", ep("Failed", "old", "image not found"))


def test_verify_live_config():
    assert d.verify_live_config("e", ep("InService", "new"), "new").ok
    kept_old = d.verify_live_config("e", ep("InService", "old", "new variant failed health check"), "new")
    assert not kept_old.ok and "serves old, not the new new" in kept_old.reason and "health check" in kept_old.reason
    assert not d.verify_live_config("e", ep("Updating", "old"), "new").ok
    assert not d.verify_live_config("e", None, "new").ok


@pytest.mark.parametrize(
    "description, previous, action, target",
    [
        (ep("InService", "new"), "old", "update", "old"),
        (ep("InService", "old"), "old", "none", "old"),  # SageMaker already kept the old config
        (ep("Failed", "new"), "old", "recreate", "old"),
        (ep("InService", "new"), None, "delete", None),  # this run created the endpoint
        (ep("Failed", "new"), None, "delete", None),
        (ep("InService", "someone-else"), None, "none", None),  # never delete an endpoint this run did not make
        (ep("Updating", "new"), "old", "wait", None),
        (None, None, "none", None),
        (None, "old", "none", None),
    ],
)
def test_rollback_plan(description, previous, action, target):
    plan = d.plan_rollback("e", description, previous, "new")
    assert (plan.action, plan.target_config) == (action, target)


# -- retention ------------------------------------------------------------------------------------------------
def test_retention_keeps_newest_and_protected():
    items = [d.Resource(f"c{i}", T0 + timedelta(hours=i)) for i in range(6)]
    plan = d.plan_retention(items, 2, protected=["c0", None, "c3"])
    assert plan.keep == ["c5", "c4", "c3", "c0"] and plan.delete == ["c2", "c1"]
    assert d.plan_retention(items[:1], 1).delete == []
    with pytest.raises(ValueError):
        d.plan_retention(items, 0)


def test_lineage_record_links_dataset_to_endpoint():
    inputs = d.resolve_inputs(NO_OVERRIDES, EVENT, None).model_dump()
    training = {
        "TrainingJobName": "j",
        "TrainingJobArn": "arn:j",
        "AlgorithmSpecification": {"TrainingImage": "img"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
        "HyperParameters": {"a": "1"},
        "ModelArtifacts": {"S3ModelArtifacts": "s3://b/out/j/output/model.tar.gz"},
    }
    record = d.lineage_record(
        status="deployed",
        reason="ok",
        dag_id="dg",
        run_id="r",
        inputs=inputs,
        training=training,
        metrics={"validation:accuracy": 0.9},
        gate={"accuracy": 0.9, "threshold": 0.6, "live_accuracy": None},
        deployment={"model": "m", "endpoint_config": "c", "endpoint": "e", "action": "create"},
        smoke_test={"accuracy": 1.0, "latency_p95_ms": 12.0},
        now=T0,
    )
    assert record["dataset"]["fingerprint"] == "f00d1234"
    assert record["pretrained"]["model_sha256"] == EVENT["model_sha256"]
    assert record["training_job"]["model_artifacts"].endswith("/j/output/model.tar.gz")
    assert (record["model"]["name"], record["endpoint_config"]["name"], record["endpoint"]["name"]) == ("m", "c", "e")
    assert json.loads(json.dumps(record)) == record
    summary = d.run_summary(record, "s3://b/l.json")
    assert summary["status"] == "deployed" and summary["smoke_accuracy"] == 1.0 and summary["lineage_uri"]


# -- the endpoint lock ----------------------------------------------------------------------------------------
def test_lock_decisions():
    me = {"dag_id": "dg", "run_id": "r1"}
    assert decide({**me, "acquired_at": T0.isoformat()}, me, T0, timedelta(hours=1)).action == "reenter"
    other = {"dag_id": "dg", "run_id": "r0", "acquired_at": T0.isoformat()}
    assert decide(other, me, T0 + timedelta(minutes=5), timedelta(hours=1)).action == "busy"
    assert decide(other, me, T0 + timedelta(hours=2), timedelta(hours=1)).action == "take_over"
    assert decide({"run_id": "r0"}, me, T0, timedelta(hours=1)).action == "take_over"


def test_lock_on_s3_conditional_writes(moto_server):
    s3 = moto_server.client("s3")
    s3.create_bucket(Bucket="locks")
    clock = [T0]
    mine = EndpointLock(
        s3, "locks", "l/e.json", {"dag_id": "dg", "run_id": "r1"}, timedelta(hours=1), clock=lambda: clock[0]
    )
    theirs = EndpointLock(
        s3, "locks", "l/e.json", {"dag_id": "dg", "run_id": "r2"}, timedelta(hours=1), clock=lambda: clock[0]
    )
    assert mine.acquire().startswith("acquired")
    assert "already holds" in mine.acquire()  # a retry of the same run
    with pytest.raises(EndpointLocked, match="dg/r1"):
        theirs.acquire()
    assert theirs.release() is False and mine.read() is not None
    assert mine.release() is True and mine.read() is None
    assert theirs.acquire().startswith("acquired")
    clock[0] = T0 + timedelta(hours=2)  # r2 died holding it
    assert "taking it over" in mine.acquire()
    assert json.loads(s3.get_object(Bucket="locks", Key="l/e.json")["Body"].read())["run_id"] == "r1"


# -- executors against SageMaker ------------------------------------------------------------------------------
ROLE = "arn:aws:iam::123456789012:role/sm"


def _model(sm, name, endpoint):
    sm.create_model(
        ModelName=name,
        ExecutionRoleArn=ROLE,
        PrimaryContainer={"Image": "img", "ModelDataUrl": "s3://b/m"},
        Tags=[{"Key": "tlpipe:endpoint", "Value": endpoint}, {"Key": "tlpipe:accuracy", "Value": "0.8"}],
    )


def _config(sm, name, model, endpoint):
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {"VariantName": "AllTraffic", "ModelName": model, "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}
        ],
        Tags=[{"Key": "tlpipe:endpoint", "Value": endpoint}],
    )


def test_retention_against_sagemaker(moto_server):
    sm = moto_server.client("sagemaker")
    for i in range(5):
        _model(sm, f"ret-ft-{i}-model", "ep")
        _config(sm, f"ret-ft-{i}-config", f"ret-ft-{i}-model", "ep")
    _model(sm, "ret-ft-x-model", "other-ep")  # another endpoint's
    _config(sm, "ret-ft-x-config", "ret-ft-x-model", "other-ep")
    sm.create_endpoint(EndpointName="ep", EndpointConfigName="ret-ft-0-config")  # the oldest is live
    done = closing.apply_retention(
        sm, endpoint="ep", prefix="ret", keep_last=2, protected_configs=["ret-ft-1-config", "ret-ft-4-config"]
    )
    assert sorted(done["endpoint_configs"]["delete"]) == ["ret-ft-2-config"]
    assert sorted(done["models"]["delete"]) == ["ret-ft-2-model"]
    left = {c["EndpointConfigName"] for c in sm.list_endpoint_configs(NameContains="ret-ft-")["EndpointConfigs"]}
    assert left == {"ret-ft-0-config", "ret-ft-1-config", "ret-ft-3-config", "ret-ft-4-config", "ret-ft-x-config"}
    assert "ret-ft-x-model" in {m["ModelName"] for m in sm.list_models()["Models"]}


def test_gate_reads_the_live_models_accuracy_tag(moto_server):
    sm = moto_server.client("sagemaker")
    _model(sm, "gate-ft-0-model", "gate-ep")
    _config(sm, "gate-ft-0-config", "gate-ft-0-model", "gate-ep")
    sm.create_endpoint(EndpointName="gate-ep", EndpointConfigName="gate-ft-0-config")
    worse = steps.gate_deployment(sm, endpoint="gate-ep", metrics={"validation:accuracy": 0.79}, threshold=0.5)
    assert not worse["deploy"] and "gate-ft-0-model's 0.8000" in worse["reason"]
    assert worse["endpoint_plan"]["previous_config"] == "gate-ft-0-config"
    better = steps.gate_deployment(sm, endpoint="gate-ep", metrics={"validation:accuracy": 0.81}, threshold=0.5)
    assert better["deploy"] and better["endpoint_plan"]["action"] == "update"
    fresh = steps.gate_deployment(sm, endpoint="no-such-ep", metrics={"validation:accuracy": 0.81}, threshold=0.5)
    assert fresh["deploy"] and fresh["endpoint_plan"]["action"] == "create"


def test_rollback_deletes_an_endpoint_this_run_created(moto_server):
    sm = moto_server.client("sagemaker")
    _model(sm, "rb-ft-0-model", "rb-ep")
    _config(sm, "rb-ft-0-config", "rb-ft-0-model", "rb-ep")
    sm.create_endpoint(EndpointName="rb-ep", EndpointConfigName="rb-ft-0-config")
    done = closing.rollback_endpoint(
        sm, endpoint="rb-ep", previous_config=None, new_config="rb-ft-0-config", delay=1, timeout=10
    )
    assert done["action"] == "delete" and done["final_status"] is None
    assert "rb-ep" not in {e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]}


def _described(status, config):
    return {
        "EndpointName": "e",
        "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/e",
        "EndpointConfigName": config,
        "EndpointStatus": status,
        "CreationTime": T0,
        "LastModifiedTime": T0,
    }


def test_rollback_updates_back_to_the_previous_config():
    """moto has no UpdateEndpoint: botocore's Stubber checks the calls (and their parameters) instead."""
    import boto3

    sm = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(sm) as stub:
        stub.add_response("describe_endpoint", _described("InService", "new"), {"EndpointName": "e"})
        stub.add_response(
            "update_endpoint",
            {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/e"},
            {"EndpointName": "e", "EndpointConfigName": "old"},
        )
        stub.add_response("describe_endpoint", _described("Updating", "new"), {"EndpointName": "e"})
        stub.add_response("describe_endpoint", _described("InService", "old"), {"EndpointName": "e"})
        stub.add_response("describe_endpoint", _described("InService", "old"), {"EndpointName": "e"})
        done = closing.rollback_endpoint(
            sm, endpoint="e", previous_config="old", new_config="new", delay=0.01, timeout=5
        )
        stub.assert_no_pending_responses()
    assert done["action"] == "update" and done["final_config"] == "old"


def test_rollback_that_does_not_restore_is_reported():
    import boto3

    sm = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(sm) as stub:
        stub.add_response("describe_endpoint", _described("InService", "new"), {"EndpointName": "e"})
        stub.add_client_error("update_endpoint", "ValidationException", "Cannot update in-progress endpoint")
        with pytest.raises(closing.RollbackFailed, match="in-progress"):
            closing.rollback_endpoint(sm, endpoint="e", previous_config="old", new_config="new", delay=0.01, timeout=5)


# -- the retry-safe, killable operators ----------------------------------------------------------------------
def _training_operator(moto_server, name):
    from plugins.tlpipe.deploy.operators import FinetuneTrainingOperator

    s3 = moto_server.client("s3")
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket="ftjobs")
    for channel in ("pretrained", "train", "validation"):
        s3.put_object(Bucket="ftjobs", Key=f"in/{channel}/x", Body=b"x")
    config = {
        "TrainingJobName": name,
        "RoleArn": ROLE,
        "AlgorithmSpecification": {"TrainingImage": "img", "TrainingInputMode": "File"},
        "InputDataConfig": [
            {
                "ChannelName": c,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": f"s3://ftjobs/in/{c}/",
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
            }
            for c in ("pretrained", "train", "validation")
        ],
        "OutputDataConfig": {"S3OutputPath": "s3://ftjobs/out"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        "StoppingCondition": {"MaxRuntimeInSeconds": 60},
    }
    return FinetuneTrainingOperator(
        task_id="finetune", config=config, print_log=False, check_interval=1, aws_conn_id="moto_test"
    )


@pytest.fixture()
def moto_connection(moto_server, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_MOTO_TEST",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"endpoint_url": moto_server.url, "region_name": "us-east-1"},
            }
        ),
    )


def test_training_retry_reuses_a_completed_job_and_follows_a_failed_one(moto_server, moto_connection, monkeypatch):
    with sagemaker_hooks(monkeypatch) as hooks:
        first = _training_operator(moto_server, "retry-ft-1").execute({})
        assert first["Training"]["TrainingJobName"] == "retry-ft-1"
        again = _training_operator(moto_server, "retry-ft-1").execute({})  # the retry of the same run
        assert again["Training"]["TrainingJobName"] == "retry-ft-1"
        assert [p["TrainingJobName"] for p in hooks.sent("CreateTrainingJob")] == ["retry-ft-1"]

        hooks.status["retry-ft-1"] = "Failed"  # the first attempt failed
        third = _training_operator(moto_server, "retry-ft-1").execute({})
        assert third["Training"]["TrainingJobName"] == "retry-ft-1-r2"
        assert [p["TrainingJobName"] for p in hooks.sent("CreateTrainingJob")] == ["retry-ft-1", "retry-ft-1-r2"]


def test_training_retry_waits_on_a_running_job(moto_server, moto_connection, monkeypatch):
    with sagemaker_hooks(monkeypatch) as hooks:
        _training_operator(moto_server, "wait-ft-1").execute({})
        hooks.status["wait-ft-1"] = "InProgress"
        op = _training_operator(moto_server, "wait-ft-1")
        waited = []
        monkeypatch.setattr(
            type(op.hook), "check_training_status_with_log", lambda self, name, *a, **k: waited.append(name)
        )
        op.execute({})
        assert waited == ["wait-ft-1"] and len(hooks.sent("CreateTrainingJob")) == 1


def test_killing_the_task_stops_the_job():
    import boto3

    from plugins.tlpipe.deploy.operators import FinetuneJobTrigger, FinetuneTrainingOperator

    sm = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    op = FinetuneTrainingOperator(task_id="finetune", config={"TrainingJobName": "kill-ft-1"})
    op.__dict__["hook"] = type("Hook", (), {"conn": sm})()
    op._job_name = "kill-ft-1-r2"
    with Stubber(sm) as stub:
        stub.add_response("stop_training_job", {}, {"TrainingJobName": "kill-ft-1-r2"})
        op.on_kill()
        stub.assert_no_pending_responses()

    calls = []

    class AsyncClient:
        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc):
            return False

        async def stop_training_job(self, **kwargs):
            calls.append(kwargs)

    class Hook:
        async def get_async_conn(self):
            return AsyncClient()

    trigger = FinetuneJobTrigger(job_name="kill-ft-1", job_type="Training", waiter_delay=1, waiter_max_attempts=2)
    assert trigger.serialize()[0] == "plugins.tlpipe.deploy.operators.FinetuneJobTrigger"
    trigger.hook = lambda: Hook()
    asyncio.run(trigger.on_kill())
    assert calls == [{"TrainingJobName": "kill-ft-1"}]


def test_operators_defer_on_the_killable_trigger():
    from airflow.providers.amazon.aws.triggers.sagemaker import SageMakerTrigger
    from airflow.sdk.exceptions import TaskDeferred

    from plugins.tlpipe.deploy.operators import FinetuneJobTrigger, FinetuneTrainingOperator

    op = FinetuneTrainingOperator(
        task_id="finetune", config={"TrainingJobName": "j"}, deferrable=True, check_interval=30, max_ingestion_time=9000
    )
    assert op.max_attempts >= 300  # polls for the whole allowed run time
    with pytest.raises(TaskDeferred) as deferred:
        op.defer(
            trigger=SageMakerTrigger(job_name="j", job_type="Training", waiter_delay=30), method_name="execute_complete"
        )
    assert isinstance(deferred.value.trigger, FinetuneJobTrigger) and deferred.value.trigger.job_name == "j"


def test_model_and_config_operators_reuse_what_an_earlier_try_created(moto_server, moto_connection):
    from plugins.tlpipe.deploy.operators import DeployEndpointConfigOperator, DeployModelOperator

    model = {
        "ModelName": "reuse-ft-1-model",
        "ExecutionRoleArn": ROLE,
        "PrimaryContainer": {"Image": "img", "ModelDataUrl": "s3://b/m.tar.gz"},
    }
    config = {
        "EndpointConfigName": "reuse-ft-1-config",
        "ProductionVariants": [
            {
                "VariantName": "AllTraffic",
                "ModelName": "reuse-ft-1-model",
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": 1,
            }
        ],
    }
    for _ in range(2):
        out = DeployModelOperator(task_id="m", config=json.loads(json.dumps(model)), aws_conn_id="moto_test").execute(
            {}
        )
        assert out["Model"]["ModelName"] == "reuse-ft-1-model"
        out = DeployEndpointConfigOperator(
            task_id="c", config=json.loads(json.dumps(config)), aws_conn_id="moto_test"
        ).execute({})
        assert out["EndpointConfig"]["EndpointConfigName"] == "reuse-ft-1-config"
    other = dict(model, PrimaryContainer={"Image": "img", "ModelDataUrl": "s3://b/other.tar.gz"})
    with pytest.raises(RuntimeError, match="not created by this run"):
        DeployModelOperator(task_id="m", config=other, aws_conn_id="moto_test").execute({})
