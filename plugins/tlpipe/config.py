"""The pipeline's typed configuration: ``config/pipeline.yaml``, one profile of it, environment overrides.

    from plugins.tlpipe.config import get_config
    cfg = get_config()            # TLPIPE_PROFILE (default local), TLPIPE__SECTION__KEY overrides
    cfg.training.epochs, cfg.s3.bucket, cfg.sagemaker.endpoint_name, ...

The file has ``defaults`` and ``profiles: {local: ..., production: ...}``; the chosen profile is deep-merged over
the defaults, then every ``TLPIPE__<SECTION>__<KEY>[__<KEY>...]`` variable is applied (its value parsed as YAML),
then the result is validated. Relative paths are resolved against the project root (``TLPIPE_HOME``, default
the directory above ``config/``). Reading the configuration touches only the local file system.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import Field, field_validator, model_validator

# The sagemaker section lives in its own module; its names are re-exported here.
from plugins.tlpipe.sagemaker_config import TRAFFIC_ROUTING, SageMakerConfig, Section, TuningConfig, TuningRange
from training.contracts import CHECKPOINT_EVERY_MINUTES, MODEL_ARCHS, PRETRAIN_KNOBS

__all__ = ["TRAFFIC_ROUTING", "PipelineConfig", "SageMakerConfig", "TuningConfig", "TuningRange", "get_config"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # plugins/tlpipe/config.py
DEFAULT_CONFIG = PROJECT_ROOT / "config" / "pipeline.yaml"
ENV_PREFIX = "TLPIPE__"
PROFILES = ("local", "production")

Launcher = Literal["auto", "pod", "mpijob", "local"]
ModelArch = Literal[MODEL_ARCHS]


def knob_field(name: str, *, required: bool = False, **kwargs):
    """A pydantic ``Field`` for the pretraining knob ``name``: its default and lower bound as
    ``training.contracts.PRETRAIN_KNOBS`` declares them (the one place they are written)."""
    knob = PRETRAIN_KNOBS[name]
    bounds = {key: value for key, value in (("ge", knob.minimum), ("gt", knob.exclusive_minimum)) if value is not None}
    return Field(**({} if required else {"default": knob.default}), **bounds, **kwargs)


class DatasetConfig(Section):
    uri: str
    curated_root: str
    # Where a run's dataset_uri may point; empty: the folder that holds ``uri``.
    roots: list[str] = []
    min_images_per_class: int = Field(ge=1)
    domain_classes: int | list[str]
    val_fraction: float = Field(gt=0, lt=1)
    min_domain_images: int = Field(default=10, ge=1)


class TrainingConfig(Section):
    epochs: int = knob_field("epochs", required=True)
    workers: int = knob_field("workers", required=True)
    gpus_per_worker: int = knob_field("gpus_per_worker", required=True)
    image_size: int = knob_field("image_size", required=True)
    batch_size: int = knob_field("batch_size", required=True)
    learning_rate: float = knob_field("learning_rate", required=True)
    model: ModelArch
    launcher: Launcher = "auto"
    threads_per_worker: int = Field(default=0, ge=0)
    extra_args: tuple[str, ...] = ()


class CheckpointConfig(Section):
    root: str
    conn_id: str | None = None
    endpoint_url: str | None = None
    every_minutes: float = Field(default=CHECKPOINT_EVERY_MINUTES, ge=0)  # inside an epoch; 0: at its end only
    every_steps: int = Field(default=0, ge=0)


class S3Config(Section):
    aws_conn_id: str = "aws_default"
    bucket: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.\-]*[a-z0-9]$")
    prefix: str = ""
    region: str = "us-east-1"
    create_bucket: bool = False
    multipart_threshold_mb: int = Field(default=64, ge=5)
    multipart_chunksize_mb: int = Field(default=64, ge=5)
    max_concurrency: int = Field(default=8, ge=1)
    # An unreachable or failing-over S3 API is waited out this long (with backoff) before an upload fails.
    outage_seconds: float = Field(default=300.0, ge=0)

    @field_validator("prefix")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.strip("/")

    def uri(self, *parts: str) -> str:
        """``s3://bucket/prefix/parts...``"""
        key = "/".join(p.strip("/") for p in (self.prefix, *parts) if p and p.strip("/"))
        return f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p and p.strip("/"))


class AirflowConfig(Section):
    schedule: str | None = "@weekly"
    start_date: str = "2025-01-01"
    gpu_pool: str = "gpu"
    gpu_pool_slots: int = Field(default=1, ge=1)
    retries: int = Field(default=2, ge=0)
    retry_delay_seconds: int = Field(default=60, ge=0)
    training_timeout_hours: float = Field(default=12, gt=0)
    curate_runner: Literal["local", "pod"] = "local"
    sensor_mode: Literal["reschedule", "poke"] = "reschedule"
    sensor_poke_seconds: float = Field(default=30, gt=0)
    sensor_timeout_hours: float = Field(default=24, gt=0)


