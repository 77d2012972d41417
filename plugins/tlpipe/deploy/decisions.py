"""The deploy DAG's decisions, as pure functions of what SageMaker and S3 reported.

    resolve_inputs      Params + the triggering ``pretrained-model`` event (or latest.json) -> what to fine-tune
    plan_training_job   the run's deterministic job names and their statuses -> create, reuse or wait
    final_metrics       DescribeTrainingJob -> {metric: value} from FinalMetricDataList
    plan_endpoint       DescribeEndpoint before deploying -> create | update, and the config to roll back to
    quality_gate        accuracy vs the threshold and vs the live model's ``tlpipe:accuracy`` tag
    verify_live_config  is the endpoint InService on the config this run deployed?
    plan_rollback       after a failed deploy/verify/smoke test -> none | update | recreate | delete | wait
    plan_retention      which models and endpoint configs to delete (keep the newest N, never live/previous)
    lineage_record      the JSON written to S3: dataset -> pretrained checkpoint -> job -> model -> config -> endpoint

Nothing here talks to AWS; ``plugins.tlpipe.deploy.steps`` does, and calls these.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, ValidationError

from plugins.tlpipe.assets import ASSET_NAME, PretrainedModelEvent
from training.contracts import PRIMARY_METRIC

LINEAGE_SCHEMA = "tlpipe.lineage/v1"
# Tags (under the tlpipe: prefix) that the gate and retention read back.
ACCURACY_TAG = "accuracy"
ENDPOINT_TAG = "endpoint"
TRANSITIONAL = ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting", "UpdateRollbackFailed")
UNUSABLE = ("Failed", "OutOfService")
_DOMAIN_FINGERPRINT = re.compile(r"/domain/([0-9a-f]{8,})/")


# -- inputs ---------------------------------------------------------------------------------------------------
def event_extra(events: Mapping | None, asset_name: str = ASSET_NAME) -> dict | None:
    """The ``extra`` of the newest triggering event of the named Asset (``triggering_asset_events``), or None."""
    if not events:
        return None
    for asset in list(events):
        if getattr(asset, "name", None) == asset_name:
            found = list(events[asset])
            if found:
                return dict(found[-1].extra or {})
    return None


class DeployInputs(BaseModel):
    """What this run fine-tunes on, and what is known of its lineage."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["asset-event", "latest", "params"]
    model_uri: str
    domain_train_uri: str
    domain_validation_uri: str
    domain_classes: list[str] = []
    model_sha256: str | None = None
    manifest_uri: str | None = None
    manifest_sha256: str | None = None
    dataset_fingerprint: str | None = None
    checkpoint_uri: str | None = None
    pretrained_val_accuracy: float | None = None
    pretrained_run_id: str | None = None
    pretrained_dag_id: str | None = None


def resolve_inputs(params: Mapping[str, Any], event: Mapping | None, latest: Mapping | None) -> DeployInputs:
    """Explicit Params win; the rest comes from the triggering event, else from the last export (latest.json)."""
    record = None
    raw, origin = (event, "asset-event") if event else (latest, "latest")
    if raw:
        try:
            record = PretrainedModelEvent.model_validate(dict(raw))
        except ValidationError as err:
            raise ValueError(f"the {origin} record is not a pretrained-model event: {err}") from None
    model_uri = params.get("base_model_uri") or (record.model_uri if record else "")
    domain = params.get("domain_dataset_uri") or ""
    if domain:
        domain = domain if domain.endswith("/") else domain + "/"
        train, validation = domain + "train/", domain + "validation/"
    elif record:
        train, validation = record.domain_train_uri, record.domain_validation_uri
    else:
        train = validation = ""
    if not model_uri or not train:
        raise ValueError(
            "nothing to fine-tune: no pretrained-model event triggered this run, no latest.json was "
            "found, and the Params base_model_uri/domain_dataset_uri are not both set"
        )
    overridden = bool(params.get("base_model_uri") or params.get("domain_dataset_uri"))
    same_model = record is not None and model_uri == record.model_uri
    same_data = record is not None and train == record.domain_train_uri
    fingerprint = record.dataset_fingerprint if same_data else None
    if fingerprint is None and (m := _DOMAIN_FINGERPRINT.search(train)):
        fingerprint = m.group(1)
    return DeployInputs(
        source="params" if overridden else origin,
        model_uri=model_uri,
        domain_train_uri=train,
        domain_validation_uri=validation,
        domain_classes=list(record.domain_classes) if same_data else [],
        model_sha256=record.model_sha256 if same_model else None,
        manifest_uri=record.manifest_uri if same_model else None,
        manifest_sha256=record.manifest_sha256 if same_model else None,
        dataset_fingerprint=fingerprint,
        checkpoint_uri=record.checkpoint_uri if same_model else None,
        pretrained_val_accuracy=record.val_accuracy if same_model else None,
        pretrained_run_id=record.run_id if same_model else None,
        pretrained_dag_id=record.dag_id if same_model else None,
    )


