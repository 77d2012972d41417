"""The fine-tune as a SageMaker hyperparameter tuning job: its request, its checks, its best training job.

The tuning job wraps the run's CreateTrainingJob request: the same image, channels, resources and metric
definitions; the configured ranges (``sagemaker.tuning.ranges``) tuned; every other hyperparameter static.
The objective is the gate's metric (``validation:accuracy``), maximised, so the best training job is the one
the gate would rank first, and its model is the one deployed.
"""

from __future__ import annotations

from typing import Any, Mapping

from plugins.tlpipe.config import TuningConfig
from plugins.tlpipe.deploy.sagemaker_requests import (
    MAX_TUNING_NAME,
    NAME_RE,
    RequestError,
    botocore_problems,
    model_constraint_problems,
)
from training.contracts import PRIMARY_METRIC

OPERATION = "CreateHyperParameterTuningJob"


def tuning_job_request(tuning: TuningConfig, *, name: str, training: Mapping[str, Any]) -> dict:
    """CreateHyperParameterTuningJob around the run's CreateTrainingJob request: the gate's metric maximised over
    the configured ranges; the training request's hyperparameters that are not tuned stay static."""
    kinds = {"continuous": "ContinuousParameterRanges", "integer": "IntegerParameterRanges"}
    ranges: dict[str, list] = {}
    for knob, r in tuning.ranges.items():
        if r.type == "categorical":
            ranges.setdefault("CategoricalParameterRanges", []).append({"Name": knob, "Values": list(r.values)})
        else:
            cast = int if r.type == "integer" else float
            ranges.setdefault(kinds[r.type], []).append(
                {"Name": knob, "MinValue": str(cast(r.min)), "MaxValue": str(cast(r.max)), "ScalingType": r.scaling}
            )
    limits = {"MaxParallelTrainingJobs": tuning.max_parallel_jobs}
    if tuning.strategy != "Grid":
        limits["MaxNumberOfTrainingJobs"] = tuning.max_jobs
    static = {k: v for k, v in training["HyperParameters"].items() if k not in tuning.ranges}
    definition = {
        k: training[k]
        for k in (
            "RoleArn",
            "AlgorithmSpecification",
            "InputDataConfig",
            "OutputDataConfig",
            "ResourceConfig",
            "StoppingCondition",
        )
    }
    return {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": {
            "Strategy": tuning.strategy,
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": PRIMARY_METRIC},
            "ResourceLimits": limits,
            "ParameterRanges": ranges,
            "TrainingJobEarlyStoppingType": "Off",
        },
        "TrainingJobDefinition": {**definition, "StaticHyperParameters": static},
        "Tags": list(training.get("Tags") or []),
    }


def validate_tuning(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """``params`` unchanged when botocore, the service model and the project's rules accept them."""
    found = botocore_problems(OPERATION, params)
    found += [x for x in model_constraint_problems(OPERATION, params) if x not in found]
    name = params.get("HyperParameterTuningJobName")
    if not isinstance(name, str) or len(name) > MAX_TUNING_NAME or not NAME_RE.match(name):
        found.append(f"HyperParameterTuningJobName: {name!r} must be 1-{MAX_TUNING_NAME} letters, digits, hyphens")
    config = params.get("HyperParameterTuningJobConfig") or {}
    if not any((config.get("ParameterRanges") or {}).values()):
        found.append(
            "HyperParameterTuningJobConfig.ParameterRanges: no hyperparameter to tune (sagemaker.tuning.ranges)"
        )
    if found:
        raise RequestError(OPERATION, found)
    return params


def best_training_job(tuning: Mapping[str, Any]) -> str:
    """The name of the tuning job's best training job (DescribeHyperParameterTuningJob), or a clear error."""
    best = (tuning.get("BestTrainingJob") or {}).get("TrainingJobName")
    if not best:
        counters = tuning.get("TrainingJobStatusCounters") or {}
        raise ValueError(
            f"tuning job {tuning.get('HyperParameterTuningJobName')} is {tuning.get('HyperParameterTuningJobStatus')} "
            f"with no best training job (training jobs: {dict(counters)}; {tuning.get('FailureReason') or 'no reason given'})"
        )
    return best


def candidates(tuning: Mapping[str, Any], summaries: list[Mapping[str, Any]]) -> list[dict]:
    """Each child training job: its tuned values, status and objective (ListTrainingJobsForHyperParameterTuningJob)."""
    return [
        {
            "job": s["TrainingJobName"],
            "status": s["TrainingJobStatus"],
            "tuned": dict(s.get("TunedHyperParameters") or {}),
            "objective": (s.get("FinalHyperParameterTuningJobObjectiveMetric") or {}).get("Value"),
        }
        for s in summaries
    ]
