"""What CreateEndpoint, UpdateEndpoint and DeleteEndpoint do once they have answered: deploy the variants,
switch traffic blue/green (the old variants serve until the new ones are healthy), restore after a restart,
tear down."""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from pathlib import Path

from . import procs
from .capture import capture_summary
from .errors import arn
from .model_servers import DeployFailure, Variant, VariantProcesses
from .state import ENDPOINT, ENDPOINT_CONFIG, MODEL
from .traffic import RolledBack, TrafficShifting

log = logging.getLogger("localcloud.endpoints")


class EndpointOperations(TrafficShifting, VariantProcesses):
    """The long-running endpoint operations (mixed into ``Endpoints``, whose state they use)."""

    def _create_op(self, name: str, cancel: threading.Event) -> None:
        doc = self.state.get(ENDPOINT, name)
        config = self.state.get(ENDPOINT_CONFIG, doc["_pending"]["config"])
        try:
            if config is None:
                raise DeployFailure(
                    f'Could not find endpoint configuration "{arn(doc["_region"], "endpoint-config", doc["_pending"]["config"])}".'
                )
            variants = self._deploy(doc, config, cancel)
        except DeployFailure as failure:
            self._finish_failed_create(name, str(failure))
            return
        now = time.time()
        with self._lock:
            self._check(cancel)
            self._routes[name.lower()] = variants
            self._pending.pop(name.lower(), None)

            def change(d: dict) -> None:
                d["EndpointStatus"] = "InService"
                d["LastModifiedTime"] = now
                d["_live"] = {"config": config["EndpointConfigName"], "variants": [v.record for v in variants]}
                d["_pending"] = None
                d["ProductionVariants"] = variant_summaries(variants, now)
                _set_capture(d, config)
                _set_shadows(d, variants, now)
                d.pop("FailureReason", None)

            self.state.update(ENDPOINT, name, change)
        log.info("endpoint %s: InService on %s", name, config["EndpointConfigName"])

    def _finish_failed_create(self, name: str, reason: str) -> None:
        log.info("endpoint %s: creation failed: %s", name, reason)

        def change(d: dict) -> None:
            d["EndpointStatus"] = "Failed"
            d["FailureReason"] = reason
            d["LastModifiedTime"] = time.time()
            d["_pending"] = None

        self.state.update(ENDPOINT, name, change)

    def _update_op(self, name: str, cancel: threading.Event) -> None:
        doc = self.state.get(ENDPOINT, name)
        pending_config = doc["_pending"]["config"]
        config = self.state.get(ENDPOINT_CONFIG, pending_config)
        try:
            if config is None:
                raise DeployFailure(
                    f'Could not find endpoint configuration "{arn(doc["_region"], "endpoint-config", pending_config)}".'
                )
            variants = self._deploy(doc, config, cancel)
        except DeployFailure as failure:
            reason = str(failure)
            log.info(
                "endpoint %s: update to %s failed, keeping %s: %s",
                name,
                pending_config,
                doc["EndpointConfigName"],
                reason,
            )

            self.state.update(ENDPOINT, name, lambda d: _keep_old(d, reason))
            return
        with self._lock:
            old = self._routes.get(name.lower(), [])
        try:
            # Traffic moves only now that every new variant answered /ping, in the deployment's steps.
            self._shift_traffic(name, doc, old, variants, cancel)
        except RolledBack as failure:
            self._stop_variants(variants)
            reason = str(failure)
            log.info("endpoint %s: update to %s rolled back: %s", name, pending_config, reason)
            self.state.update(ENDPOINT, name, lambda d: _keep_old(d, reason))
            return
        except BaseException:
            with self._lock:
                self._shifts.pop(name.lower(), None)
            self._drain(variants)
            self._stop_variants(variants)
            raise
        with self._lock:
            self._check(cancel)
            self._routes[name.lower()] = variants
            self._shifts.pop(name.lower(), None)
            self._pending.pop(name.lower(), None)
        # As on SageMaker, the endpoint is InService again once the old fleet is gone.
        self._drain(old)
        self._stop_variants(old)
        now = time.time()

        def switch(d: dict) -> None:
            d["EndpointStatus"] = "InService"
            d["EndpointConfigName"] = config["EndpointConfigName"]
            d["LastModifiedTime"] = now
            d["_live"] = {"config": config["EndpointConfigName"], "variants": [v.record for v in variants]}
            d["ProductionVariants"] = variant_summaries(variants, now)
            _set_capture(d, config)
            _set_shadows(d, variants, now)
            if (d.get("_pending") or {}).get("deployment"):
                d["LastDeploymentConfig"] = d["_pending"]["deployment"]
            d["_pending"] = None
            d.pop("PendingDeploymentSummary", None)
            d.pop("FailureReason", None)

        self.state.update(ENDPOINT, name, switch)
        log.info("endpoint %s: updated to %s", name, config["EndpointConfigName"])

    def _restore_op(self, name: str, cancel: threading.Event) -> None:
        """Bring the live variants back after a restart, then resume an interrupted update."""
        doc = self.state.get(ENDPOINT, name)
        live = doc.get("_live") or {"variants": []}
        variants: list[Variant] = []
        adopted_all = True
        for record in live["variants"]:
            if procs.alive(record.get("Pid"), record.get("PStart")) and self._ping(record["Port"]):
                log.info("endpoint %s: adopting variant %s (pid %s)", name, record["VariantName"], record["Pid"])
                variant = Variant(record=record)
                log_path = Path(record["Dir"]) / "serve.log"
                self._start_tail(doc, variant, log_path.stat().st_size if log_path.exists() else 0)
                variants.append(variant)
                continue
            adopted_all = False
            break
        if not adopted_all:
            for variant in variants:
                variant.stop_tail.set()
            variants = []
            if doc["EndpointStatus"] == "InService":
                self.state.update(ENDPOINT, name, lambda d: d.update(EndpointStatus="SystemUpdating"))
            try:
                for record in live["variants"]:
                    self._kill_record(record)
                variants = self._relaunch(doc, live["variants"], cancel, part="_live")
            except DeployFailure as failure:
                self._finish_failed_create(name, str(failure))
                return
        with self._lock:
            self._check(cancel)
            self._routes[name.lower()] = variants

            def change(d: dict) -> None:
                d["_live"]["variants"] = [v.record for v in variants]
                if d["EndpointStatus"] == "SystemUpdating":
                    d["EndpointStatus"] = "InService"
                    d["LastModifiedTime"] = time.time()

            self.state.update(ENDPOINT, name, change)
        if doc.get("_pending"):
            self._update_op(name, cancel)

    def _delete_op(self, name: str, previous: threading.Thread | None, live: list[Variant] | None = None) -> None:
        if previous is not None and previous is not threading.current_thread():
            previous.join()
        with self._lock:
            variants = (live or []) + self._routes.pop(name.lower(), []) + self._pending.pop(name.lower(), [])
        self._stop_variants(variants)
        doc = self.state.get(ENDPOINT, name)
        if doc is not None:
            for part in ("_live", "_pending"):
                for record in (doc.get(part) or {}).get("variants", []):
                    self._kill_record(record)
        shutil.rmtree(self.root / name.lower(), ignore_errors=True)
        self.state.delete(ENDPOINT, name)
        with self._lock:
            if self._ops.get(name.lower()) is threading.current_thread():
                self._ops.pop(name.lower(), None)
                self._cancel.pop(name.lower(), None)
        log.info("endpoint %s: deleted", name)

    def _deploy(self, doc: dict, config: dict, cancel: threading.Event) -> list[Variant]:
        """Start every variant of ``config`` and wait for its /ping; all or nothing."""
        name = doc["EndpointName"]
        region = doc["_region"]
        deployment = uuid.uuid4().hex[:12]
        records = []
        shadows = [{**v, "_shadow": True} for v in config.get("ShadowProductionVariants") or []]
        for variant in config["ProductionVariants"] + shadows:
            model = self.state.get(MODEL, variant["ModelName"])
            if model is None:
                raise DeployFailure(f'Could not find model "{arn(region, "model", variant["ModelName"])}".')
            container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
            records += self.instance_records(
                {
                    "VariantName": variant["VariantName"],
                    "ModelName": model["ModelName"],
                    "Image": container.get("Image", ""),
                    "ModelDataUrl": container.get("ModelDataUrl"),
                    "Environment": container.get("Environment") or {},
                    "Weight": float(variant.get("InitialVariantWeight", 1.0)),
                    "InstanceCount": variant.get("InitialInstanceCount"),
                    "InstanceType": variant.get("InstanceType"),
                    "ServerlessConfig": variant.get("ServerlessConfig"),
                    "HealthTimeout": variant.get("ContainerStartupHealthCheckTimeoutInSeconds"),
                    "DataCapture": config.get("DataCaptureConfig"),
                    "Shadow": bool(variant.get("_shadow")),
                },
                self.root / name.lower() / deployment / variant["VariantName"],
                self.local_instances(variant.get("InitialInstanceCount"), variant.get("ServerlessConfig")),
            )
        return self._relaunch(doc, records, cancel, part="_pending", fresh=True)


