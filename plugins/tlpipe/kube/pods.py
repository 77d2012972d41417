"""Every pod the pipeline runs, built here from the configuration and its role: the training worker (the pod
launcher's pod and each MPIJob worker), the MPIJob launcher, and the curate pod.

Everything here is a plain ``kubernetes.client`` model, so the pod operator takes it as is and the MPIJob turns
it into JSON with ``ApiClient().sanitize_for_serialization``. The security settings pass Pod Security
"restricted": non-root user, seccomp RuntimeDefault, all capabilities dropped, no privilege escalation.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubernetes.client import models as k8s

from plugins.tlpipe.config import KubernetesConfig, Resources
from training.store import CREDENTIALS_DIR_ENV

DATA_VOLUME = "data"
SHM_VOLUME = "dshm"
# The checkpoint store's secret as files, not environment variables: Horovod copies the environment onto every
# worker's command line (and over ssh to MPIJob workers), where any process on the node can read it.
CREDENTIALS_VOLUME = "checkpoint-store-credentials"
CREDENTIALS_DIR = "/var/run/secrets/tlpipe/checkpoint-store"


def pod_security_context(kube: KubernetesConfig) -> k8s.V1PodSecurityContext:
    return k8s.V1PodSecurityContext(
        run_as_non_root=True,
        run_as_user=kube.run_as_user,
        run_as_group=kube.run_as_group,
        fs_group=kube.fs_group,
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def container_security_context(kube: KubernetesConfig) -> k8s.V1SecurityContext:
    return k8s.V1SecurityContext(
        allow_privilege_escalation=False,
        read_only_root_filesystem=kube.read_only_root_filesystem,
        run_as_non_root=True,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def tolerations(kube: KubernetesConfig) -> list[k8s.V1Toleration]:
    return [
        k8s.V1Toleration(
            key=t.key, operator=t.operator, value=t.value, effect=t.effect, toleration_seconds=t.toleration_seconds
        )
        for t in kube.tolerations
    ]


def image_pull_secrets(kube: KubernetesConfig) -> list[k8s.V1LocalObjectReference]:
    return [k8s.V1LocalObjectReference(name=name) for name in kube.image_pull_secrets]


def scratch_volumes(writable: tuple[str, ...]) -> list[tuple[str, str]]:
    """(volume name, mount path) of the emptyDirs a role writes to, its root filesystem being read-only."""
    return [(f"scratch-{i}", path) for i, path in enumerate(writable)]


def volumes(
    kube: KubernetesConfig, shm: bool = True, credentials: bool = True, writable: tuple[str, ...] = ()
) -> list[k8s.V1Volume]:
    out = [
        k8s.V1Volume(
            name=DATA_VOLUME,
            persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                claim_name=kube.data_volume.claim_name, read_only=kube.data_volume.read_only
            ),
        )
    ]
    if credentials and kube.checkpoint_secret:
        # 0440: the pod's fsGroup owns the files, so the non-root user reads them and nobody else.
        out.append(
            k8s.V1Volume(
                name=CREDENTIALS_VOLUME,
                secret=k8s.V1SecretVolumeSource(secret_name=kube.checkpoint_secret, default_mode=0o440),
            )
        )
    if shm:
        # NCCL and tf.data use /dev/shm; the container runtime's default 64 MiB is far too small.
        out.append(
            k8s.V1Volume(
                name=SHM_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=kube.shm_size)
            )
        )
    out += [k8s.V1Volume(name=name, empty_dir=k8s.V1EmptyDirVolumeSource()) for name, _ in scratch_volumes(writable)]
    return out


def volume_mounts(
    kube: KubernetesConfig, shm: bool = True, credentials: bool = True, writable: tuple[str, ...] = ()
) -> list[k8s.V1VolumeMount]:
    out = [
        k8s.V1VolumeMount(
            name=DATA_VOLUME, mount_path=kube.data_volume.mount_path, read_only=kube.data_volume.read_only
        )
    ]
    if credentials and kube.checkpoint_secret:
        out.append(k8s.V1VolumeMount(name=CREDENTIALS_VOLUME, mount_path=CREDENTIALS_DIR, read_only=True))
    if shm:
        out.append(k8s.V1VolumeMount(name=SHM_VOLUME, mount_path="/dev/shm"))
    out += [k8s.V1VolumeMount(name=name, mount_path=path) for name, path in scratch_volumes(writable)]
    return out


def resources(res: Resources, gpus: int = 0, gpu_resource: str = "nvidia.com/gpu") -> k8s.V1ResourceRequirements:
    limits = {"cpu": res.cpu, "memory": res.memory}
    requests = {"cpu": res.cpu, "memory": res.memory}
    if gpus:
        # Extended resources are set as limits; Kubernetes copies them to requests.
        limits[gpu_resource] = str(gpus)
    return k8s.V1ResourceRequirements(limits=limits, requests=requests)


def training_env(kube: KubernetesConfig | None = None) -> list[k8s.V1EnvVar]:
    env = [
        k8s.V1EnvVar(name="PYTHONUNBUFFERED", value="1"),
        k8s.V1EnvVar(name="TF_CPP_MIN_LOG_LEVEL", value="2"),
        k8s.V1EnvVar(name="HOME", value="/tmp"),
    ]
    if kube is not None and kube.checkpoint_secret:
        env.append(k8s.V1EnvVar(name=CREDENTIALS_DIR_ENV, value=CREDENTIALS_DIR))
    return env


def to_dict(obj) -> dict:
    """A kubernetes model as the JSON the API server receives."""
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


# -- roles ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Role:
    """What tells one kind of pod from another; everything else (image, security, service account, pull secrets,
    data volume, timeouts) every pod shares."""

    app: str  # app.kubernetes.io/name
    gpu_nodes: bool  # scheduled on the GPU nodes (node selector and tolerations)
    shm: bool  # a memory-backed /dev/shm (NCCL, tf.data)
    credentials: bool  # the checkpoint store's secret, mounted as files
    # Where its processes write (emptyDirs; the root filesystem is read-only): /tmp is HOME and the training
    # work directory; an MPIJob worker's sshd keeps its host keys and pid file in the image's HostKey directory
    # (docker/mpi/sshd_config).
    writable: tuple[str, ...] = ("/tmp",)


SSHD_STATE_DIR = "/home/mpiuser/.sshd"
ROLES = {
    "worker": Role("tlpipe-pretrain", gpu_nodes=True, shm=True, credentials=True, writable=("/tmp", SSHD_STATE_DIR)),
    "launcher": Role("tlpipe-pretrain", gpu_nodes=False, shm=False, credentials=True),
    "curate": Role("tlpipe-curate", gpu_nodes=False, shm=False, credentials=False),
}


def pod_parts(kube: KubernetesConfig, role: str) -> dict:
    """The role's pod-level and container-level parts, as ``kubernetes.client`` models keyed by what they are."""
    r = ROLES[role]
    return {
        "labels": {**kube.labels, "app.kubernetes.io/name": r.app},
        "service_account_name": kube.service_account,
        "automount_service_account_token": False,
        "image_pull_secrets": image_pull_secrets(kube),
        "security_context": pod_security_context(kube),
        "node_selector": dict(kube.node_selector) if r.gpu_nodes else {},
        "tolerations": tolerations(kube) if r.gpu_nodes else [],
        "volumes": volumes(kube, shm=r.shm, credentials=r.credentials, writable=r.writable),
        "image": kube.image,
        "image_pull_policy": kube.image_pull_policy,
        "env": training_env(kube if r.credentials else None),
        "container_security_context": container_security_context(kube),
        "volume_mounts": volume_mounts(kube, shm=r.shm, credentials=r.credentials, writable=r.writable),
    }


