"""transfer_learning_deploy with Param ``tuning``: the fine-tune runs as a SageMaker hyperparameter tuning job on
localcloud (the project's image, two real fine-tune jobs) and the DAG deploys the best training job's model."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from _finetune_helpers import FINETUNE_HP
from airflow_env import DAGS_FOLDER, load_dagbag, reset_config_cache, run_dag, setup_airflow

BUCKET, PREFIX, FINGERPRINT = "tlpipe-tuning-dag", "tl", "abcdef0123456789"


def _tar(directory: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(directory.iterdir()):
            tar.add(path, arcname=path.name)
    return buf.getvalue()


def _publish(s3, world: dict) -> dict:
    """What general_pretraining leaves in S3: the model, the domain split and latest.json."""
    s3.create_bucket(Bucket=BUCKET)
    model = _tar(Path(world["pretrained"]))
    sha = hashlib.sha256(model).hexdigest()
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/pretrained/{sha}/model.tar.gz", Body=model)
    base = f"{PREFIX}/domain/{FINGERPRINT}"
    for split in ("train", "validation"):
        for path in sorted(Path(world[split]).rglob("*")):
            if path.is_file():
                s3.put_object(
                    Bucket=BUCKET, Key=f"{base}/{split}/{path.parent.name}/{path.name}", Body=path.read_bytes()
                )
    latest = {
        "model_uri": f"s3://{BUCKET}/{PREFIX}/pretrained/{sha}/model.tar.gz",
        "model_sha256": sha,
        "manifest_uri": f"s3://{BUCKET}/{PREFIX}/pretrained/{sha}/manifest.json",
        "metrics_uri": f"s3://{BUCKET}/{PREFIX}/pretrained/{sha}/metrics.json",
        "domain_train_uri": f"s3://{BUCKET}/{base}/train/",
        "domain_validation_uri": f"s3://{BUCKET}/{base}/validation/",
        "domain_classes": list(world["classes"]),
        "dataset_fingerprint": FINGERPRINT,
        "manifest_sha256": "a" * 64,
        "checkpoint_uri": "/checkpoints/run/best",
        "epoch": 2,
        "val_accuracy": 0.5,
        "training_params": {"epochs": 2},
        "training_key": "k",
        "dag_id": "general_pretraining",
        "run_id": "manual__2026-01-01T00:00:00+00:00",
    }
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/pretrained/latest.json", Body=json.dumps(latest).encode())
    return latest


def test_a_tuning_job_runs_two_fine_tunes_and_the_dag_deploys_the_best(localcloud, world, monkeypatch):
    env = {
        "TLPIPE_PROFILE": "local",
        "TLPIPE__S3__BUCKET": BUCKET,
        "TLPIPE__S3__PREFIX": PREFIX,
        "TLPIPE__AIRFLOW__SENSOR_POKE_SECONDS": "1",
        "TLPIPE__AIRFLOW__RETRIES": "0",
        "TLPIPE__SAGEMAKER__SMOKE_TEST_IMAGES": "4",
        "TLPIPE__SAGEMAKER__SMOKE_TEST_ACCURACY_TOLERANCE": "1.0",
        "TLPIPE__SAGEMAKER__TUNING__MAX_JOBS": "2",
        "TLPIPE__SAGEMAKER__TUNING__MAX_PARALLEL_JOBS": "1",  # 2 cores: one fine-tune at a time
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset_config_cache()
    setup_airflow()
    s3, sm = localcloud.client("s3"), localcloud.client("sagemaker")
    _publish(s3, world)
    bag = load_dagbag(DAGS_FOLDER / "transfer_learning_deploy.py")
    assert bag.import_errors == {}
    dag = bag.dags["transfer_learning_deploy"]

    conf = {
        "endpoint_name": "tl-tuned",
        "tuning": True,
        "compare_scratch": False,
        "quality_threshold": 0.0,
        "hyperparameters": {**FINETUNE_HP, "epochs_head": 2, "epochs_finetune": 1},
    }
    run = run_dag(dag, conf)
    assert run.state == "success", run.tasks
    assert (run.tasks["tune"], run.tasks["finetune"]) == ("success", "skipped")

    prepared = run.xcom("prepare")
    name = prepared["names"]["tuning_job"]
    tuning = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    assert tuning["HyperParameterTuningJobStatus"] == "Completed"
    assert tuning["TrainingJobStatusCounters"]["Completed"] == 2
    children = sm.list_training_jobs_for_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=name, SortBy="FinalObjectiveMetricValue"
    )["TrainingJobSummaries"]
    assert len(children) == 2
    best = tuning["BestTrainingJob"]["TrainingJobName"]
    assert best == children[0]["TrainingJobName"]
    for child in children:  # the configured ranges were tuned; the run's own hyperparameters stayed static
        job = sm.describe_training_job(TrainingJobName=child["TrainingJobName"])
        assert set(child["TunedHyperParameters"]) == {"recipes", "learning_rate_head", "backbone_lr_ratio"}
        assert job["HyperParameters"]["epochs_head"] == "2" and job["HyperParameters"]["compare_scratch"] == "false"

    outcome = run.xcom("read_metrics")
    assert outcome["job"] == best and outcome["tuning"]["best"] == best
    assert {c["job"] for c in outcome["tuning"]["candidates"]} == {c["TrainingJobName"] for c in children}
    best_job = sm.describe_training_job(TrainingJobName=best)
    model = sm.describe_model(ModelName=prepared["names"]["model"])
    assert model["PrimaryContainer"]["ModelDataUrl"] == best_job["ModelArtifacts"]["S3ModelArtifacts"]
    summary = run.xcom("record_lineage", "summary")
    assert summary["status"] == "deployed" and summary["training_job"] == best
    bucket, _, key = summary["lineage_uri"][len("s3://") :].partition("/")
    record = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert record["training_job"]["name"] == best and record["training_job"]["tuning_job"]["name"] == name
    assert len(record["training_job"]["tuning_job"]["candidates"]) == 2
    assert sm.describe_endpoint(EndpointName="tl-tuned")["EndpointStatus"] == "InService"
