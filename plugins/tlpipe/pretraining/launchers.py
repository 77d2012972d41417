"""The three ways to run one ``TrainingSpec``: a local subprocess, a Kubernetes pod, a Kubeflow MPIJob.

All three run exactly ``TrainingSpec.argv()``:

- ``LocalTrainingOperator``: ``horovodrun -np N <venv python> -m training.pretrain …`` as a subprocess of the task
  (the standard provider's SubprocessHook); killing the task stops Horovod and every worker it started. The
  processes get an allow-listed environment (``training_environment``), never the task's secrets or
  connections; Horovod's Gloo launcher writes every variable onto each worker's command line, so the checkpoint
  store's credentials go in 0600 files (``TLPIPE_S3_CREDENTIALS_DIR``, see ``training.store``), removed after.
- ``TrainingPodOperator``: a KubernetesPodOperator whose pod (GPUs, node selector, tolerations, data PVC,
  memory-backed /dev/shm, restricted securityContext) is built from the spec at run time.
- ``CreateMPIJobOperator`` / ``DeleteMPIJobOperator``: the provider's resource operators applied to the MPIJob
  built by ``plugins.tlpipe.pretraining.mpijob.build_mpijob``; creating an MPIJob that exists (a retry) reuses it, deleting one that
  is gone is a no-op, so the delete can be the teardown of every outcome.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.operators.resource import (
    KubernetesCreateResourceOperator,
    KubernetesDeleteResourceOperator,
)
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from plugins.tlpipe.config import KubernetesConfig
from plugins.tlpipe.kube import pods as pod_parts
from plugins.tlpipe.pretraining.spec import TrainingSpec

KILL_GRACE_SECONDS = 20
# What training processes may inherit from the task's environment: the interpreter's and the libraries' own
# settings (threads, TensorFlow, Horovod, NCCL, CUDA) and where S3 is, never credentials, Airflow's
# configuration (database URL, JWT secret, fernet key) or its connections and variables.
TRAINING_ENV_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "USER",
        "LOGNAME",
        "VIRTUAL_ENV",
        "PYTHONPATH",
        "PYTHONHASHSEED",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_CA_BUNDLE",
        "TLPIPE_S3_ENDPOINT_URL",
    }
)
TRAINING_ENV_PREFIXES = (
    "LC_",
    "OMP_",
    "KMP_",
    "MKL_",
    "TF_",
    "HOROVOD_",
    "NCCL_",
    "CUDA_",
    "GLOO_",
    "OMPI_",
    "PMIX_",
    "UCX_",
    "MALLOC_",
)
_SECRET_NAME = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|PRIVATE|_KEY$|_CONN$|^AIRFLOW)", re.I)


def training_environment(source: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed part of ``source`` that training processes get (see ``TRAINING_ENV_NAMES``)."""
    return {
        k: v
        for k, v in source.items()
        if (k in TRAINING_ENV_NAMES or k.startswith(TRAINING_ENV_PREFIXES)) and not _SECRET_NAME.search(k)
    }


def _as_spec(value: Any) -> TrainingSpec:
    if isinstance(value, TrainingSpec):
        return value
    if isinstance(value, str):
        value = json.loads(value)
    return TrainingSpec.model_validate(value)


def _terminate_tree(pid: int, grace: float, log) -> None:
    """SIGTERM a process and all its descendants, SIGKILL whatever is left after ``grace`` seconds."""
    import psutil

    from training.supervise import terminate

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    terminate(procs, grace, lambda proc: log.warning("process %s did not stop on SIGTERM; killing it", proc.pid))


def supervised(argv: list[str]) -> list[str]:
    """``argv`` under ``training.supervise``: when this task process dies, even by SIGKILL, or the command ends,
    every process the command started is stopped too (no orphaned Horovod worker keeps training)."""
    return [
        sys.executable,
        "-m",
        "training.supervise",
        "--parent-pid",
        str(os.getpid()),
        "--grace",
        str(KILL_GRACE_SECONDS),
        "--",
        *argv,
    ]


