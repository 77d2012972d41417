"""One description of a pretraining run, rendered as the one ``horovodrun … python -m training.pretrain …`` argv.

Every launcher (a local subprocess, a Kubernetes pod, the launcher of an MPIJob) runs exactly ``spec.argv()``;
only where the interpreter lives and how Horovod finds its hosts differ, and those are fields of the spec.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from plugins.tlpipe.config import ModelArch, knob_field

ResolvedLauncher = Literal["pod", "mpijob", "local"]


def launcher_for_workers(workers: int) -> Literal["pod", "mpijob"]:
    """The one rule of who runs how many workers on Kubernetes: a pod runs one, an MPIJob two or more."""
    return "pod" if workers == 1 else "mpijob"


def launcher_mismatch(launcher: str, workers: int) -> str | None:
    """Why ``launcher`` cannot run ``workers`` workers (None when it can), by the rule above."""
    if launcher in ("pod", "mpijob") and launcher != launcher_for_workers(workers):
        if launcher == "pod":
            return f"launcher 'pod' runs one worker, got workers={workers}: use 'mpijob' or 'auto'"
        return "launcher 'mpijob' is for two or more workers; use 'pod' for one"
    return None


class TrainingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # how the processes are started
    launcher: ResolvedLauncher
    horovodrun: str = "horovodrun"
    python: str = "python"
    workers: int = knob_field("workers", required=True)
    gpus_per_worker: int = knob_field("gpus_per_worker")
    hostfile: str | None = None
    ssh_port: int | None = None
    # what they train
    manifest: str
    checkpoint_dir: str
    epochs: int = knob_field("epochs", required=True)
    model: ModelArch = knob_field("model")
    image_size: int = knob_field("image_size")
    batch_size: int = knob_field("batch_size")
    learning_rate: float = knob_field("learning_rate")
    data_root: str | None = None
    s3_endpoint_url: str | None = None
    threads: int = Field(default=0, ge=0)
    # Who may write the checkpoint directory (its lease): the Airflow run, so a retry of it takes over.
    lease_owner: str | None = None
    # Checkpoints inside an epoch (config ``checkpoints.every_minutes`` / ``every_steps``).
    checkpoint_every_minutes: float | None = Field(default=None, ge=0)
    checkpoint_every_steps: int = Field(default=0, ge=0)
    extra_args: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> "TrainingSpec":
        mismatch = launcher_mismatch(self.launcher, self.workers)
        if mismatch:
            raise ValueError(mismatch)
        if self.launcher == "mpijob" and not self.hostfile:
            raise ValueError("the mpijob launcher needs the hostfile the MPI operator writes")
        return self

    @property
    def slots_per_worker(self) -> int:
        """Horovod processes per worker: one per GPU, or one on a CPU-only worker."""
        return max(1, self.gpus_per_worker)

    @property
    def num_processes(self) -> int:
        return self.workers * self.slots_per_worker

    def horovod_argv(self) -> list[str]:
        argv = [self.horovodrun, "-np", str(self.num_processes)]
        if self.hostfile:
            argv += ["--hostfile", self.hostfile]
        if self.ssh_port:
            argv += ["-p", str(self.ssh_port)]
        return argv

    def pretrain_argv(self) -> list[str]:
        """``python -m training.pretrain …``: the part every launcher shares word for word."""
        argv = [
            self.python,
            "-m",
            "training.pretrain",
            "--manifest",
            self.manifest,
            "--checkpoint-dir",
            self.checkpoint_dir,
            "--epochs",
            str(self.epochs),
            "--model",
            self.model,
            "--image-size",
            str(self.image_size),
            "--batch-size",
            str(self.batch_size),
            "--learning-rate",
            repr(float(self.learning_rate)),
        ]
        if self.data_root:
            argv += ["--data-root", self.data_root]
        if self.s3_endpoint_url:
            argv += ["--s3-endpoint-url", self.s3_endpoint_url]
        if self.threads:
            argv += ["--threads", str(self.threads)]
        if self.lease_owner:
            argv += ["--lease-owner", self.lease_owner]
        if self.checkpoint_every_minutes is not None:
            argv += ["--checkpoint-every-minutes", f"{self.checkpoint_every_minutes:g}"]
        if self.checkpoint_every_steps:
            argv += ["--checkpoint-every-steps", str(self.checkpoint_every_steps)]
        return argv + list(self.extra_args)

    def argv(self) -> list[str]:
        return self.horovod_argv() + self.pretrain_argv()

    def training_params(self) -> dict:
        """What decides the resulting model besides the data (not where or how it runs)."""
        return {
            "model": self.model,
            "epochs": self.epochs,
            "image_size": self.image_size,
            "batch_size": self.batch_size,
            "learning_rate": float(self.learning_rate),
            "world_size": self.num_processes,
            "extra_args": list(self.extra_args),
        }

    def training_key(self) -> str:
        return hashlib.sha256(json.dumps(self.training_params(), sort_keys=True).encode()).hexdigest()
