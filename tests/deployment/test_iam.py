"""deploy/aws: the IAM policies parse, name only the pipeline's resources, use no wildcard action, keep
Resource "*" to what AWS cannot scope, and allow every AWS call the DAGs make (recorded from real runs against
moto's server) and every S3, SageMaker and CloudWatch Logs action the localcloud tests make."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path

import pytest

from tests.aws_iam import AwsCallRecorder, Call, IamRequest, Policy, alarm_arn, iam_requests, log_group_arn, s3_arn
from tests.deploy_helpers import ROOT

AWS_DIR = ROOT / "deploy" / "aws"
TEMPLATES = ["airflow-policy", "sagemaker-execution-trust-policy", "sagemaker-execution-policy"]
# Actions AWS authorizes only against Resource "*" (no resource-level permissions), per the Service
# Authorization Reference. A statement with Resource "*" may name nothing else.
NO_RESOURCE_LEVEL = {
    "sagemaker:ListTrainingJobs",
    "sagemaker:ListModels",
    "sagemaker:ListEndpointConfigs",
    "sagemaker:ListEndpoints",
    "sagemaker:ListModelPackages",
    # Scalable targets' ARNs carry a random id (scalable-target/<id>), so a policy can name none in advance.
    "application-autoscaling:RegisterScalableTarget",
    "application-autoscaling:PutScalingPolicy",
    "application-autoscaling:DescribeScalableTargets",
    "application-autoscaling:DescribeScalingPolicies",
    "application-autoscaling:DeregisterScalableTarget",
    "ecr:GetAuthorizationToken",
    "cloudwatch:PutMetricData",
}
# Granted although no recorded run makes the call, each for a reason a run cannot show.
NOT_RECORDED = {
    "s3:AbortMultipartUpload": "boto3's transfer manager aborts a multipart upload that failed part-way",
    "s3:CreateBucket": "s3.create_bucket: true lets the exporter create the pipeline's bucket (off in production)",
}
# The pipeline's calls; test_localcloud_auth.py probes localcloud's signature checks with arbitrary calls instead.
LOCALCLOUD_TESTS = sorted(
    p for p in (ROOT / "tests").rglob("test_localcloud*.py") if p.name != "test_localcloud_auth.py"
) + [ROOT / "tests" / "localcloud_fixtures.py"]
SERVICES = {"s3": "s3", "sagemaker": "sagemaker", "sagemaker-runtime": "sagemaker", "logs": "logs"}
# What an AWS service does with its own service-linked role, which the localcloud tests call the way that service
# would: not an Airflow action.
SERVICE_LINKED = {"sagemaker:UpdateEndpointWeightsAndCapacities": "Application Auto Scaling resizing a variant"}

ONPREM_CHECKPOINT_BUCKET = "tlpipe-checkpoints"  # where the test's pretraining event says its checkpoints are


def load_render():
    spec = importlib.util.spec_from_file_location("tlpipe_iam_render", AWS_DIR / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def render():
    return load_render()


@pytest.fixture(scope="module")
def cfg():
    from plugins.tlpipe.config import load_config

    return load_config("production", environ={})


@pytest.fixture(scope="module")
def values(render, cfg) -> dict:
    return render.values_from_config(cfg)


@pytest.fixture(scope="module")
def policies(render, values) -> dict[str, dict]:
    return {name: render.render(json.loads((AWS_DIR / f"{name}.json").read_text()), values) for name in TEMPLATES}


def statements(policy: dict) -> list[dict]:
    return policy["Statement"] if isinstance(policy["Statement"], list) else [policy["Statement"]]


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


# -- the documents --------------------------------------------------------------------------------------------
def test_templates_parse_and_render_every_placeholder(render, policies, values, cfg):
    for name in TEMPLATES:
        template = json.loads((AWS_DIR / f"{name}.json").read_text())
        used = set(re.findall(r"\$\{(\w+)\}", json.dumps(template)))
        assert used <= set(values), f"{name}: no value for {used - set(values)}"
        assert "${" not in json.dumps(policies[name])
    assert values["AccountId"] == cfg.sagemaker.role_arn.split(":")[4]
    assert (values["Bucket"], values["Prefix"], values["Region"]) == (cfg.s3.bucket, cfg.s3.prefix, cfg.s3.region)
    assert f"arn:aws:iam::{values['AccountId']}:role/{values['ExecutionRoleName']}" == cfg.sagemaker.role_arn
    assert cfg.sagemaker.endpoint_name.startswith(values["ResourcePrefix"])


def test_render_script_writes_the_policies(render, tmp_path, policies):
    assert render.main(["--out", str(tmp_path)]) == 0
    for name in TEMPLATES:
        assert json.loads((tmp_path / f"{name}.json").read_text()) == policies[name]


def test_image_repositories_are_named_in_their_registrys_account(render):
    assert render.ecr_repository_arn("123456789012.dkr.ecr.eu-west-1.amazonaws.com/tlpipe-sagemaker:0.1.0") == (
        "arn:aws:ecr:eu-west-1:123456789012:repository/tlpipe-sagemaker"
    )
    # The managed TensorFlow Serving image is pulled from AWS's registry account, not the pipeline's.
    assert render.ecr_repository_arn("763104351884.dkr.ecr.us-east-1.amazonaws.com/tensorflow-inference:2.19-gpu") == (
        "arn:aws:ecr:us-east-1:763104351884:repository/tensorflow-inference"
    )
    with pytest.raises(ValueError):
        render.ecr_repository_arn("registry.tlpipe.internal/tlpipe/train:0.1.0")


def test_no_wildcard_actions(policies):
    for name, policy in policies.items():
        for st in statements(policy):
            assert "NotAction" not in st and "NotResource" not in st, f"{name}/{st.get('Sid')}"
            for action in as_list(st["Action"]):
                service, _, op = action.partition(":")
                assert action != "*" and op and "*" not in op and "?" not in op, f"{name}: {action}"


def test_resource_star_only_where_aws_offers_no_narrower_resource(policies):
    documented = (AWS_DIR / "README.md").read_text()
    for name in ("airflow-policy", "sagemaker-execution-policy"):
        for st in statements(policies[name]):
            resources = as_list(st["Resource"])
            if "*" in resources:
                assert resources == ["*"], f"{st['Sid']}: mixes * with narrower resources"
                assert set(as_list(st["Action"])) <= NO_RESOURCE_LEVEL, f"{st['Sid']}: {st['Action']} can be scoped"
                assert st["Sid"] in documented, f"{st['Sid']} (Resource *) is not explained in deploy/aws/README.md"
            for arn in resources:
                assert arn == "*" or not arn.endswith(":*:*"), arn


def test_trust_policy_lets_only_sagemaker_of_this_account_assume_the_role(policies, values):
    [st] = statements(policies["sagemaker-execution-trust-policy"])
    assert st["Effect"] == "Allow" and st["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    assert st["Action"] == "sts:AssumeRole"
    assert st["Condition"]["StringEquals"]["aws:SourceAccount"] == values["AccountId"]
    assert st["Condition"]["ArnLike"]["aws:SourceArn"].startswith(
        f"arn:aws:sagemaker:{values['Region']}:{values['AccountId']}:"
    )


def test_the_evaluator_refuses_what_a_policy_does_not_grant():
    policy = Policy(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Sid": "A", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::b/p/*"},
                {
                    "Sid": "L",
                    "Effect": "Allow",
                    "Action": "s3:ListBucket",
                    "Resource": "arn:aws:s3:::b",
                    "Condition": {"StringLike": {"s3:prefix": ["p/*"]}},
                },
                {"Sid": "D", "Effect": "Deny", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/p/secret"},
            ],
        }
    )
    assert policy.allows(IamRequest("s3:GetObject", "arn:aws:s3:::b/p/x")) == "A"
    assert policy.allows(IamRequest("S3:getobject", "arn:aws:s3:::b/p/x")) == "A"  # actions ignore case
    assert policy.allows(IamRequest("s3:GetObject", "arn:aws:s3:::b/q/x")) is None
    assert policy.allows(IamRequest("s3:PutObject", "arn:aws:s3:::b/p/x")) is None
    assert policy.allows(IamRequest("s3:GetObject", "arn:aws:s3:::b/p/secret")) is None
    assert policy.allows(IamRequest("s3:ListBucket", "arn:aws:s3:::b", (("s3:prefix", "p/x/"),))) == "L"
    assert policy.allows(IamRequest("s3:ListBucket", "arn:aws:s3:::b", (("s3:prefix", "q/"),))) is None
    assert policy.allows(IamRequest("s3:ListBucket", "arn:aws:s3:::b")) is None  # no prefix, no IfExists
    # Operations map to what AWS authorizes, including the implied requests.
    [head] = iam_requests(Call("s3", "HeadObject", {"Bucket": "b", "Key": "k"}), account="1", region="r")
    assert (head.action, head.resource) == ("s3:GetObject", "arn:aws:s3:::b/k")
    implied = iam_requests(
        Call(
            "sagemaker",
            "CreateModel",
            {"ModelName": "M", "ExecutionRoleArn": "arn:aws:iam::1:role/x", "Tags": [{"Key": "a", "Value": "b"}]},
        ),
        account="1",
        region="r",
    )
    assert {(r.action, r.resource) for r in implied} == {
        ("sagemaker:CreateModel", "arn:aws:sagemaker:r:1:model/m"),
        ("iam:PassRole", "arn:aws:iam::1:role/x"),
        ("sagemaker:AddTags", "arn:aws:sagemaker:r:1:model/m"),
    }
    with pytest.raises(KeyError):
        iam_requests(Call("s3", "PutBucketPolicy", {"Bucket": "b"}), account="1", region="r")


# -- what the DAGs do ----------------------------------------------------------------------------------------
def _best_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    # Larger than the multipart threshold set below, so the upload is a multipart upload as in production.
    (path / "model.keras").write_bytes(os.urandom(6 * 1024 * 1024))
    (path / "meta.json").write_text(json.dumps({"epoch": 1, "image_size": [32, 32]}))
    (path / "metrics.json").write_text(json.dumps({"val_accuracy": 0.7}))
    return path


def _deploy_run(dag, moto, hooks, s3, endpoint: str, accuracy: float, **params):
    """One run of the deploy DAG; ``s3`` is a client outside the recording, for what the test itself reads."""
    from airflow_env import run_dag

    from plugins.tlpipe.config import get_config
    from plugins.tlpipe.deploy.smoke_test import list_validation_samples, select_samples

    cfg = get_config()
    latest_key = f"{cfg.s3.prefix}/pretrained/latest.json"
    latest = json.loads(s3.get_object(Bucket=cfg.s3.bucket, Key=latest_key)["Body"].read())
    samples = select_samples(
        list_validation_samples(s3, latest["domain_validation_uri"]), cfg.sagemaker.smoke_test_images
    )
    # moto answers a request body it has seen before from its cache, a new one from this queue.
    moto.queue_predictions([s.label for s in samples])
    hooks.metrics = {"validation:accuracy": accuracy, "validation:loss": 0.3}
    return run_dag(dag, {"endpoint_name": endpoint, **params})


@pytest.fixture(scope="module")
def recorded(tiny_manifest, tmp_path_factory, cfg):
    """Every AWS call of the pretraining DAG's export tasks and of deploy DAG runs (deploy, two better models
    with retention of the oldest, the last on another instance type, a failed smoke test rolled back), with the
    production profile's names, against moto."""
    from airflow_env import DAGS_FOLDER, load_dagbag, reset_config_cache, setup_airflow
    from moto.server import ThreadedMotoServer
    from transfer_learning_deploy_fixtures import Moto, sagemaker_hooks

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    moto = Moto(url=f"http://{host}:{port}")
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": cfg.s3.region,
        "TLPIPE_PROFILE": "production",
        "TLPIPE__S3__MULTIPART_THRESHOLD_MB": "5",
        "TLPIPE__S3__MULTIPART_CHUNKSIZE_MB": "5",
        "TLPIPE__SAGEMAKER__SMOKE_TEST_IMAGES": "4",
        "TLPIPE__SAGEMAKER__KEEP_LAST": "1",
        # moto's endpoint-config instance types predate ml.g5; the type does not change any IAM request.
        "TLPIPE__SAGEMAKER__SERVING_INSTANCE_TYPE": "ml.g4dn.xlarge",
        "TLPIPE__AIRFLOW__SENSOR_POKE_SECONDS": "1",
        "TLPIPE__AIRFLOW__RETRIES": "0",
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"endpoint_url": moto.url, "region_name": cfg.s3.region},
            }
        ),
    }
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
                mp.delenv(name, raising=False)
            for key, value in env.items():
                mp.setenv(key, value)
            reset_config_cache()
            setup_airflow()
            from plugins.tlpipe.assets import PretrainedModelEvent
            from plugins.tlpipe.config import get_config
            from plugins.tlpipe.pretraining.export import S3Exporter

            live = get_config()
            import boto3

            # The test's own client, on a session the recorder never sees.
            s3 = boto3.session.Session().client("s3", endpoint_url=moto.url, region_name=live.s3.region)
            s3.create_bucket(Bucket=live.s3.bucket)  # production: the bucket exists already
            dag = load_dagbag(DAGS_FOLDER / "transfer_learning_deploy.py").get_dag("transfer_learning_deploy")
            runs = {}
            with AwsCallRecorder() as rec, sagemaker_hooks(mp) as hooks:
                # general_pretraining: export_model, upload_domain_dataset, publish_pretrained_model.
                exporter = S3Exporter(live.s3)
                exported = exporter.export_model(_best_dir(tmp_path_factory.mktemp("best") / "best"), tiny_manifest)
                domain = exporter.upload_domain(tiny_manifest)
                exporter.upload_domain(tiny_manifest)  # a rerun finds the complete set
                assert exporter.read_latest() is None
                event = PretrainedModelEvent(
                    model_uri=exported["model_uri"],
                    model_sha256=exported["model_sha256"],
                    manifest_uri=exported["manifest_uri"],
                    metrics_uri=exported["metrics_uri"],
                    domain_train_uri=domain["train_uri"],
                    domain_validation_uri=domain["validation_uri"],
                    domain_classes=domain["classes"],
                    dataset_fingerprint=domain["fingerprint"],
                    manifest_sha256=hashlib.sha256(Path(tiny_manifest).read_bytes()).hexdigest(),
                    checkpoint_uri=f"s3://{ONPREM_CHECKPOINT_BUCKET}/pretrain/r/best",
                    epoch=1,
                    val_accuracy=0.7,
                    training_params={},
                    training_key="k",
                    dag_id="general_pretraining",
                    run_id="manual__r",
                )
                exporter.write_latest(event.model_dump(mode="json"))
                # transfer_learning_deploy: deploy a model, then better ones, then fail a smoke test.
                endpoint = live.sagemaker.endpoint_name
                runs["deploy"] = _deploy_run(dag, moto, hooks, s3, endpoint, 0.9)
                runs["replace"] = _deploy_run(dag, moto, hooks, s3, endpoint, 0.95)
                # A third model: retention deletes the first, no longer live nor the rollback target. It moves
                # to another instance type, so its scalable target is deregistered for the update, then put back.
                runs["retire"] = _deploy_run(dag, moto, hooks, s3, endpoint, 0.97, serving_instance_type="ml.m5.xlarge")
                # No endpoint answers within a microsecond: the smoke test fails and the rollback deletes it.
                mp.setenv("TLPIPE__SAGEMAKER__SMOKE_TEST_LATENCY_MS", "0.001")
                canary = f"{live.sagemaker.resource_prefix}-canary"
                runs["rollback"] = _deploy_run(dag, moto, hooks, s3, canary, 0.95)
            reset_config_cache()
        assert runs["deploy"].state == "success", runs["deploy"].tasks
        assert runs["replace"].state == "success", runs["replace"].tasks
        assert runs["retire"].state == "success", runs["retire"].tasks
        rollback = runs["rollback"]
        assert rollback.state == "failed" and rollback.tasks["rollback"] == "failed", rollback.tasks
        objects = {
            o["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=live.s3.bucket)
            for o in page.get("Contents", [])
        }
        return rec.calls, objects
    finally:
        server.stop()


def test_the_run_artifacts_read_the_checkpoint_store(recorded):
    """The deploy run looked for the pretraining TensorBoard logs in the checkpoint store, not in AWS's bucket."""
    calls, _ = recorded
    listed = [
        c.params for c in calls if str(c) == "s3:ListObjectsV2" and c.params.get("Bucket") == ONPREM_CHECKPOINT_BUCKET
    ]
    assert listed and all(p["Prefix"] == "pretrain/r/logs/" for p in listed)


def test_the_runs_made_the_pipelines_calls(recorded):
    calls, _ = recorded
    made = {str(c) for c in calls}
    for expected in (
        "s3:CreateMultipartUpload",
        "s3:UploadPart",
        "s3:HeadBucket",
        "s3:ListObjectsV2",
        "s3:DeleteObject",
        "sagemaker:CreateTrainingJob",
        "sagemaker:DescribeTrainingJob",
        "sagemaker:CreateModel",
        "sagemaker:CreateEndpointConfig",
        "sagemaker:CreateEndpoint",
        "sagemaker:InvokeEndpoint",
        "sagemaker:ListTags",
        "sagemaker:DeleteModel",
        "sagemaker:DeleteEndpoint",
        "logs:DescribeLogStreams",
    ):
        assert expected in made, f"no {expected} recorded: the scenario no longer covers that path"


def test_airflow_policy_allows_every_call_the_dags_make(recorded, policies, values):
    calls, _ = recorded
    policy = Policy(policies["airflow-policy"])
    denied = []
    for call in calls:
        if call.params.get("Bucket") == ONPREM_CHECKPOINT_BUCKET:
            continue  # the on-prem checkpoint store (the checkpoint_store connection): not AWS, no IAM
        for request in iam_requests(call, account=values["AccountId"], region=values["Region"]):
            if not policy.allows(request):
                denied.append(str(request))
    assert denied == [], "\n".join(sorted(set(denied)))


def execution_role_requests(calls: list[Call], objects: set[str], values: dict) -> list[IamRequest]:
    """What SageMaker does with the execution role for the jobs and models the DAG created: pull the image,
    read the channels (list their prefix, get their objects), write the artifacts, write logs and metrics."""
    region, account = values["Region"], values["AccountId"]
    out: list[IamRequest] = []

    def pull(image: str, origin: str):
        registry, _, _, ecr_region, *_ = image.split(".")
        repository = image.split("/", 1)[1].split("@")[0].split(":")[0]
        out.append(IamRequest("ecr:GetAuthorizationToken", "*", (), origin))
        for action in ("ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"):
            out.append(IamRequest(action, f"arn:aws:ecr:{ecr_region}:{registry}:repository/{repository}", (), origin))

    def logs(group: str, stream: str, namespace: str, origin: str):
        arn = log_group_arn(region, account, group)
        out.extend(
            [
                IamRequest("logs:CreateLogGroup", arn, (), origin),
                IamRequest("logs:DescribeLogStreams", arn, (), origin),
                IamRequest("logs:CreateLogStream", arn, (), origin),
                IamRequest("logs:PutLogEvents", f"{arn}:log-stream:{stream}", (), origin),
                IamRequest("cloudwatch:PutMetricData", "*", (("cloudwatch:namespace", namespace),), origin),
            ]
        )

    def s3_parts(uri: str) -> tuple[str, str]:
        bucket, _, key = uri[len("s3://") :].partition("/")
        return bucket, key

    for call in calls:
        p, origin = call.params, f"SageMaker for {call}"
        if str(call) == "sagemaker:CreateTrainingJob":
            assert p["RoleArn"] == f"arn:aws:iam::{account}:role/{values['ExecutionRoleName']}"
            pull(p["AlgorithmSpecification"]["TrainingImage"], origin)
            for channel in p["InputDataConfig"]:
                bucket, key = s3_parts(channel["DataSource"]["S3DataSource"]["S3Uri"])
                out.append(IamRequest("s3:ListBucket", s3_arn(bucket), (("s3:prefix", key),), origin))
                found = [o for o in objects if o.startswith(key)]
                assert found, f"channel {channel['ChannelName']} points at no object"
                out += [IamRequest("s3:GetObject", s3_arn(bucket, o), (), origin) for o in found]
            bucket, key = s3_parts(p["OutputDataConfig"]["S3OutputPath"])
            job = p["TrainingJobName"]
            for artifact in ("model.tar.gz", "output.tar.gz"):
                artifact_key = f"{key.rstrip('/')}/{job}/output/{artifact}"
                out.append(IamRequest("s3:PutObject", s3_arn(bucket, artifact_key), (), origin))
            logs("/aws/sagemaker/TrainingJobs", f"{job}/algo-1-1700000000", "/aws/sagemaker/TrainingJobs", origin)
        elif str(call) == "sagemaker:CreateModel":
            assert p["ExecutionRoleArn"] == f"arn:aws:iam::{account}:role/{values['ExecutionRoleName']}"
            pull(p["PrimaryContainer"]["Image"], origin)
            bucket, key = s3_parts(p["PrimaryContainer"]["ModelDataUrl"])
            out.append(IamRequest("s3:GetObject", s3_arn(bucket, key), (), origin))
        if str(call) == "sagemaker:CreateEndpointConfig" and p.get("DataCaptureConfig"):
            # Data capture: the endpoint writes its sampled requests and responses with the model's role.
            bucket, key = s3_parts(p["DataCaptureConfig"]["DestinationS3Uri"])
            capture_key = f"{key.rstrip('/')}/endpoint/AllTraffic/2026/01/01/00/00-00-000-id.jsonl"
            out.append(IamRequest("s3:PutObject", s3_arn(bucket, capture_key), (), origin))
        if str(call) in ("sagemaker:CreateEndpoint", "sagemaker:UpdateEndpoint"):
            # Deployment guardrails: SageMaker reads the auto-rollback alarms' state with the role.
            rollback = (p.get("DeploymentConfig") or {}).get("AutoRollbackConfiguration") or {}
            for alarm in rollback.get("Alarms", []):
                out.append(
                    IamRequest("cloudwatch:DescribeAlarms", alarm_arn(region, account, alarm["AlarmName"]), (), origin)
                )
        if str(call) == "sagemaker:CreateEndpoint":
            logs(
                f"/aws/sagemaker/Endpoints/{p['EndpointName']}",
                "AllTraffic/i-0123456789abcdef0",
                "/aws/sagemaker/Endpoints",
                origin,
            )
    return out


def test_execution_role_allows_what_sagemaker_does_with_it(recorded, policies, values):
    calls, objects = recorded
    policy = Policy(policies["sagemaker-execution-policy"])
    requests = execution_role_requests(calls, objects, values)
    assert {r.action for r in requests} >= {"s3:GetObject", "s3:PutObject", "s3:ListBucket", "ecr:BatchGetImage"}
    denied = sorted({str(r) for r in requests if not policy.allows(r)})
    assert denied == [], "\n".join(denied)
    # Nothing beyond that: every action the role holds is one SageMaker was seen to need.
    granted = {a for st in statements(policies["sagemaker-execution-policy"]) for a in as_list(st["Action"])}
    assert granted == {r.action for r in requests}


# -- what the localcloud tests do ----------------------------------------------------------------------------
def localcloud_test_actions() -> dict[str, set[str]]:
    """IAM actions of the S3, SageMaker (control plane and runtime) and CloudWatch Logs calls the localcloud
    tests make on boto3 clients, found in their source; calls inside ``pytest.raises`` blocks are the tests
    checking that localcloud refuses something, not calls the pipeline makes."""
    import botocore.session
    from botocore import xform_name

    session = botocore.session.get_session()
    operations: dict[str, list[tuple[str, str]]] = {}
    for service in SERVICES:
        for op in session.get_service_model(service).operation_names:
            operations.setdefault(xform_name(op), []).append((service, op))

    found: dict[str, set[str]] = {}
    for path in LOCALCLOUD_TESTS:
        tree = ast.parse(path.read_text())
        expected_failures = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.With) and any("raises" in ast.unparse(item.context_expr) for item in node.items):
                expected_failures |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in operations
                and id(node) not in expected_failures
            ):
                for service, op in operations[node.func.attr]:
                    if f"{SERVICES[service]}:{op}" not in SERVICE_LINKED:
                        found.setdefault(f"{SERVICES[service]}:{op}", set()).add(path.name)
    return found


