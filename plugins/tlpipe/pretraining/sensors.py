"""Sensors: the best checkpoint of a training run, and the conditions of an MPIJob."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
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
    Returns ``{uri, epoch, val_accuracy, manifest_sha256}`` (``uri``: the best/ directory).

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
            "uri": best.get("best_dir") or run_dir.best_dir,
            "epoch": int(best["epoch"]),
            "val_accuracy": float(best["val_accuracy"]),
            "manifest_sha256": best["manifest_sha256"],
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
        failed = status.condition("Failed")
        if failed:
            raise AirflowFailException(
                f"MPIJob {self.namespace}/{self.name} failed: "
                f"{failed.reason or 'no reason'}: {failed.message or 'no message'}"
            )
        return status.condition("Succeeded") is not None

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


def sensor_defaults(poke_seconds: float, timeout_hours: float, mode: str) -> dict:
    return {"poke_interval": poke_seconds, "timeout": timedelta(hours=timeout_hours).total_seconds(), "mode": mode}
