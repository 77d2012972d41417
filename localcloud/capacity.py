"""A live variant's weight and instance count: ``UpdateEndpointWeightsAndCapacities``, which Application Auto
Scaling also calls (:mod:`localcloud.autoscaling`).

The endpoint is ``Updating`` while it changes and ``InService`` after. More instances: as many new model server
processes as the change asks (up to ``--max-instances``), each healthy before it takes traffic. Fewer: the extra
processes leave the routing, finish their requests in flight, and stop. ``DesiredInstanceCount`` is what
DescribeEndpoint reports afterwards.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from .errors import validation
from .model_servers import DeployFailure, Variant
from .state import ENDPOINT

log = logging.getLogger("localcloud.endpoints")


class VariantCapacity:
    """Mixed into ``Endpoints``: its routes, lock, state and process handling."""

    def update_capacity(self, body: dict, region: str) -> str:
        name = body["EndpointName"]
        with self._lock:
            doc = self.state.get(ENDPOINT, name)
            if doc is None:
                from .endpoints import not_found_message

                raise validation(not_found_message(region, name))
            if doc["EndpointStatus"] != "InService":
                raise validation(f'Cannot update in-progress endpoint "{doc["EndpointArn"]}".')
            live = {v.name for v in self._routes.get(name.lower(), [])}
            changes = body["DesiredWeightsAndCapacities"]
            unknown = sorted({c["VariantName"] for c in changes} - live)
            if unknown:
                raise validation(
                    f'The variant(s) "[{", ".join(unknown)}]" specified in the request are not valid for endpoint '
                    f'"{name}".'
                )
            self.state.update(
                ENDPOINT, name, lambda d: d.update(EndpointStatus="Updating", LastModifiedTime=time.time())
            )
            self._launch(name, lambda n, cancel: self._capacity_op(n, changes, cancel))
            return doc["EndpointArn"]

    def _capacity_op(self, name: str, changes: list[dict], cancel: threading.Event) -> None:
        from .endpoint_ops import variant_summaries

        doc = self.state.get(ENDPOINT, name)
        key = name.lower()
        failure = None
        for change in changes:
            with self._lock:
                instances = [v for v in self._routes.get(key, []) if v.name == change["VariantName"]]
            if change.get("DesiredWeight") is not None:
                for variant in instances:
                    variant.record["Weight"] = float(change["DesiredWeight"])
            count = change.get("DesiredInstanceCount")
            if count is None or not instances:
                continue
            for variant in instances:
                variant.record["InstanceCount"] = int(count)
            try:
                self._resize(
                    doc, instances, self.local_instances(count, instances[0].record.get("ServerlessConfig")), cancel
                )
            except DeployFailure as err:  # the instances already serving keep serving
                failure = str(err)
        now = time.time()
        with self._lock:
            variants = list(self._routes.get(key, []))

        def finish(d: dict) -> None:
            d["EndpointStatus"] = "InService"
            d["LastModifiedTime"] = now
            d["_live"]["variants"] = [v.record for v in variants]
            d["ProductionVariants"] = variant_summaries(variants, now)
            if failure:
                d["FailureReason"] = failure

        self.state.update(ENDPOINT, name, finish)
        log.info("endpoint %s: capacity now %s", name, {v.name: v.record.get("InstanceCount") for v in variants})

    def _resize(self, doc: dict, instances: list[Variant], want: int, cancel: threading.Event) -> None:
        key = doc["EndpointName"].lower()
        if want > len(instances):
            template = {k: v for k, v in instances[0].record.items() if k not in ("Port", "Pid", "PStart")}
            variant_dir = Path(instances[0].record["Dir"]).parent
            records = self.instance_records(template, variant_dir, want - len(instances))
            started = self._relaunch(doc, records, cancel, part="_live", fresh=True)
            with self._lock:
                self._routes[key] = self._routes.get(key, []) + started
        elif want < len(instances):
            extra = instances[want:]
            with self._lock:
                self._routes[key] = [v for v in self._routes.get(key, []) if v not in extra]
            self._drain(extra)
            self._stop_variants(extra)