class LocalCommandOperator(BaseOperator):
    """Run an argv (templated; may come from XCom) as a subprocess, streaming its output to the task log."""

    template_fields: Sequence[str] = ("argv", "env")
    ui_color = "#fde2e4"

    def __init__(
        self, *, argv: list[str] | Any, env: dict[str, str] | None = None, cwd: str | None = None, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self._hook = None
        self._killed = False

    def command(self) -> list[str]:
        return [str(a) for a in self.argv]

    def environment(self) -> dict[str, str]:
        return {**training_environment(os.environ), "PYTHONUNBUFFERED": "1", **(self.env or {})}

    def on_failure_reason(self, exit_code: int, last_line: str) -> str:
        return f"{self.command()[0]} exited with code {exit_code}" + (f": {last_line}" if last_line else "")

    def execute(self, context) -> Any:
        from airflow.providers.standard.hooks.subprocess import SubprocessHook

        self._hook = SubprocessHook()
        self._killed = False
        result = self._hook.run_command(supervised(self.command()), env=self.environment(), cwd=self.cwd)
        # A stopped command may still exit 0 (horovodrun can, once its workers are gone): never a success.
        if self._killed:
            raise AirflowException(f"{self.command()[0]} was stopped (exit code {result.exit_code})")
        if result.exit_code != 0:
            raise AirflowException(self.on_failure_reason(result.exit_code, result.output))
        return None

    def on_kill(self) -> None:
        proc = self._hook.sub_process if self._hook else None
        if proc is not None and proc.poll() is None:
            self._killed = True
            self.log.info("stopping %s (pid %d) and its children", self.command()[0], proc.pid)
            _terminate_tree(proc.pid, KILL_GRACE_SECONDS, self.log)


class LocalTrainingOperator(LocalCommandOperator):
    """Run ``spec.argv()`` (horovodrun with the virtual environment's interpreter) on this machine.

    :param spec: a ``TrainingSpec`` or its dict (templated; typically ``prepare["training"]``)
    :param checkpoint_conn_id: aws connection of the checkpoint store; its credentials are passed to the
        training processes when the checkpoint directory is an s3:// URI
    """

    template_fields: Sequence[str] = ("spec", "env")

    def __init__(self, *, spec: TrainingSpec | dict | Any, checkpoint_conn_id: str | None = None, **kwargs) -> None:
        super().__init__(argv=[], **kwargs)
        self.spec = spec
        self.checkpoint_conn_id = checkpoint_conn_id
        self._secrets_dir: str | None = None

    def command(self) -> list[str]:
        return _as_spec(self.spec).argv()

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        spec = _as_spec(self.spec)
        if spec.checkpoint_dir.startswith("s3://") and self.checkpoint_conn_id and self._secrets_dir:
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            from training.store import CREDENTIALS_DIR_ENV, write_credentials_dir

            creds = S3Hook(aws_conn_id=self.checkpoint_conn_id).get_credentials()
            # Horovod: the Gloo launcher copies the environment into argv; a directory path is all it may see.
            env[CREDENTIALS_DIR_ENV] = str(
                write_credentials_dir(self._secrets_dir, creds.access_key, creds.secret_key, creds.token)
            )
        return env

    def on_failure_reason(self, exit_code: int, last_line: str) -> str:
        from plugins.tlpipe.pretraining.sensors import checkpoint_store
        from training.contracts import CheckpointDir

        spec = _as_spec(self.spec)
        reason = f"horovodrun exited with code {exit_code}"
        try:
            recorded = CheckpointDir(spec.checkpoint_dir).failure_reason(
                checkpoint_store(spec.checkpoint_dir, self.checkpoint_conn_id)
            )
            if recorded:
                reason += f": {recorded}"
        except Exception as err:  # noqa: BLE001 - the exit code is the failure; the reason is a bonus
            self.log.warning("could not read %s/FAILED: %s", spec.checkpoint_dir, err)
        return reason

    def execute(self, context) -> Any:
        spec = _as_spec(self.spec)
        if spec.launcher != "local":
            raise AirflowException(f"the local launcher cannot run a {spec.launcher!r} spec")
        self.log.info("training with %d local Horovod process(es) into %s", spec.num_processes, spec.checkpoint_dir)
        self._secrets_dir = tempfile.mkdtemp(prefix="tlpipe-credentials-")  # 0700
        try:
            return super().execute(context)
        finally:
            shutil.rmtree(self._secrets_dir, ignore_errors=True)
            self._secrets_dir = None


class TrainingPodOperator(KubernetesPodOperator):
    """One Horovod worker in one pod: ``spec.argv()`` with ``spec.gpus_per_worker`` GPUs.

    Everything about the pod but the spec comes from the ``kubernetes`` configuration section. The pod is
    deleted when the task finishes or is killed; XCom is off (the checkpoint store carries the result).
    """

    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "spec")

    def __init__(self, *, spec: TrainingSpec | dict | Any, kube: KubernetesConfig, **kwargs) -> None:
        kwargs.setdefault("name", "pretrain")
        super().__init__(
            **pod_parts.pod_operator_kwargs(kube, "worker"),
            termination_grace_period=kube.termination_grace_seconds,
            log_events_on_failure=True,
            **kwargs,
        )
        self.spec = spec
        self.kube = kube

    def build_pod_request_obj(self, context=None, *, dry_run: bool = False):
        spec = _as_spec(self.spec)
        if spec.launcher != "pod":
            raise AirflowException(f"the pod launcher cannot run a {spec.launcher!r} spec")
        self.cmds = spec.argv()
        self.arguments = []
        self.container_resources = pod_parts.resources(
            self.kube.worker_resources, spec.gpus_per_worker, self.kube.gpu_resource
        )
        return super().build_pod_request_obj(context, dry_run=dry_run)

    def cleanup(self, pod, remote_pod, xcom_result=None, context=None) -> None:
        reason = pod_failure_reason(remote_pod, self.base_container_name)
        if reason:
            self.log.error("training pod failed: %s", reason)
        try:
            super().cleanup(pod, remote_pod, xcom_result, context)
        except AirflowException as err:
            if reason:
                raise AirflowException(f"training pod {pod.metadata.name} failed: {reason}") from err
            raise


