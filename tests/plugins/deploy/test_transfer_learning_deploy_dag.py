"""The transfer_learning_deploy DAG: parsing, task graph, conf validation over the REST API, and runs of the
provider's SageMaker operators with ``dag.test()`` against moto's server.

moto's SageMaker records the calls and reports every training job Completed at once, without running it or
reporting metrics: the runs here inject ``FinalMetricDataList`` into DescribeTrainingJob answers through a
botocore hook (``transfer_learning_deploy_fixtures.sagemaker_hooks``) and queue the endpoint's replies in
moto's runtime. moto has no UpdateEndpoint and replaces an existing endpoint on CreateEndpoint, so the
update and update-rollback paths are covered by the decision tests (``test_deploy_decisions``) and by the
local-cloud end-to-end run, not here.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time

import pytest
from airflow_env import (
    DAGS_FOLDER,
    api_client,
    assert_parses_clean,
    load_dagbag,
    reset_config_cache,
    run_dag,
    setup_airflow,
    sync_dags_to_db,
)
from botocore.validate import ParamValidator
from transfer_learning_deploy_fixtures import sagemaker_hooks

DAG_ID = "transfer_learning_deploy"
DAG_FILE = DAGS_FOLDER / "transfer_learning_deploy.py"
BUCKET, PREFIX = "tlpipe-deploy", "tl"
FINGERPRINT, OTHER_FINGERPRINT = "f1e2d3c4b5a69788", "0a1b2c3d4e5f6071"
CLASSES = ("blue", "red")


@pytest.fixture()
def pipeline(moto_server, monkeypatch):
    env = {
        "TLPIPE_PROFILE": "local",
        "TLPIPE__S3__BUCKET": BUCKET,
        "TLPIPE__S3__PREFIX": PREFIX,
        "TLPIPE__AIRFLOW__SENSOR_POKE_SECONDS": "1",
        "TLPIPE__AIRFLOW__RETRIES": "0",
        "TLPIPE__SAGEMAKER__SMOKE_TEST_IMAGES": "4",
        "TLPIPE__SAGEMAKER__KEEP_LAST": "1",
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"endpoint_url": moto_server.url, "region_name": "us-east-1"},
            }
        ),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset_config_cache()
    setup_airflow()
    return env


@pytest.fixture()
def dag(pipeline):
    bag = load_dagbag(DAG_FILE)
    assert bag.import_errors == {}
    return bag.get_dag(DAG_ID)


def test_dag_shape(dag):
    from plugins.tlpipe.config import get_config

    cfg = get_config()
    assert dag.max_active_runs == 1 and not dag.catchup
    assets = [asset.name for asset in dag.timetable.asset_condition.objects]
    assert assets == ["pretrained-model"]
    assert set(dag.params) == {
        "base_model_uri",
        "domain_dataset_uri",
        "endpoint_name",
        "training_instance_type",
        "training_instance_count",
        "serving_instance_type",
        "serving_instance_count",
        "quality_threshold",
        "compare_scratch",
        "baseline_policy",
        "baseline_margin",
        "tuning",
        "approval",
        "model_package_arn",
        "shadow_test",
        "traffic_routing",
        "hyperparameters",
    }
    assert dag.params["endpoint_name"] == cfg.sagemaker.endpoint_name
    assert dag.params["quality_threshold"] == cfg.sagemaker.quality_threshold
    assert "pretrained-model" in dag.doc_md and "rollback" in dag.doc_md


def test_task_graph(dag):
    def down(task_id):
        return dag.get_task(task_id).downstream_task_ids

    assert down("prepare") >= {"choose_finetune"}
    assert down("choose_finetune") == {"finetune", "tune", "read_metrics"}
    assert down("finetune") == {"read_metrics"} and down("tune") == {"read_metrics"}
    assert down("acquire_endpoint_lock") == {"quality_gate", "release_endpoint_lock"}
    # Every model becomes a Model Registry version; only an approved one is deployed.
    assert down("quality_gate") >= {"registration_request", "approval"}
    assert down("registration_request") == {"register_model"}
    assert down("register_model") >= {"approval", "wait_for_approval"}
    assert down("approval") == {"wait_for_approval", "skip_deployment"}
    assert down("wait_for_approval") == {"deploy.build_requests"}
    assert down("deploy.create_model") == {"deploy.create_endpoint_config"}
    assert down("deploy.create_endpoint_config") == {"deploy.create_alarms", "deploy.release_autoscaling"}
    assert down("deploy.create_alarms") == {"deploy.shadow_test"}
    assert down("deploy.release_autoscaling") == {"deploy.shadow_test"}
    assert down("deploy.shadow_test") == {"deploy.create_or_update_endpoint", "rollback"}
    assert down("deploy.create_or_update_endpoint") == {"deploy.verify_endpoint", "rollback"}
    assert down("deploy.verify_endpoint") == {"deploy.autoscale_endpoint", "rollback"}
    assert down("deploy.autoscale_endpoint") == {"deploy.smoke_test", "rollback"}
    assert down("deploy.smoke_test") == {"record_lineage", "rollback"}
    assert down("skip_deployment") == {"record_lineage"}
    assert down("record_lineage") == {"apply_retention"}
    assert down("apply_retention") == {"release_endpoint_lock"} and down("rollback") == {"release_endpoint_lock"}
    rules = {t.task_id: t.trigger_rule for t in dag.tasks}
    assert rules["rollback"] == "one_failed" and rules["record_lineage"] == "none_failed_min_one_success"
    assert rules["read_metrics"] == "none_failed_min_one_success"
    assert type(dag.get_task("tune")).__mro__[1].__name__ == "SageMakerTuningOperator"
    assert dag.get_task("acquire_endpoint_lock").is_setup
    unlock = dag.get_task("release_endpoint_lock")
    assert unlock.is_teardown and unlock.trigger_rule == "all_done_setup_success"
    finetune = dag.get_task("finetune")
    assert finetune.print_log and type(finetune).__mro__[1].__name__ == "SageMakerTrainingOperator"
    assert dag.get_task("deploy.create_or_update_endpoint").operation == "create"


def test_parsing_imports_no_tensorflow_and_opens_no_socket(pipeline):
    assert_parses_clean(DAG_FILE, DAG_ID)


INVALID_CONFS = [
    ({"training_instance_type": "m5.xlarge"}, "training_instance_type"),
    ({"serving_instance_count": 0}, "serving_instance_count"),
    ({"quality_threshold": 1.5}, "quality_threshold"),
    ({"endpoint_name": "my_endpoint"}, "endpoint_name"),
    ({"endpoint_name": "tlpipe-domain\n"}, "endpoint_name"),
    ({"serving_instance_type": "ml.m5.large\n"}, "serving_instance_type"),
    ({"base_model_uri": "/local/model.tar.gz"}, "base_model_uri"),
    ({"domain_dataset_uri": "s3://bucket/domain"}, "domain_dataset_uri"),
    ({"compare_scratch": "yes"}, "compare_scratch"),
    ({"baseline_policy": "coin_flip"}, "baseline_policy"),
    ({"baseline_margin": -0.1}, "baseline_margin"),
    ({"tuning": "please"}, "tuning"),
    ({"hyperparameters": {"Epochs Head": 2}}, "hyperparameters"),
]


def test_rest_api_refuses_invalid_conf_before_creating_a_run(pipeline):
    sync_dags_to_db(DAG_FILE.parent)
    with api_client() as client:
        url = f"/api/v2/dags/{DAG_ID}/dagRuns"
        before = client.get(url).json()["total_entries"]
        for conf, message in INVALID_CONFS:
            resp = client.post(url, json={"logical_date": None, "conf": conf})
            assert resp.status_code == 400, (conf, resp.text)
            assert message in resp.json()["detail"], (conf, resp.text)
        assert client.get(url).json()["total_entries"] == before


def test_rest_api_accepts_valid_conf(pipeline):
    sync_dags_to_db(DAG_FILE.parent)
    with api_client() as client:
        resp = client.post(
            f"/api/v2/dags/{DAG_ID}/dagRuns",
            json={
                "logical_date": None,
                "conf": {
                    "endpoint_name": "tlpipe-rest",
                    "serving_instance_type": "ml.c5.large",
                    "quality_threshold": 0.7,
                    "hyperparameters": {"epochs_head": 2},
                },
            },
        )
        assert resp.status_code == 200, resp.text
        run = resp.json()
        assert run["conf"]["serving_instance_type"] == "ml.c5.large" and run["state"] == "queued"
        client.patch(f"/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}", json={"state": "failed"})


# -- runs against moto ----------------------------------------------------------------------------------------
def _png(colour) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, "PNG")
    return buf.getvalue()


def _upload_domain(s3, base: str, shade: int) -> None:
    for split in ("train", "validation"):
        for c, label in enumerate(CLASSES):
            for i in range(2):
                s3.put_object(Bucket=BUCKET, Key=f"{base}/{split}/{label}/{i}.png", Body=_png((c * 200, i, shade)))


def _publish_latest(moto) -> dict:
    """What general_pretraining leaves in S3: a model, the domain split, and latest.json."""
    s3 = moto.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    model = b"pretrained model bytes"
    sha = hashlib.sha256(model).hexdigest()
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/pretrained/{sha}/model.tar.gz", Body=model)
    base = f"{PREFIX}/domain/{FINGERPRINT}"
    _upload_domain(s3, base, shade=50)
    extra = {
        "model_uri": f"s3://{BUCKET}/{PREFIX}/pretrained/{sha}/model.tar.gz",
        "model_sha256": sha,
        "manifest_uri": f"s3://{BUCKET}/{PREFIX}/pretrained/{sha}/manifest.json",
        "metrics_uri": f"s3://{BUCKET}/{PREFIX}/pretrained/{sha}/metrics.json",
        "domain_train_uri": f"s3://{BUCKET}/{base}/train/",
        "domain_validation_uri": f"s3://{BUCKET}/{base}/validation/",
        "domain_classes": list(CLASSES),
        "dataset_fingerprint": FINGERPRINT,
        "manifest_sha256": "a" * 64,
        "checkpoint_uri": "/checkpoints/run/best",
        "epoch": 3,
        "val_accuracy": 0.71,
        "training_params": {"epochs": 4},
        "training_key": "k",
        "dag_id": "general_pretraining",
        "run_id": "manual__2025-01-01T00:00:00+00:00",
    }
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/pretrained/latest.json", Body=json.dumps(extra).encode())
    return extra


def _object(moto, uri: str) -> dict:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return json.loads(moto.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())


def _check_requests(hooks) -> None:
    """Every SageMaker request the runs sent: botocore's model, and the project's rules for the ones it builds."""
    from plugins.tlpipe.deploy import sagemaker_requests as req

    model = req.service_model()
    for operation, params in hooks.requests:
        report = ParamValidator().validate(params, model.operation_model(operation).input_shape)
        assert not report.has_errors(), (operation, report.generate_report())
        if operation in req.OPERATIONS:
            assert req.problems(operation, params) == [], (operation, params)


def test_deploys_then_rejects_a_worse_model_then_rolls_back_a_failed_smoke_test(dag, moto_server, monkeypatch):
    from plugins.tlpipe.deploy.sagemaker_requests import tag_dict

    latest = _publish_latest(moto_server)
    sm = moto_server.client("sagemaker")
    deploy_tasks = (
        "deploy.build_requests",
        "deploy.create_model",
        "deploy.create_endpoint_config",
        "deploy.create_or_update_endpoint",
        "deploy.verify_endpoint",
        "deploy.smoke_test",
    )
    with sagemaker_hooks(monkeypatch) as hooks:
        # 1. No endpoint yet: fine-tune on the last export, create the endpoint, pass the smoke test.
        hooks.metrics = {
            "validation:accuracy": 0.9,
            "validation:loss": 0.3,
            "scratch:validation:accuracy": 0.5,
            "transfer:gain": 0.4,
        }
        moto_server.queue_predictions(["blue", "red", "blue", "red"])  # round-robin: blue/0, red/0, blue/1, red/1
        first = run_dag(dag, {"endpoint_name": "tl-a", "compare_scratch": True})
        assert first.state == "success", first.tasks
        assert {first.tasks[t] for t in deploy_tasks} == {"success"}
        assert (first.tasks["skip_deployment"], first.tasks["rollback"]) == ("skipped", "skipped")
        assert first.tasks["release_endpoint_lock"] == "success"

        prepared = first.xcom("prepare")
        assert prepared["inputs"]["source"] == "latest"
        [training] = hooks.sent("CreateTrainingJob")
        assert training["TrainingJobName"] == prepared["names"]["job"]
        assert {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in training["InputDataConfig"]} == {
            "pretrained": latest["model_uri"],
            "train": latest["domain_train_uri"],
            "validation": latest["domain_validation_uri"],
        }
        assert training["HyperParameters"]["compare_scratch"] == "true"

        summary = first.xcom("record_lineage", "summary")
        assert summary["status"] == "deployed" and summary["accuracy"] == 0.9 and summary["smoke_accuracy"] == 1.0
        assert (summary["scratch_accuracy"], summary["transfer_gain"]) == (0.5, 0.4)
        live = sm.describe_endpoint(EndpointName="tl-a")
        assert live["EndpointConfigName"] == prepared["names"]["endpoint_config"] == summary["endpoint_config"]
        model = sm.describe_model(ModelName=prepared["names"]["model"])
        tags = tag_dict(sm.list_tags(ResourceArn=model["ModelArn"])["Tags"])
        assert tags["accuracy"] == "0.9" and tags["pretrained-sha256"] == latest["model_sha256"]
        assert tags["dataset-fingerprint"] == FINGERPRINT and tags["training-job"] == prepared["names"]["job"]
        # The deployed model is the registered version's container, approved by the gate.
        version = sm.describe_model_package(ModelPackageName=tags["model-package"])
        assert (version["ModelPackageGroupName"], version["ModelApprovalStatus"]) == ("tl-a", "Approved")
        assert version["CustomerMetadataProperties"]["metric:validation:accuracy"] == "0.9"
        assert version["CustomerMetadataProperties"]["training-job"] == prepared["names"]["job"]
        assert (
            version["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
            == (model["PrimaryContainer"]["ModelDataUrl"])
        )
        assert summary["model_package"] == version["ModelPackageArn"] and summary["model_approval"] == "Approved"
        record = _object(moto_server, summary["lineage_uri"])
        assert record["status"] == "deployed" and record["dataset"]["fingerprint"] == FINGERPRINT
        assert record["pretrained"]["model_sha256"] == latest["model_sha256"]
        assert record["training_job"]["name"] == prepared["names"]["job"]
        assert record["model"]["name"] == prepared["names"]["model"] and record["model"]["arn"] == model["ModelArn"]
        assert record["endpoint"] == {
            "name": "tl-a",
            "arn": live["EndpointArn"],
            "action": "create",
            "previous_config": None,
        }
        assert record["metrics"]["training"]["validation:accuracy"] == 0.9
        with pytest.raises(Exception):  # the lock is released
            moto_server.client("s3").head_object(Bucket=BUCKET, Key=f"{PREFIX}/locks/endpoints/tl-a.json")

        # 2. A worse model: the gate reads the live model's accuracy tag and skips the deployment.
        hooks.metrics = {"validation:accuracy": 0.85}
        created = len(hooks.sent("CreateModel"))
        second = run_dag(dag, {"endpoint_name": "tl-a"})
        assert second.state == "success", second.tasks
        assert second.tasks["skip_deployment"] == "success"
        assert {second.tasks[t] for t in deploy_tasks} == {"skipped"}
        rejected = second.xcom("record_lineage", "summary")
        assert rejected["status"] == "rejected" and "below the live model" in rejected["reason"]
        assert rejected["live_accuracy"] == 0.9
        refused = sm.describe_model_package(ModelPackageName=rejected["model_package"])
        assert refused["ModelApprovalStatus"] == "Rejected" and "below the live model" in refused["ApprovalDescription"]
        assert len(hooks.sent("CreateModel")) == created
        assert sm.describe_endpoint(EndpointName="tl-a")["EndpointConfigName"] == live["EndpointConfigName"]

        # 3. A new endpoint, with the data named in the Params, whose smoke test fails: rollback deletes the
        #    endpoint and the run fails with the reason. (moto caches replies per request body: new images.)
        _upload_domain(moto_server.client("s3"), f"{PREFIX}/domain/{OTHER_FINGERPRINT}", shade=150)
        hooks.metrics = {"validation:accuracy": 0.9}
        moto_server.queue_predictions(["red", "blue", "red", "blue"])
        third = run_dag(
            dag,
            {
                "endpoint_name": "tl-c",
                "base_model_uri": latest["model_uri"],
                "domain_dataset_uri": f"s3://{BUCKET}/{PREFIX}/domain/{OTHER_FINGERPRINT}/",
            },
        )
        assert third.state == "failed", third.tasks
        assert third.tasks["deploy.smoke_test"] == "failed" and third.tasks["rollback"] == "failed"
        assert third.tasks["record_lineage"] == "upstream_failed"
        assert third.tasks["release_endpoint_lock"] == "success"
        rolled = third.xcom("rollback", "summary")
        assert rolled["status"] == "rolled_back" and "smoke test failed" in rolled["reason"]
        assert "did not exist before this run: deleting it" in rolled["reason"]
        assert "tl-c" not in {e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]}
        record = _object(moto_server, rolled["lineage_uri"])
        assert record["rollback"]["action"] == "delete" and record["run"]["inputs_from"] == "params"
        assert record["dataset"]["fingerprint"] == OTHER_FINGERPRINT

    _check_requests(hooks)
    assert {op for op, _ in hooks.requests} >= {
        "CreateTrainingJob",
        "CreateModel",
        "CreateEndpointConfig",
        "CreateEndpoint",
        "DeleteEndpoint",
        "ListTags",
    }


def test_a_manual_approval_lets_the_waiting_run_deploy(dag, moto_server, monkeypatch):
    """With Param approval=manual the gate's pass registers the version PendingManualApproval and the run waits;
    a person's UpdateModelPackage to Approved lets it deploy that version."""
    _publish_latest(moto_server)
    sm = moto_server.client("sagemaker")
    approved_at: list[float] = []

    def approve_when_pending():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not approved_at:
            try:
                listed = sm.list_model_packages(
                    ModelPackageGroupName="tl-m", ModelApprovalStatus="PendingManualApproval"
                )
            except Exception:  # noqa: BLE001 - the group does not exist yet
                listed = {"ModelPackageSummaryList": []}
            for pending in listed["ModelPackageSummaryList"]:
                time.sleep(3)  # the run is waiting on it by now
                sm.update_model_package(
                    ModelPackageArn=pending["ModelPackageArn"],
                    ModelApprovalStatus="Approved",
                    ApprovalDescription="read the report: approved",
                )
                approved_at.append(time.monotonic())
            time.sleep(0.5)

    with sagemaker_hooks(monkeypatch) as hooks:
        hooks.metrics = {"validation:accuracy": 0.9, "validation:loss": 0.3}
        moto_server.queue_predictions(["blue", "red", "blue", "red"])
        approver = threading.Thread(target=approve_when_pending, daemon=True)
        approver.start()
        run = run_dag(dag, {"endpoint_name": "tl-m", "approval": "manual"})
        approver.join(10)
    assert approved_at, "the run never registered a pending version"
    assert run.state == "success", run.tasks
    assert run.tasks["wait_for_approval"] == "success" and run.tasks["deploy.smoke_test"] == "success"
    summary = run.xcom("record_lineage", "summary")
    version = sm.describe_model_package(ModelPackageName=summary["model_package"])
    assert (
        version["ModelApprovalStatus"] == "Approved" and version["ApprovalDescription"] == "read the report: approved"
    )
    assert sm.describe_endpoint(EndpointName="tl-m")["EndpointStatus"] == "InService"