class Toleration(Section):
    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class VolumeConfig(Section):
    claim_name: str
    mount_path: str = "/data"
    read_only: bool = False


class Resources(Section):
    cpu: str
    memory: str


class KubernetesConfig(Section):
    conn_id: str = "kubernetes_default"
    namespace: str
    image: str
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    service_account: str | None = None
    gpu_resource: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = {}
    tolerations: tuple[Toleration, ...] = ()
    data_volume: VolumeConfig
    shm_size: str = "8Gi"
    worker_resources: Resources
    curate_resources: Resources
    run_as_user: int = Field(default=1000, ge=1)
    run_as_group: int = Field(default=1000, ge=1)
    fs_group: int = Field(default=1000, ge=1)
    # The image's root filesystem read-only; what the processes write goes to emptyDirs (``kube.pods``).
    read_only_root_filesystem: bool = True
    checkpoint_secret: str | None = None
    startup_timeout_seconds: int = Field(default=600, ge=1)
    schedule_timeout_seconds: int = Field(default=1800, ge=1)
    termination_grace_seconds: int = Field(default=60, ge=0)
    labels: dict[str, str] = {}


class MPIJobConfig(Section):
    ssh_port: int = Field(default=2222, ge=1024, le=65535)
    ssh_auth_mount_path: str = "/home/mpiuser/.ssh"
    sshd_command: tuple[str, ...] = ("/usr/local/bin/start-sshd", "-De", "-f", "/home/mpiuser/.sshd_config")
    hostfile: str = "/etc/mpi/hostfile"
    launcher_creation_policy: Literal["AtStartup", "WaitForWorkersReady"] = "WaitForWorkersReady"
    clean_pod_policy: Literal["None", "Running", "All"] = "Running"
    ttl_seconds_after_finished: int = Field(default=3600, ge=0)
    backoff_limit: int = Field(default=0, ge=0)
    launcher_resources: Resources


class PipelineConfig(Section):
    profile: Literal["local", "production"]
    project_root: Path
    dataset: DatasetConfig
    training: TrainingConfig
    checkpoints: CheckpointConfig
    s3: S3Config
    airflow: AirflowConfig
    kubernetes: KubernetesConfig
    mpijob: MPIJobConfig
    sagemaker: SageMakerConfig

    @model_validator(mode="before")
    @classmethod
    def _resolve_paths(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        root = Path(data.get("project_root") or PROJECT_ROOT)
        for section, key in (("dataset", "uri"), ("dataset", "curated_root"), ("checkpoints", "root")):
            value = data.get(section, {}).get(key)
            if isinstance(value, str) and "://" not in value and not Path(value).is_absolute():
                data[section][key] = str((root / value).resolve())
        dataset = data.get("dataset", {})
        roots = dataset.get("roots") or [str(dataset.get("uri", "")).rstrip("/").rsplit("/", 1)[0] or "/"]
        dataset["roots"] = [r if "://" in r or Path(r).is_absolute() else str((root / r).resolve()) for r in roots]
        return data


def deep_merge(base: dict, override: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def env_overrides(environ: Mapping[str, str]) -> dict:
    """``TLPIPE__TRAINING__EPOCHS=4`` -> ``{"training": {"epochs": 4}}`` (values parsed as YAML)."""
    out: dict = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            continue
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        raw = environ[name]
        try:
            node[path[-1]] = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            node[path[-1]] = raw
    return out


def load_config(
    profile: str | None = None, path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> PipelineConfig:
    environ = os.environ if environ is None else environ
    path = Path(path or environ.get("TLPIPE_CONFIG") or DEFAULT_CONFIG)
    profile = profile or environ.get("TLPIPE_PROFILE") or "local"
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: expected one of {', '.join(PROFILES)}")
    raw = yaml.safe_load(path.read_text()) or {}
    profiles = raw.get("profiles") or {}
    merged = deep_merge(raw.get("defaults") or {}, profiles.get(profile) or {})
    merged = deep_merge(merged, env_overrides(environ))
    merged["profile"] = profile
    merged["project_root"] = str(Path(environ.get("TLPIPE_HOME") or path.resolve().parent.parent))
    return PipelineConfig.model_validate(merged)


@functools.lru_cache(maxsize=4)
def _cached(profile: str | None, path: str | None, env_key: tuple) -> PipelineConfig:
    return load_config(profile, path)


def get_config(profile: str | None = None, path: str | Path | None = None) -> PipelineConfig:
    """The configuration for this process, cached until an environment variable it depends on changes."""
    env_key = tuple(
        sorted(
            (k, v)
            for k, v in os.environ.items()
            if k.startswith(ENV_PREFIX) or k in ("TLPIPE_PROFILE", "TLPIPE_CONFIG", "TLPIPE_HOME")
        )
    )
    return _cached(profile, str(path) if path else None, env_key)