# -- the training job -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingJobPlan:
    action: Literal["create", "reuse", "wait"]
    name: str
    reason: str


def plan_training_job(names: Sequence[str], statuses: Sequence[str | None]) -> TrainingJobPlan:
    """``names``: the run's attempt names in order; ``statuses``: DescribeTrainingJob status of each (None: absent).

    The newest existing attempt decides: Completed -> reuse it, InProgress/Stopping -> wait on it, Failed or
    Stopped -> start the next attempt. No attempt yet -> create the first.
    """
    existing = [(n, s) for n, s in zip(names, statuses) if s is not None]
    if not existing:
        return TrainingJobPlan("create", names[0], f"no training job {names[0]} yet: creating it")
    name, status = existing[-1]
    if status == "Completed":
        return TrainingJobPlan("reuse", name, f"training job {name} already Completed: reusing its results")
    if status in ("InProgress", "Stopping"):
        return TrainingJobPlan(
            "wait", name, f"training job {name} is {status}: waiting for it instead of starting another"
        )
    index = list(names).index(name)
    if index + 1 >= len(names):
        raise RuntimeError(f"training job {name} is {status} and all {len(names)} attempt names are used")
    nxt = names[index + 1]
    return TrainingJobPlan("create", nxt, f"training job {name} is {status}: starting {nxt}")


def final_metrics(description: Mapping[str, Any]) -> dict[str, float]:
    """``FinalMetricDataList`` -> ``{"validation:accuracy": 0.91, ...}`` (non-finite values dropped)."""
    out = {}
    for item in description.get("FinalMetricDataList") or []:
        try:
            value = float(item["Value"])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(value):
            out[item["MetricName"]] = value
    return out


# -- the endpoint before deploying ----------------------------------------------------------------------------
@dataclass(frozen=True)
class EndpointPlan:
    action: Literal["create", "update"]
    endpoint: str
    previous_config: str | None
    reason: str


class EndpointBusy(RuntimeError):
    """The endpoint is changing (or unusable) and must not be deployed to now."""


def plan_endpoint(endpoint: str, description: Mapping[str, Any] | None) -> EndpointPlan:
    if description is None:
        return EndpointPlan("create", endpoint, None, f"endpoint {endpoint} does not exist: it will be created")
    status = description.get("EndpointStatus")
    config = description.get("EndpointConfigName")
    if status == "InService":
        return EndpointPlan(
            "update",
            endpoint,
            config,
            f"endpoint {endpoint} serves {config}: it will be updated (rollback target {config})",
        )
    if status in TRANSITIONAL:
        raise EndpointBusy(
            f"endpoint {endpoint} is {status}: another change is in progress; try again when it is InService"
        )
    reason = description.get("FailureReason") or "no reason given"
    raise EndpointBusy(
        f"endpoint {endpoint} is {status} ({reason}): it cannot be updated; delete it, and the next "
        "run creates it afresh"
    )


# -- the quality gate -----------------------------------------------------------------------------------------
class MissingMetric(RuntimeError):
    """The training job reported no value for the gate's metric (its MetricDefinitions do not match the log)."""


@dataclass(frozen=True)
class GateDecision:
    deploy: bool
    reason: str
    metric: str
    accuracy: float
    threshold: float
    live_accuracy: float | None
    live_model: str | None

    def as_dict(self) -> dict:
        return asdict(self)


