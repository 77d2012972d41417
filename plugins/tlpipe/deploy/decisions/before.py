"""Decisions before and at the gate: the run's inputs, the training-job attempt, the endpoint's state, the quality gate."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, ValidationError

from plugins.tlpipe.assets import ASSET_NAME, PretrainedModelEvent
from training.contracts import DEFAULT_BASELINE_MARGIN, DEFAULT_BASELINE_POLICY, PRIMARY_METRIC, judge_baseline

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


def plan_training_job(
    names: Sequence[str], statuses: Sequence[str | None], kind: str = "training job"
) -> TrainingJobPlan:
    """``names``: the run's attempt names in order; ``statuses``: DescribeTrainingJob status of each (None: absent).

    The newest existing attempt decides: Completed -> reuse it, InProgress/Stopping -> wait on it, Failed or
    Stopped -> start the next attempt. No attempt yet -> create the first.
    """
    existing = [(n, s) for n, s in zip(names, statuses) if s is not None]
    if not existing:
        return TrainingJobPlan("create", names[0], f"no {kind} {names[0]} yet: creating it")
    name, status = existing[-1]
    if status == "Completed":
        return TrainingJobPlan("reuse", name, f"{kind} {name} already Completed: reusing its results")
    if status in ("InProgress", "Stopping"):
        return TrainingJobPlan("wait", name, f"{kind} {name} is {status}: waiting for it instead of starting another")
    index = list(names).index(name)
    if index + 1 >= len(names):
        raise RuntimeError(f"{kind} {name} is {status} and all {len(names)} attempt names are used")
    nxt = names[index + 1]
    return TrainingJobPlan("create", nxt, f"{kind} {name} is {status}: starting {nxt}")


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
    baseline: dict | None = None  # transfer vs the job's scratch baseline: figures, policy, verdict
    model_kind: str = "transfer"  # which of the two the job wrote, and so what would be deployed

    def as_dict(self) -> dict:
        return asdict(self)


def live_accuracy(tag_values: Mapping[str, str]) -> float | None:
    """The live model's accuracy tag (``tag_dict`` of ListTags), or None when it has none or it is unreadable."""
    try:
        value = float(tag_values[ACCURACY_TAG])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def baseline_check(
    metrics: Mapping[str, float], metric: str, policy: str, margin: float
) -> tuple[dict | None, str, str | None]:
    """Transfer vs the job's scratch baseline from the job's metrics: (record, model kind written, failure or None).

    The job applied the same policy (``training.contracts.judge_baseline``) to choose what it wrote; this says why,
    refuses under ``fail``, and refuses a model that the policy would not have chosen (a job run with another one).
    """
    scratch = metrics.get(f"scratch:{metric}")
    written = "scratch" if metrics.get("selected:scratch") == 1.0 else "transfer"
    if scratch is None:
        return None, written, None
    transfer = metrics.get(f"transfer:{metric}", metrics[metric] if written == "transfer" else None)
    if transfer is None:
        return None, written, f"the job wrote its scratch baseline but reported no transfer:{metric}"
    verdict = judge_baseline(float(transfer), float(scratch), policy, margin)
    record = {
        "transfer_accuracy": float(transfer),
        "scratch_accuracy": float(scratch),
        "gap": float(scratch) - float(transfer),
        "policy": policy,
        "margin": margin,
        "transfer_lost": verdict.transfer_lost,
        "choice": verdict.choice,
        "reason": verdict.reason,
    }
    if verdict.choice is None:
        return record, written, verdict.reason
    if verdict.choice != written:
        return (
            record,
            written,
            (
                f"the job wrote its {written} model but policy {policy} ships the {verdict.choice} one "
                f"({verdict.reason}); rerun the job with this policy"
            ),
        )
    return record, written, None


def quality_gate(
    metrics: Mapping[str, float],
    threshold: float,
    live: float | None = None,
    live_model: str | None = None,
    metric: str = PRIMARY_METRIC,
    baseline_policy: str = DEFAULT_BASELINE_POLICY,
    baseline_margin: float = DEFAULT_BASELINE_MARGIN,
) -> GateDecision:
    """Deploy only when ``metric`` >= ``threshold`` and >= the live model's accuracy (ties deploy), and the
    transfer-vs-baseline verdict allows the model the job wrote."""
    if metric not in metrics:
        raise MissingMetric(
            f"the training job reported no {metric} (metrics: {', '.join(sorted(metrics)) or 'none'}); "
            "check the MetricDefinitions against the job's log"
        )
    accuracy = float(metrics[metric])
    baseline, kind, refused = baseline_check(metrics, metric, baseline_policy, baseline_margin)
    failures = [refused] if refused else []
    if accuracy < threshold:
        failures.append(f"{metric} {accuracy:.4f} is below the threshold {threshold:.4f}")
    if live is not None and accuracy < live:
        failures.append(f"{metric} {accuracy:.4f} is below the live model {live_model}'s {live:.4f}")
    if failures:
        reason = "not deploying: " + "; ".join(failures)
    else:
        reason = f"deploying the {kind} model: {metric} {accuracy:.4f} >= threshold {threshold:.4f}"
        if live is not None:
            reason += f" and >= the live model {live_model}'s {live:.4f}"
        elif live_model:
            reason += f" (the live model {live_model} has no accuracy tag to compare with)"
        else:
            reason += " (no model is live)"
        if baseline:
            reason += f"; {baseline['reason']}"
    return GateDecision(not failures, reason, metric, accuracy, threshold, live, live_model, baseline, kind)
