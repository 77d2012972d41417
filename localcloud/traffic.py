"""Deployment guardrails: how UpdateEndpoint moves traffic from the old fleet to the new one.

With ``DeploymentConfig.BlueGreenUpdatePolicy`` (SageMaker's blue/green deployment), once every new variant
answers ``/ping``:

- ``ALL_AT_ONCE``: all traffic to the new fleet, then ``WaitIntervalInSeconds`` of baking;
- ``CANARY``: ``CanarySize`` of it (``CAPACITY_PERCENT`` of the traffic, or ``INSTANCE_COUNT`` of the new fleet's
  instances), ``WaitIntervalInSeconds`` of baking, then the rest;
- ``LINEAR``: ``LinearStepSize`` more at each step, each followed by ``WaitIntervalInSeconds``;
- then ``TerminationWaitInSeconds`` before the old fleet stops.

All along, the alarms of ``AutoRollbackConfiguration`` are evaluated (:mod:`localcloud.metrics`); one in ALARM,
or ``MaximumExecutionTimeoutInSeconds`` passing, rolls the deployment back: ``RollingBack``, all traffic to the
old fleet, the new fleet drained of its requests in flight and stopped, then ``InService`` on the old
``EndpointConfigName`` with ``FailureReason`` saying why. Without a ``DeploymentConfig`` the shift is all at once
with no baking, as before. A request is never sent to a fleet after it has stopped taking traffic, and a fleet is
stopped only once its requests in flight have been answered.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from .errors import validation
from .model_servers import Variant
from .state import ENDPOINT

log = logging.getLogger("localcloud.endpoints")

ALARM_POLL_SECONDS = 1.0


class RolledBack(Exception):
    """The deployment was rolled back; the message is the endpoint's FailureReason."""


@dataclass
class Shift:
    """Where a share of an endpoint's traffic goes while a deployment moves it."""

    variants: list[Variant]
    fraction: float


def blue_green(deployment: dict | None) -> dict:
    return (deployment or {}).get("BlueGreenUpdatePolicy") or {}


def _size_fraction(size: dict, capacity: int) -> float:
    if size["Type"] == "CAPACITY_PERCENT":
        return float(size["Value"]) / 100
    return float(size["Value"]) / max(capacity, 1)


def check_deployment_config(deployment: dict | None, capacity: int) -> None:
    """SageMaker's rules for a blue/green ``DeploymentConfig`` (``capacity``: the new config's instances)."""
    if not deployment:
        return
    if deployment.get("RollingUpdatePolicy"):
        raise validation("localcloud deploys blue/green: RollingUpdatePolicy is not supported.")
    routing = blue_green(deployment).get("TrafficRoutingConfiguration") or {}
    kind = routing.get("Type")
    if kind == "CANARY":
        size = routing.get("CanarySize")
        if not size:
            raise validation("CanarySize must be specified for the CANARY traffic routing type.")
        if not 0 < _size_fraction(size, capacity) <= 0.5:
            raise validation("The canary size must be more than 0 and at most 50% of the new fleet's capacity.")
    elif kind == "LINEAR":
        size = routing.get("LinearStepSize")
        if not size:
            raise validation("LinearStepSize must be specified for the LINEAR traffic routing type.")
        if not 0.1 <= _size_fraction(size, capacity) <= 0.5:
            raise validation("The linear step size must be between 10% and 50% of the new fleet's capacity.")


def traffic_steps(deployment: dict | None, capacity: int) -> list[tuple[float, float]]:
    """The deployment's steps: (share of the traffic on the new fleet, seconds to bake after it)."""
    routing = blue_green(deployment).get("TrafficRoutingConfiguration")
    if not routing:
        return [(1.0, 0.0)]
    wait = float(routing.get("WaitIntervalInSeconds", 0))
    if routing["Type"] == "CANARY":
        return [(_size_fraction(routing["CanarySize"], capacity), wait), (1.0, 0.0)]
    if routing["Type"] == "LINEAR":
        step = _size_fraction(routing["LinearStepSize"], capacity)
        count = max(1, round(1 / step)) if abs(round(1 / step) * step - 1) < 1e-9 else int(1 / step) + 1
        return [(min(1.0, step * k), wait) for k in range(1, count + 1)]
    return [(1.0, wait)]


