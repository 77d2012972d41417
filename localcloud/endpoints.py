"""Endpoints that really serve.

Deploying an endpoint config starts, for each production variant, the serve command its model's image maps
to, on a free loopback port, with the untarred ``ModelDataUrl`` as model directory (the contract of a
SageMaker inference container: ``GET /ping``, ``POST /invocations``). A variant counts as deployed once
``/ping`` answers 200; if the process exits or the health-check timeout passes first, the deployment fails
with the reason SageMaker gives.

- CreateEndpoint: ``Creating`` -> ``InService``, or ``Failed`` with ``FailureReason``.
- UpdateEndpoint is blue/green: ``Updating`` while the new variants start next to the old ones; traffic
  moves only once every new variant is healthy, in the steps of the request's ``DeploymentConfig``, with
  auto-rollback on its alarms (:mod:`localcloud.traffic`), then the old processes stop once idle. If the new config never gets
  healthy, its processes stop, the old ones keep serving, and the endpoint returns to ``InService`` on the
  old ``EndpointConfigName`` with ``FailureReason`` set, as SageMaker reports a failed update.
- DeleteEndpoint: ``Deleting``, processes stopped, then gone.
- InvokeEndpoint goes to a live variant (``TargetVariant`` or weighted choice) and returns its body and
  content type; container errors come back as SageMaker's ``ModelError``. Each invocation is a data point
  of the endpoint's CloudWatch metrics (:mod:`localcloud.metrics`) and, when its config captures data, a
  sampled JSON Lines record in S3 (:mod:`localcloud.capture`).

A variant's processes and ports are recorded in SQLite; after a restart localcloud adopts a model server
that is still running and healthy (it outlived a crash) or starts it again from its untarred model, with the
endpoint in ``SystemUpdating`` meanwhile. Server output goes to CloudWatch Logs
``/aws/sagemaker/Endpoints/<endpoint>``, stream ``<variant>/<instance-id>``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import Counter

import urllib3

from .autoscaling import Autoscaler
from .capacity import VariantCapacity
from .capture import DataCapture
from .endpoint_ops import EndpointOperations
from .errors import ACCOUNT_ID, AwsError, arn, validation
from .metrics import EndpointMetrics
from .model_servers import LOG_GROUP_PREFIX, Cancelled, Variant
from .runtime import Runtime
from .shadow import ShadowTraffic, production
from .state import ENDPOINT, ENDPOINT_CONFIG
from .traffic import Shift, check_deployment_config

log = logging.getLogger("localcloud.endpoints")


class ContainerError(AwsError):
    """The model answered with an HTTP error (``model_status``): SageMaker's ModelError."""

    def __init__(self, model_status: int, *args):
        super().__init__(*args)
        self.model_status = model_status


def not_found_message(region: str, name: str) -> str:
    return f'Could not find endpoint "{arn(region, "endpoint", name)}".'


