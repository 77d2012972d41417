"""Every SageMaker request the deploy DAG builds: botocore's service model, then the project's stricter rules."""

from __future__ import annotations

import copy

import pytest
from botocore.validate import ParamValidator

from plugins.tlpipe.config import load_config
from plugins.tlpipe.deploy import registry, steps
from plugins.tlpipe.deploy import sagemaker_requests as req
from training.finetune import CHANNELS, METRIC_DEFINITIONS, PRIMARY_METRIC

RUN_ID = "asset_triggered__2025-06-01T12:00:00.123456+00:00"
EVENT = {
    "model_uri": "s3://tlpipe/tlpipe/pretrained/5e1f/model.tar.gz",
    "model_sha256": "5e1f" * 16,
    "manifest_uri": "s3://tlpipe/tlpipe/pretrained/5e1f/manifest.json",
    "metrics_uri": "s3://tlpipe/tlpipe/pretrained/5e1f/metrics.json",
    "domain_train_uri": "s3://tlpipe/tlpipe/domain/ab12cd34/train/",
    "domain_validation_uri": "s3://tlpipe/tlpipe/domain/ab12cd34/validation/",
    "domain_classes": ["ring-dots", "stripes"],
    "dataset_fingerprint": "ab12cd34",
    "manifest_sha256": "9" * 64,
    "checkpoint_uri": "/ckpt/run/best",
    "epoch": 7,
    "val_accuracy": 0.83,
    "training_params": {"epochs": 8},
    "training_key": "k",
    "dag_id": "general_pretraining",
    "run_id": "scheduled__2025-06-01T00:00:00+00:00",
}


def params_of(cfg, **overrides) -> dict:
    from plugins.tlpipe.deploy.params import deploy_params

    values = {name: param.value for name, param in deploy_params(cfg).items()}
    values.update(overrides)
    return values


def built_requests(profile: str, environ: dict | None = None) -> dict[str, dict]:
    """The requests of one run, built the way the DAG's tasks build them."""
    cfg = load_config(profile, environ=environ or {})
    params = params_of(cfg, compare_scratch=True, hyperparameters={"epochs_head": 2, "augment": False})
    prepared = steps.prepare_finetune(
        cfg,
        params,
        dag_id="transfer_learning_deploy",
        run_id=RUN_ID,
        event=EVENT,
        read_latest=lambda: pytest.fail("the event is enough"),
    )
    outcome = {
        "job": prepared["names"]["job"],
        "metrics": {PRIMARY_METRIC: 0.9},
        "model_artifacts": f"{cfg.s3.uri('finetune')}/{prepared['names']['job']}/output/model.tar.gz",
    }
    gate = {
        "decision": {"accuracy": 0.9},
        "endpoint_plan": {"previous_config": "tlpipe-ft-000000000000-config", "action": "update"},
    }
    # The approved Model Registry version the run deploys (what registry.approved_version returns).
    version = {
        "arn": f"arn:aws:sagemaker:us-east-1:123456789012:model-package/{prepared['endpoint']}/1",
        "container": registry.serving_container(cfg.sagemaker, outcome["model_artifacts"]),
    }
    deploy = steps.deploy_requests(
        cfg,
        params,
        prepared=prepared,
        outcome=outcome,
        gate=gate,
        version=version,
        dag_id="transfer_learning_deploy",
        run_id=RUN_ID,
    )
    return {
        "CreateTrainingJob": prepared["training_request"],
        "CreateModel": deploy["model"],
        "CreateEndpointConfig": deploy["endpoint_config"],
        "CreateEndpoint": deploy["endpoint"],
        "UpdateEndpoint": req.endpoint_request(
            endpoint_name=deploy["endpoint"]["EndpointName"], config_name=gate["endpoint_plan"]["previous_config"]
        ),
    }


@pytest.mark.parametrize("profile", ["local", "production"])
def test_every_request_passes_botocore_and_the_project_checks(profile):
    model = req.service_model()
    for operation, params in built_requests(profile).items():
        report = ParamValidator().validate(params, model.operation_model(operation).input_shape)
        assert not report.has_errors(), (operation, report.generate_report())
        assert req.problems(operation, params) == [], operation
        assert req.validate(operation, params) is params


def test_training_request_carries_the_finetune_contract():
    training = built_requests("local")["CreateTrainingJob"]
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in training["InputDataConfig"]}
    assert channels == {
        "pretrained": EVENT["model_uri"],
        "train": EVENT["domain_train_uri"],
        "validation": EVENT["domain_validation_uri"],
    }
    assert tuple(sorted(channels)) == tuple(sorted(CHANNELS))
    assert training["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    assert training["HyperParameters"] == {
        "epochs_head": "2",
        "augment": "false",
        "compare_scratch": "true",
        "baseline_policy": "best",
        "baseline_margin": "0.01",
    }
    tags = req.tag_dict(training["Tags"])
    assert tags["run-id"] == RUN_ID and tags["dataset-fingerprint"] == "ab12cd34"
    assert training["TrainingJobName"] == req.resource_names("tlpipe", RUN_ID).job


