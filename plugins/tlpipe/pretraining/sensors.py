"""Sensors: the best checkpoint of a training run, and the conditions of an MPIJob."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout


def checkpoint_store(uri: str, conn_id: str | None = None, endpoint_url: str | None = None):
    """A ``training.store.Store`` for ``uri``: local paths as they are, s3:// through the connection's client."""
    from training.store import Store, is_s3

    if is_s3(uri) and conn_id:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return Store(endpoint_url, _client=S3Hook(aws_conn_id=conn_id).get_conn())
    return Store(endpoint_url)


class BestCheckpointSensor(BaseSensorOperator):
    """Wait until a training run's checkpoint directory has ``best.json`` and ``COMPLETE``.

    Fails at once with the reason recorded in ``FAILED``; on timeout the message names what was still missing.
    Returns ``{uri, epoch, val_accuracy, manifest_sha256, files}``: ``uri`` is the epoch directory best.json
    points to, ``files`` the sha256 and size of its files (what the export checks the download against).

    :param checkpoint_uri: the run's checkpoint directory, a local path or s3:// URI (templated)
    :param conn_id: Airflow aws connection of the S3-compatible checkpoint store (for s3:// URIs)
    :param expected_manifest_sha256: when set, a best.json trained on another manifest does not count (templated)
    """

    template_fields: Sequence[str] = ("checkpoint_uri", "expected_manifest_sha256")
    ui_color = "#d8f3dc"

    def __init__(
        self, *, checkpoint_uri: str, conn_id: str | None = None, expected_manifest_sha256: str | None = None, **kwargs
    ) -> None:
        kwargs.setdefault("mode", "reschedule")
        super().__init__(**kwargs)
        self.checkpoint_uri = checkpoint_uri
        self.conn_id = conn_id
        self.expected_manifest_sha256 = expected_manifest_sha256
        self._missing: list[str] = []

    def poke(self, context) -> Any:
        from airflow.sdk import PokeReturnValue

        from training.contracts import CheckpointDir

        uri = str(self.checkpoint_uri).rstrip("/")
        run_dir = CheckpointDir(uri)
        store = checkpoint_store(uri, self.conn_id)
        if store.exists(run_dir.failed):
            info = store.read_json(run_dir.failed)
            raise AirflowFailException(
                f"training failed: {info.get('reason', 'no reason recorded')} "
                f"(at {info.get('failed_at', '?')}; {run_dir.failed})"
            )
        missing = []
        best = run_dir.read_best(store)
        if best is None:
            missing.append(run_dir.BEST_JSON)
        elif self.expected_manifest_sha256 and best.get("manifest_sha256") != self.expected_manifest_sha256:
            missing.append(
                f"best.json for manifest {str(self.expected_manifest_sha256)[:12]} "
                f"(found one for {str(best.get('manifest_sha256'))[:12]})"
            )
        if not store.exists(run_dir.complete):
            missing.append(run_dir.COMPLETE)
        self._missing = missing
        if missing:
            self.log.info("%s: waiting for %s", uri, " and ".join(missing))
            return PokeReturnValue(is_done=False)
        result = {
            "uri": run_dir.epoch(int(best["epoch"])),
            "epoch": int(best["epoch"]),
            "val_accuracy": float(best["val_accuracy"]),
            "manifest_sha256": best["manifest_sha256"],
            "files": best.get("files") or {},
        }
        self.log.info(
            "best checkpoint: epoch %d, val_accuracy %.4f at %s", result["epoch"], result["val_accuracy"], result["uri"]
        )
        return PokeReturnValue(is_done=True, xcom_value=result)

    def execute(self, context) -> Any:
        try:
            return super().execute(context)
        except AirflowSensorTimeout as err:
            missing = " and ".join(self._missing) or "best.json and COMPLETE"
            raise AirflowSensorTimeout(
                f"no finished training in {self.checkpoint_uri}: {missing} still missing ({err})"
            ) from err


