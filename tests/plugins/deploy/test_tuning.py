"""The fine-tune as a SageMaker hyperparameter tuning job: the request the DAG sends, its checks, the best job."""

from __future__ import annotations

import pytest
from botocore.validate import ParamValidator
from test_sagemaker_requests import EVENT, RUN_ID, params_of

from plugins.tlpipe.config import TuningConfig, TuningRange, load_config
from plugins.tlpipe.deploy import sagemaker_requests as req
from plugins.tlpipe.deploy import steps, tuning
from training.finetune import RECIPES, Hyperparameters


def prepared_with_tuning(profile: str = "production", **params) -> dict:
    cfg = load_config(profile, environ={})
    return steps.prepare_finetune(
        cfg,
        params_of(cfg, tuning=True, hyperparameters={"epochs_head": 2}, **params),
        dag_id="transfer_learning_deploy",
        run_id=RUN_ID,
        event=EVENT,
        read_latest=lambda: pytest.fail("the event is enough"),
    )


@pytest.mark.parametrize("profile", ["local", "production"])
def test_the_tuning_request_wraps_the_training_request(profile):
    prepared = prepared_with_tuning(profile)
    assert steps.finetune_task(prepared) == "tune"
    request, training = prepared["tuning_request"], prepared["training_request"]
    report = ParamValidator().validate(request, req.service_model().operation_model(tuning.OPERATION).input_shape)
    assert not report.has_errors(), report.generate_report()
    name = request["HyperParameterTuningJobName"]
    assert name == prepared["names"]["tuning_job"] and len(name) + len("-r20") <= req.MAX_TUNING_NAME
    config = request["HyperParameterTuningJobConfig"]
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "validation:accuracy"}
    assert config["ResourceLimits"] == {"MaxParallelTrainingJobs": 2, "MaxNumberOfTrainingJobs": 4}
    ranges = config["ParameterRanges"]
    assert ranges["CategoricalParameterRanges"] == [{"Name": "recipes", "Values": list(RECIPES)}]
    continuous = {r["Name"]: r for r in ranges["ContinuousParameterRanges"]}
    assert continuous["backbone_lr_ratio"]["ScalingType"] == "Logarithmic"
    tuned = {"recipes", *continuous}
    assert tuned <= set(Hyperparameters.model_fields)  # only knobs the job has
    definition = request["TrainingJobDefinition"]
    assert definition["StaticHyperParameters"] == {
        k: v for k, v in training["HyperParameters"].items() if k not in tuned
    }
    assert definition["StaticHyperParameters"]["epochs_head"] == "2"
    for key in ("AlgorithmSpecification", "InputDataConfig", "OutputDataConfig", "ResourceConfig", "RoleArn"):
        assert definition[key] == training[key]
    assert request["Tags"] == training["Tags"]


def test_tuning_job_names_leave_room_for_every_attempt():
    from plugins.tlpipe.deploy.operators import MAX_JOB_ATTEMPTS

    for prefix in ("t", "tlpipe", "a" * 31, "abcdefghij-k" + "x" * 19):
        base = req.resource_names(prefix, RUN_ID).tuning_job
        names = [req.job_attempt_name(base, i, req.MAX_TUNING_NAME) for i in range(1, MAX_JOB_ATTEMPTS + 1)]
        assert len(set(names)) == MAX_JOB_ATTEMPTS and all(len(n) <= req.MAX_TUNING_NAME for n in names)


def test_without_the_param_no_tuning_request_is_built():
    cfg = load_config("local", environ={})
    prepared = steps.prepare_finetune(
        cfg, params_of(cfg), dag_id="d", run_id=RUN_ID, event=EVENT, read_latest=lambda: None
    )
    assert prepared["tuning_request"] is None and steps.finetune_task(prepared) == "finetune"


def test_grid_search_and_bad_tuning_configurations():
    training = prepared_with_tuning()["training_request"]
    grid = TuningConfig(
        strategy="Grid", ranges={"recipes": TuningRange(type="categorical", values=("full", "linear_probe"))}
    )
    request = tuning.tuning_job_request(grid, name="tl-hpo-1", training=training)
    assert "MaxNumberOfTrainingJobs" not in request["HyperParameterTuningJobConfig"]["ResourceLimits"]
    assert tuning.validate_tuning(request) is request
    with pytest.raises(req.RequestError, match="no hyperparameter to tune"):
        tuning.validate_tuning(tuning.tuning_job_request(TuningConfig(), name="tl-hpo-1", training=training))
    with pytest.raises(req.RequestError, match="HyperParameterTuningJobName"):
        tuning.validate_tuning(tuning.tuning_job_request(grid, name="x" * 33, training=training))
    with pytest.raises(ValueError, match="needs values"):
        TuningRange(type="categorical")
    with pytest.raises(ValueError, match="min <= max"):
        TuningRange(type="continuous", min=2, max=1)


def test_the_best_training_job_or_a_clear_reason():
    done = {"HyperParameterTuningJobName": "t", "BestTrainingJob": {"TrainingJobName": "t-001-abcdef01"}}
    assert tuning.best_training_job(done) == "t-001-abcdef01"
    failed = {
        "HyperParameterTuningJobName": "t",
        "HyperParameterTuningJobStatus": "Failed",
        "TrainingJobStatusCounters": {"NonRetryableError": 2},
        "FailureReason": "No training job succeeded",
    }
    with pytest.raises(ValueError, match="no best training job.*NonRetryableError.*No training job succeeded"):
        tuning.best_training_job(failed)
    summaries = [
        {
            "TrainingJobName": "t-001-abcdef01",
            "TrainingJobStatus": "Completed",
            "TunedHyperParameters": {"recipes": "full"},
            "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "validation:accuracy", "Value": 0.9},
        },
        {"TrainingJobName": "t-002-abcdef02", "TrainingJobStatus": "Failed", "TunedHyperParameters": {}},
    ]
    assert tuning.candidates(done, summaries) == [
        {"job": "t-001-abcdef01", "status": "Completed", "tuned": {"recipes": "full"}, "objective": 0.9},
        {"job": "t-002-abcdef02", "status": "Failed", "tuned": {}, "objective": None},
    ]
