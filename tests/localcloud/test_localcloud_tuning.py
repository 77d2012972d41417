"""Hyperparameter tuning jobs on localcloud: SageMaker's API, statuses, limits and errors, with child training
jobs that really run (the test container scores ``1 - penalty`` on its images, so the best job is known)."""

from __future__ import annotations

import re
import time
import uuid

import pytest
from botocore.exceptions import ClientError
from localcloud_fixtures import training_job_request, upload_dataset

BUCKET = "tlpipe-localcloud-tuning"


@pytest.fixture(scope="module")
def clients(localcloud_server):
    return {s: localcloud_server.client(s) for s in ("sagemaker", "s3")}


@pytest.fixture(scope="module")
def dataset(clients):
    clients["s3"].create_bucket(Bucket=BUCKET)
    upload_dataset(clients["s3"], BUCKET, "images")
    return "images"


def tuning_request(name: str, prefix: str, ranges: dict, strategy: str = "Random", **limits) -> dict:
    job = training_job_request("unused", BUCKET, prefix)
    definition = {
        k: job[k]
        for k in (
            "RoleArn",
            "AlgorithmSpecification",
            "InputDataConfig",
            "OutputDataConfig",
            "ResourceConfig",
            "StoppingCondition",
        )
    }
    definition["StaticHyperParameters"] = {"epochs": "1"}
    return {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": {
            "Strategy": strategy,
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "validation:accuracy"},
            "ResourceLimits": {"MaxParallelTrainingJobs": 2, **limits},
            "ParameterRanges": ranges,
            "TrainingJobEarlyStoppingType": "Off",
        },
        "TrainingJobDefinition": definition,
    }