class Endpoints(EndpointOperations, VariantCapacity, ShadowTraffic):
    """SageMaker endpoints: the API, the create/update/delete operations and the routing of invocations."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.state = runtime.state
        self.root = runtime.data_dir / "endpoints"
        self.root.mkdir(parents=True, exist_ok=True)
        self._routes: dict[str, list[Variant]] = {}
        self._pending: dict[str, list[Variant]] = {}
        self._shifts: dict[str, Shift] = {}  # a deployment's share of the traffic on its new fleet
        self.metrics = EndpointMetrics(lambda: runtime.client("cloudwatch"), runtime.shutting_down)
        self.capture = DataCapture(lambda: runtime.client("s3"), runtime.shutting_down)
        self.autoscaler = Autoscaler(self, lambda: runtime.client("application-autoscaling"), runtime.shutting_down)
        self._ops: dict[str, threading.Thread] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._lock = threading.RLock()
        self._http = urllib3.PoolManager(maxsize=16, retries=False)

    # -- API ---------------------------------------------------------------------------------------------
    def create(self, body: dict, region: str) -> str:
        name = body["EndpointName"]
        config = self.state.get(ENDPOINT_CONFIG, body["EndpointConfigName"])
        if config is None:
            raise validation(
                f'Could not find endpoint configuration "{arn(region, "endpoint-config", body["EndpointConfigName"])}".'
            )
        endpoint_arn = arn(region, "endpoint", name)
        now = time.time()
        doc = {
            "EndpointName": name,
            "EndpointArn": endpoint_arn,
            "EndpointConfigName": config["EndpointConfigName"],
            "EndpointStatus": "Creating",
            "CreationTime": now,
            "LastModifiedTime": now,
            "_region": region,
            "_live": None,
            "_pending": {"config": config["EndpointConfigName"], "variants": [], "started": now},
        }
        with self._lock:
            if not self.state.insert(ENDPOINT, name, endpoint_arn, now, doc):
                raise validation(f'Cannot create already existing endpoint "{endpoint_arn}".')
            if body.get("Tags"):
                self.state.add_tags(endpoint_arn, body["Tags"])
            self._launch(name, self._create_op)
        return endpoint_arn

    def update(self, body: dict, region: str) -> str:
        name = body["EndpointName"]
        config = self.state.get(ENDPOINT_CONFIG, body["EndpointConfigName"])
        with self._lock:
            doc = self.state.get(ENDPOINT, name)
            if doc is None:
                raise validation(not_found_message(region, name))
            if config is None:
                raise validation(
                    f'Could not find endpoint configuration "{arn(region, "endpoint-config", body["EndpointConfigName"])}".'
                )
            if doc["EndpointStatus"] != "InService":
                if doc["EndpointStatus"] == "Failed":
                    raise validation(f'Cannot update failed endpoint "{doc["EndpointArn"]}".')
                raise validation(f'Cannot update in-progress endpoint "{doc["EndpointArn"]}".')
            deployment = body.get("DeploymentConfig")
            if body.get("RetainDeploymentConfig") and not deployment:
                deployment = doc.get("LastDeploymentConfig")
            capacity = sum(int(v.get("InitialInstanceCount") or 1) for v in config["ProductionVariants"])
            check_deployment_config(deployment, capacity)
            self._check_scaled_instance_types(doc, config)
            now = time.time()

            def change(d: dict) -> None:
                d["EndpointStatus"] = "Updating"
                d["LastModifiedTime"] = now
                d["_pending"] = {
                    "config": config["EndpointConfigName"],
                    "variants": [],
                    "started": now,
                    "deployment": deployment,
                }
                d["PendingDeploymentSummary"] = {
                    "EndpointConfigName": config["EndpointConfigName"],
                    "StartTime": now,
                    "ProductionVariants": [
                        {
                            "VariantName": v["VariantName"],
                            "DesiredWeight": float(v.get("InitialVariantWeight", 1.0)),
                            "DesiredInstanceCount": v.get("InitialInstanceCount", 1),
                            **({"InstanceType": v["InstanceType"]} if v.get("InstanceType") else {}),
                            "VariantStatus": [{"Status": "Creating", "StartTime": now}],
                        }
                        for v in config["ProductionVariants"]
                    ],
                }

            self.state.update(ENDPOINT, name, change)
            self._launch(name, self._update_op)
            return doc["EndpointArn"]

    def _check_scaled_instance_types(self, doc: dict, config: dict) -> None:
        """As on SageMaker, an update may not change the instance type of a variant that Application Auto
        Scaling scales."""
        live = {v.name: v.record.get("InstanceType") for v in self._routes.get(doc["EndpointName"].lower(), [])}
        changed = [
            v["VariantName"]
            for v in config["ProductionVariants"]
            if v["VariantName"] in live and v.get("InstanceType") != live[v["VariantName"]]
        ]
        if not changed:
            return
        scaled = self.autoscaler.scaled_variants(doc["EndpointName"])
        blocked = sorted(set(changed) & scaled)
        if blocked:
            raise validation(
                f"The instance type of variant(s) [{', '.join(blocked)}] of endpoint {doc['EndpointName']} cannot "
                "change while Application Auto Scaling scales them: deregister the scalable target(s) first."
            )

    def delete(self, name: str, region: str) -> None:
        with self._lock:
            doc = self.state.get(ENDPOINT, name)
            if doc is None:
                raise validation(not_found_message(region, name))
            if doc["EndpointStatus"] == "Deleting":
                return

            def change(d: dict) -> None:
                d["EndpointStatus"] = "Deleting"
                d["LastModifiedTime"] = time.time()

            self.state.update(ENDPOINT, name, change)
            # Invocations fail from now on, as on SageMaker; the processes stop in the background.
            live = self._routes.pop(name.lower(), [])
            cancel = self._cancel.get(name.lower())
            if cancel is not None:
                cancel.set()
            previous = self._ops.get(name.lower())
            thread = threading.Thread(
                target=self._delete_op, args=(name, previous, live), name=f"endpoint-delete-{name}", daemon=True
            )
            self._ops[name.lower()] = thread
        thread.start()

    def invoke(self, name: str, body: bytes, headers, region: str) -> tuple[bytes, str, str, str | None]:
        """Forward to a live variant; ``headers`` is the request's case-insensitive header mapping."""
        variant, fleet = self._choose_variant(name, headers)
        response = self._forward_measured(variant, body, headers, name, region)
        event_id = str(uuid.uuid4())  # the capture records of this request, the live model's and its shadow's
        self._capture(name, variant, body, headers, response, event_id)
        self._mirror(name, fleet, body, headers, event_id)
        content_type = response.headers.get("Content-Type") or "application/json"
        return response.data, content_type, variant.name, response.headers.get("X-Amzn-SageMaker-Custom-Attributes")

    def _forward_measured(self, variant: Variant, body: bytes, headers, name: str, region: str):
        """Forward to ``variant`` (counted in flight by the caller), recording the status and latency."""
        started, status = time.monotonic(), 0
        try:
            response = self._forward(variant, body, headers, name, region)
            status = response.status
            return response
        except ContainerError as err:
            status = err.model_status
            raise
        finally:
            with self._lock:
                variant.inflight -= 1
            latency = time.monotonic() - started if status else None  # none for a request no model answered
            self.metrics.record(name, variant.name, status=status, latency_seconds=latency)

    def _capture(self, name: str, variant: Variant, body: bytes, headers, response, event_id: str) -> None:
        self.capture.offer(
            variant.record.get("DataCapture"),
            name,
            variant.name,
            (body, headers.get("Content-Type") or "application/octet-stream"),
            (response.data, response.headers.get("Content-Type") or "application/json"),
            time.time(),
            event_id=event_id,
        )

    def _choose_variant(self, name: str, headers) -> tuple[Variant, list[Variant]]:
        """The production variant a request goes to and its fleet; counted in flight at once (a fleet is stopped
        only once it is idle)."""
        with self._lock:
            fleet = self._routes.get(name.lower())
            if not fleet:
                raise AwsError("ValidationError", f"Endpoint {name} of account {ACCOUNT_ID} not found.")
            shift = self._shifts.get(name.lower())
            if shift is not None and random.random() < shift.fraction:
                fleet = shift.variants
            variants = production(fleet)
            target = headers.get("X-Amzn-SageMaker-Target-Variant")
            if target:
                chosen = [v for v in variants if v.name == target]
                if not chosen:
                    raise AwsError(
                        "ValidationError",
                        f'The variant(s) "[{target}]" specified in the request are not valid for endpoint "{name}".',
                    )
                variant = random.choice(chosen)
            else:
                # A variant's weight is shared by its instances.
                instances = Counter(v.name for v in variants)
                weights = [float(v.record.get("Weight", 1.0)) / instances[v.name] for v in variants]
                if sum(weights) <= 0:
                    raise AwsError("ValidationError", f"Endpoint {name} has no variant with a non-zero weight.")
                variant = random.choices(variants, weights=weights)[0]
            variant.inflight += 1
            return variant, fleet

    def _forward(self, variant: Variant, body: bytes, headers, name: str, region: str):
        """POST to the variant's /invocations; a container error becomes SageMaker's ModelError."""
        forward = {"Content-Type": headers.get("Content-Type") or "application/octet-stream"}
        for header in ("Accept", "X-Amzn-SageMaker-Custom-Attributes"):
            if headers.get(header):
                forward[header] = headers[header]
        group = LOG_GROUP_PREFIX + name
        see = (
            f"See https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}#logEventViewer:group="
            f"{group} in account {ACCOUNT_ID} for more information."
        )
        log_arn = f"arn:aws:logs:{region}:{ACCOUNT_ID}:log-group:{group}"
        try:
            response = self._http.request(
                "POST",
                f"http://127.0.0.1:{variant.port}/invocations",
                body=body,
                headers=forward,
                timeout=urllib3.Timeout(connect=5, read=self.runtime.settings.invoke_timeout),
            )
        except urllib3.exceptions.ReadTimeoutError:
            raise AwsError(
                "ModelError",
                "Your invocation timed out while waiting for a response from container primary. Review the latency "
                "metrics for each container in Amazon CloudWatch, resolve the issue, and try again.",
                424,
                {"OriginalStatusCode": 0, "LogStreamArn": log_arn},
            ) from None
        except urllib3.exceptions.HTTPError as err:
            raise AwsError(
                "ModelError",
                f'Received server error (0) from primary with message "{err}". {see}',
                424,
                {"OriginalStatusCode": 0, "OriginalMessage": str(err), "LogStreamArn": log_arn},
            ) from None
        if response.status >= 400:
            text = response.data.decode("utf-8", errors="replace")
            kind = "client" if response.status < 500 else "server"
            raise ContainerError(
                response.status,
                "ModelError",
                f'Received {kind} error ({response.status}) from primary with message "{text}". {see}',
                424,
                {"OriginalStatusCode": response.status, "OriginalMessage": text, "LogStreamArn": log_arn},
            )
        return response

    def recover(self) -> None:
        self.metrics.start()
        self.capture.start()
        self.autoscaler.start()
        for doc in self.state.list(ENDPOINT):
            name = doc["EndpointName"]
            status = doc["EndpointStatus"]
            for record in (doc.get("_pending") or {}).get("variants", []):
                self._kill_record(record)
            if status == "Deleting":
                with self._lock:
                    thread = threading.Thread(target=self._delete_op, args=(name, None), daemon=True)
                    self._ops[name.lower()] = thread
                thread.start()
            elif status == "Creating":
                with self._lock:
                    self._launch(name, self._create_op)
            elif status == "Failed":
                for record in (doc.get("_live") or {}).get("variants", []):
                    self._kill_record(record)
            else:
                with self._lock:
                    self._launch(name, self._restore_op)

    def shutdown(self) -> None:
        with self._lock:
            for cancel in self._cancel.values():
                cancel.set()
            ops = list(self._ops.values())
        for thread in ops:
            thread.join(timeout=30)
        with self._lock:
            groups = list(self._routes.values()) + list(self._pending.values())
            self._routes.clear()
            self._pending.clear()
        for variants in groups:
            self._stop_variants(variants)
        self._stop_mirroring()
        self.capture.stop()  # its last flush: what was captured reaches S3 before the final snapshot

    # -- operations (one thread per endpoint at a time) --------------------------------------------------
    def _launch(self, name: str, op) -> None:
        key = name.lower()
        cancel = threading.Event()
        self._cancel[key] = cancel
        thread = threading.Thread(target=self._guard, args=(name, op, cancel), name=f"endpoint-{name}", daemon=True)
        self._ops[key] = thread
        thread.start()

    def _guard(self, name: str, op, cancel: threading.Event) -> None:
        try:
            op(name, cancel)
        except Cancelled:
            log.info("endpoint %s: operation cancelled", name)
        except Exception as err:
            log.exception("endpoint %s: internal error", name)
            reason = f"InternalServerError: {err}"

            def change(d: dict) -> None:
                if d["EndpointStatus"] == "Updating" and self._routes.get(name.lower()):
                    # The old variants still serve: a failed update, not a failed endpoint.
                    d["EndpointStatus"] = "InService"
                    d["_pending"] = None
                    d.pop("PendingDeploymentSummary", None)
                elif d["EndpointStatus"] in ("Creating", "Updating", "SystemUpdating"):
                    d["EndpointStatus"] = "Failed"
                else:
                    return
                d["FailureReason"] = reason
                d["LastModifiedTime"] = time.time()

            self.state.update(ENDPOINT, name, change)

    def _check(self, cancel: threading.Event) -> None:
        if cancel.is_set() or self.runtime.shutting_down.is_set():
            raise Cancelled()

    # -- deployment ----------------------------------------------------------------------------------------
