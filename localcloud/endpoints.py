"""Endpoints that really serve.

Deploying an endpoint config starts, for each production variant, the serve command its model's image maps
to, on a free loopback port, with the untarred ``ModelDataUrl`` as model directory (the contract of a
SageMaker inference container: ``GET /ping``, ``POST /invocations``). A variant counts as deployed once
``/ping`` answers 200; if the process exits or the health-check timeout passes first, the deployment fails
with the reason SageMaker gives.

- CreateEndpoint: ``Creating`` -> ``InService``, or ``Failed`` with ``FailureReason``.
- UpdateEndpoint is blue/green: ``Updating`` while the new variants start next to the old ones; traffic
  moves only once every new variant is healthy, then the old processes stop. If the new config never gets
  healthy, its processes stop, the old ones keep serving, and the endpoint returns to ``InService`` on the
  old ``EndpointConfigName`` with ``FailureReason`` set, as SageMaker reports a failed update.
- DeleteEndpoint: ``Deleting``, processes stopped, then gone.
- InvokeEndpoint goes to a live variant (``TargetVariant`` or weighted choice) and returns its body and
  content type; container errors come back as SageMaker's ``ModelError``.

A variant's processes and ports are recorded in SQLite; after a restart localcloud adopts a model server
that is still running and healthy (it outlived a crash) or starts it again from its untarred model, with the
endpoint in ``SystemUpdating`` meanwhile. Server output goes to CloudWatch Logs
``/aws/sagemaker/Endpoints/<endpoint>``, stream ``<variant>/<instance-id>``.
"""
from __future__ import annotations

import logging
import os
import random
import shutil
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import urllib3

from . import procs
from .errors import ACCOUNT_ID, AwsError, arn, validation
from .jobs import split_s3
from .state import ENDPOINT, ENDPOINT_CONFIG, MODEL

if TYPE_CHECKING:
    from .server import LocalCloud

log = logging.getLogger("localcloud.endpoints")

LOG_GROUP_PREFIX = "/aws/sagemaker/Endpoints/"


class DeployFailure(Exception):
    """A deployment failed; the message is the endpoint's FailureReason."""


class Cancelled(Exception):
    """The endpoint is being deleted or localcloud is stopping."""


def not_found_message(region: str, name: str) -> str:
    return f'Could not find endpoint "{arn(region, "endpoint", name)}".'


@dataclass
class Variant:
    """One running production variant: a model server process."""

    record: dict
    proc: object | None = None
    stop_tail: threading.Event = field(default_factory=threading.Event)
    tail: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.record["VariantName"]

    @property
    def port(self) -> int:
        return self.record["Port"]


