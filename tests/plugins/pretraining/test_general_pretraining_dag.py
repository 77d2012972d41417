"""The general_pretraining DAG: parsing, task graph, conf validation over the REST API, and real runs."""

from __future__ import annotations

import os
import threading

import boto3
import pytest
from airflow_env import (
    DAGS_FOLDER,
    api_client,
    assert_parses_clean,
    kubernetes_connection,
    load_dagbag,
    run_dag,
    setup_airflow,
    sync_dags_to_db,
)
from kube_mock import KubeServer
from pretraining_fixtures import apply_environ, pipeline_environ

DAG_ID = "general_pretraining"
DAG_FILE = DAGS_FOLDER / "general_pretraining.py"


@pytest.fixture()
def pipeline(tmp_path, small_tree, s3_endpoint, monkeypatch):
    env = pipeline_environ(tmp_path, small_tree)
    apply_environ(monkeypatch, env)
    setup_airflow()
    return env


@pytest.fixture()
def dag(pipeline):
    bag = load_dagbag(DAG_FILE)
    assert bag.import_errors == {}
    return bag.get_dag(DAG_ID)


def test_dag_shape(dag):
    from plugins.tlpipe.config import get_config

    cfg = get_config()
    assert dag.max_active_runs == 1 and not dag.catchup
    assert "general_pretraining" in (dag.doc_md or "").lower().replace(" ", "_")
    assert set(dag.params) == {
        "dataset_uri",
        "min_images_per_class",
        "domain_classes",
        "val_fraction",
        "epochs",
        "workers",
        "gpus_per_worker",
        "image_size",
        "batch_size",
        "learning_rate",
        "model",
        "launcher",
        "force",
    }
    assert dag.params["epochs"] == 1 and dag.params["launcher"] == "auto"  # defaults from the profile
    for task_id in ("launch.local", "launch.pod", "launch.mpijob.watch"):
        assert dag.get_task(task_id).pool == cfg.airflow.gpu_pool
    outlets = dag.get_task("publish_pretrained_model").outlets
    assert [a.name for a in outlets] == ["pretrained-model"]


def test_task_graph_branches_on_the_launcher(dag):
    from plugins.tlpipe.pretraining.steps import LAUNCH_TASKS, SKIP_TASK

    def down(task_id):
        return dag.get_task(task_id).downstream_task_ids

    assert {"curate"} <= down("prepare") and down("curate") == {"plan_training"}
    assert down("plan_training") == {SKIP_TASK, *LAUNCH_TASKS.values()}
    # Each launcher reaches the checkpoint sensor, and from there one export path.
    assert "wait_for_best_checkpoint" in down("launch.local")
    assert "wait_for_best_checkpoint" in down("launch.pod")
    assert down("launch.mpijob.create") == {"launch.mpijob.watch", "launch.mpijob.delete"}
    assert down("launch.mpijob.watch") == {"launch.mpijob.delete", "wait_for_best_checkpoint"}
    delete = dag.get_task("launch.mpijob.delete")
    assert delete.is_teardown and delete.trigger_rule == "all_done_setup_success"
    assert dag.get_task("wait_for_best_checkpoint").upstream_task_ids == {
        "launch.local",
        "launch.pod",
        "launch.mpijob.watch",
    }
    assert down("wait_for_best_checkpoint") >= {"export_model"}
    assert "upload_domain_dataset" in down("export_model")
    assert dag.get_task("publish_pretrained_model").upstream_task_ids >= {
        "export_model",
        "upload_domain_dataset",
        "wait_for_best_checkpoint",
    }


def test_parsing_imports_no_tensorflow_and_opens_no_socket(pipeline):
    assert_parses_clean(DAG_FILE, DAG_ID)


@pytest.mark.parametrize(
    "conf, message",
    [
        ({"epochs": 0}, "epochs"),
        ({"launcher": "slurm"}, "launcher"),
        ({"domain_classes": "four"}, "domain_classes"),
        ({"image_size": 100}, "image_size"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"dataset_uri": "relative/path"}, "dataset_uri"),
        ({"dataset_uri": "/data/raw\n"}, "dataset_uri"),  # Python's $ matches before a final newline
        ({"dataset_uri": "/data/../etc"}, "dataset_uri"),
        ({"domain_classes": ["ok", "bad\n"]}, "domain_classes"),
    ],
)
def test_rest_api_refuses_invalid_conf_before_creating_a_run(pipeline, conf, message):
    sync_dags_to_db(DAG_FILE.parent)
    with api_client() as client:
        url = f"/api/v2/dags/{DAG_ID}/dagRuns"
        before = client.get(url).json()["total_entries"]
        resp = client.post(url, json={"logical_date": None, "conf": conf})
        assert resp.status_code == 400, resp.text
        assert message in resp.text
        assert client.get(url).json()["total_entries"] == before


