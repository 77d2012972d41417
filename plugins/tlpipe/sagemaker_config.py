"""The ``sagemaker`` section of the pipeline's configuration: fine-tuning, tuning, serving, the Model Registry,
deployment guardrails and data capture (imported into :mod:`plugins.tlpipe.config`, which owns the loading)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from training.contracts import BASELINE_POLICIES, DEFAULT_BASELINE_MARGIN, DEFAULT_BASELINE_POLICY

TRAFFIC_ROUTING = ("ALL_AT_ONCE", "CANARY", "LINEAR")  # UpdateEndpoint's blue/green traffic routing types


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TuningRange(Section):
    """One tuned hyperparameter of the fine-tune job: a numeric range, or categorical values."""

    type: Literal["continuous", "integer", "categorical"]
    min: float | None = None
    max: float | None = None
    scaling: Literal["Auto", "Linear", "Logarithmic", "ReverseLogarithmic"] = "Auto"
    values: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _complete(self) -> "TuningRange":
        if self.type == "categorical" and not self.values:
            raise ValueError("a categorical range needs values")
        if self.type != "categorical" and (self.min is None or self.max is None or self.min > self.max):
            raise ValueError("a numeric range needs min <= max")
        return self


class ServingBatchingConfig(Section):
    """Server-side batching of SageMaker's managed TensorFlow Serving container (``tensorflow-inference``
    images): its ``SAGEMAKER_TFS_*`` environment. The project's own serving image batches by itself."""

    enabled: bool = True
    max_batch_size: int = Field(default=8, ge=1)
    batch_timeout_micros: int = Field(default=1000, ge=0)
    num_batch_threads: int | None = Field(default=None, ge=1)  # the container's default: its CPU count
    max_enqueued_batches: int | None = Field(default=None, ge=1)

    def container_environment(self) -> dict[str, str]:
        if not self.enabled:
            return {}
        values = {
            "SAGEMAKER_TFS_ENABLE_BATCHING": "true",
            "SAGEMAKER_TFS_MAX_BATCH_SIZE": self.max_batch_size,
            "SAGEMAKER_TFS_BATCH_TIMEOUT_MICROS": self.batch_timeout_micros,
            "SAGEMAKER_TFS_NUM_BATCH_THREADS": self.num_batch_threads,
            "SAGEMAKER_TFS_MAX_ENQUEUED_BATCHES": self.max_enqueued_batches,
        }
        return {k: str(v) for k, v in values.items() if v is not None}


class TuningConfig(Section):
    """The fine-tune as a SageMaker hyperparameter tuning job (objective: the gate's metric, maximised)."""

    enabled: bool = False
    strategy: Literal["Random", "Grid", "Bayesian", "Hyperband"] = "Random"
    max_jobs: int = Field(default=4, ge=1, le=500)
    max_parallel_jobs: int = Field(default=2, ge=1, le=100)
    ranges: dict[str, TuningRange] = {}