class Endpoints:
    def __init__(self, cloud: "LocalCloud"):
        self.cloud = cloud
        self.state = cloud.state
        self.root = cloud.data_dir / "endpoints"
        self.root.mkdir(parents=True, exist_ok=True)
        self._routes: dict[str, list[Variant]] = {}
        self._pending: dict[str, list[Variant]] = {}
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
            now = time.time()

            def change(d: dict) -> None:
                d["EndpointStatus"] = "Updating"
                d["LastModifiedTime"] = now
                d["_pending"] = {"config": config["EndpointConfigName"], "variants": [], "started": now}
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
        variants = self._routes.get(name.lower())
        if not variants:
            raise AwsError("ValidationError", f"Endpoint {name} of account {ACCOUNT_ID} not found.")
        target = headers.get("X-Amzn-SageMaker-Target-Variant")
        if target:
            chosen = [v for v in variants if v.name == target]
            if not chosen:
                raise AwsError(
                    "ValidationError",
                    f'The variant(s) "[{target}]" specified in the request are not valid for endpoint "{name}".',
                )
            variant = chosen[0]
        else:
            weights = [float(v.record.get("Weight", 1.0)) for v in variants]
            if sum(weights) <= 0:
                raise AwsError("ValidationError", f"Endpoint {name} has no variant with a non-zero weight.")
            variant = random.choices(variants, weights=weights)[0]
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
                timeout=urllib3.Timeout(connect=5, read=self.cloud.settings.invoke_timeout),
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
            raise AwsError(
                "ModelError",
                f'Received {kind} error ({response.status}) from primary with message "{text}". {see}',
                424,
                {"OriginalStatusCode": response.status, "OriginalMessage": text, "LogStreamArn": log_arn},
            )
        content_type = response.headers.get("Content-Type") or "application/json"
        return response.data, content_type, variant.name, response.headers.get("X-Amzn-SageMaker-Custom-Attributes")

    def recover(self) -> None:
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
                d["FailureReason"] = f"InternalServerError: {err}"
                d["LastModifiedTime"] = time.time()

            self.state.update(ENDPOINT, name, change)

    def _check(self, cancel: threading.Event) -> None:
        if cancel.is_set() or self.cloud.shutting_down.is_set():
            raise Cancelled()

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
                d["ProductionVariants"] = _summaries(variants, now)
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
            log.info("endpoint %s: update to %s failed, keeping %s: %s", name, pending_config, doc["EndpointConfigName"], reason)

            def rollback(d: dict) -> None:
                d["EndpointStatus"] = "InService"
                d["FailureReason"] = reason
                d["LastModifiedTime"] = time.time()
                d["_pending"] = None
                d.pop("PendingDeploymentSummary", None)

            self.state.update(ENDPOINT, name, rollback)
            return
        with self._lock:
            self._check(cancel)
            old = self._routes.get(name.lower(), [])
            # Traffic moves in one step, only now that every new variant answered /ping.
            self._routes[name.lower()] = variants
            self._pending.pop(name.lower(), None)
        # As on SageMaker, the endpoint is InService again once the old fleet is gone.
        self._stop_variants(old)
        now = time.time()

        def switch(d: dict) -> None:
            d["EndpointStatus"] = "InService"
            d["EndpointConfigName"] = config["EndpointConfigName"]
            d["LastModifiedTime"] = now
            d["_live"] = {"config": config["EndpointConfigName"], "variants": [v.record for v in variants]}
            d["_pending"] = None
            d["ProductionVariants"] = _summaries(variants, now)
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

    # -- deployment ----------------------------------------------------------------------------------------
    def _deploy(self, doc: dict, config: dict, cancel: threading.Event) -> list[Variant]:
        """Start every variant of ``config`` and wait for its /ping; all or nothing."""
        name = doc["EndpointName"]
        region = doc["_region"]
        deployment = uuid.uuid4().hex[:12]
        records = []
        for variant in config["ProductionVariants"]:
            model = self.state.get(MODEL, variant["ModelName"])
            if model is None:
                raise DeployFailure(f'Could not find model "{arn(region, "model", variant["ModelName"])}".')
            container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
            records.append(
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
                    "Dir": str(self.root / name.lower() / deployment / variant["VariantName"]),
                    "InstanceId": "i-" + uuid.uuid4().hex[:17],
                }
            )
        return self._relaunch(doc, records, cancel, part="_pending", fresh=True)

    def _relaunch(
        self, doc: dict, records: list[dict], cancel: threading.Event, part: str, fresh: bool = False
    ) -> list[Variant]:
        name = doc["EndpointName"]
        key = name.lower()
        started: list[Variant] = []
        with self._lock:
            self._pending[key] = started
        try:
            for record in records:
                self._check(cancel)
                record = dict(record)
                commands = self.cloud.images.resolve(record["Image"])
                if commands is None or not commands.serve:
                    raise DeployFailure(
                        f"localcloud has no serve command for image '{record['Image']}' of production variant "
                        f"{record['VariantName']}. Map it with --images or LOCALCLOUD_IMAGES."
                    )
                refusal = commands.refusal({}, record["Environment"])
                if refusal:
                    raise DeployFailure(refusal)
                vdir = Path(record["Dir"])
                model_dir = vdir / "model"
                if fresh or not model_dir.exists():
                    if vdir.exists():
                        shutil.rmtree(vdir)
                    vdir.mkdir(parents=True)
                    self._fetch_model(record.get("ModelDataUrl"), vdir, model_dir)
                port = procs.free_port()
                env = procs.base_environment()
                env.update(commands.render_env(root=str(vdir), model_dir=str(model_dir), port=str(port)))
                env.update(
                    {
                        "SM_MODEL_DIR": str(model_dir),
                        "SAGEMAKER_BIND_TO_PORT": str(port),
                        "SM_ROOT": str(vdir),
                        "SAGEMAKER_BASE_DIR": str(vdir),
                        "SAGEMAKER_ENDPOINT_NAME": name,
                        "SAGEMAKER_VARIANT_NAME": record["VariantName"],
                        "AWS_REGION": doc["_region"],
                        "AWS_DEFAULT_REGION": doc["_region"],
                        "PYTHONUNBUFFERED": "1",
                    }
                )
                env.update({k: str(v) for k, v in record["Environment"].items()})
                argv = commands.serve_argv(root=str(vdir), model_dir=str(model_dir), port=port)
                log_path = vdir / "serve.log"
                shipped = log_path.stat().st_size if log_path.exists() else 0  # earlier runs' lines went out already
                proc = procs.spawn(argv, env=env, cwd=vdir, log_path=log_path)
                record.update({"Port": port, "Pid": proc.pid, "PStart": procs.start_time(proc.pid)})
                variant = Variant(record=record, proc=proc)
                started.append(variant)
                self._record(name, part, started)
                self._start_tail(doc, variant, shipped)
                log.info("endpoint %s: variant %s serving %s on port %s (pid %s)", name, variant.name, argv, port, proc.pid)
            for variant in started:
                self._wait_healthy(variant, cancel)
            return list(started)
        except BaseException:
            self._stop_variants(started)
            raise
        finally:
            with self._lock:
                if self._pending.get(key) is started:
                    self._pending.pop(key, None)

    def _record(self, name: str, part: str, variants: list[Variant]) -> None:
        """Record new processes at once, so a crash cannot leave servers no one knows about."""

        def change(d: dict) -> None:
            if d.get(part) is None:
                return
            merged = {r["VariantName"]: r for r in d[part]["variants"]}
            merged.update({v.name: v.record for v in variants})
            d[part]["variants"] = list(merged.values())

        self.state.update(ENDPOINT, name, change)

    def _fetch_model(self, url: str | None, vdir: Path, model_dir: Path) -> None:
        model_dir.mkdir(parents=True, exist_ok=True)
        if not url:
            return
        tarball = vdir / "model.tar.gz"
        try:
            bucket, key = split_s3(url)
            self.cloud.client("s3").download_file(bucket, key, str(tarball))
        except Exception:
            raise DeployFailure(
                f'Failed to download model data for container "container_1" from URL: "{url}". Please ensure that '
                "there is an object located at the URL and that the role passed to CreateModel has permissions to "
                "download the object."
            ) from None
        try:
            with tarfile.open(tarball, "r:*") as tar:
                tar.extractall(model_dir, filter="data")
        except (tarfile.TarError, OSError, EOFError) as err:
            raise DeployFailure(
                f'Failed to extract model data archive from URL "{url}". Please ensure that the object located at '
                f"the URL is a valid tar.gz archive. ({err})"
            ) from None
        finally:
            tarball.unlink(missing_ok=True)

    def _ping(self, port: int) -> bool:
        try:
            response = self._http.request(
                "GET", f"http://127.0.0.1:{port}/ping", timeout=urllib3.Timeout(connect=1, read=2)
            )
            return response.status == 200
        except urllib3.exceptions.HTTPError:
            return False

    def _wait_healthy(self, variant: Variant, cancel: threading.Event) -> None:
        timeout = variant.record.get("HealthTimeout") or self.cloud.settings.health_timeout
        deadline = time.monotonic() + timeout
        failure = (
            f"The primary container for production variant {variant.name} did not pass the ping health check. "
            "Please check CloudWatch logs for this endpoint."
        )
        while True:
            self._check(cancel)
            if variant.proc is not None and variant.proc.poll() is not None:
                raise DeployFailure(failure)
            if self._ping(variant.port):
                return
            if time.monotonic() > deadline:
                raise DeployFailure(failure)
            time.sleep(self.cloud.settings.poll_interval / 2)

    def _start_tail(self, doc: dict, variant: Variant, offset: int) -> None:
        reader = procs.LineReader(Path(variant.record["Dir"]) / "serve.log", offset)
        stream = procs.CloudWatchStream(
            self.cloud.client("logs"),
            LOG_GROUP_PREFIX + doc["EndpointName"],
            f"{variant.name}/{variant.record['InstanceId']}",
        )

        def ship() -> None:
            while True:
                stopping = variant.stop_tail.wait(1.0)
                lines = reader.read(final=stopping)
                if lines:
                    try:
                        stream.put(lines)
                    except Exception as err:
                        log.debug("endpoint log shipping failed: %s", err)
                if stopping:
                    return

        variant.tail = threading.Thread(target=ship, name=f"tail-{variant.name}", daemon=True)
        variant.tail.start()

    def _stop_variants(self, variants: list[Variant]) -> None:
        for variant in variants:
            procs.terminate(
                variant.record.get("Pid"), variant.record.get("PStart"), grace=self.cloud.settings.stop_grace,
                proc=variant.proc,
            )
            variant.stop_tail.set()
        for variant in variants:
            if variant.tail is not None:
                variant.tail.join(timeout=5)
            vdir = Path(variant.record["Dir"])
            if not self.cloud.shutting_down.is_set():
                shutil.rmtree(vdir, ignore_errors=True)

    def _kill_record(self, record: dict) -> None:
        procs.terminate(record.get("Pid"), record.get("PStart"), grace=self.cloud.settings.stop_grace)


def _summaries(variants: list[Variant], now: float) -> list[dict]:
    out = []
    for variant in variants:
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
            # One local server process stands in for all of a variant's instances.
            summary["CurrentInstanceCount"] = record.get("InstanceCount") or 1
            summary["DesiredInstanceCount"] = record.get("InstanceCount") or 1
        out.append(summary)
    return out
