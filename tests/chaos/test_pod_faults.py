"""The training pod deleted under a running pretraining task (the pod launcher, on an in-memory Kubernetes API):
the task fails at once saying so, instead of waiting on a pod that is gone, and leaves nothing behind."""

from __future__ import annotations

import threading
import time

import pytest
from airflow_env import run_dag
from pretraining_fixtures import POD_NAMESPACE, pod_launcher_pipeline

pytestmark = [pytest.mark.chaos]


def test_the_training_pod_deleted_mid_run(tmp_path, small_tree, s3_endpoint, monkeypatch, capfd, chaos):
    chaos.fault(
        "pretraining",
        "the training pod deleted while the task waits on it (pod launcher, in-memory Kubernetes API)",
        "the task fails saying the pod is gone; the run stops before the sensor; no pod is left",
    )
    namespace = POD_NAMESPACE
    deleted_at: list[float] = []
    with pod_launcher_pipeline(monkeypatch, tmp_path, small_tree) as (dag, kube):

        def delete_the_pod():
            from kubernetes import client

            pod = kube.wait_for("pods", namespace)
            kube.patch_status("pods", namespace, pod["metadata"]["name"], {"phase": "Running"})
            time.sleep(2)  # the task is now waiting on a running pod
            client.CoreV1Api(kube.client()).delete_namespaced_pod(pod["metadata"]["name"], namespace)
            deleted_at.append(time.monotonic())

        deleter = threading.Thread(target=delete_the_pod, daemon=True)
        deleter.start()
        run = run_dag(dag, {"launcher": "pod", "workers": 1, "gpus_per_worker": 1})
        ended = time.monotonic()
        deleter.join(5)
        assert deleted_at, "the pod was never created"
        assert run.state == "failed" and run.tasks["launch.pod"] == "failed"
        assert run.tasks["wait_for_best_checkpoint"] == "upstream_failed"
        assert kube.objects("pods", namespace) == []
    logs = capfd.readouterr()
    assert "not found" in (logs.out + logs.err).lower()
    chaos.figure("task failed after the deletion (s)", ended - deleted_at[0])
    chaos.figure("pods left", 0)