class TrafficShifting:
    """Moves an endpoint's traffic step by step, bakes, and rolls back on an alarm (mixed into ``Endpoints``)."""

    def _shift_traffic(self, name: str, doc: dict, old: list[Variant], new: list[Variant], cancel) -> None:
        deployment = (doc.get("_pending") or {}).get("deployment")
        policy = blue_green(deployment)
        alarms = [a["AlarmName"] for a in (deployment or {}).get("AutoRollbackConfiguration", {}).get("Alarms", [])]
        timeout = policy.get("MaximumExecutionTimeoutInSeconds")
        deadline = doc["_pending"]["started"] + float(timeout) if timeout else None
        capacity = sum(int(v.record.get("InstanceCount") or 1) for v in new if not v.record.get("Shadow"))
        key = name.lower()
        try:
            for fraction, wait in traffic_steps(deployment, capacity):
                self._check_alarms(alarms, deadline)
                with self._lock:
                    self._check(cancel)
                    self._shifts[key] = Shift(new, fraction)
                message = f"{fraction:.0%} of the traffic on the new fleet"
                log.info("endpoint %s: %s; baking %g s", name, message, wait)
                self._variant_status(name, "Baking" if wait else "ActivatingTraffic", message)
                self._bake(alarms, wait, deadline, cancel)
            termination = float(policy.get("TerminationWaitInSeconds", 0))
            if termination:
                self._variant_status(
                    name, "Baking", f"all traffic on the new fleet; {termination:g} s to the old one's end"
                )
            self._bake(alarms, termination, deadline, cancel)
        except RolledBack:
            self._roll_back_traffic(name, old, new)
            raise

    def _bake(self, alarms: list[str], seconds: float, deadline: float | None, cancel) -> None:
        end = time.monotonic() + seconds
        while True:
            self._check(cancel)
            self._check_alarms(alarms, deadline)
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(ALARM_POLL_SECONDS, left))

    def _check_alarms(self, alarms: list[str], deadline: float | None) -> None:
        if deadline is not None and time.time() > deadline:
            raise RolledBack(
                "The deployment did not finish within MaximumExecutionTimeoutInSeconds; it was rolled back to the "
                "previous endpoint configuration."
            )
        if not alarms:
            return
        states = self.metrics.evaluate(alarms)
        missing = sorted(set(alarms) - set(states))
        tripped = sorted(a for a, s in states.items() if s == "ALARM")
        if missing:
            raise RolledBack(f"Auto-rollback alarm(s) {missing} could not be found; the deployment was rolled back.")
        if tripped:
            raise RolledBack(
                f"Auto-rollback triggered: CloudWatch alarm(s) {tripped} went into ALARM state during the deployment; "
                "it was rolled back to the previous endpoint configuration."
            )

    def _roll_back_traffic(self, name: str, old: list[Variant], new: list[Variant]) -> None:
        log.info("endpoint %s: rolling back", name)
        self._set_status(name, "RollingBack")
        with self._lock:
            self._shifts.pop(name.lower(), None)  # every new request goes to the old fleet again
        self._drain(new)

    def _set_status(self, name: str, status: str) -> None:
        def change(d: dict) -> None:
            d["EndpointStatus"] = status
            d["LastModifiedTime"] = time.time()

        self.state.update(ENDPOINT, name, change)

    def _variant_status(self, name: str, status: str, message: str) -> None:
        """The new variants' status in PendingDeploymentSummary (ActivatingTraffic, Baking)."""
        now = time.time()

        def change(d: dict) -> None:
            for variant in (d.get("PendingDeploymentSummary") or {}).get("ProductionVariants", []):
                variant["VariantStatus"] = [{"Status": status, "StatusMessage": message, "StartTime": now}]

        self.state.update(ENDPOINT, name, change)

    def _drain(self, variants: list[Variant]) -> None:
        """Wait for the requests in flight on ``variants`` (none can start: they take no traffic any more)."""
        deadline = time.monotonic() + self.runtime.settings.invoke_timeout
        while any(v.inflight for v in variants) and time.monotonic() < deadline:
            time.sleep(0.05)
