"""The pipeline configuration: profiles, environment overrides, validation, what the deploy DAG reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from plugins.tlpipe.config import DEFAULT_CONFIG, PROJECT_ROOT, env_overrides, get_config, load_config


def test_local_profile_is_the_two_core_demo():
    cfg = load_config(environ={})
    assert cfg.profile == "local"
    assert cfg.dataset.uri == str(PROJECT_ROOT / "var" / "data" / "raw")
    assert (cfg.dataset.min_images_per_class, cfg.dataset.domain_classes, cfg.dataset.val_fraction) == (120, 4, 0.2)
    t = cfg.training
    assert (t.epochs, t.workers, t.gpus_per_worker, t.image_size, t.batch_size, t.model, t.launcher) == (
        16,
        2,
        0,
        64,
        64,
        "small_resnet",
        "auto",
    )
    assert cfg.checkpoints.root == str(PROJECT_ROOT / "var" / "checkpoints")
    assert cfg.checkpoints.conn_id is None
    assert cfg.airflow.curate_runner == "local"
    assert cfg.s3.create_bucket is True
    assert cfg.airflow.schedule is None  # the demo triggers its runs


def test_production_profile_follows_the_reference_design():
    cfg = load_config(profile="production", environ={})
    assert cfg.dataset.min_images_per_class == 500
    assert cfg.dataset.uri == "/data/raw"
    assert (cfg.training.epochs, cfg.training.model, cfg.training.image_size) == (48, "resnet50", 224)
    assert cfg.training.gpus_per_worker >= 1
    assert cfg.checkpoints.root.startswith("s3://") and cfg.checkpoints.conn_id == "checkpoint_store"
    assert cfg.airflow.curate_runner == "pod"
    assert cfg.s3.create_bucket is False
    assert cfg.airflow.schedule == "@weekly"
    # Untouched sections keep the shared defaults.
    assert cfg.kubernetes == load_config(environ={}).kubernetes


def test_profile_and_keys_come_from_the_environment(tmp_path):
    env = {
        "TLPIPE_PROFILE": "production",
        "TLPIPE__TRAINING__EPOCHS": "3",
        "TLPIPE__TRAINING__EXTRA_ARGS": "[--seed, '7']",
        "TLPIPE__KUBERNETES__DATA_VOLUME__CLAIM_NAME": "other-claim",
        "TLPIPE__DATASET__DOMAIN_CLASSES": "[ring-dots, cross-plain]",
        "TLPIPE__CHECKPOINTS__ROOT": "ckpt",
        "TLPIPE_HOME": str(tmp_path),
        "TLPIPE_SOMETHING_ELSE": "ignored",
    }
    cfg = load_config(environ=env)
    assert cfg.profile == "production"
    assert cfg.training.epochs == 3
    assert cfg.training.extra_args == ("--seed", "7")
    assert cfg.kubernetes.data_volume.claim_name == "other-claim"
    assert cfg.dataset.domain_classes == ["ring-dots", "cross-plain"]
    assert cfg.checkpoints.root == str(tmp_path / "ckpt")  # relative paths resolve against TLPIPE_HOME
    assert cfg.project_root == tmp_path


def test_env_override_parsing():
    assert env_overrides({"TLPIPE__S3__BUCKET": "b", "TLPIPE__A__B__C": "1", "OTHER": "x"}) == {
        "s3": {"bucket": "b"},
        "a": {"b": {"c": 1}},
    }


@pytest.mark.parametrize(
    "env",
    [
        {"TLPIPE__TRAINING__EPOCHS": "0"},
        {"TLPIPE__TRAINING__LAUNCHER": "slurm"},
        {"TLPIPE__TRAINING__EPOCSH": "3"},  # a typo is an error, not a silently ignored key
        {"TLPIPE__S3__BUCKET": "Not_A_Bucket"},
        {"TLPIPE__SAGEMAKER__ROLE_ARN": "role/x"},
        {"TLPIPE__DATASET__VAL_FRACTION": "1.5"},
    ],
)
def test_invalid_values_are_refused(env):
    with pytest.raises(ValidationError):
        load_config(environ=env)


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError, match="unknown profile"):
        load_config(environ={"TLPIPE_PROFILE": "staging"})


def test_deploy_settings_are_there():
    sm = load_config(environ={}).sagemaker
    assert sm.role_arn.startswith("arn:aws:iam::")
    assert sm.training_image_uri and sm.serving_image_uri
    assert sm.training_instance_type.startswith("ml.") and sm.serving_instance_type.startswith("ml.")
    assert sm.training_instance_count >= 1 and sm.serving_instance_count >= 1
    assert sm.endpoint_name and sm.resource_prefix
    assert 0 < sm.quality_threshold <= 1 and sm.keep_last >= 1
    assert sm.smoke_test_accuracy_tolerance >= 0 and sm.smoke_test_latency_ms > 0
    s3 = load_config(environ={}).s3
    assert s3.aws_conn_id == "aws_default"
    assert s3.uri("pretrained", "abc") == f"s3://{s3.bucket}/{s3.prefix}/pretrained/abc"


def test_get_config_follows_environment_changes(monkeypatch):
    monkeypatch.setenv("TLPIPE__TRAINING__EPOCHS", "5")
    assert get_config().training.epochs == 5
    monkeypatch.setenv("TLPIPE__TRAINING__EPOCHS", "6")
    assert get_config().training.epochs == 6


def test_other_config_file(tmp_path):
    text = Path(DEFAULT_CONFIG).read_text().replace("epochs: 16 ", "epochs: 9 ")
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    assert load_config(environ={"TLPIPE_CONFIG": str(path)}).training.epochs == 9
