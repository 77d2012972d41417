"""A tuning job's search space: SageMaker's rules for it, and the hyperparameters each training job gets."""

from __future__ import annotations

import hashlib
import itertools
import math
import random

from .errors import validation

STRATEGIES = ("Random", "Grid")
MAX_TUNED = 30  # SageMaker's limit on tuned hyperparameters
RANGE_KINDS = ("IntegerParameterRanges", "ContinuousParameterRanges", "CategoricalParameterRanges")


def _ranges(config: dict) -> dict[str, list[dict]]:
    ranges = config.get("ParameterRanges") or {}
    return {kind: list(ranges.get(kind) or []) for kind in RANGE_KINDS}


def check_space(body: dict) -> None:
    config = body["HyperParameterTuningJobConfig"]
    strategy = config.get("Strategy")
    if strategy not in STRATEGIES:
        raise validation(f"localcloud runs the Random and Grid tuning strategies, not {strategy}.")
    for unsupported in ("TuningJobCompletionCriteria", "StrategyConfig"):
        if config.get(unsupported):
            raise validation(f"localcloud does not support {unsupported}.")
    if config.get("TrainingJobEarlyStoppingType", "Off") != "Off":
        raise validation("localcloud does not support TrainingJobEarlyStoppingType Auto.")
    if body.get("WarmStartConfig") or body.get("TrainingJobDefinitions") or not body.get("TrainingJobDefinition"):
        raise validation("localcloud runs one TrainingJobDefinition per tuning job, without WarmStartConfig.")
    definition = body["TrainingJobDefinition"]
    objective = config.get("HyperParameterTuningJobObjective")
    if not objective:
        raise validation("HyperParameterTuningJobObjective is required for the Random and Grid strategies.")
    metrics = [m["Name"] for m in definition["AlgorithmSpecification"].get("MetricDefinitions") or []]
    if objective["MetricName"] not in metrics:
        raise validation(
            f"The objective metric for the hyperparameter tuning job, [{objective['MetricName']}], isn't valid "
            f"for the [{definition['AlgorithmSpecification'].get('TrainingImage')}] algorithm. Choose a valid "
            f"objective metric (one of the MetricDefinitions: {', '.join(metrics) or 'none'})."
        )
    ranges = _ranges(config)
    names = [r["Name"] for kind in RANGE_KINDS for r in ranges[kind]]
    if not names:
        raise validation("ParameterRanges must name at least one hyperparameter to tune.")
    if len(names) > MAX_TUNED:
        raise validation(f"You can tune at most {MAX_TUNED} hyperparameters; {len(names)} were given.")
    static = set(definition.get("StaticHyperParameters") or {})
    for name in names:
        if names.count(name) > 1:
            raise validation(f"Hyperparameter {name} has more than one range.")
        if name in static:
            raise validation(f"Hyperparameter {name} is both static and tunable.")
    for kind, cast in (("IntegerParameterRanges", int), ("ContinuousParameterRanges", float)):
        for r in ranges[kind]:
            try:
                low, high = cast(r["MinValue"]), cast(r["MaxValue"])
            except ValueError:
                raise validation(f"The range of {r['Name']} is not a valid {cast.__name__} range.") from None
            if low > high:
                raise validation(f"MinValue of {r['Name']} ({low}) is greater than its MaxValue ({high}).")
            scaling = r.get("ScalingType") or "Auto"
            if (scaling == "Logarithmic" and low <= 0) or (
                scaling == "ReverseLogarithmic" and not 0 <= low <= high < 1
            ):
                raise validation(
                    f"The {scaling} scaling of {r['Name']} needs "
                    + ("values greater than 0." if scaling == "Logarithmic" else "values in [0, 1).")
                )
    limits = config.get("ResourceLimits") or {}
    if strategy == "Grid":
        if ranges["IntegerParameterRanges"] or ranges["ContinuousParameterRanges"]:
            raise validation("The Grid strategy supports only CategoricalParameterRanges.")
    elif not limits.get("MaxNumberOfTrainingJobs"):
        raise validation("MaxNumberOfTrainingJobs is required for the Random strategy.")


def _scaled(r: dict, u: float, kind: str):
    low, high = float(r["MinValue"]), float(r["MaxValue"])
    scaling = r.get("ScalingType") or "Auto"
    if scaling == "Logarithmic":
        value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    elif scaling == "ReverseLogarithmic":
        value = 1 - math.exp(math.log(1 - high) + u * (math.log(1 - low) - math.log(1 - high)))
    else:  # Auto and Linear
        value = low + u * (high - low)
    if kind == "IntegerParameterRanges":
        return str(min(int(high), max(int(low), int(round(value)))))
    return repr(min(high, max(low, value)))


def draw_configs(name: str, config: dict) -> list[dict[str, str]]:
    """The tuned hyperparameters of every training job the tuning job will run, in launch order."""
    ranges = _ranges(config)
    limit = (config.get("ResourceLimits") or {}).get("MaxNumberOfTrainingJobs")
    if config["Strategy"] == "Grid":
        cats = ranges["CategoricalParameterRanges"]
        grid = [
            dict(zip([c["Name"] for c in cats], combo)) for combo in itertools.product(*(c["Values"] for c in cats))
        ]
        return grid[:limit] if limit else grid
    rng = random.Random(int(hashlib.sha256(name.lower().encode()).hexdigest()[:16], 16))
    out = []
    for _ in range(limit):
        tuned = {}
        for kind in RANGE_KINDS:
            for r in ranges[kind]:
                tuned[r["Name"]] = (
                    rng.choice(r["Values"]) if kind == "CategoricalParameterRanges" else _scaled(r, rng.random(), kind)
                )
        out.append(tuned)
    return out