def pod_failure_reason(remote_pod, container: str) -> str | None:
    """``phase/reason: container terminated <reason> (exit N): message`` for a failed pod, else None."""
    status = getattr(remote_pod, "status", None)
    if status is None or status.phase != "Failed":
        return None
    parts = ["pod phase Failed" + (f" ({status.reason})" if status.reason else "")]
    if status.message:
        parts.append(status.message)
    for cs in status.container_statuses or []:
        term = cs.state.terminated if cs.state else None
        if cs.name == container and term is not None:
            parts.append(
                f"container {cs.name} terminated: {term.reason or 'Error'} (exit {term.exit_code})"
                + (f": {term.message.strip()}" if term.message else "")
            )
    return "; ".join(parts)


def curate_pod_operator(*, task_id: str, argv: Any, kube: KubernetesConfig, **kwargs) -> KubernetesPodOperator:
    """``python -m training.curate …`` in a pod beside the data (no GPU, same image, PVC and security)."""
    return KubernetesPodOperator(
        task_id=task_id,
        name="curate",
        cmds=argv,
        container_resources=pod_parts.resources(kube.curate_resources),
        **pod_parts.pod_operator_kwargs(kube, "curate"),
        **kwargs,
    )


def _api_status(err: BaseException) -> int | None:
    status = getattr(err, "status", None)
    if status is None and err.__cause__ is not None:
        status = getattr(err.__cause__, "status", None)
    return status


class CreateMPIJobOperator(KubernetesCreateResourceOperator):
    """Create the MPIJob in ``yaml_conf``; one that already exists (a retry of this run) is reused."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("custom_resource_definition", True)
        super().__init__(**kwargs)

    def create_custom_from_yaml_object(self, body: dict):
        from kubernetes.client.exceptions import ApiException

        try:
            super().create_custom_from_yaml_object(body)
            self.log.info("created MPIJob %s", body["metadata"]["name"])
        except ApiException as err:
            if err.status != 409:
                raise
            self.log.info(
                "MPIJob %s exists already (an earlier try of this run); watching it", body["metadata"]["name"]
            )


class DeleteMPIJobOperator(KubernetesDeleteResourceOperator):
    """Delete the MPIJob in ``yaml_conf``; one that is gone already is fine."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("custom_resource_definition", True)
        super().__init__(**kwargs)

    def delete_custom_from_yaml_object(self, body: dict):
        from kubernetes.client.exceptions import ApiException

        try:
            super().delete_custom_from_yaml_object(body)
            self.log.info("deleted MPIJob %s", body["metadata"]["name"])
        except ApiException as err:
            if err.status != 404:
                raise
            self.log.info("MPIJob %s is gone already", body["metadata"]["name"])