def test_model_and_config_carry_accuracy_and_lineage_tags():
    built = built_requests("production")
    tags = req.tag_dict(built["CreateModel"]["Tags"])
    assert tags["accuracy"] == "0.9" and tags["endpoint"] == "tlpipe-domain"
    assert tags["pretrained-sha256"] == EVENT["model_sha256"] and tags["training-job"].startswith("tlpipe-ft-")
    variant = built["CreateEndpointConfig"]["ProductionVariants"][0]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.g5.xlarge", 2)
    assert variant["ModelName"] == built["CreateModel"]["ModelName"]


MANAGED_TFS = "763104351884.dkr.ecr.us-east-1.amazonaws.com/tensorflow-inference:2.16-cpu"


def test_managed_tfs_models_carry_the_containers_batching_environment():
    tfs = built_requests("production", {"TLPIPE__SAGEMAKER__SERVING_IMAGE_URI": MANAGED_TFS})["CreateModel"]
    assert tfs["PrimaryContainer"]["Image"] == MANAGED_TFS
    assert tfs["PrimaryContainer"]["Environment"] == {
        "SAGEMAKER_TFS_ENABLE_BATCHING": "true",
        "SAGEMAKER_TFS_MAX_BATCH_SIZE": "8",
        "SAGEMAKER_TFS_BATCH_TIMEOUT_MICROS": "1000",
    }
    assert req.problems("CreateModel", tfs) == []
    tuned = built_requests(
        "production",
        {
            "TLPIPE__SAGEMAKER__SERVING_IMAGE_URI": MANAGED_TFS + "@sha256:" + "0" * 64,
            "TLPIPE__SAGEMAKER__SERVING_BATCHING": "{max_batch_size: 32, num_batch_threads: 4}",
        },
    )["CreateModel"]["PrimaryContainer"]["Environment"]
    assert tuned["SAGEMAKER_TFS_MAX_BATCH_SIZE"] == "32" and tuned["SAGEMAKER_TFS_NUM_BATCH_THREADS"] == "4"
    off = {"TLPIPE__SAGEMAKER__SERVING_IMAGE_URI": MANAGED_TFS, "TLPIPE__SAGEMAKER__SERVING_BATCHING__ENABLED": "false"}
    assert "Environment" not in built_requests("production", off)["CreateModel"]["PrimaryContainer"]
    # The project's own serving image batches by itself: no TFS environment.
    assert "Environment" not in built_requests("production")["CreateModel"]["PrimaryContainer"]


def test_names_are_deterministic_distinct_and_within_the_limit():
    a, again, b = (req.resource_names("tlpipe", r) for r in (RUN_ID, RUN_ID, RUN_ID + "x"))
    assert a == again and a.job != b.job
    longest = req.resource_names("p" * 31, RUN_ID)
    names = [longest.job, longest.model, longest.endpoint_config, longest.job_attempt(99)]
    for name in names:
        assert len(name) <= 63 and req.NAME_RE.match(name), name
    assert a.job_attempt(1) == a.job and a.job_attempt(2) == f"{a.job}-r2"
    with pytest.raises(ValueError):
        req.resource_names("bad_prefix", RUN_ID)
    with pytest.raises(ValueError):
        req.resource_names("p" * 32, RUN_ID)


def _broken(operation: str, change) -> list[str]:
    params = copy.deepcopy(built_requests("local")[operation])
    change(params)
    return req.problems(operation, params)


