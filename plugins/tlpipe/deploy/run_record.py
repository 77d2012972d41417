"""The deploy run's facts, read once from its tasks' XComs into one typed record.

The closing steps (lineage, the run's record, rollback) read this record instead of a bag of XComs by string
keys; a task that did not run leaves its field ``None``, and every accessor says what that means.
"""

from __future__ import annotations

from typing import Any, Callable

from pydantic import BaseModel, ConfigDict

# Which task (and XCom key) each fact comes from; the DAG's task ids.
SOURCES: dict[str, tuple[str, str]] = {
    "training": ("read_metrics", "return_value"),
    "gate": ("quality_gate", "gate"),
    "registration": ("approval", "version"),
    "requests": ("deploy.build_requests", "return_value"),
    "model": ("deploy.create_model", "return_value"),
    "endpoint_config": ("deploy.create_endpoint_config", "return_value"),
    "endpoint": ("deploy.create_or_update_endpoint", "return_value"),
    "verify": ("deploy.verify_endpoint", "result"),
    "smoke": ("deploy.smoke_test", "result"),
    "shadow": ("deploy.shadow_test", "result"),
}


class DeployRunResults(BaseModel):
    """What the run's tasks returned: the training job, the gate, the requests, what SageMaker answered."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    training: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    registration: dict[str, Any] | None = None  # the Model Registry version, as the gate left it
    requests: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    endpoint_config: dict[str, Any] | None = None
    endpoint: dict[str, Any] | None = None
    verify: dict[str, Any] | None = None
    smoke: dict[str, Any] | None = None
    shadow: dict[str, Any] | None = None  # the shadow test's comparison (ran: False when none was asked)

    @classmethod
    def from_xcoms(cls, pull: Callable[[str, str], Any]) -> "DeployRunResults":
        """``pull(task_id, key)`` is the task instance's ``xcom_pull``."""
        return cls(**{field: pull(task_id, key) for field, (task_id, key) in SOURCES.items()})

    @property
    def deployed(self) -> bool:
        """The gate let this run deploy."""
        return bool((self.gate or {}).get("deploy"))

    @property
    def training_job(self) -> dict:
        """DescribeTrainingJob of the job whose model this run deploys (the tuning job's best, if one ran)."""
        return (self.training or {}).get("training_job") or {}

    def reason(self, check: str) -> str | None:
        """Why the ``verify``, ``smoke`` or ``shadow`` check ended as it did (None when it did not run)."""
        return (getattr(self, check) or {}).get("reason")

    def deployment(self) -> dict:
        """Names and ARNs of what this run created (absent ones stay None)."""
        reqs = self.requests or {}
        variant = ((reqs.get("endpoint_config") or {}).get("ProductionVariants") or [{}])[0]
        return {
            "model": (reqs.get("model") or {}).get("ModelName"),
            "model_arn": ((self.model or {}).get("Model") or {}).get("ModelArn"),
            "endpoint_config": (reqs.get("endpoint_config") or {}).get("EndpointConfigName"),
            "endpoint_config_arn": ((self.endpoint_config or {}).get("EndpointConfig") or {}).get("EndpointConfigArn"),
            "instance_type": variant.get("InstanceType"),
            "instance_count": variant.get("InitialInstanceCount"),
            "endpoint": (reqs.get("endpoint") or {}).get("EndpointName"),
            "endpoint_arn": ((self.endpoint or {}).get("Endpoint") or {}).get("EndpointArn"),
            "action": reqs.get("action"),
            "previous_config": reqs.get("previous_config"),
        }