def test_a_named_approved_version_is_deployed_without_fine_tuning(dag, moto_server, monkeypatch):
    """Param model_package_arn deploys an approved version registered by an earlier run, with no training job:
    how a person rolls back to an older model through the REST API."""
    from plugins.tlpipe.deploy.sagemaker_requests import tag_dict

    _publish_latest(moto_server)
    sm = moto_server.client("sagemaker")

    def live_version() -> str:
        config = sm.describe_endpoint_config(
            EndpointConfigName=sm.describe_endpoint(EndpointName="tl-r")["EndpointConfigName"]
        )
        model = sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
        return tag_dict(sm.list_tags(ResourceArn=model["ModelArn"])["Tags"])["model-package"]

    with sagemaker_hooks(monkeypatch) as hooks:
        versions = []
        for accuracy in (0.8, 0.9):
            hooks.metrics = {"validation:accuracy": accuracy}
            moto_server.queue_predictions(["blue", "red", "blue", "red"])
            run = run_dag(dag, {"endpoint_name": "tl-r"})
            assert run.state == "success", run.tasks
            versions.append(run.xcom("record_lineage", "summary")["model_package"])
        assert live_version() == versions[1]
        # The first run created the endpoint; the second updated it blue/green, rolled back on its alarms.
        first_create, update = hooks.sent("CreateEndpoint")[-2:]
        assert "DeploymentConfig" not in first_create
        deployment = update["DeploymentConfig"]
        assert deployment["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]["Type"] == "CANARY"
        named = {a["AlarmName"] for a in deployment["AutoRollbackConfiguration"]["Alarms"]}
        alarms = moto_server.client("cloudwatch").describe_alarms(AlarmNames=sorted(named))["MetricAlarms"]
        assert {(a["AlarmName"], a["MetricName"]) for a in alarms} == {
            ("tlpipe-tl-r-5xx-errors", "Invocation5XXErrors"),
            ("tlpipe-tl-r-model-latency", "ModelLatency"),
        }
        # The variant stays registered with Application Auto Scaling across the update.
        aas = moto_server.client("application-autoscaling")
        [target] = aas.describe_scalable_targets(
            ServiceNamespace="sagemaker", ResourceIds=["endpoint/tl-r/variant/AllTraffic"]
        )["ScalableTargets"]
        assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 2)
        [policy] = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=target["ResourceId"])[
            "ScalingPolicies"
        ]
        tracking = policy["TargetTrackingScalingPolicyConfiguration"]
        assert (
            tracking["PredefinedMetricSpecification"]["PredefinedMetricType"]
            == "SageMakerVariantInvocationsPerInstance"
        )

        jobs = len(hooks.sent("CreateTrainingJob"))
        moto_server.queue_predictions(["blue", "red", "blue", "red"])
        back = run_dag(dag, {"endpoint_name": "tl-r", "model_package_arn": versions[0]})
    assert back.state == "success", back.tasks
    assert (back.tasks["finetune"], back.tasks["tune"]) == ("skipped", "skipped")
    assert len(hooks.sent("CreateTrainingJob")) == jobs  # no fine-tune
    assert live_version() == versions[0]
    summary = back.xcom("record_lineage", "summary")
    assert summary["status"] == "deployed" and summary["model_package"] == versions[0]
    assert "named approved version" in summary["reason"] and summary["accuracy"] == 0.8
