"""BestCheckpointSensor on a local checkpoint directory and on an S3-compatible store (moto on loopback)."""

from __future__ import annotations

import json

import boto3
import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout
from airflow_env import aws_connection

from plugins.tlpipe.pretraining.sensors import BestCheckpointSensor

BEST = {
    "epoch": 2,
    "val_accuracy": 0.75,
    "val_loss": 0.6,
    "path": "x/epochs/0002",
    "files": {"model.keras": {"sha256": "k" * 64, "size": 10}},
    "manifest_sha256": "m" * 64,
    "manifest_fingerprint": "f" * 64,
    "created_at": "t",
    "updated_at": "t",
}


def _write(root, name, obj):
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(json.dumps(obj))


def test_waits_for_best_json_and_complete(tmp_path):
    ckpt = tmp_path / "run"
    sensor = BestCheckpointSensor(task_id="wait", checkpoint_uri=str(ckpt))
    assert not sensor.poke({})
    assert sensor._missing == ["best.json", "COMPLETE"]
    _write(ckpt, "best.json", BEST)
    assert not sensor.poke({})
    assert sensor._missing == ["COMPLETE"]
    _write(ckpt, "COMPLETE", {"epochs": 2})
    result = sensor.poke({})
    assert result.is_done
    assert result.xcom_value == {
        "uri": str(ckpt / "epochs" / "0002"),  # the epoch best.json points to, under this run's directory
        "epoch": 2,
        "val_accuracy": 0.75,
        "manifest_sha256": "m" * 64,
        "files": BEST["files"],
    }


def test_best_json_of_another_manifest_does_not_count(tmp_path):
    _write(tmp_path, "best.json", BEST)
    _write(tmp_path, "COMPLETE", {})
    sensor = BestCheckpointSensor(task_id="wait", checkpoint_uri=str(tmp_path), expected_manifest_sha256="a" * 64)
    assert not sensor.poke({})
    assert "for manifest aaaaaaaaaaaa" in sensor._missing[0]
    sensor.expected_manifest_sha256 = "m" * 64
    assert sensor.poke({}).is_done


def test_fails_fast_with_the_reason_in_failed(tmp_path):
    _write(tmp_path, "best.json", BEST)
    _write(tmp_path, "FAILED", {"reason": "ResourceExhaustedError: OOM when allocating tensor", "failed_at": "t"})
    sensor = BestCheckpointSensor(
        task_id="wait", checkpoint_uri=str(tmp_path), mode="poke", poke_interval=0.1, timeout=60
    )
    with pytest.raises(AirflowFailException, match="training failed: ResourceExhaustedError: OOM"):
        sensor.execute({})


def test_timeout_names_what_was_missing(tmp_path):
    _write(tmp_path, "best.json", BEST)
    sensor = BestCheckpointSensor(
        task_id="wait", checkpoint_uri=str(tmp_path), mode="poke", poke_interval=0.05, timeout=0.2
    )
    with pytest.raises(AirflowSensorTimeout, match=r"COMPLETE still missing"):
        sensor.execute({})
    empty = BestCheckpointSensor(
        task_id="wait", checkpoint_uri=str(tmp_path / "nothing"), mode="poke", poke_interval=0.05, timeout=0.1
    )
    with pytest.raises(AirflowSensorTimeout, match=r"best.json and COMPLETE still missing"):
        empty.execute({})


def test_polls_an_s3_compatible_store_through_its_connection(s3_endpoint):
    aws_connection("checkpoint_store", s3_endpoint)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="tlpipe-checkpoints")
    uri = "s3://tlpipe-checkpoints/pretrain/run-1"
    sensor = BestCheckpointSensor(task_id="wait", checkpoint_uri=uri + "/", conn_id="checkpoint_store")
    assert not sensor.poke({})
    s3.put_object(Bucket="tlpipe-checkpoints", Key="pretrain/run-1/best.json", Body=json.dumps(BEST))
    s3.put_object(Bucket="tlpipe-checkpoints", Key="pretrain/run-1/COMPLETE", Body=b"{}")
    assert sensor.poke({}).xcom_value["uri"] == uri + "/epochs/0002"
    s3.put_object(
        Bucket="tlpipe-checkpoints",
        Key="pretrain/run-1/FAILED",
        Body=json.dumps({"reason": "RuntimeError: injected failure at epoch 3"}),
    )
    with pytest.raises(AirflowFailException, match="injected failure at epoch 3"):
        sensor.poke({})
