"""What the pretraining DAG's Python tasks do, importable and testable without Airflow running.

prepare_run      conf + configuration -> paths of this run, the curate argv, the TrainingSpec, the MPIJob
plan_training    after curation: skip (same data and parameters as the last export) or which launcher
export_model     best checkpoint -> s3://…/pretrained/<sha>/
upload_domain    domain classes' train/validation images -> s3://…/domain/<fingerprint>/
publish_record   the ``pretrained-model`` event's extra (also written to …/pretrained/latest.json)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from plugins.tlpipe.assets import PretrainedModelEvent
from plugins.tlpipe.config import Launcher, ModelArch, PipelineConfig, knob_field
from plugins.tlpipe.pretraining.spec import TrainingSpec, launcher_for_workers, launcher_mismatch

log = logging.getLogger(__name__)

LAUNCH_GROUP = "launch"
LAUNCH_TASKS = {
    "local": f"{LAUNCH_GROUP}.local",
    "pod": f"{LAUNCH_GROUP}.pod",
    "mpijob": f"{LAUNCH_GROUP}.mpijob.create",
}
SKIP_TASK = "skip_training"


class RunParams(BaseModel):
    """A run's Params, checked together (each one alone is checked by its JSON schema at trigger time)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    dataset_uri: str = Field(min_length=1)
    min_images_per_class: int = Field(ge=1)
    domain_classes: int | list[str]
    val_fraction: float = Field(gt=0, lt=1)
    epochs: int = knob_field("epochs", required=True)
    workers: int = knob_field("workers", required=True)
    gpus_per_worker: int = knob_field("gpus_per_worker", required=True)
    image_size: int = knob_field("image_size", required=True)
    batch_size: int = knob_field("batch_size", required=True)
    learning_rate: float = knob_field("learning_rate", required=True)
    model: ModelArch
    launcher: Launcher
    force: bool = False

    @model_validator(mode="after")
    def _combination(self) -> "RunParams":
        mismatch = launcher_mismatch(self.launcher, self.workers)
        if mismatch:
            raise ValueError(mismatch)
        return self


def resolve_launcher(launcher: str, profile: str, workers: int) -> Literal["local", "pod", "mpijob"]:
    """``auto``: local in the local profile, else a pod for one worker and an MPIJob for several."""
    if launcher != "auto":
        return launcher  # type: ignore[return-value]
    if profile == "local":
        return "local"
    return launcher_for_workers(workers)


def run_key(run_id: str) -> str:
    """A path- and name-safe key that is the same for every try of a run (so a retry resumes)."""
    slug = re.sub(r"[^a-z0-9]+", "-", run_id.lower()).strip("-")[:40].strip("-")
    return f"{slug}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}"


def k8s_name(prefix: str, dag_id: str, run_id: str) -> str:
    return f"{prefix}-{hashlib.sha256(f'{dag_id}/{run_id}'.encode()).hexdigest()[:12]}"


def _join(base: str, *parts: str) -> str:
    from training.store import join

    return join(base, *parts)


def _checkpoint_endpoint(cfg: PipelineConfig) -> str | None:
    if cfg.checkpoints.endpoint_url:
        return cfg.checkpoints.endpoint_url
    if cfg.checkpoints.root.startswith("s3://") and cfg.checkpoints.conn_id:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return S3Hook(aws_conn_id=cfg.checkpoints.conn_id).conn_config.endpoint_url
    return None


def curate_argv(cfg: PipelineConfig, params: RunParams, out: str, python: str) -> list[str]:
    domain = params.domain_classes
    return [
        python,
        "-m",
        "training.curate",
        "--data-dir",
        params.dataset_uri,
        "--out",
        out,
        "--min-images",
        str(params.min_images_per_class),
        "--domain-classes",
        ",".join(domain) if isinstance(domain, list) else str(domain),
        "--val-fraction",
        repr(float(params.val_fraction)),
        "--min-domain-images",
        str(cfg.dataset.min_domain_images),
    ]