class RegistryConfig(Section):
    """The SageMaker Model Registry: every fine-tuned model becomes a version of a model package group."""

    model_package_group: str | None = Field(default=None, pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
    approval: Literal["auto", "manual"] = "auto"  # auto: the quality gate approves; manual: a person does
    approval_timeout_minutes: float = Field(default=1440, gt=0)


class AlarmsConfig(Section):
    """The CloudWatch alarms the deploy DAG keeps on the endpoint's metrics; one in ALARM during an update rolls
    it back. Both watch the variant over both fleets (SageMaker's EndpointName/VariantName dimensions)."""

    period_seconds: int = Field(default=60, ge=10)  # 10, 30 or a multiple of 60 (CloudWatch's rule)
    evaluation_periods: int = Field(default=1, ge=1)
    max_5xx_errors: int = Field(default=0, ge=0)  # Invocation5XXErrors per period above this: ALARM
    max_latency_ms: float | None = Field(default=2000, gt=0)  # p99 ModelLatency above this: ALARM (null: none)

    @field_validator("period_seconds")
    @classmethod
    def _period(cls, value: int) -> int:
        if value not in (10, 30) and value % 60:
            raise ValueError("a CloudWatch alarm period is 10, 30 or a multiple of 60 seconds")
        return value


class DeploymentConfig(Section):
    """How an update moves traffic to the new model: UpdateEndpoint's blue/green ``DeploymentConfig``."""

    traffic_routing: Literal[TRAFFIC_ROUTING] = "CANARY"
    canary_percent: float = Field(default=10, gt=0, le=50)
    linear_step_percent: float = Field(default=25, ge=10, le=50)
    wait_interval_seconds: int = Field(default=300, ge=0, le=3600)  # baking after each step
    termination_wait_seconds: int = Field(default=60, ge=0, le=3600)  # all traffic moved: old fleet kept this long
    maximum_execution_timeout_seconds: int = Field(default=3600, ge=600, le=28800)
    alarms: AlarmsConfig = AlarmsConfig()


class DataCaptureConfig(Section):
    """Every endpoint config's ``DataCaptureConfig``: the sampled requests and responses as SageMaker's JSON Lines,
    under ``<s3 prefix>/data-capture/<endpoint>/<variant>/<yyyy>/<mm>/<dd>/<hh>/``."""

    enabled: bool = True
    sampling_percent: int = Field(default=20, ge=0, le=100)


class AutoscalingConfig(Section):
    """Application Auto Scaling of the endpoint's variant: a scalable target and a target-tracking policy on
    ``SageMakerVariantInvocationsPerInstance``, put again after every deploy."""

    enabled: bool = True
    min_instances: int = Field(default=1, ge=1)
    max_instances: int = Field(default=4, ge=1)
    invocations_per_instance: float = Field(default=1000, gt=0)  # per minute, the policy's TargetValue
    scale_in_cooldown_seconds: int = Field(default=300, ge=0)
    scale_out_cooldown_seconds: int = Field(default=60, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> "AutoscalingConfig":
        if self.min_instances > self.max_instances:
            raise ValueError("autoscaling.min_instances must not exceed max_instances")
        return self


class ShadowConfig(Section):
    """The shadow test before promotion (Param ``shadow_test``): the new model runs as a shadow variant beside the
    live one and is promoted only when it agrees with it on the same traffic."""

    enabled: bool = False
    sampling_percent: float = Field(default=100, gt=0, le=100)  # share of the live traffic copied to the shadow
    min_requests: int = Field(default=100, ge=1)  # requests answered by both before a verdict
    min_agreement: float = Field(default=0.95, ge=0, le=1)  # share of them with the same top-1 answer
    max_latency_ratio: float = Field(default=1.5, gt=0)  # shadow's average model latency over the live one's
    duration_seconds: int = Field(default=1800, ge=0)  # how long to wait for min_requests
    replay_images: int = Field(default=0, ge=0)  # validation images the DAG sends itself (0: live traffic only)


class SageMakerConfig(Section):
    role_arn: str = Field(pattern=r"^arn:aws[a-z\-]*:iam::\d{12}:role/.+$")
    training_image_uri: str
    serving_image_uri: str
    training_instance_type: str = Field(pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
    training_instance_count: int = Field(default=1, ge=1)
    training_volume_gb: int = Field(default=30, ge=1)
    training_max_runtime_seconds: int = Field(default=7200, ge=60)
    serving_instance_type: str = Field(pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
    serving_instance_count: int = Field(default=1, ge=1)
    endpoint_name: str = Field(pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
    resource_prefix: str = Field(pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,30}$")
    quality_threshold: float = Field(ge=0, le=1)
    keep_last: int = Field(default=3, ge=1)
    smoke_test_images: int = Field(default=20, ge=1)
    smoke_test_accuracy_tolerance: float = Field(default=0.1, ge=0, le=1)
    smoke_test_latency_ms: float = Field(default=2000, gt=0)
    compare_scratch: bool = False
    # When the scratch baseline beats transfer by more than the margin: ship transfer anyway, the better, or nothing.
    baseline_policy: Literal[BASELINE_POLICIES] = DEFAULT_BASELINE_POLICY
    baseline_margin: float = Field(default=DEFAULT_BASELINE_MARGIN, ge=0, le=1)
    hyperparameters: dict[str, str | int | float | bool] = {}
    tuning: TuningConfig = TuningConfig()
    serving_batching: ServingBatchingConfig = ServingBatchingConfig()
    registry: RegistryConfig = RegistryConfig()
    deployment: DeploymentConfig = DeploymentConfig()
    data_capture: DataCaptureConfig = DataCaptureConfig()
    autoscaling: AutoscalingConfig = AutoscalingConfig()
    shadow: ShadowConfig = ShadowConfig()

    def package_group(self, endpoint: str) -> str:
        """The model package group of an endpoint's versions (default: named after the endpoint)."""
        return self.registry.model_package_group or endpoint

    @property
    def serving_image_is_managed_tfs(self) -> bool:
        """SageMaker's own TensorFlow Serving image (``.../tensorflow-inference:<version>``), not the project's."""
        repository = self.serving_image_uri.rsplit("@", 1)[0].rsplit(":", 1)[0]
        return repository.rsplit("/", 1)[-1] == "tensorflow-inference"