class MPIJobSensor(BaseSensorOperator):
    """Wait for an MPIJob's Succeeded or Failed condition; a failure fails the task with the job's reason.

    Killing the task deletes the MPIJob (its pods go with it).
    """

    template_fields: Sequence[str] = ("name", "namespace")
    ui_color = "#e0e7ff"

    def __init__(self, *, name: str, namespace: str, kubernetes_conn_id: str = "kubernetes_default", **kwargs) -> None:
        kwargs.setdefault("mode", "reschedule")
        super().__init__(**kwargs)
        self.name = name
        self.namespace = namespace
        self.kubernetes_conn_id = kubernetes_conn_id
        self._log_since: str | None = None

    def _hook(self):
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        return KubernetesHook(conn_id=self.kubernetes_conn_id)

    def poke(self, context) -> bool:
        from plugins.tlpipe.pretraining import mpijob

        obj = self._hook().get_custom_object(
            group=mpijob.GROUP, version=mpijob.VERSION, plural=mpijob.PLURAL, name=self.name, namespace=self.namespace
        )
        status = mpijob.MPIJobStatus.model_validate(obj.get("status") or {})
        replicas = ", ".join(
            f"{role}: {', '.join(f'{k} {v}' for k, v in counts.items())}"
            for role, counts in sorted(status.replica_statuses.items())
        )
        self.log.info(
            "MPIJob %s/%s: %s%s", self.namespace, self.name, status.phase, f" ({replicas})" if replicas else ""
        )
        self._stream_launcher_log(context)
        failed = status.condition("Failed")
        if failed:
            raise AirflowFailException(
                f"MPIJob {self.namespace}/{self.name} failed: "
                f"{failed.reason or 'no reason'}: {failed.message or 'no message'}"
            )
        return status.condition("Succeeded") is not None

    LOG_SINCE_KEY = "launcher_log_since"

    def _stream_launcher_log(self, context) -> None:
        """The launcher pod's new log lines (horovodrun's output: every rank's epochs) into this task's log.

        The API server stamps each line (``timestamps=true``); the newest stamp printed is kept in XCom, so a
        rescheduled poke prints only what came after it. Logs are a convenience: reading them never fails a poke.
        """
        from plugins.tlpipe.pretraining import mpijob

        ti = context.get("ti") if hasattr(context, "get") else None
        try:
            core = self._hook().core_v1_client
            selector = f"{mpijob.LABEL_JOB_NAME}={self.name},{mpijob.LABEL_JOB_ROLE}=launcher"
            pods = core.list_namespaced_pod(self.namespace, label_selector=selector).items
            if not pods:
                return
            pod = sorted(pods, key=lambda p: p.metadata.creation_timestamp or 0)[-1].metadata.name
            last = self._log_since or (ti.xcom_pull(task_ids=ti.task_id, key=self.LOG_SINCE_KEY) if ti else None)
            window = int(time.time() - _stamp(last).timestamp()) + 2 if last else int(self.poke_interval) + 5
            text = core.read_namespaced_pod_log(pod, self.namespace, timestamps=True, since_seconds=max(window, 1))
        except Exception as err:  # noqa: BLE001
            self.log.debug("no launcher log yet: %s", err)
            return
        newest = last
        for line in (text or "").splitlines():
            stamp, _, message = line.partition(" ")
            if last and _stamp(stamp) <= _stamp(last):
                continue
            self.log.info("[launcher %s] %s", pod, message)
            newest = stamp
        if newest and newest != last:
            self._log_since = newest
            if ti is not None:
                ti.xcom_push(key=self.LOG_SINCE_KEY, value=newest)

    def on_kill(self) -> None:
        from plugins.tlpipe.pretraining import mpijob

        try:
            self._hook().delete_custom_object(
                group=mpijob.GROUP,
                version=mpijob.VERSION,
                plural=mpijob.PLURAL,
                name=self.name,
                namespace=self.namespace,
            )
            self.log.info("deleted MPIJob %s/%s", self.namespace, self.name)
        except Exception as err:  # noqa: BLE001 - a kill must not fail on cleanup
            self.log.warning("could not delete MPIJob %s/%s: %s", self.namespace, self.name, err)


def _stamp(value: str) -> datetime:
    """An RFC 3339 time as the API server writes it (nanoseconds, ``Z``) as a datetime (microseconds)."""
    head, _, frac = value.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


def sensor_defaults(poke_seconds: float, timeout_hours: float, mode: str) -> dict:
    return {"poke_interval": poke_seconds, "timeout": timedelta(hours=timeout_hours).total_seconds(), "mode": mode}