def confine_dataset(uri: str, roots: list[str]) -> str:
    """``uri`` when it lies below one of ``roots`` (symlinks resolved), else a ``ValueError`` saying so."""
    if any(ord(c) < 32 or ord(c) == 127 for c in uri) or ".." in uri.split("/"):
        raise ValueError(f"dataset_uri {uri!r} holds a control character or a '..' segment")
    if "://" in uri:
        if any(uri.rstrip("/") == r.rstrip("/") or uri.startswith(r.rstrip("/") + "/") for r in roots):
            return uri
    else:
        real = os.path.realpath(uri)
        for root in roots:
            base = os.path.realpath(root) if "://" not in root else None
            if base and (real == base or real.startswith(base.rstrip(os.sep) + os.sep)):
                return uri
    raise ValueError(f"dataset_uri {uri!r} is outside the data roots {roots} (dataset.roots in the configuration)")


def check_local_capacity(launcher: str, workers: int, gpus_per_worker: int, cores: int | None = None) -> None:
    """The local launcher starts workers x max(1, gpus_per_worker) processes on this host: at most one a core."""
    cores = cores or os.cpu_count() or 1
    processes = workers * max(1, gpus_per_worker)
    if launcher == "local" and processes > cores:
        raise ValueError(
            f"the local launcher would start {processes} Horovod processes (workers {workers} x "
            f"max(1, gpus_per_worker {gpus_per_worker})) on a host with {cores} cores: at most {cores}"
        )


def prepare_run(cfg: PipelineConfig, params: dict, dag_id: str, run_id: str) -> dict:
    """Everything a run needs to know before it starts, as JSON for XCom; refuses what cannot run here."""
    p = RunParams.model_validate(params)
    launcher = resolve_launcher(p.launcher, cfg.profile, p.workers)
    confine_dataset(p.dataset_uri, cfg.dataset.roots)
    check_local_capacity(launcher, p.workers, p.gpus_per_worker)
    key = run_key(run_id)
    curated_dir = _join(cfg.dataset.curated_root, key)
    manifest = _join(curated_dir, "manifest.json")
    checkpoint_uri = _join(cfg.checkpoints.root, key)
    local = launcher == "local"
    python = sys.executable if local else "python"
    spec = TrainingSpec(
        launcher=launcher,
        horovodrun=str(Path(sys.executable).parent / "horovodrun") if local else "horovodrun",
        python=python,
        workers=p.workers,
        gpus_per_worker=p.gpus_per_worker,
        hostfile=cfg.mpijob.hostfile if launcher == "mpijob" else None,
        ssh_port=cfg.mpijob.ssh_port if launcher == "mpijob" else None,
        manifest=manifest,
        checkpoint_dir=checkpoint_uri,
        epochs=p.epochs,
        model=p.model,
        image_size=p.image_size,
        batch_size=p.batch_size,
        learning_rate=p.learning_rate,
        s3_endpoint_url=_checkpoint_endpoint(cfg),
        threads=cfg.training.threads_per_worker,
        lease_owner=f"{dag_id}/{run_id}",
        checkpoint_every_minutes=cfg.checkpoints.every_minutes,
        checkpoint_every_steps=cfg.checkpoints.every_steps,
        extra_args=cfg.training.extra_args,
    )
    mpijob_name = k8s_name("pretrain", dag_id, run_id)
    mpijob_yaml = None
    if launcher == "mpijob":
        from plugins.tlpipe.pretraining.mpijob import build_mpijob

        mpijob_yaml = build_mpijob(spec, cfg, mpijob_name, labels={"tlpipe/dag": dag_id[:63]}).to_yaml()
    curate_python = sys.executable if cfg.airflow.curate_runner == "local" else "python"
    log.info(
        "run %s: launcher %s (%s), %d Horovod process(es), checkpoints in %s",
        run_id,
        launcher,
        p.launcher,
        spec.num_processes,
        checkpoint_uri,
    )
    return {
        "run_key": key,
        "launcher": launcher,
        "launch_task": LAUNCH_TASKS[launcher],
        "force": p.force,
        "dataset_uri": p.dataset_uri,
        "curated_dir": curated_dir,
        "manifest_path": manifest,
        "checkpoint_uri": checkpoint_uri,
        "curate_argv": curate_argv(cfg, p, curated_dir, curate_python),
        "training": spec.model_dump(mode="json"),
        "training_key": spec.training_key(),
        "mpijob_name": mpijob_name,
        "mpijob_yaml": mpijob_yaml,
    }


