"""The processes behind an endpoint's variants: fetching and unpacking the model, starting the serve command
the image map names (on 127.0.0.1, with an allow-listed environment), waiting for ``/ping``, shipping its output
to CloudWatch Logs, and stopping it."""

from __future__ import annotations

import logging
import shutil
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import urllib3

from . import procs
from .state import ENDPOINT
from .training_container import split_s3

log = logging.getLogger("localcloud.endpoints")
LOG_GROUP_PREFIX = "/aws/sagemaker/Endpoints/"


def files_only(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """tarfile's ``data`` filter (nothing outside the destination, no device files), and no links or absolute
    names at all: a model artifact is files and directories, and a link is how an archive reaches outside."""
    if not (member.isfile() or member.isdir()):
        raise tarfile.FilterError(f"refusing {member.name!r}: not a regular file or directory")
    if member.name.startswith("/"):
        raise tarfile.FilterError(f"refusing {member.name!r}: an absolute name")
    return tarfile.data_filter(member, dest)


class DeployFailure(Exception):
    """A deployment failed; the message is the endpoint's FailureReason."""


class Cancelled(Exception):
    """The endpoint is being deleted or localcloud is stopping."""


@dataclass
class Variant:
    """One running production variant: a model server process."""

    record: dict
    proc: object | None = None
    stop_tail: threading.Event = field(default_factory=threading.Event)
    tail: threading.Thread | None = None
    inflight: int = 0  # requests forwarded and not answered yet (Endpoints.invoke, under its lock)

    @property
    def name(self) -> str:
        return self.record["VariantName"]

    @property
    def port(self) -> int:
        return self.record["Port"]


class VariantProcesses:
    """Start, health-check, tail and stop variant processes (mixed into ``Endpoints``, whose state it uses)."""

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
                commands = self.runtime.images.resolve(record["Image"])
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
                log.info(
                    "endpoint %s: variant %s serving %s on port %s (pid %s)", name, variant.name, argv, port, proc.pid
                )
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

    def local_instances(self, count: int | None, serverless: dict | None) -> int:
        """How many server processes stand for a variant's instances (a serverless variant: one)."""
        if serverless:
            return 1
        return max(1, min(int(count or 1), self.runtime.settings.max_instances))

    @staticmethod
    def instance_records(template: dict, variant_dir: Path, count: int) -> list[dict]:
        """One process record per instance, each with its own instance id and directory."""
        records = []
        for _ in range(count):
            instance = "i-" + uuid.uuid4().hex[:17]
            records.append({**template, "InstanceId": instance, "Dir": str(variant_dir / instance)})
        return records

    def _record(self, name: str, part: str, variants: list[Variant]) -> None:
        """Record new processes at once, so a crash cannot leave servers no one knows about."""

        def change(d: dict) -> None:
            if d.get(part) is None:
                return
            merged = {r["InstanceId"]: r for r in d[part]["variants"]}
            merged.update({v.record["InstanceId"]: v.record for v in variants})
            d[part]["variants"] = list(merged.values())

        self.state.update(ENDPOINT, name, change)

    def _fetch_model(self, url: str | None, vdir: Path, model_dir: Path) -> None:
        model_dir.mkdir(parents=True, exist_ok=True)
        if not url:
            return
        tarball = vdir / "model.tar.gz"
        try:
            bucket, key = split_s3(url)
            self.runtime.client("s3").download_file(bucket, key, str(tarball))
        except Exception:
            raise DeployFailure(
                f'Failed to download model data for container "container_1" from URL: "{url}". Please ensure that '
                "there is an object located at the URL and that the role passed to CreateModel has permissions to "
                "download the object."
            ) from None
        try:
            with tarfile.open(tarball, "r:*") as tar:
                tar.extractall(model_dir, filter=files_only)
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
        timeout = variant.record.get("HealthTimeout") or self.runtime.settings.health_timeout
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
            time.sleep(self.runtime.settings.poll_interval / 2)

    def _start_tail(self, doc: dict, variant: Variant, offset: int) -> None:
        reader = procs.LineReader(Path(variant.record["Dir"]) / "serve.log", offset)
        stream = procs.CloudWatchStream(
            self.runtime.client("logs"),
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
                variant.record.get("Pid"),
                variant.record.get("PStart"),
                grace=self.runtime.settings.stop_grace,
                proc=variant.proc,
            )
            variant.stop_tail.set()
        for variant in variants:
            if variant.tail is not None:
                variant.tail.join(timeout=5)
            vdir = Path(variant.record["Dir"])
            if not self.runtime.shutting_down.is_set():
                shutil.rmtree(vdir, ignore_errors=True)

    def _kill_record(self, record: dict) -> None:
        procs.terminate(record.get("Pid"), record.get("PStart"), grace=self.runtime.settings.stop_grace)