@pytest.mark.parametrize(
    "operation, change, expected",
    [
        ("CreateTrainingJob", lambda p: p.update(TrainingJobName="fine_tune"), "TrainingJobName"),
        ("CreateTrainingJob", lambda p: p.update(TrainingJobName="x" * 64), "TrainingJobName"),
        ("CreateTrainingJob", lambda p: p.pop("AlgorithmSpecification"), "AlgorithmSpecification is required"),
        ("CreateTrainingJob", lambda p: p["AlgorithmSpecification"].pop("TrainingImage"), "TrainingImage"),
        (
            "CreateTrainingJob",
            lambda p: p["AlgorithmSpecification"].update(MetricDefinitions=METRIC_DEFINITIONS[:2]),
            PRIMARY_METRIC,
        ),
        ("CreateTrainingJob", lambda p: p["ResourceConfig"].update(InstanceType="m5.xlarge"), "ml.<family>.<size>"),
        (
            "CreateTrainingJob",
            lambda p: p["ResourceConfig"].update(InstanceType="ml.m5.gigantic"),
            "TrainingInstanceType",
        ),
        ("CreateTrainingJob", lambda p: p["ResourceConfig"].update(InstanceCount="1"), "InstanceCount"),
        ("CreateTrainingJob", lambda p: p.update(RoleArn="arn:aws:iam::123:user/me"), "RoleArn"),
        ("CreateTrainingJob", lambda p: p["InputDataConfig"].pop(0), "channels must be"),
        (
            "CreateTrainingJob",
            lambda p: p["InputDataConfig"][1]["DataSource"]["S3DataSource"].update(S3Uri="https://example.com/train/"),
            "s3://<bucket>/<key>",
        ),
        ("CreateTrainingJob", lambda p: p["OutputDataConfig"].update(S3OutputPath="s3://Bad_Bucket/x"), "S3OutputPath"),
        ("CreateTrainingJob", lambda p: p.update(Tags=[{"Key": "aws:owner", "Value": "me"}]), "reserved"),
        ("CreateTrainingJob", lambda p: p.update(Tags=[{"Key": "k", "Value": "a\nb"}]), "Tags[0].Value"),
        ("CreateTrainingJob", lambda p: p.update(Hyperparameters={}), "Unknown parameter"),
        ("CreateTrainingJob", lambda p: p.pop("RoleArn"), "Missing required parameter"),
        ("CreateModel", lambda p: p.update(ModelName="model.v2"), "ModelName"),
        ("CreateModel", lambda p: p["PrimaryContainer"].update(ModelDataUrl="/tmp/model.tar.gz"), "ModelDataUrl"),
        ("CreateModel", lambda p: p.pop("PrimaryContainer"), "PrimaryContainer"),
        (
            "CreateEndpointConfig",
            lambda p: p["ProductionVariants"][0].update(InstanceType="ml.p3.enormous"),
            "ProductionVariantInstanceType",
        ),
        (
            "CreateEndpointConfig",
            lambda p: p["ProductionVariants"][0].update(InitialInstanceCount=0),
            "InitialInstanceCount",
        ),
        (
            "CreateEndpointConfig",
            lambda p: p["ProductionVariants"].append(dict(p["ProductionVariants"][0])),
            "exactly one variant",
        ),
        ("CreateEndpoint", lambda p: p.update(EndpointName="-leading-hyphen"), "EndpointName"),
        ("UpdateEndpoint", lambda p: p.update(EndpointConfigName="a" * 64), "EndpointConfigName"),
    ],
)
def test_bad_requests_are_refused(operation, change, expected):
    found = _broken(operation, change)
    assert any(expected in problem for problem in found), found
    params = copy.deepcopy(built_requests("local")[operation])
    change(params)
    with pytest.raises(req.RequestError) as err:
        req.validate(operation, params)
    assert err.value.operation == operation and err.value.problems == found


def test_botocore_alone_lets_the_project_rules_through():
    """The reason for the stricter checks: botocore's validator accepts all of these."""
    params = copy.deepcopy(built_requests("local")["CreateTrainingJob"])
    params.pop("AlgorithmSpecification")
    params["TrainingJobName"] = "fine_tune"
    params["ResourceConfig"]["InstanceType"] = "ml.m5.gigantic"
    shape = req.service_model().operation_model("CreateTrainingJob").input_shape
    assert not ParamValidator().validate(params, shape).has_errors()
    assert len(req.problems("CreateTrainingJob", params)) >= 3


def test_tag_values_are_made_acceptable():
    assert req.tag_value("manual__2025-01-01T00:00:00+00:00") == "manual__2025-01-01T00:00:00+00:00"
    assert req.tag_value("a\nb;c") == "a-b-c"
    assert len(req.tag_value("x" * 300)) == 256
    assert req.tags({"accuracy": 0.5, "missing": None}) == [{"Key": "tlpipe:accuracy", "Value": "0.5"}]
    assert req.tag_dict([{"Key": "tlpipe:accuracy", "Value": "0.5"}, {"Key": "other", "Value": "x"}]) == {
        "accuracy": "0.5"
    }
    assert req.hyperparameter_strings({"a": True, "b": 0.5, "c": "x"}) == {"a": "true", "b": "0.5", "c": "x"}


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"serving_instance_type": "ml.fake.huge"}, "InstanceType"),
        ({"hyperparameters": {"epochs_head": -1}}, "epochs_head"),
        ({"hyperparameters": {"no_such_knob": 1}}, "no_such_knob"),
    ],
)
def test_prepare_refuses_what_would_fail_after_the_training_job(overrides, words):
    """A serving instance type SageMaker does not have, or hyperparameters the job would refuse, fail the run's
    prepare task, before any (paid) training job exists."""
    cfg = load_config("local", environ={})
    with pytest.raises(req.RequestError, match=words):
        steps.prepare_finetune(
            cfg,
            params_of(cfg, **overrides),
            dag_id="transfer_learning_deploy",
            run_id=RUN_ID,
            event=EVENT,
            read_latest=lambda: None,
        )