def read_manifest(path: str) -> tuple[dict, str]:
    data = Path(path).read_bytes()
    return json.loads(data), hashlib.sha256(data).hexdigest()


def plan_training(prepared: dict, exporter) -> tuple[str, dict]:
    """(task to follow, dataset summary): ``skip_training`` when the last export has the same data and parameters."""
    manifest, sha = read_manifest(prepared["manifest_path"])
    dataset = {
        "fingerprint": manifest["fingerprint"],
        "manifest_sha256": sha,
        "classes": len(manifest["classes"]),
        "train_images": sum(c["train"] for c in manifest["classes"]),
        "domain_classes": [c["name"] for c in manifest["domain_classes"]],
    }
    log.info(
        "curated dataset %s: %d classes (%d training images), domain classes %s",
        dataset["fingerprint"][:12],
        dataset["classes"],
        dataset["train_images"],
        ", ".join(dataset["domain_classes"]) or "none",
    )
    latest = exporter.read_latest()
    if latest is None:
        log.info("no exported model yet: training")
    elif prepared["force"]:
        log.info("force is set: training even if the last export matches")
    elif (
        latest.get("dataset_fingerprint") == dataset["fingerprint"]
        and latest.get("training_key") == prepared["training_key"]
    ):
        log.info(
            "skipping training: dataset fingerprint %s and training parameters %s match the last exported "
            "model %s (run %s); nothing new to publish",
            dataset["fingerprint"][:12],
            prepared["training_key"][:12],
            latest.get("model_uri"),
            latest.get("run_id"),
        )
        return SKIP_TASK, dataset
    else:
        changed = [
            name
            for name, a, b in (
                ("dataset fingerprint", latest.get("dataset_fingerprint"), dataset["fingerprint"]),
                ("training parameters", latest.get("training_key"), prepared["training_key"]),
            )
            if a != b
        ]
        log.info("training: %s differ from the last exported model %s", " and ".join(changed), latest.get("model_uri"))
    return prepared["launch_task"], dataset


def export_model(best: dict, prepared: dict, exporter, checkpoint_conn_id: str | None) -> dict:
    """Export the epoch directory best.json points to, once its files match the checksums it records;
    s3:// checkpoints are fetched from the checkpoint store."""
    from plugins.tlpipe.pretraining.sensors import checkpoint_store
    from training.contracts import file_digests, file_problem
    from training.store import is_s3

    best_uri = best["uri"]
    with tempfile.TemporaryDirectory(prefix="best-") as tmp:
        if is_s3(best_uri):
            local = checkpoint_store(best_uri, checkpoint_conn_id).download_dir(best_uri, Path(tmp, "best"))
        else:
            local = Path(best_uri)
        problem = file_problem(file_digests(local) if local.is_dir() else {}, best.get("files") or {})
        if problem:
            raise RuntimeError(f"{best_uri} (epoch {best['epoch']}, best.json's pointer): {problem}")
        meta = json.loads(Path(local, "meta.json").read_text())
        if int(meta.get("epoch", -1)) != int(best["epoch"]):
            raise RuntimeError(f"{best_uri} holds epoch {meta.get('epoch')}, best.json says {best['epoch']}")
        return exporter.export_model(local, prepared["manifest_path"])


def publish_record(
    *, prepared: dict, best: dict, exported: dict, domain: dict, dataset: dict, dag_id: str, run_id: str
) -> dict:
    spec = TrainingSpec.model_validate(prepared["training"])
    event = PretrainedModelEvent(
        model_uri=exported["model_uri"],
        model_sha256=exported["model_sha256"],
        manifest_uri=exported["manifest_uri"],
        metrics_uri=exported["metrics_uri"],
        domain_train_uri=domain["train_uri"],
        domain_validation_uri=domain["validation_uri"],
        domain_classes=domain["classes"],
        dataset_fingerprint=dataset["fingerprint"],
        manifest_sha256=best["manifest_sha256"],
        checkpoint_uri=best["uri"],
        epoch=best["epoch"],
        val_accuracy=best["val_accuracy"],
        training_params=spec.training_params(),
        training_key=prepared["training_key"],
        dag_id=dag_id,
        run_id=run_id,
    )
    return event.model_dump(mode="json")
