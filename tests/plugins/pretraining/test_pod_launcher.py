"""The pod launcher: the rendered pod (dry run) and a failed training pod on an in-memory API server."""

from __future__ import annotations

import threading

import pytest
from airflow_env import run_dag
from kubernetes.client import models as k8s
from pretraining_fixtures import POD_NAMESPACE, pod_launcher_pipeline

from plugins.tlpipe.config import load_config
from plugins.tlpipe.pretraining.launchers import TrainingPodOperator, pod_failure_reason
from plugins.tlpipe.pretraining.spec import TrainingSpec


@pytest.fixture(scope="module")
def kube_cfg():
    return load_config(profile="production", environ={}).kubernetes


@pytest.fixture(scope="module")
def spec():
    return TrainingSpec(
        launcher="pod",
        workers=1,
        gpus_per_worker=4,
        manifest="/data/curated/r/manifest.json",
        checkpoint_dir="s3://tlpipe-checkpoints/pretrain/r",
        epochs=48,
        model="resnet50",
        image_size=224,
        batch_size=64,
        learning_rate=5e-4,
        s3_endpoint_url="http://store:9000",
    )


def test_dry_run_pod(kube_cfg, spec):
    op = TrainingPodOperator(task_id="pod", spec=spec.model_dump(mode="json"), kube=kube_cfg)
    pod = op.build_pod_request_obj(dry_run=True)
    assert pod.metadata.namespace == "ml-training"
    assert pod.metadata.labels["app.kubernetes.io/part-of"] == "tlpipe"
    s = pod.spec
    (c,) = s.containers
    assert (
        c.command
        == spec.argv()
        == [
            "horovodrun",
            "-np",
            "4",
            "python",
            "-m",
            "training.pretrain",
            "--manifest",
            "/data/curated/r/manifest.json",
            "--checkpoint-dir",
            "s3://tlpipe-checkpoints/pretrain/r",
            "--epochs",
            "48",
            "--model",
            "resnet50",
            "--image-size",
            "224",
            "--batch-size",
            "64",
            "--learning-rate",
            "0.0005",
            "--s3-endpoint-url",
            "http://store:9000",
        ]
    )
    assert not c.args
    assert c.image == kube_cfg.image
    assert c.resources.limits == {"cpu": "8", "memory": "48Gi", "nvidia.com/gpu": "4"}
    assert s.node_selector == {"nvidia.com/gpu.present": "true"}
    assert [(t.key, t.operator, t.effect) for t in s.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
    # Pod Security "restricted"
    assert s.security_context.run_as_non_root and s.security_context.run_as_user == 1000
    assert s.security_context.seccomp_profile.type == "RuntimeDefault"
    assert c.security_context.allow_privilege_escalation is False
    assert c.security_context.capabilities.drop == ["ALL"]
    assert c.security_context.run_as_non_root
    # The image read-only; what the run writes (HOME, the work directory) goes to an emptyDir at /tmp.
    assert c.security_context.read_only_root_filesystem is True
    assert {e.name: e.value for e in c.env}["HOME"] == "/tmp"
    volumes = {v.name: v for v in s.volumes}
    assert volumes["data"].persistent_volume_claim.claim_name == "tlpipe-data"
    assert volumes["dshm"].empty_dir.medium == "Memory" and volumes["dshm"].empty_dir.size_limit == "8Gi"
    assert {m.name: m.mount_path for m in c.volume_mounts} == {
        "data": "/data",
        "dshm": "/dev/shm",
        "checkpoint-store-credentials": "/var/run/secrets/tlpipe/checkpoint-store",
        "scratch-0": "/tmp",
        "scratch-1": "/home/mpiuser/.sshd",
    }
    assert volumes["scratch-0"].empty_dir is not None and volumes["scratch-0"].empty_dir.medium is None
    # The store's secret arrives as read-only files, never as environment variables (Horovod copies those onto
    # every worker's command line).
    assert volumes["checkpoint-store-credentials"].secret.secret_name == "tlpipe-checkpoint-store"
    assert volumes["checkpoint-store-credentials"].secret.default_mode == 0o440
    assert not c.env_from
    env = {e.name: e.value for e in c.env}
    assert env["TLPIPE_S3_CREDENTIALS_DIR"] == "/var/run/secrets/tlpipe/checkpoint-store"
    assert not any(e.value_from for e in c.env) and not any("SECRET" in name for name in env)
    assert [r.name for r in s.image_pull_secrets] == ["tlpipe-registry"]
    assert s.service_account_name == "tlpipe-training" and s.restart_policy == "Never"
    assert s.termination_grace_period_seconds == 60
    assert (op.startup_timeout_seconds, op.schedule_timeout_seconds) == (900, 1800)
    assert op.on_finish_action.value == "delete_pod" and op.on_kill_action.value == "delete_pod"
    assert op.do_xcom_push is False


def test_only_pod_specs_run_in_a_pod(kube_cfg, spec):
    other = spec.model_copy(update={"launcher": "local"})
    with pytest.raises(Exception, match="pod launcher"):
        TrainingPodOperator(task_id="pod", spec=other, kube=kube_cfg).build_pod_request_obj(dry_run=True)


def test_failure_reason_of_a_pod():
    pod = k8s.V1Pod(
        status=k8s.V1PodStatus(
            phase="Failed",
            container_statuses=[
                k8s.V1ContainerStatus(
                    name="base",
                    image="i",
                    image_id="",
                    ready=False,
                    restart_count=0,
                    state=k8s.V1ContainerState(
                        terminated=k8s.V1ContainerStateTerminated(
                            exit_code=137, reason="OOMKilled", message="killed at epoch 3\n"
                        )
                    ),
                )
            ],
        )
    )
    assert pod_failure_reason(pod, "base") == (
        "pod phase Failed; container base terminated: OOMKilled (exit 137): killed at epoch 3"
    )
    assert pod_failure_reason(k8s.V1Pod(status=k8s.V1PodStatus(phase="Succeeded")), "base") is None


def test_pod_path_creates_a_pod_and_reports_its_failure(tmp_path, small_tree, s3_endpoint, monkeypatch, capfd):
    namespace = POD_NAMESPACE
    seen: list[dict] = []
    with pod_launcher_pipeline(monkeypatch, tmp_path, small_tree) as (dag, kube):

        def kill_the_pod():
            pod = kube.wait_for("pods", namespace)
            seen.append(pod)
            kube.patch_status(
                "pods",
                namespace,
                pod["metadata"]["name"],
                {
                    "phase": "Failed",
                    "containerStatuses": [
                        {
                            "name": "base",
                            "image": pod["spec"]["containers"][0]["image"],
                            "imageID": "",
                            "ready": False,
                            "restartCount": 0,
                            "state": {
                                "terminated": {
                                    "exitCode": 137,
                                    "reason": "OOMKilled",
                                    "message": "out of memory in epoch 1",
                                }
                            },
                        }
                    ],
                },
            )

        writer = threading.Thread(target=kill_the_pod, daemon=True)
        writer.start()
        run = run_dag(dag, {"launcher": "pod", "workers": 1, "gpus_per_worker": 2})
        writer.join(5)
        assert run.state == "failed"
        assert run.tasks["launch.pod"] == "failed"
        assert run.tasks["wait_for_best_checkpoint"] == "upstream_failed"
        (pod,) = seen
        container = pod["spec"]["containers"][0]
        assert container["command"] == TrainingSpec.model_validate(run.xcom("prepare")["training"]).argv()
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert kube.objects("pods", namespace) == []  # deleted once the task finished
    logs = capfd.readouterr()
    assert "OOMKilled (exit 137): out of memory in epoch 1" in logs.out + logs.err