def pod_operator_kwargs(kube: KubernetesConfig, role: str) -> dict:
    """The role's pod as ``KubernetesPodOperator`` arguments (the pod is deleted when the task ends or is killed)."""
    parts = pod_parts(kube, role)
    return {
        "kubernetes_conn_id": kube.conn_id,
        "namespace": kube.namespace,
        "image": parts["image"],
        "image_pull_policy": parts["image_pull_policy"],
        "image_pull_secrets": parts["image_pull_secrets"],
        "service_account_name": parts["service_account_name"],
        "automount_service_account_token": False,
        "node_selector": parts["node_selector"],
        "tolerations": parts["tolerations"],
        "volumes": parts["volumes"],
        "volume_mounts": parts["volume_mounts"],
        "env_vars": parts["env"],
        "security_context": parts["security_context"],
        "container_security_context": parts["container_security_context"],
        "labels": parts["labels"],
        "startup_timeout_seconds": kube.startup_timeout_seconds,
        "schedule_timeout_seconds": kube.schedule_timeout_seconds,
        "on_finish_action": "delete_pod",
        "on_kill_action": "delete_pod",
        "do_xcom_push": False,
    }


def pod_template(kube: KubernetesConfig, role: str, container: k8s.V1Container, labels: dict[str, str]) -> dict:
    """The role's pod as the JSON of a ``V1PodTemplateSpec`` (an MPIJob's replica template) around ``container``,
    which gets the role's image, environment, security context and mounts."""
    parts = pod_parts(kube, role)
    container.image, container.image_pull_policy = parts["image"], parts["image_pull_policy"]
    container.env, container.security_context = parts["env"], parts["container_security_context"]
    container.volume_mounts = parts["volume_mounts"]
    pod = k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(labels={**parts["labels"], **labels, "tlpipe/role": role}),
        spec=k8s.V1PodSpec(
            containers=[container],
            security_context=parts["security_context"],
            service_account_name=parts["service_account_name"],
            image_pull_secrets=parts["image_pull_secrets"] or None,
            node_selector=parts["node_selector"] or None,
            tolerations=parts["tolerations"] or None,
            volumes=parts["volumes"],
            termination_grace_period_seconds=kube.termination_grace_seconds,
            automount_service_account_token=False,
        ),
    )
    return to_dict(pod)
