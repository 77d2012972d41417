"""The deploy DAG's Params: JSON schemas with defaults from the active configuration profile.

Airflow validates a run's ``conf`` against them when the run is created, so the REST API answers 400 and no
run exists when, for example, an instance type is not ``ml.<family>.<size>`` or the threshold is above 1.
Empty URIs mean: take them from the triggering ``pretrained-model`` event, else from the last export.
"""

from __future__ import annotations

from airflow.sdk import Param

from plugins.tlpipe.config import PipelineConfig
from plugins.tlpipe.deploy.guardrails import ROUTING_TYPES
from plugins.tlpipe.schemas import whole
from training.contracts import BASELINE_POLICIES

S3_BUCKET = r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]"
MODEL_URI = whole(rf"^$|^s3://{S3_BUCKET}/.+\.(tar\.gz|tgz)$")
PREFIX_URI = whole(rf"^$|^s3://{S3_BUCKET}/.+/$")
ENDPOINT_NAME = whole(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
INSTANCE_TYPE = whole(r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
HYPERPARAMETER_KEY = whole(r"^[a-z][a-z0-9_]{0,63}$")
MODEL_PACKAGE_ARN = whole(
    r"^$|^arn:aws[a-z\-]*:sagemaker:[a-z0-9\-]+:\d{12}:model-package/[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}/\d+$"
)


def deploy_params(cfg: PipelineConfig) -> dict[str, Param]:
    sm = cfg.sagemaker
    return {
        "base_model_uri": Param(
            "",
            type="string",
            pattern=MODEL_URI,
            title="Pretrained model",
            description="s3://…/model.tar.gz of the pretrained model; empty: the triggering "
            "event's, else the last exported (pretrained/latest.json)",
        ),
        "domain_dataset_uri": Param(
            "",
            type="string",
            pattern=PREFIX_URI,
            title="Domain dataset",
            description="s3://…/ prefix holding train/ and validation/ (one folder per "
            "class); empty: the triggering event's, else the last exported",
        ),
        "endpoint_name": Param(sm.endpoint_name, type="string", pattern=ENDPOINT_NAME, minLength=1, maxLength=63),
        "training_instance_type": Param(sm.training_instance_type, type="string", pattern=INSTANCE_TYPE),
        "training_instance_count": Param(
            sm.training_instance_count,
            type="integer",
            minimum=1,
            maximum=16,
            description="the fine-tune script trains on one host; more only cost",
        ),
        "serving_instance_type": Param(sm.serving_instance_type, type="string", pattern=INSTANCE_TYPE),
        "serving_instance_count": Param(sm.serving_instance_count, type="integer", minimum=1, maximum=32),
        "quality_threshold": Param(
            sm.quality_threshold,
            type="number",
            minimum=0,
            maximum=1,
            description="deploy only when validation accuracy reaches this (and the live model's accuracy)",
        ),
        "compare_scratch": Param(
            sm.compare_scratch,
            type="boolean",
            description="also train the from-scratch baseline and report both accuracies",
        ),
        "baseline_policy": Param(
            sm.baseline_policy,
            type="string",
            enum=list(BASELINE_POLICIES),
            description="when the scratch baseline beats transfer by more than baseline_margin: ship transfer "
            "anyway (prefer_transfer), the better model (best) or nothing (fail)",
        ),
        "baseline_margin": Param(sm.baseline_margin, type="number", minimum=0, maximum=1),
        "tuning": Param(
            sm.tuning.enabled,
            type="boolean",
            description=f"fine-tune as a SageMaker hyperparameter tuning job ({sm.tuning.strategy}, up to "
            f"{sm.tuning.max_jobs} training jobs over {', '.join(sm.tuning.ranges) or 'no ranges'}) and deploy the best",
        ),
        **_release_params(sm),
        "hyperparameters": Param(
            dict(sm.hyperparameters),
            type="object",
            propertyNames={"pattern": HYPERPARAMETER_KEY},
            additionalProperties={"type": ["string", "number", "integer", "boolean"]},
            description="training.finetune hyperparameters (see its docstring)",
        ),
    }


def _release_params(sm) -> dict[str, Param]:
    """Who approves the model, which registered version goes live, and how traffic moves to it."""
    return {
        "approval": Param(
            sm.registry.approval,
            type="string",
            enum=["auto", "manual"],
            description="who approves the new Model Registry version: the quality gate (auto), or a person "
            "(manual: the run waits for UpdateModelPackage ModelApprovalStatus=Approved)",
        ),
        "model_package_arn": Param(
            "",
            type="string",
            pattern=MODEL_PACKAGE_ARN,
            title="Model Registry version",
            description="deploy this approved version (arn:…:model-package/<group>/<n>) instead of fine-tuning: "
            "how a person rolls back to an older model; empty: fine-tune a new one",
        ),
        "shadow_test": Param(
            sm.shadow.enabled,
            type="boolean",
            description="before an update, run the new model as a shadow variant beside the live one and promote "
            f"it only when it agrees on ≥ {sm.shadow.min_agreement:.0%} of {sm.shadow.min_requests} requests and is "
            f"at most {sm.shadow.max_latency_ratio:g}× slower",
        ),
        "traffic_routing": Param(
            sm.deployment.traffic_routing,
            type="string",
            enum=list(ROUTING_TYPES),
            description="how an update moves traffic to the new model: ALL_AT_ONCE, CANARY "
            f"({sm.deployment.canary_percent:g}% first) or LINEAR ({sm.deployment.linear_step_percent:g}% steps), "
            f"baking {sm.deployment.wait_interval_seconds} s per step; rolled back when an endpoint alarm fires",
        ),
    }
