"""Fixtures shared by the pretraining-DAG tests: an S3 API server on loopback, tiny image trees, pipeline env."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from airflow_env import aws_connection, reset_config_cache


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """moto's S3 server on 127.0.0.1 (one per session), wired to the ``aws_default`` connection."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(
        {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    )
    aws_connection("aws_default", url)
    yield url
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def small_tree(tmp_path_factory) -> Path:
    """6 classes, 40 -> 20 images: 4 pretraining classes and 2 domain classes at a threshold of 25."""
    from training.synth_data import generate

    out = tmp_path_factory.mktemp("pretrain-data") / "raw"
    generate(out, classes=6, seed=0, largest=40, smallest=20)
    return out


def pipeline_environ(tmp: Path, data: Path, **overrides) -> dict[str, str]:
    """TLPIPE__* variables for a tiny local pipeline under ``tmp`` (1 epoch, 32 px, 1 s sensor pokes)."""
    env = {
        "TLPIPE_PROFILE": "local",
        "TLPIPE__DATASET__URI": str(data),
        "TLPIPE__DATASET__CURATED_ROOT": str(tmp / "curated"),
        "TLPIPE__DATASET__MIN_IMAGES_PER_CLASS": "25",
        "TLPIPE__DATASET__DOMAIN_CLASSES": "2",
        "TLPIPE__DATASET__VAL_FRACTION": "0.25",
        "TLPIPE__TRAINING__EPOCHS": "1",
        "TLPIPE__TRAINING__IMAGE_SIZE": "32",
        "TLPIPE__TRAINING__BATCH_SIZE": "16",
        "TLPIPE__CHECKPOINTS__ROOT": str(tmp / "checkpoints"),
        "TLPIPE__S3__BUCKET": "tlpipe-test",
        "TLPIPE__S3__PREFIX": tmp.name,
        "TLPIPE__AIRFLOW__SENSOR_POKE_SECONDS": "1",
        "TLPIPE__AIRFLOW__SENSOR_TIMEOUT_HOURS": "0.02",
        "TLPIPE__AIRFLOW__RETRIES": "0",
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def apply_environ(monkeypatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset_config_cache()


POD_NAMESPACE = "ml-training"
POD_LOG = b"[pretrain] 1 worker(s), 101 train / 34 val images\n"


@contextlib.contextmanager
def pod_launcher_pipeline(monkeypatch, tmp_path: Path, small_tree: Path):
    """``(dag, kube)``: general_pretraining set up for the pod launcher against an in-memory Kubernetes API."""
    from airflow_env import DAGS_FOLDER, kubernetes_connection, load_dagbag, setup_airflow
    from kube_mock import KubeServer

    apply_environ(monkeypatch, pipeline_environ(tmp_path, small_tree))
    setup_airflow()
    dag = load_dagbag(DAGS_FOLDER / "general_pretraining.py").get_dag("general_pretraining")
    with KubeServer(pod_log=POD_LOG) as kube:
        kubernetes_connection(kube.url, namespace=POD_NAMESPACE)
        yield dag, kube
