"""Application Auto Scaling for endpoint variants, as AWS runs it.

The API is moto's (``RegisterScalableTarget``, ``PutScalingPolicy``, ``Describe*``, ``Deregister*``); this module
acts on what is registered. Every ``EVALUATE_SECONDS``, for each scalable target
``endpoint/<endpoint>/variant/<variant>`` with ``sagemaker:variant:DesiredInstanceCount`` whose endpoint is
InService:

- an instance count outside ``[MinCapacity, MaxCapacity]`` is brought inside it (also right after an update
  deployed a new fleet with its config's count);
- a target-tracking policy on ``SageMakerVariantInvocationsPerInstance`` compares the variant's invocations per
  instance over the last minute (:mod:`localcloud.metrics`) with ``TargetValue`` and asks for
  ``ceil(instances × metric / target)`` instances: more at once after ``ScaleOutCooldown``, one fewer at a time after
  ``ScaleInCooldown`` (none with ``DisableScaleIn``).

A change goes through ``UpdateEndpointWeightsAndCapacities`` (:mod:`localcloud.capacity`), so the variant really runs
that many model server processes (up to ``--max-instances``). Other policy types and customized metrics are left
alone.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from .state import ENDPOINT

log = logging.getLogger("localcloud.autoscaling")

EVALUATE_SECONDS = 5.0
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"
DEFAULT_COOLDOWN = 300.0


def desired_count(current: int, per_instance: float, target: float) -> int:
    """Target tracking: the instances that would bring the metric to the target."""
    if target <= 0:
        return current
    return max(1, math.ceil(current * per_instance / target))


class Autoscaler:
    def __init__(self, endpoints, client_factory, stopping: threading.Event):
        self.endpoints = endpoints
        self._client = client_factory  # () -> an application-autoscaling client of localcloud's own
        self._stopping = stopping
        self._last: dict[str, tuple[float, str]] = {}  # resource id -> (when, "out"|"in") of the last change
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        def loop() -> None:
            while not self._stopping.wait(EVALUATE_SECONDS):
                try:
                    self.evaluate()
                except Exception as err:  # the API may be stopping; the next round tries again
                    log.debug("autoscaling round failed: %s", err)

        self._thread = threading.Thread(target=loop, name="autoscaling", daemon=True)
        self._thread.start()

    def evaluate(self, now: float | None = None) -> dict[str, int]:
        """One round; returns the instance counts asked for, by resource id."""
        now = time.time() if now is None else now
        client = self._client()
        asked = {}
        targets = client.describe_scalable_targets(ServiceNamespace="sagemaker").get("ScalableTargets", [])
        for target in targets:
            if target["ScalableDimension"] != DIMENSION:
                continue
            parts = target["ResourceId"].split("/")
            if len(parts) != 4 or parts[0] != "endpoint" or parts[2] != "variant":
                continue
            endpoint, variant = parts[1], parts[3]
            doc = self.endpoints.state.get(ENDPOINT, endpoint)
            if doc is None or doc["EndpointStatus"] != "InService":
                continue
            current = self.current_count(doc, variant)
            if current is None:
                continue
            policies = client.describe_scaling_policies(
                ServiceNamespace="sagemaker", ResourceId=target["ResourceId"], ScalableDimension=DIMENSION
            ).get("ScalingPolicies", [])
            want = self.wanted(target, policies, endpoint, variant, current, now)
            if want != current:
                log.info("scaling %s from %d to %d instances", target["ResourceId"], current, want)
                self._last[target["ResourceId"]] = (now, "out" if want > current else "in")
                self.endpoints.update_capacity(
                    {
                        "EndpointName": endpoint,
                        "DesiredWeightsAndCapacities": [{"VariantName": variant, "DesiredInstanceCount": want}],
                    },
                    doc["_region"],
                )
                asked[target["ResourceId"]] = want
        return asked

    def scaled_variants(self, endpoint: str) -> set[str]:
        """The endpoint's variants registered as scalable targets."""
        targets = self._client().describe_scalable_targets(ServiceNamespace="sagemaker").get("ScalableTargets", [])
        prefix = f"endpoint/{endpoint}/variant/"
        return {t["ResourceId"][len(prefix) :] for t in targets if t["ResourceId"].startswith(prefix)}

    @staticmethod
    def current_count(doc: dict, variant: str) -> int | None:
        for summary in doc.get("ProductionVariants") or []:
            if summary["VariantName"] == variant:
                return summary.get("DesiredInstanceCount") or summary.get("CurrentInstanceCount")
        return None

    def wanted(self, target: dict, policies: list[dict], endpoint: str, variant: str, current: int, now: float) -> int:
        low, high = int(target["MinCapacity"]), int(target["MaxCapacity"])
        if not low <= current <= high:
            return min(max(current, low), high)
        want = current
        for policy in policies:
            config = policy.get("TargetTrackingScalingPolicyConfiguration") or {}
            metric = (config.get("PredefinedMetricSpecification") or {}).get("PredefinedMetricType")
            if policy.get("PolicyType") != "TargetTrackingScaling" or metric != METRIC:
                continue
            dims = [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}]
            per_instance = len(self.endpoints.metrics.values("Invocations", dims, now - 60, now)) / current
            goal = desired_count(current, per_instance, float(config["TargetValue"]))
            last_at, _ = self._last.get(target["ResourceId"], (0.0, ""))
            if goal > current and now - last_at >= float(config.get("ScaleOutCooldown", DEFAULT_COOLDOWN)):
                want = max(want, goal)
            elif goal < current and not config.get("DisableScaleIn"):
                if now - last_at >= float(config.get("ScaleInCooldown", DEFAULT_COOLDOWN)) and want == current:
                    want = current - 1
        return min(max(want, low), high)