def live_accuracy(tag_values: Mapping[str, str]) -> float | None:
    """The live model's accuracy tag (``tag_dict`` of ListTags), or None when it has none or it is unreadable."""
    try:
        value = float(tag_values[ACCURACY_TAG])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def quality_gate(
    metrics: Mapping[str, float],
    threshold: float,
    live: float | None = None,
    live_model: str | None = None,
    metric: str = PRIMARY_METRIC,
) -> GateDecision:
    """Deploy only when ``metric`` >= ``threshold`` and >= the live model's accuracy (ties deploy)."""
    if metric not in metrics:
        raise MissingMetric(
            f"the training job reported no {metric} (metrics: {', '.join(sorted(metrics)) or 'none'}); "
            "check the MetricDefinitions against the job's log"
        )
    accuracy = float(metrics[metric])
    failures = []
    if accuracy < threshold:
        failures.append(f"{metric} {accuracy:.4f} is below the threshold {threshold:.4f}")
    if live is not None and accuracy < live:
        failures.append(f"{metric} {accuracy:.4f} is below the live model {live_model}'s {live:.4f}")
    if failures:
        reason = "not deploying: " + "; ".join(failures)
    else:
        reason = f"deploying: {metric} {accuracy:.4f} >= threshold {threshold:.4f}"
        if live is not None:
            reason += f" and >= the live model {live_model}'s {live:.4f}"
        elif live_model:
            reason += f" (the live model {live_model} has no accuracy tag to compare with)"
        else:
            reason += " (no model is live)"
    return GateDecision(not failures, reason, metric, accuracy, threshold, live, live_model)


# -- after deploying ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verification:
    ok: bool
    reason: str


def verify_live_config(endpoint: str, description: Mapping[str, Any] | None, expected_config: str) -> Verification:
    """The endpoint must be InService *on the new config*: SageMaker keeps the old one when an update fails."""
    if description is None:
        return Verification(False, f"endpoint {endpoint} does not exist")
    status = description.get("EndpointStatus")
    live = description.get("EndpointConfigName")
    failure = description.get("FailureReason")
    if status != "InService":
        return Verification(False, f"endpoint {endpoint} is {status}" + (f": {failure}" if failure else ""))
    if live != expected_config:
        return Verification(
            False,
            f"endpoint {endpoint} serves {live}, not the new {expected_config}"
            + (f" (the update failed: {failure})" if failure else " (the update did not take)"),
        )
    return Verification(True, f"endpoint {endpoint} is InService on {expected_config}")


@dataclass(frozen=True)
class RollbackPlan:
    action: Literal["none", "update", "recreate", "delete", "wait"]
    reason: str
    target_config: str | None = None


def plan_rollback(
    endpoint: str, description: Mapping[str, Any] | None, previous_config: str | None, new_config: str
) -> RollbackPlan:
    """What restores the endpoint to how it was before this run.

    ``previous_config`` is the config the endpoint served before (None: this run created the endpoint);
    ``new_config`` the one this run deployed. An endpoint this run did not create is never deleted.
    """
    if description is None:
        if previous_config:
            return RollbackPlan(
                "none",
                f"endpoint {endpoint} no longer exists; nothing to restore "
                f"(it served {previous_config} before this run)",
            )
        return RollbackPlan("none", f"endpoint {endpoint} was not created; nothing to roll back")
    status = description.get("EndpointStatus")
    live = description.get("EndpointConfigName")
    if status in TRANSITIONAL:
        return RollbackPlan("wait", f"endpoint {endpoint} is {status}; waiting for it to settle")
    if previous_config is None:
        if live != new_config:
            return RollbackPlan("none", f"endpoint {endpoint} serves {live}, which this run did not deploy: leaving it")
        return RollbackPlan("delete", f"endpoint {endpoint} did not exist before this run: deleting it")
    if live == previous_config and status == "InService":
        return RollbackPlan(
            "none", f"endpoint {endpoint} already serves the previous config {previous_config}", previous_config
        )
    if status in UNUSABLE:
        return RollbackPlan(
            "recreate", f"endpoint {endpoint} is {status}: recreating it on {previous_config}", previous_config
        )
    return RollbackPlan(
        "update", f"endpoint {endpoint} serves {live}: updating it back to {previous_config}", previous_config
    )


# -- retention ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Resource:
    name: str
    created: datetime


@dataclass(frozen=True)
class RetentionPlan:
    keep: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)


def plan_retention(
    resources: Iterable[Resource], keep_last: int, protected: Iterable[str | None] = ()
) -> RetentionPlan:
    """Keep the ``keep_last`` newest and every protected name (live, previous, this run's); delete the rest."""
    if keep_last < 1:
        raise ValueError("keep_last must be at least 1")
    keep_names = {p for p in protected if p}
    ordered = sorted(resources, key=lambda r: (_utc(r.created), r.name), reverse=True)
    keep, delete = [], []
    for i, res in enumerate(ordered):
        (keep if i < keep_last or res.name in keep_names else delete).append(res.name)
    return RetentionPlan(keep=keep, delete=delete)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