def test_airflow_policy_allows_every_action_the_localcloud_tests_make(policies):
    policy = Policy(policies["airflow-policy"])
    actions = localcloud_test_actions()
    assert {"s3:PutObject", "sagemaker:CreateTrainingJob", "sagemaker:InvokeEndpoint", "logs:GetLogEvents"} <= set(
        actions
    ), "the localcloud tests' calls were not found"
    s3_actions = {"HeadObject": "GetObject", "ListObjectsV2": "ListBucket", "HeadBucket": "ListBucket"}
    missing = []
    for action, files in sorted(actions.items()):
        service, _, op = action.partition(":")
        iam_action = f"s3:{s3_actions.get(op, op)}" if service == "s3" else action
        if not policy.allows_action(iam_action):
            missing.append(f"{iam_action} ({', '.join(sorted(files))})")
    assert missing == [], "\n".join(missing)


def test_every_action_the_airflow_policy_grants_is_used(recorded, policies, values):
    calls, _ = recorded
    used = {r.action for c in calls for r in iam_requests(c, account=values["AccountId"], region=values["Region"])}
    s3_actions = {"HeadObject": "GetObject", "ListObjectsV2": "ListBucket", "HeadBucket": "ListBucket"}
    for action in localcloud_test_actions():
        service, _, op = action.partition(":")
        used.add(f"s3:{s3_actions.get(op, op)}" if service == "s3" else action)
    granted = {a for st in statements(policies["airflow-policy"]) for a in as_list(st["Action"])}
    unused = granted - used - set(NOT_RECORDED)
    assert unused == set(), f"granted but never called: {sorted(unused)}"
    readme = (AWS_DIR / "README.md").read_text()
    for action in NOT_RECORDED:
        assert action in readme