def wait_for_tuning(sm, name: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
        if job["HyperParameterTuningJobStatus"] not in ("InProgress", "Stopping"):
            return job
        assert time.monotonic() < deadline, f"tuning job {name} still {job['HyperParameterTuningJobStatus']}"
        time.sleep(0.3)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def error_of(excinfo) -> tuple[str, str]:
    return excinfo.value.response["Error"]["Code"], excinfo.value.response["Error"]["Message"]


def test_random_search_runs_its_training_jobs_and_names_the_best(clients, dataset):
    sm = clients["sagemaker"]
    name = unique("tune")
    ranges = {
        "CategoricalParameterRanges": [{"Name": "penalty", "Values": ["0.5", "0.1", "0.3", "0.4"]}],
        "ContinuousParameterRanges": [
            {"Name": "learning_rate", "MinValue": "0.0001", "MaxValue": "0.1", "ScalingType": "Logarithmic"}
        ],
        "IntegerParameterRanges": [{"Name": "version", "MinValue": "1", "MaxValue": "9", "ScalingType": "Linear"}],
    }
    arn = sm.create_hyper_parameter_tuning_job(**tuning_request(name, dataset, ranges, MaxNumberOfTrainingJobs=3))[
        "HyperParameterTuningJobArn"
    ]
    assert arn == f"arn:aws:sagemaker:us-east-1:123456789012:hyper-parameter-tuning-job/{name}"
    job = wait_for_tuning(sm, name)
    assert job["HyperParameterTuningJobStatus"] == "Completed", job.get("FailureReason")
    assert job["TrainingJobStatusCounters"] == {
        "Completed": 3,
        "InProgress": 0,
        "RetryableError": 0,
        "NonRetryableError": 0,
        "Stopped": 0,
    }
    assert job["ObjectiveStatusCounters"] == {"Succeeded": 3, "Pending": 0, "Failed": 0}
    children = sm.list_training_jobs_for_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=name, SortBy="FinalObjectiveMetricValue", SortOrder="Descending"
    )["TrainingJobSummaries"]
    assert len(children) == 3
    values = [c["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] for c in children]
    assert values == sorted(values, reverse=True)
    best = job["BestTrainingJob"]
    assert best["TrainingJobName"] == children[0]["TrainingJobName"]
    assert best["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == pytest.approx(
        1 - min(float(c["TunedHyperParameters"]["penalty"]) for c in children)
    )
    for child in children:
        assert re.fullmatch(rf"{name}-00[1-3]-[0-9a-f]{{8}}", child["TrainingJobName"])
        tuned = child["TunedHyperParameters"]
        assert 1e-4 <= float(tuned["learning_rate"]) <= 0.1 and 1 <= int(tuned["version"]) <= 9
        described = sm.describe_training_job(TrainingJobName=child["TrainingJobName"])
        assert described["TuningJobArn"] == arn
        assert described["HyperParameters"] == {
            "epochs": "1",
            **tuned,
            "_tuning_objective_metric": "validation:accuracy",
        }
    # The same draw for the same name (seeded), so a restarted localcloud resumes the same search.
    assert len({c["TunedHyperParameters"]["learning_rate"] for c in children}) == 3


def test_grid_search_runs_every_combination(clients, dataset):
    sm = clients["sagemaker"]
    name = unique("grid")
    ranges = {
        "CategoricalParameterRanges": [
            {"Name": "penalty", "Values": ["0.2", "0.0"]},
            {"Name": "version", "Values": ["1", "2"]},
        ]
    }
    sm.create_hyper_parameter_tuning_job(**tuning_request(name, dataset, ranges, strategy="Grid"))
    job = wait_for_tuning(sm, name)
    assert job["HyperParameterTuningJobStatus"] == "Completed"
    children = sm.list_training_jobs_for_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)[
        "TrainingJobSummaries"
    ]
    assert sorted((c["TunedHyperParameters"]["penalty"], c["TunedHyperParameters"]["version"]) for c in children) == [
        ("0.0", "1"),
        ("0.0", "2"),
        ("0.2", "1"),
        ("0.2", "2"),
    ]
    assert job["BestTrainingJob"]["TunedHyperParameters"]["penalty"] == "0.0"
    page = sm.list_training_jobs_for_hyper_parameter_tuning_job(HyperParameterTuningJobName=name, MaxResults=3)
    rest = sm.list_training_jobs_for_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=name, MaxResults=3, NextToken=page["NextToken"]
    )
    assert len(page["TrainingJobSummaries"]) == 3 and len(rest["TrainingJobSummaries"]) == 1


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda r: r["HyperParameterTuningJobConfig"].update(Strategy="Bayesian"), "Random and Grid"),
        (
            lambda r: r["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"].update(MetricName="x:y"),
            "objective metric",
        ),
        (
            lambda r: r["HyperParameterTuningJobConfig"]["ResourceLimits"].pop("MaxNumberOfTrainingJobs"),
            "MaxNumberOfTrainingJobs is required",
        ),
        (lambda r: r["TrainingJobDefinition"]["StaticHyperParameters"].update(penalty="0"), "both static and tunable"),
        (lambda r: r["HyperParameterTuningJobConfig"].update(Strategy="Grid"), "only CategoricalParameterRanges"),
        (
            lambda r: r["HyperParameterTuningJobConfig"]["ParameterRanges"].update(
                IntegerParameterRanges=[{"Name": "n", "MinValue": "5", "MaxValue": "2"}]
            ),
            "greater than its MaxValue",
        ),
        (lambda r: r["TrainingJobDefinition"]["ResourceConfig"].update(InstanceCount=2), "one instance"),
    ],
)
def test_invalid_tuning_jobs_are_refused_like_sagemaker(clients, dataset, change, words):
    sm = clients["sagemaker"]
    ranges = {"ContinuousParameterRanges": [{"Name": "penalty", "MinValue": "0", "MaxValue": "0.5"}]}
    request = tuning_request(unique("bad"), dataset, ranges, MaxNumberOfTrainingJobs=2)
    change(request)
    with pytest.raises(ClientError) as err:
        sm.create_hyper_parameter_tuning_job(**request)
    code, message = error_of(err)
    assert code == "ValidationException" and words in message
    with pytest.raises(ClientError) as err:
        sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=request["HyperParameterTuningJobName"])
    assert error_of(err) == (
        "ResourceNotFound",
        f"Amazon SageMaker can't find a tuning job with name {request['HyperParameterTuningJobName']}",
    )


def test_stopping_a_tuning_job_stops_its_training_jobs(clients, dataset):
    sm = clients["sagemaker"]
    name = unique("stop")
    ranges = {"CategoricalParameterRanges": [{"Name": "penalty", "Values": ["0.1", "0.2", "0.3"]}]}
    request = tuning_request(name, dataset, ranges, MaxNumberOfTrainingJobs=3)
    request["TrainingJobDefinition"]["StaticHyperParameters"] = {"epochs": "200", "epoch_seconds": "1"}
    sm.create_hyper_parameter_tuning_job(**request)
    with pytest.raises(ClientError) as err:
        sm.create_hyper_parameter_tuning_job(**request)
    assert error_of(err)[0] == "ResourceInUse"
    deadline = time.monotonic() + 60
    while (
        sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)["TrainingJobStatusCounters"][
            "InProgress"
        ]
        < 2
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    sm.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    job = wait_for_tuning(sm, name)
    assert job["HyperParameterTuningJobStatus"] == "Stopped"
    # MaxParallelTrainingJobs=2: the third never started; the two running ones were stopped.
    assert job["TrainingJobStatusCounters"]["Stopped"] == 2 and job["TrainingJobStatusCounters"]["Completed"] == 0
    with pytest.raises(ClientError) as err:
        sm.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    assert error_of(err) == (
        "ValidationException",
        "The request was rejected because the tuning job is in status Stopped.",
    )
