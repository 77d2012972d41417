"""The MPIJob launcher: the typed v2beta1 model, its pod templates, and create/watch/delete against kmock."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from airflow_env import kubernetes_connection
from kube_mock import KubeServer
from pydantic import ValidationError

from plugins.tlpipe.config import load_config
from plugins.tlpipe.pretraining import mpijob
from plugins.tlpipe.pretraining.spec import TrainingSpec

NS = "ml-training"


@pytest.fixture(scope="module")
def cfg():
    return load_config(profile="production", environ={})


@pytest.fixture(scope="module")
def spec(cfg):
    return TrainingSpec(
        launcher="mpijob",
        workers=3,
        gpus_per_worker=4,
        hostfile=cfg.mpijob.hostfile,
        ssh_port=cfg.mpijob.ssh_port,
        manifest="/data/curated/r/manifest.json",
        checkpoint_dir="s3://tlpipe-checkpoints/pretrain/r",
        epochs=48,
        model="resnet50",
        image_size=224,
        batch_size=64,
        learning_rate=5e-4,
        s3_endpoint_url="http://store:9000",
    )


@pytest.fixture(scope="module")
def job(spec, cfg):
    return mpijob.build_mpijob(spec, cfg, "pretrain-0123456789ab")


def test_manifest_round_trips_through_the_typed_model(job):
    manifest = yaml.safe_load(job.to_yaml())
    assert manifest["apiVersion"] == "kubeflow.org/v2beta1" and manifest["kind"] == "MPIJob"
    again = mpijob.MPIJob.model_validate(manifest)
    assert again.to_manifest() == manifest
    s = manifest["spec"]
    assert s["slotsPerWorker"] == 4
    assert s["runPolicy"] == {"cleanPodPolicy": "Running", "ttlSecondsAfterFinished": 3600, "backoffLimit": 0}
    assert s["sshAuthMountPath"] == "/home/mpiuser/.ssh"
    assert s["mpiReplicaSpecs"]["Launcher"]["replicas"] == 1
    assert s["mpiReplicaSpecs"]["Worker"]["replicas"] == 3


def test_pod_templates_are_valid_pod_template_specs(job, spec, cfg):
    from kubernetes.client import V1PodTemplateSpec

    replicas = job.to_manifest()["spec"]["mpiReplicaSpecs"]
    launcher = mpijob.pod_template(replicas["Launcher"]["template"])
    worker = mpijob.pod_template(replicas["Worker"]["template"])
    assert isinstance(launcher, V1PodTemplateSpec) and isinstance(worker, V1PodTemplateSpec)

    lc = launcher.spec.containers[0]
    assert lc.command == spec.argv()  # the launcher runs the one training command
    assert lc.command[:7] == ["horovodrun", "-np", "12", "--hostfile", "/etc/mpi/hostfile", "-p", "2222"]
    assert cfg.kubernetes.gpu_resource not in (lc.resources.limits or {})

    wc = worker.spec.containers[0]
    assert wc.command[0] == "/usr/local/bin/start-sshd" and wc.command[-2:] == ["-p", "2222"]
    assert [(p.name, p.container_port) for p in wc.ports] == [("ssh", 2222)]
    assert wc.resources.limits[cfg.kubernetes.gpu_resource] == "4"
    assert {m.mount_path for m in wc.volume_mounts} == {
        "/data",
        "/dev/shm",
        "/var/run/secrets/tlpipe/checkpoint-store",
        "/tmp",
        "/home/mpiuser/.sshd",  # sshd's host keys and pid file (docker/mpi/sshd_config), the image read-only
    }
    assert {m.mount_path for m in launcher.spec.containers[0].volume_mounts} >= {"/tmp"}
    for container in (wc, launcher.spec.containers[0]):  # the store's keys as files on both, never in env
        assert not container.env_from
        assert {e.name: e.value for e in container.env}[
            "TLPIPE_S3_CREDENTIALS_DIR"
        ] == "/var/run/secrets/tlpipe/checkpoint-store"
    shm = next(v for v in worker.spec.volumes if v.name == "dshm")
    assert shm.empty_dir.medium == "Memory"
    assert worker.spec.node_selector == cfg.kubernetes.node_selector
    assert worker.spec.tolerations[0].key == "nvidia.com/gpu"

    for pod in (launcher, worker):
        psc, csc = pod.spec.security_context, pod.spec.containers[0].security_context
        assert psc.run_as_non_root and psc.run_as_user == 1000 and psc.seccomp_profile.type == "RuntimeDefault"
        assert csc.allow_privilege_escalation is False and csc.capabilities.drop == ["ALL"]
        assert csc.read_only_root_filesystem is True
        assert pod.spec.image_pull_secrets[0].name == "tlpipe-registry"
        assert pod.spec.service_account_name == "tlpipe-training"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: m["spec"].update(slotsPerWorkers=2), "Extra inputs"),
        (lambda m: m["spec"]["runPolicy"].update(cleanPodPolicy="Sometimes"), "cleanPodPolicy"),
        (lambda m: m["spec"]["mpiReplicaSpecs"]["Launcher"].update(replicas=2), "exactly one Launcher"),
        (lambda m: m["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"].update(containers=[]), "container"),
        (lambda m: m["spec"]["mpiReplicaSpecs"].update(Chief=m["spec"]["mpiReplicaSpecs"]["Worker"]), "Launcher"),
        (lambda m: m["metadata"].update(name="Pretrain_1"), "pattern"),
    ],
)
def test_typed_model_rejects_what_the_operator_would(job, mutate, message):
    manifest = json.loads(job.to_yaml())
    mutate(manifest)
    with pytest.raises(ValidationError, match=message):
        mpijob.MPIJob.model_validate(manifest)


def test_only_mpijob_specs_become_mpijobs(cfg, spec):
    with pytest.raises(ValueError, match="mpijob"):
        mpijob.build_mpijob(spec.model_copy(update={"launcher": "local"}), cfg, "x")


def test_status_phase():
    status = mpijob.MPIJobStatus.model_validate(
        {"conditions": [{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}]}
    )
    assert status.phase == "Running" and status.condition("Succeeded") is None
    status.conditions.append(mpijob.JobCondition(type="Running", status="False"))
    status.conditions.append(mpijob.JobCondition(type="Failed", status="True", reason="BackoffLimitExceeded"))
    assert status.phase == "Failed"


@pytest.fixture()
def kube(monkeypatch):
    with KubeServer() as server:
        kubernetes_connection(server.url, namespace=NS)
        yield server


def test_create_watch_delete_against_an_api_server(kube, job):
    from airflow.sdk.exceptions import AirflowFailException

    from plugins.tlpipe.pretraining.launchers import CreateMPIJobOperator, DeleteMPIJobOperator
    from plugins.tlpipe.pretraining.sensors import MPIJobSensor

    text = job.to_yaml()
    create = CreateMPIJobOperator(task_id="create", yaml_conf=text, namespace=NS)
    create.execute({})
    stored = kube.objects("mpijobs", NS, group=mpijob.GROUP, version=mpijob.VERSION)
    assert [o["metadata"]["name"] for o in stored] == [job.metadata.name]
    assert stored[0]["spec"] == job.to_manifest()["spec"]
    create.execute({})  # a retry finds it and reuses it

    sensor = MPIJobSensor(task_id="watch", name=job.metadata.name, namespace=NS, poke_interval=1, timeout=30)
    assert sensor.poke({}) is False  # no status yet
    kube.patch_status(
        "mpijobs",
        NS,
        job.metadata.name,
        {
            "conditions": [{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}],
            "replicaStatuses": {"Launcher": {"active": 1}, "Worker": {"active": 3}},
        },
        group=mpijob.GROUP,
        version=mpijob.VERSION,
    )
    assert sensor.poke({}) is False
    kube.patch_status(
        "mpijobs",
        NS,
        job.metadata.name,
        {
            "conditions": [
                {"type": "Created", "status": "True"},
                {"type": "Running", "status": "False"},
                {"type": "Succeeded", "status": "True", "reason": "MPIJobSucceeded"},
            ]
        },
        group=mpijob.GROUP,
        version=mpijob.VERSION,
    )
    assert sensor.poke({}) is True

    kube.patch_status(
        "mpijobs",
        NS,
        job.metadata.name,
        {
            "conditions": [
                {"type": "Created", "status": "True"},
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "launcher pod pretrain-0123456789ab-launcher exited with code 137 (OOMKilled)",
                },
            ]
        },
        group=mpijob.GROUP,
        version=mpijob.VERSION,
    )
    with pytest.raises(AirflowFailException, match=r"BackoffLimitExceeded: launcher pod .* \(OOMKilled\)"):
        sensor.poke({})

    delete = DeleteMPIJobOperator(task_id="delete", yaml_conf=text, namespace=NS)
    delete.execute({})
    assert kube.objects("mpijobs", NS, group=mpijob.GROUP, version=mpijob.VERSION) == []
    delete.execute({})  # gone already: the teardown still succeeds


def test_killing_the_watch_deletes_the_job(kube, job):
    from plugins.tlpipe.pretraining.launchers import CreateMPIJobOperator
    from plugins.tlpipe.pretraining.sensors import MPIJobSensor

    CreateMPIJobOperator(task_id="create", yaml_conf=job.to_yaml(), namespace=NS).execute({})
    MPIJobSensor(task_id="watch", name=job.metadata.name, namespace=NS).on_kill()
    assert kube.objects("mpijobs", NS, group=mpijob.GROUP, version=mpijob.VERSION) == []


def test_the_watch_streams_the_launcher_log_once(kube, job, capsys):
    """Each poke prints the launcher pod's lines it has not printed yet (the API server's timestamps say which)."""
    from kubernetes import client

    from plugins.tlpipe.pretraining.sensors import MPIJobSensor

    name = job.metadata.name
    client.CustomObjectsApi(kube.client()).create_namespaced_custom_object(
        mpijob.GROUP, mpijob.VERSION, NS, mpijob.PLURAL, job.to_manifest()
    )
    labels = {mpijob.LABEL_JOB_NAME: name, mpijob.LABEL_JOB_ROLE: "launcher"}
    pod = {"metadata": {"name": f"{name}-launcher-x1", "labels": labels}, "spec": {"containers": [{"name": "l"}]}}
    client.CoreV1Api(kube.client()).create_namespaced_pod(NS, pod)
    kube.pod_log = (  # text: kmock answers a bytes value with its repr
        "2026-12-02T06:00:01.123456789Z [1,0]<stdout>:[pretrain] epoch 1/48: loss 2.1\n"
        "2026-12-02T06:00:02.5Z [1,0]<stdout>:[pretrain] epoch 2/48: loss 1.9\n"
    )
    sensor = MPIJobSensor(task_id="watch", name=name, namespace=NS, poke_interval=1, timeout=30)

    def printed() -> list[str]:
        return re.findall(
            r"\[launcher \S+\] (\[1,0\]<stdout>:\[pretrain\] epoch \d+/48: loss [0-9.]+)", capsys.readouterr().out
        )

    capsys.readouterr()
    sensor.poke({})
    assert printed() == [
        "[1,0]<stdout>:[pretrain] epoch 1/48: loss 2.1",
        "[1,0]<stdout>:[pretrain] epoch 2/48: loss 1.9",
    ]
    kube.pod_log += "2026-12-02T06:00:03.000000001Z [1,0]<stdout>:[pretrain] epoch 3/48: loss 1.7\n"
    sensor.poke({})
    assert printed() == ["[1,0]<stdout>:[pretrain] epoch 3/48: loss 1.7"]
    sensor.poke({})
    assert printed() == []
