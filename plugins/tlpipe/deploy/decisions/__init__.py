"""The deploy DAG's decisions, as pure functions of what SageMaker and S3 reported.

    resolve_inputs      Params + the triggering ``pretrained-model`` event (or latest.json) -> what to fine-tune
    plan_training_job   the run's deterministic job names and their statuses -> create, reuse or wait
    final_metrics       DescribeTrainingJob -> {metric: value} from FinalMetricDataList
    plan_endpoint       DescribeEndpoint before deploying -> create | update, and the config to roll back to
    quality_gate        accuracy vs the threshold, the live model's ``tlpipe:accuracy`` tag and the scratch baseline
    verify_live_config  is the endpoint InService on the config this run deployed?
    plan_rollback       after a failed deploy/verify/smoke test -> none | update | recreate | delete | wait
    plan_retention      which models and endpoint configs to delete (keep the newest N, never live/previous)
    lineage_record      the JSON written to S3: dataset -> pretrained checkpoint -> job -> model -> config -> endpoint

Nothing here talks to AWS; ``plugins.tlpipe.deploy.steps`` does, and calls these.
"""

from .after import (
    Resource,
    RetentionPlan,
    RollbackPlan,
    Status,
    Verification,
    lineage_key,
    lineage_record,
    plan_retention,
    plan_rollback,
    run_artifacts_key,
    run_summary,
    verify_live_config,
)
from .before import (
    ACCURACY_TAG,
    DEFAULT_BASELINE_MARGIN,
    DEFAULT_BASELINE_POLICY,
    ENDPOINT_TAG,
    LINEAGE_SCHEMA,
    TRANSITIONAL,
    UNUSABLE,
    DeployInputs,
    EndpointBusy,
    EndpointPlan,
    GateDecision,
    MissingMetric,
    TrainingJobPlan,
    baseline_check,
    event_extra,
    final_metrics,
    live_accuracy,
    plan_endpoint,
    plan_training_job,
    quality_gate,
    resolve_inputs,
)

__all__ = [
    "ACCURACY_TAG",
    "DEFAULT_BASELINE_MARGIN",
    "DEFAULT_BASELINE_POLICY",
    "DeployInputs",
    "ENDPOINT_TAG",
    "EndpointBusy",
    "EndpointPlan",
    "GateDecision",
    "LINEAGE_SCHEMA",
    "MissingMetric",
    "Resource",
    "RetentionPlan",
    "RollbackPlan",
    "Status",
    "TRANSITIONAL",
    "TrainingJobPlan",
    "UNUSABLE",
    "baseline_check",
    "Verification",
    "event_extra",
    "final_metrics",
    "lineage_key",
    "run_artifacts_key",
    "lineage_record",
    "live_accuracy",
    "plan_endpoint",
    "plan_retention",
    "plan_rollback",
    "plan_training_job",
    "quality_gate",
    "resolve_inputs",
    "run_summary",
    "verify_live_config",
]