def _set_shadows(d: dict, variants: list[Variant], now: float) -> None:
    summaries = variant_summaries(variants, now, shadow=True)
    if summaries:
        d["ShadowProductionVariants"] = summaries
    else:
        d.pop("ShadowProductionVariants", None)


def _set_capture(d: dict, config: dict) -> None:
    summary = capture_summary(config.get("DataCaptureConfig"))
    if summary:
        d["DataCaptureConfig"] = summary
    else:
        d.pop("DataCaptureConfig", None)


def _keep_old(d: dict, reason: str) -> None:
    """A failed or rolled-back update: InService on the old config, FailureReason saying why."""
    d["EndpointStatus"] = "InService"
    d["FailureReason"] = reason
    d["LastModifiedTime"] = time.time()
    if (d.get("_pending") or {}).get("deployment"):
        d["LastDeploymentConfig"] = d["_pending"]["deployment"]
    d["_pending"] = None
    d.pop("PendingDeploymentSummary", None)


def variant_summaries(variants: list[Variant], now: float, shadow: bool = False) -> list[dict]:
    """DescribeEndpoint's ProductionVariants (or ShadowProductionVariants): one per variant name, over its
    instances' processes."""
    out = []
    first = {}
    for variant in variants:
        if bool(variant.record.get("Shadow")) == shadow:
            first.setdefault(variant.name, variant)
    for variant in first.values():
        record = variant.record
        summary = {
            "VariantName": record["VariantName"],
            "DeployedImages": [
                {"SpecifiedImage": record["Image"], "ResolvedImage": record["Image"], "ResolutionTime": now}
            ],
            "CurrentWeight": record["Weight"],
            "DesiredWeight": record["Weight"],
        }
        if record.get("ServerlessConfig"):
            summary["CurrentServerlessConfig"] = record["ServerlessConfig"]
            summary["DesiredServerlessConfig"] = record["ServerlessConfig"]
        else:
            # One local server process per instance, up to localcloud's --max-instances.
            summary["CurrentInstanceCount"] = record.get("InstanceCount") or 1
            summary["DesiredInstanceCount"] = record.get("InstanceCount") or 1
        out.append(summary)
    return out