# -- lineage and the run summary ------------------------------------------------------------------------------
def lineage_key(prefix_key, endpoint: str, job_name: str) -> str:
    """``<prefix>/lineage/<endpoint>/<job>.json`` (``prefix_key`` is ``S3Config.key``)."""
    return prefix_key("lineage", endpoint, f"{job_name}.json")


Status = Literal["deployed", "rejected", "rolled_back", "failed", "rollback_failed"]


def lineage_record(
    *,
    status: Status,
    reason: str,
    dag_id: str,
    run_id: str,
    inputs: Mapping[str, Any],
    training: Mapping[str, Any],
    metrics: Mapping[str, float],
    gate: Mapping[str, Any] | None = None,
    deployment: Mapping[str, Any] | None = None,
    smoke_test: Mapping[str, Any] | None = None,
    rollback: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> dict:
    """One run's record: what the model came from, where it went, and how it measured."""
    deployment = deployment or {}
    return {
        "schema": LINEAGE_SCHEMA,
        "status": status,
        "reason": reason,
        "recorded_at": (now or datetime.now(timezone.utc)).isoformat(),
        "run": {"dag_id": dag_id, "run_id": run_id, "inputs_from": inputs.get("source")},
        "dataset": {
            "fingerprint": inputs.get("dataset_fingerprint"),
            "manifest_uri": inputs.get("manifest_uri"),
            "manifest_sha256": inputs.get("manifest_sha256"),
            "domain_train_uri": inputs.get("domain_train_uri"),
            "domain_validation_uri": inputs.get("domain_validation_uri"),
            "domain_classes": list(inputs.get("domain_classes") or []),
        },
        "pretrained": {
            "model_uri": inputs.get("model_uri"),
            "model_sha256": inputs.get("model_sha256"),
            "checkpoint_uri": inputs.get("checkpoint_uri"),
            "val_accuracy": inputs.get("pretrained_val_accuracy"),
            "dag_id": inputs.get("pretrained_dag_id"),
            "run_id": inputs.get("pretrained_run_id"),
        },
        "training_job": {
            "name": training.get("TrainingJobName"),
            "arn": training.get("TrainingJobArn"),
            "status": training.get("TrainingJobStatus"),
            "image": (training.get("AlgorithmSpecification") or {}).get("TrainingImage"),
            "instance_type": (training.get("ResourceConfig") or {}).get("InstanceType"),
            "instance_count": (training.get("ResourceConfig") or {}).get("InstanceCount"),
            "hyperparameters": dict(training.get("HyperParameters") or {}),
            "model_artifacts": (training.get("ModelArtifacts") or {}).get("S3ModelArtifacts"),
            "billable_seconds": training.get("BillableTimeInSeconds"),
        },
        "model": {"name": deployment.get("model"), "arn": deployment.get("model_arn")},
        "endpoint_config": {
            "name": deployment.get("endpoint_config"),
            "arn": deployment.get("endpoint_config_arn"),
            "instance_type": deployment.get("instance_type"),
            "instance_count": deployment.get("instance_count"),
        },
        "endpoint": {
            "name": deployment.get("endpoint"),
            "arn": deployment.get("endpoint_arn"),
            "action": deployment.get("action"),
            "previous_config": deployment.get("previous_config"),
        },
        "metrics": {"training": dict(metrics), "gate": dict(gate or {}), "smoke_test": dict(smoke_test or {})},
        "rollback": dict(rollback) if rollback else None,
    }


def run_summary(record: Mapping[str, Any], lineage_uri: str | None) -> dict:
    """The few lines an operator wants to see first (XCom ``summary``)."""
    gate = record["metrics"]["gate"]
    smoke = record["metrics"]["smoke_test"]
    training = record["metrics"]["training"]
    return {
        "status": record["status"],
        "reason": record["reason"],
        "endpoint": record["endpoint"]["name"],
        "endpoint_config": record["endpoint_config"]["name"],
        "training_job": record["training_job"]["name"],
        "accuracy": gate.get("accuracy"),
        "threshold": gate.get("threshold"),
        "live_accuracy": gate.get("live_accuracy"),
        "scratch_accuracy": training.get("scratch:validation:accuracy"),
        "transfer_gain": training.get("transfer:gain"),
        "smoke_accuracy": smoke.get("accuracy"),
        "latency_p95_ms": smoke.get("latency_p95_ms"),
        "lineage_uri": lineage_uri,
    }
