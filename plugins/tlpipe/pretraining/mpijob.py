"""A small typed model of the Kubeflow ``kubeflow.org/v2beta1`` MPIJob, and the pretraining MPIJob built from it.

The model covers the fields this pipeline writes and reads (spec, runPolicy, replica specs, status conditions)
and forbids unknown spec fields, so a typo fails here and not in the cluster. Pod templates stay plain dicts
validated by deserialising them into ``kubernetes.client.V1PodTemplateSpec``.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from plugins.tlpipe.config import PipelineConfig
from plugins.tlpipe.kube import pods as pod_parts
from plugins.tlpipe.pretraining.spec import TrainingSpec

GROUP = "kubeflow.org"
VERSION = "v2beta1"
PLURAL = "mpijobs"
# Labels the MPI operator puts on the pods of a job (the launcher's role is "launcher").
LABEL_JOB_NAME = "training.kubeflow.org/job-name"
LABEL_JOB_ROLE = "training.kubeflow.org/job-role"
KIND = "MPIJob"
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: str = Field(max_length=63, pattern=NAME_PATTERN)
    namespace: str | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class RunPolicy(_Strict):
    clean_pod_policy: Literal["None", "Running", "All"] | None = Field(default=None, alias="cleanPodPolicy")
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, alias="ttlSecondsAfterFinished")
    active_deadline_seconds: int | None = Field(default=None, ge=0, alias="activeDeadlineSeconds")
    backoff_limit: int | None = Field(default=None, ge=0, alias="backoffLimit")
    suspend: bool | None = None
    managed_by: str | None = Field(default=None, alias="managedBy")
    scheduling_policy: dict | None = Field(default=None, alias="schedulingPolicy")


class ReplicaSpec(_Strict):
    replicas: int = Field(ge=0)
    restart_policy: Literal["Always", "OnFailure", "Never", "ExitCode"] | None = Field(
        default=None, alias="restartPolicy"
    )
    template: dict

    @field_validator("template")
    @classmethod
    def _is_pod_template(cls, value: dict) -> dict:
        pod_template(value)  # raises on anything that is not a V1PodTemplateSpec
        if not value.get("spec", {}).get("containers"):
            raise ValueError("a replica's pod template needs at least one container")
        return value


class MPIJobSpec(_Strict):
    slots_per_worker: int = Field(ge=1, alias="slotsPerWorker")
    run_launcher_as_worker: bool | None = Field(default=None, alias="runLauncherAsWorker")
    run_policy: RunPolicy = Field(default_factory=RunPolicy, alias="runPolicy")
    ssh_auth_mount_path: str | None = Field(default=None, alias="sshAuthMountPath")
    launcher_creation_policy: Literal["AtStartup", "WaitForWorkersReady"] | None = Field(
        default=None, alias="launcherCreationPolicy"
    )
    mpi_implementation: Literal["OpenMPI", "Intel", "MPICH"] | None = Field(default=None, alias="mpiImplementation")
    mpi_replica_specs: dict[Literal["Launcher", "Worker"], ReplicaSpec] = Field(alias="mpiReplicaSpecs")

    @field_validator("mpi_replica_specs")
    @classmethod
    def _launcher(cls, value: dict) -> dict:
        if "Launcher" not in value or value["Launcher"].replicas != 1:
            raise ValueError("an MPIJob has exactly one Launcher replica")
        return value


class JobCondition(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    type: str
    status: str
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = Field(default=None, alias="lastTransitionTime")


class MPIJobStatus(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    conditions: list[JobCondition] = []
    replica_statuses: dict[str, dict] = Field(default_factory=dict, alias="replicaStatuses")
    start_time: str | None = Field(default=None, alias="startTime")
    completion_time: str | None = Field(default=None, alias="completionTime")

    def condition(self, kind: str) -> JobCondition | None:
        for cond in self.conditions:
            if cond.type == kind and cond.status == "True":
                return cond
        return None

    @property
    def phase(self) -> str:
        """The last true condition (Created, Running, Restarting, Suspended, Succeeded or Failed)."""
        for kind in ("Failed", "Succeeded"):
            if self.condition(kind):
                return kind
        true = [c for c in self.conditions if c.status == "True"]
        return true[-1].type if true else "Pending"


class MPIJob(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    api_version: Literal["kubeflow.org/v2beta1"] = Field(default=f"{GROUP}/{VERSION}", alias="apiVersion")
    kind: Literal["MPIJob"] = KIND
    metadata: ObjectMeta
    spec: MPIJobSpec
    status: MPIJobStatus | None = None

    def to_manifest(self) -> dict:
        return self.model_dump(by_alias=True, exclude_none=True, exclude={"status"})

    def to_yaml(self) -> str:
        # JSON is YAML; KubernetesCreateResourceOperator parses it with yaml.safe_load_all.
        return json.dumps(self.to_manifest(), indent=1, sort_keys=True)


def pod_template(template: dict):
    """Deserialise a pod template dict into ``V1PodTemplateSpec`` the way the kubernetes client does."""
    from kubernetes.client import ApiClient

    class _Response:  # ApiClient.deserialize reads .data
        data = json.dumps(template)

    return ApiClient().deserialize(_Response(), "V1PodTemplateSpec")


def build_mpijob(spec: TrainingSpec, cfg: PipelineConfig, name: str, labels: dict[str, str] | None = None) -> MPIJob:
    """The pretraining MPIJob: one launcher running ``spec.argv()``, ``spec.workers`` sshd workers with GPUs."""
    from kubernetes.client import models as k8s

    kube, mpi = cfg.kubernetes, cfg.mpijob
    if spec.launcher != "mpijob":
        raise ValueError(f"an MPIJob runs the mpijob launcher's spec, not {spec.launcher!r}")
    labels = {**kube.labels, "app.kubernetes.io/name": "tlpipe-pretrain", "tlpipe/run": name, **(labels or {})}

    launcher = k8s.V1Container(
        name="launcher", command=spec.argv(), resources=pod_parts.resources(mpi.launcher_resources)
    )
    worker = k8s.V1Container(
        name="worker",
        command=[*mpi.sshd_command, "-p", str(mpi.ssh_port)],
        ports=[k8s.V1ContainerPort(name="ssh", container_port=mpi.ssh_port, protocol="TCP")],
        resources=pod_parts.resources(kube.worker_resources, spec.gpus_per_worker, kube.gpu_resource),
        readiness_probe=k8s.V1Probe(
            tcp_socket=k8s.V1TCPSocketAction(port=mpi.ssh_port), period_seconds=5, initial_delay_seconds=2
        ),
    )
    return MPIJob(
        metadata=ObjectMeta(name=name, namespace=kube.namespace, labels=labels),
        spec=MPIJobSpec(
            slots_per_worker=spec.slots_per_worker,
            run_policy=RunPolicy(
                clean_pod_policy=mpi.clean_pod_policy,
                ttl_seconds_after_finished=mpi.ttl_seconds_after_finished,
                backoff_limit=mpi.backoff_limit,
            ),
            ssh_auth_mount_path=mpi.ssh_auth_mount_path,
            launcher_creation_policy=mpi.launcher_creation_policy,
            mpi_implementation="OpenMPI",
            mpi_replica_specs={
                "Launcher": ReplicaSpec(
                    replicas=1,
                    restart_policy="Never",
                    template=pod_parts.pod_template(kube, "launcher", launcher, labels),
                ),
                "Worker": ReplicaSpec(
                    replicas=spec.workers,
                    restart_policy="Never",
                    template=pod_parts.pod_template(kube, "worker", worker, labels),
                ),
            },
        ),
    )