def test_rest_api_accepts_valid_conf(pipeline):
    sync_dags_to_db(DAG_FILE.parent)
    with api_client() as client:
        resp = client.post(
            f"/api/v2/dags/{DAG_ID}/dagRuns",
            json={"logical_date": None, "conf": {"epochs": 2, "domain_classes": ["ring-dots"], "launcher": "local"}},
        )
        assert resp.status_code == 200, resp.text
        run = resp.json()
        assert run["conf"]["epochs"] == 2 and run["state"] == "queued"
        client.patch(f"/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}", json={"state": "failed"})


def _asset_events():
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(AssetEvent.extra, AssetEvent.source_run_id)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.name == "pretrained-model")
        ).all()
        return [(dict(extra), run_id) for extra, run_id in rows]


@pytest.mark.slow
def test_local_launcher_trains_exports_publishes_then_skips(dag, pipeline, s3_endpoint):
    events_before = len(_asset_events())
    run = run_dag(dag)
    assert run.state == "success", run.tasks
    assert run.tasks["launch.local"] == "success"
    assert {
        run.tasks[t]
        for t in ("launch.pod", "launch.mpijob.create", "launch.mpijob.watch", "launch.mpijob.delete", "skip_training")
    } == {"skipped"}

    best = run.xcom("wait_for_best_checkpoint")
    prepared = run.xcom("prepare")
    assert set(best) == {"uri", "epoch", "val_accuracy", "manifest_sha256", "files"}
    assert best["epoch"] == 1 and best["uri"] == os.path.join(prepared["checkpoint_uri"], "epochs", "0001")
    assert set(best["files"]) == {"model.keras", "meta.json", "metrics.json"}
    assert os.path.exists(os.path.join(prepared["checkpoint_uri"], "COMPLETE"))

    events = _asset_events()
    assert len(events) == events_before + 1
    extra, source_run = events[-1]
    assert source_run == run.run_id
    assert extra == run.xcom("publish_pretrained_model")
    assert extra["val_accuracy"] == best["val_accuracy"] and extra["epoch"] == 1
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for key in ("model_uri", "manifest_uri", "metrics_uri"):
        bucket, _, path = extra[key][len("s3://") :].partition("/")
        assert s3.head_object(Bucket=bucket, Key=path)["ContentLength"] > 0
    assert extra["model_uri"].endswith(f"/pretrained/{extra['model_sha256']}/model.tar.gz")
    assert f"/domain/{extra['dataset_fingerprint']}/train/" in extra["domain_train_uri"]
    assert len(extra["domain_classes"]) == 2

    # Same data, same parameters: the next run curates, sees the match, and trains and publishes nothing.
    again = run_dag(dag)
    assert again.state == "success", again.tasks
    assert again.tasks["skip_training"] == "success"
    assert {
        again.tasks[t]
        for t in (
            "launch.local",
            "wait_for_best_checkpoint",
            "export_model",
            "upload_domain_dataset",
            "publish_pretrained_model",
        )
    } == {"skipped"}
    assert len(_asset_events()) == events_before + 1


def test_mpijob_failure_fails_the_run_and_deletes_the_job(dag, pipeline):
    from plugins.tlpipe.pretraining import mpijob

    namespace = "ml-training"
    with KubeServer() as kube:
        kubernetes_connection(kube.url, namespace=namespace)

        def fail_the_job():
            job = kube.wait_for("mpijobs", namespace, group=mpijob.GROUP, version=mpijob.VERSION)
            kube.patch_status(
                "mpijobs",
                namespace,
                job["metadata"]["name"],
                {
                    "conditions": [
                        {"type": "Created", "status": "True"},
                        {
                            "type": "Failed",
                            "status": "True",
                            "reason": "MPIJobFailed",
                            "message": "launcher exited with code 1",
                        },
                    ]
                },
                group=mpijob.GROUP,
                version=mpijob.VERSION,
            )
            seen.append(job)

        seen: list[dict] = []
        writer = threading.Thread(target=fail_the_job, daemon=True)
        writer.start()
        run = run_dag(dag, {"launcher": "mpijob", "workers": 2, "gpus_per_worker": 1})
        writer.join(5)
        assert run.state == "failed"
        assert run.tasks["launch.mpijob.create"] == "success"
        assert run.tasks["launch.mpijob.watch"] == "failed"
        assert run.tasks["launch.mpijob.delete"] == "success"  # teardown on failure too
        assert run.tasks["launch.local"] == "skipped"
        assert run.tasks["wait_for_best_checkpoint"] == "upstream_failed"
        job = mpijob.MPIJob.model_validate(seen[0])
        assert job.spec.slots_per_worker == 1 and job.spec.mpi_replica_specs["Worker"].replicas == 2
        assert kube.objects("mpijobs", namespace, group=mpijob.GROUP, version=mpijob.VERSION) == []
