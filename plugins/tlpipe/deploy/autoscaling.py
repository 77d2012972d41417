"""Application Auto Scaling of the endpoint's variant, kept across updates.

    requests = scaling_requests(cfg.sagemaker, endpoint="tlpipe-domain")   # RegisterScalableTarget, PutScalingPolicy
    apply_scaling(aas, requests)                                           # idempotent: after every deploy

The variant ``endpoint/<endpoint>/variant/AllTraffic`` scales between ``min_instances`` and ``max_instances`` on a
target-tracking policy over ``SageMakerVariantInvocationsPerInstance`` (invocations per instance per minute).

SageMaker refuses an update that changes the instance type of a scaled variant. ``release_for_update`` therefore
deregisters the target first when, and only when, the new config changes the live instance type, and returns what
it removed; ``restore_scaling`` puts it back when the run rolls back.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from plugins.tlpipe.aws import describe_or_none
from plugins.tlpipe.config import SageMakerConfig
from plugins.tlpipe.deploy.sagemaker_requests import VARIANT

log = logging.getLogger(__name__)

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"


def resource_id(endpoint: str, variant: str = VARIANT) -> str:
    return f"endpoint/{endpoint}/variant/{variant}"


def scaling_requests(sm: SageMakerConfig, *, endpoint: str) -> dict | None:
    """The scalable target and the target-tracking policy of the endpoint's variant (None: autoscaling is off)."""
    scaling = sm.autoscaling
    if not scaling.enabled:
        return None
    target = {
        "ServiceNamespace": NAMESPACE,
        "ResourceId": resource_id(endpoint),
        "ScalableDimension": DIMENSION,
        "MinCapacity": scaling.min_instances,
        "MaxCapacity": scaling.max_instances,
    }
    policy = {
        "PolicyName": f"{sm.resource_prefix}-{endpoint}-invocations-per-instance",
        "ServiceNamespace": NAMESPACE,
        "ResourceId": resource_id(endpoint),
        "ScalableDimension": DIMENSION,
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": float(scaling.invocations_per_instance),
            "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
            "ScaleInCooldown": scaling.scale_in_cooldown_seconds,
            "ScaleOutCooldown": scaling.scale_out_cooldown_seconds,
        },
    }
    return {"target": target, "policies": [policy]}


def apply_scaling(aas, requests: Mapping[str, Any] | None) -> dict | None:
    if not requests:
        return None
    aas.register_scalable_target(**requests["target"])
    for policy in requests["policies"]:
        aas.put_scaling_policy(**policy)
    target = requests["target"]
    log.info(
        "%s scales between %d and %d instances", target["ResourceId"], target["MinCapacity"], target["MaxCapacity"]
    )
    return dict(requests)


def registered_scaling(aas, endpoint: str) -> dict | None:
    """The variant's scalable target and its policies as requests that would register them again."""
    rid = resource_id(endpoint)
    found = aas.describe_scalable_targets(ServiceNamespace=NAMESPACE, ResourceIds=[rid], ScalableDimension=DIMENSION)
    if not found.get("ScalableTargets"):
        return None
    t = found["ScalableTargets"][0]
    target = {k: t[k] for k in ("ServiceNamespace", "ResourceId", "ScalableDimension", "MinCapacity", "MaxCapacity")}
    listed = aas.describe_scaling_policies(ServiceNamespace=NAMESPACE, ResourceId=rid, ScalableDimension=DIMENSION)
    keys = ("PolicyName", "ServiceNamespace", "ResourceId", "ScalableDimension", "PolicyType")
    policies = [
        {
            **{k: p[k] for k in keys},
            "TargetTrackingScalingPolicyConfiguration": p["TargetTrackingScalingPolicyConfiguration"],
        }
        for p in listed.get("ScalingPolicies", [])
        if p.get("TargetTrackingScalingPolicyConfiguration")
    ]
    return {"target": target, "policies": policies}


def release_for_update(aas, sm_client, *, endpoint: str, instance_type: str) -> dict | None:
    """Deregister the variant's scalable target when the update changes its instance type; what was removed."""
    live = describe_or_none(sm_client.describe_endpoint, EndpointName=endpoint)
    if live is None:
        return None
    config = sm_client.describe_endpoint_config(EndpointConfigName=live["EndpointConfigName"])
    types = {v["VariantName"]: v.get("InstanceType") for v in config["ProductionVariants"]}
    if types.get(VARIANT) in (None, instance_type):
        return None
    saved = registered_scaling(aas, endpoint)
    if saved is None:
        return None
    aas.deregister_scalable_target(
        ServiceNamespace=NAMESPACE, ResourceId=resource_id(endpoint), ScalableDimension=DIMENSION
    )
    log.info(
        "%s: instance type %s -> %s; deregistered its scalable target for the update",
        endpoint,
        types[VARIANT],
        instance_type,
    )
    return saved


def restore_scaling(aas, sm_client, endpoint: str, saved: Mapping[str, Any] | None) -> bool:
    """Put back what ``release_for_update`` removed, when the endpoint serves again after a rollback."""
    if not saved:
        return False
    live = describe_or_none(sm_client.describe_endpoint, EndpointName=endpoint)
    if live is None or live.get("EndpointStatus") != "InService":
        log.warning("%s is not InService: its scalable target was not registered again", endpoint)
        return False
    apply_scaling(aas, saved)
    return True
