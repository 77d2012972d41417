"""Decisions after deploying: verification, the rollback target, retention, the lineage record and the run summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Literal, Mapping

from .before import LINEAGE_SCHEMA, TRANSITIONAL, UNUSABLE


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
def run_artifacts_key(prefix_key, endpoint: str, job_name: str) -> str:
    """``<prefix>/lineage/<endpoint>/<job>``: the folder beside the lineage record that holds the run's
    TensorBoard logs and its transfer-vs-scratch report (``prefix_key`` is ``S3Config.key``)."""
    return prefix_key("lineage", endpoint, job_name)


def lineage_key(prefix_key, endpoint: str, job_name: str) -> str:
    """``<prefix>/lineage/<endpoint>/<job>.json``."""
    return run_artifacts_key(prefix_key, endpoint, job_name) + ".json"


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
    shadow_test: Mapping[str, Any] | None = None,
    rollback: Mapping[str, Any] | None = None,
    tuning: Mapping[str, Any] | None = None,
    model_package: Mapping[str, Any] | None = None,
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
            "tuning_job": dict(tuning) if tuning else None,  # the search the job won, and every candidate
        },
        "model": {"name": deployment.get("model"), "arn": deployment.get("model_arn")},
        "model_package": {k: v for k, v in (model_package or {}).items() if k not in ("container", "metadata")} or None,
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
        "metrics": {
            "training": dict(metrics),
            "gate": dict(gate or {}),
            "smoke_test": dict(smoke_test or {}),
            "shadow_test": dict(shadow_test or {}),
        },
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
        "model_package": (record.get("model_package") or {}).get("arn"),
        "model_approval": (record.get("model_package") or {}).get("status"),
        "accuracy": gate.get("accuracy"),
        "threshold": gate.get("threshold"),
        "live_accuracy": gate.get("live_accuracy"),
        "scratch_accuracy": training.get("scratch:validation:accuracy"),
        "transfer_gain": training.get("transfer:gain"),
        "model_kind": gate.get("model_kind"),
        "baseline": (gate.get("baseline") or {}).get("reason"),
        "smoke_accuracy": smoke.get("accuracy"),
        "latency_p95_ms": smoke.get("latency_p95_ms"),
        "shadow_agreement": record["metrics"].get("shadow_test", {}).get("agreement"),
        "lineage_uri": lineage_uri,
        "artifacts": dict(record.get("artifacts") or {}),
    }
