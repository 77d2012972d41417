"""What the Airflow side and the training jobs agree on, in one place, importable without TensorFlow or Airflow.

- The curated manifest's list files: ``LIST_FILES`` names them, ``read_list`` reads one.
- The checkpoint directory of a pretraining run (``CheckpointDir``)::

    C/epochs/NNNN/   one immutable directory per epoch (model.keras + meta.json + metrics.json); its COMMITTED
                     marker, written last, records the sha256 and size of each file
    C/best.json      the pointer to the most accurate committed epoch (the transfer-learning input): its epoch,
                     path, metrics and file checksums; one object, written after the epoch is committed
    C/COMPLETE       all epochs done; or C/FAILED with {"reason": ...} when training failed
    C/LEASE          the one writer's lease: owner, heartbeat (``training.pretrain.lease``)
    C/logs/          TensorBoard event files

  ``training.pretrain`` writes it; the best-checkpoint sensor, the local launcher, the export and the report read
  it, all through the names and helpers here.
- The fine-tune job's input channels and the metric definitions SageMaker scans its log with.
- The pretraining knobs (``PRETRAIN_KNOBS``): each one's type, default and bounds, declared once. The
  ``training.pretrain`` flags, the ``TrainingSpec``, the configuration sections and the DAG's Params schemas
  are derived from it.

DAG files import this module (through the plugins), never the job modules themselves.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

from training import store as st

# -- the curated manifest -----------------------------------------------------------------------------------
LIST_FILES = {
    "train": "train.tsv.gz",
    "val": "val.tsv.gz",
    "domain_train": "domain_train.tsv.gz",
    "domain_val": "domain_val.tsv.gz",
    "skipped": "skipped.tsv.gz",
}


def read_list(path: str | Path) -> list[tuple[str, str]]:
    """(relative path, class) pairs of one of the gzipped file lists."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [tuple(line.rstrip("\n").split("\t", 1)) for line in fh if line.strip()]


# -- the checkpoint directory -------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointDir:
    """Names and URIs of one run's checkpoint directory (a local path or an s3:// URI)."""

    uri: str

    EPOCHS = "epochs"
    COMMITTED = "COMMITTED"
    BEST = "best"  # the directory runs before best.json became a pointer rewrote in place (read, never written)
    BEST_JSON = "best.json"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    LOGS = "logs"
    LEASE = "LEASE"
    PARTIAL = "partial"  # checkpoints inside an epoch: partial/EEEE-SSSSSSS/, named by partial.json
    PARTIAL_JSON = "partial.json"
    EPOCH_DIGITS = 4
    STEP_DIGITS = 7

    @classmethod
    def of_checkpoint(cls, checkpoint_uri: str) -> "CheckpointDir":
        """The run directory an epoch directory (``C/epochs/NNNN``, what best.json points to) belongs to."""
        uri = str(checkpoint_uri).rstrip("/")
        parent, _, name = uri.rpartition("/")
        if name == cls.BEST:
            return cls(parent)
        if name.isdigit() and parent.endswith("/" + cls.EPOCHS):
            return cls(parent[: -len(cls.EPOCHS) - 1])
        raise ValueError(f"{checkpoint_uri!r} is not a run's {cls.EPOCHS}/NNNN directory")

    def path(self, *parts: str) -> str:
        return st.join(self.uri, *parts)

    def epoch(self, epoch: int) -> str:
        return self.path(self.EPOCHS, f"{epoch:0{self.EPOCH_DIGITS}d}")

    def committed_marker(self, epoch: int) -> str:
        return st.join(self.epoch(epoch), self.COMMITTED)

    def partial(self, epoch: int, step: int) -> str:
        """Where the checkpoint after ``step`` steps of ``epoch`` (not yet committed) is written."""
        return self.path(self.PARTIAL, f"{epoch:0{self.EPOCH_DIGITS}d}-{step:0{self.STEP_DIGITS}d}")

    @property
    def partial_json(self) -> str:
        return self.path(self.PARTIAL_JSON)

    @property
    def best_json(self) -> str:
        return self.path(self.BEST_JSON)

    @property
    def logs_dir(self) -> str:
        return self.path(self.LOGS)

    @property
    def complete(self) -> str:
        return self.path(self.COMPLETE)

    @property
    def failed(self) -> str:
        return self.path(self.FAILED)

    # -- reading, with a training.store.Store ---------------------------------------------------------
    def committed_epochs(self, store: st.Store) -> list[int]:
        """Epochs whose directory is complete (their COMMITTED marker present), newest first."""
        names = [n for n in store.list_dirs(self.path(self.EPOCHS)) if n.isdigit()]
        return [int(n) for n in sorted(names, reverse=True) if store.exists(self.committed_marker(int(n)))]

    def last_committed_epoch(self, store: st.Store) -> int:
        """Highest epoch whose directory is complete (its COMMITTED marker present); 0 when none."""
        return next(iter(self.committed_epochs(store)), 0)

    def read_best(self, store: st.Store) -> dict | None:
        return store.read_json(self.best_json) if store.exists(self.best_json) else None

    def best_checkpoint(self, store: st.Store) -> str | None:
        """The epoch directory best.json points to (derived from its epoch, so a moved run still resolves)."""
        best = self.read_best(store)
        return self.epoch(int(best["epoch"])) if best else None

    def failure_reason(self, store: st.Store) -> str | None:
        """The reason FAILED records, or None when the run has not failed."""
        if not store.exists(self.failed):
            return None
        return str(store.read_json(self.failed).get("reason") or "unknown reason")


# Checkpoints inside an epoch: at ImageNet scale an epoch is hours; a kill should cost minutes.
CHECKPOINT_EVERY_MINUTES = 10.0


def pretrained_dir(path: str | Path) -> Path:
    """The local directory holding model.keras + meta.json for ``path``: the directory itself, or the epoch a
    checkpoint directory's best.json points to (its ``best/`` for runs written before the pointer)."""
    path = Path(path)
    if (path / "model.keras").is_file():
        return path
    run = CheckpointDir(str(path))
    best = run.best_checkpoint(st.Store())
    if best is not None:
        return Path(best)
    return path / CheckpointDir.BEST


def file_problem(found: dict[str, dict], want: dict[str, dict]) -> str | None:
    """Why the files ``found`` (``{name: {sha256, size}}``) are not the ones recorded (``want``), or None."""
    for name, digest in sorted(want.items()):
        if name not in found:
            return f"{name} is missing"
        if found[name] != digest:
            return f"{name} fails its checksum"
    return None


def file_digests(directory: str | Path) -> dict[str, dict]:
    """``{name: {"sha256", "size"}}`` of the files of a directory (an epoch directory's COMMITTED record)."""
    import hashlib

    out = {}
    for path in sorted(p for p in Path(directory).iterdir() if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        out[path.name] = {"sha256": digest.hexdigest(), "size": path.stat().st_size}
    return out


# -- the fine-tune job --------------------------------------------------------------------------------------
# Input channels the job requires (``test`` is optional).
CHANNELS = ("pretrained", "train", "validation")
# What SageMaker scans the job's log for (MetricDefinitions); the job prints these ``name=value`` pairs.
METRIC_DEFINITIONS = [
    {"Name": "train:loss", "Regex": " train_loss=([0-9.]+)"},
    {"Name": "train:accuracy", "Regex": " train_accuracy=([0-9.]+)"},
    {"Name": "validation:loss", "Regex": " val_loss=([0-9.]+)"},
    {"Name": "validation:accuracy", "Regex": " val_accuracy=([0-9.]+)"},
    {"Name": "scratch:validation:loss", "Regex": " scratch_val_loss=([0-9.]+)"},
    {"Name": "scratch:validation:accuracy", "Regex": " scratch_val_accuracy=([0-9.]+)"},
    {"Name": "transfer:gain", "Regex": " transfer_gain=(-?[0-9.]+)"},
    {"Name": "transfer:validation:accuracy", "Regex": " transfer_val_accuracy=([0-9.]+)"},
    {"Name": "selected:scratch", "Regex": " selected_scratch=([01])"},
    {"Name": "test:loss", "Regex": " test_loss=([0-9.]+)"},
    {"Name": "test:accuracy", "Regex": " test_accuracy=([0-9.]+)"},
    {"Name": "scratch:test:loss", "Regex": " scratch_test_loss=([0-9.]+)"},
    {"Name": "scratch:test:accuracy", "Regex": " scratch_test_accuracy=([0-9.]+)"},
    {"Name": "transfer:test_gain", "Regex": " transfer_test_gain=(-?[0-9.]+)"},
]
# The metric the deploy DAG's quality gate reads from FinalMetricDataList (and a tuning job's objective).
PRIMARY_METRIC = "validation:accuracy"

# -- transfer vs its scratch baseline ------------------------------------------------------------------------
# What to ship when the job's scratch baseline beats the transfer model on the same validation images by more
# than the margin: the transfer model anyway, the better of the two, or nothing (the run fails).
BASELINE_POLICIES = ("prefer_transfer", "best", "fail")
DEFAULT_BASELINE_POLICY = "best"
DEFAULT_BASELINE_MARGIN = 0.01


@dataclass(frozen=True)
class BaselineVerdict:
    choice: str | None  # "transfer" | "scratch" | None (policy fail and transfer lost)
    transfer_lost: bool
    reason: str


def judge_baseline(
    transfer: float,
    scratch: float | None,
    policy: str = DEFAULT_BASELINE_POLICY,
    margin: float = DEFAULT_BASELINE_MARGIN,
) -> BaselineVerdict:
    """Which model to ship, by validation accuracy of the transfer model and of its baseline (None: no baseline).

    The job applies it to decide which model it writes; the deploy DAG's gate applies it again to the job's
    metrics to say why, and to refuse under ``fail``.
    """
    if policy not in BASELINE_POLICIES:
        raise ValueError(f"unknown baseline policy {policy!r}: expected one of {', '.join(BASELINE_POLICIES)}")
    if scratch is None:
        return BaselineVerdict("transfer", False, "no scratch baseline was trained")
    gap = scratch - transfer
    figures = f"transfer {transfer:.4f} vs scratch baseline {scratch:.4f} on the same validation images"
    if gap <= margin:
        return BaselineVerdict("transfer", False, f"{figures}: transfer holds (margin {margin:.4f})")
    lost = f"{figures}: transfer loses by {gap:.4f} (> margin {margin:.4f})"
    if policy == "prefer_transfer":
        return BaselineVerdict("transfer", True, f"{lost}; shipping transfer anyway (policy prefer_transfer)")
    if policy == "best":
        return BaselineVerdict("scratch", True, f"{lost}; shipping the scratch baseline (policy best)")
    return BaselineVerdict(None, True, f"{lost}; refusing to ship (policy fail)")


# -- the pretraining knobs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Knob:
    """One training parameter as every layer declares it: type, default, bounds, choices, what it means."""

    name: str
    type: type
    default: object
    minimum: float | None = None  # inclusive
    exclusive_minimum: float | None = None
    maximum: float | None = None  # inclusive; the Params' ceiling (a typo guard, not a physical limit)
    choices: tuple[str, ...] = ()
    help: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


MODEL_ARCHS = ("small_resnet", "resnet50")
PRETRAIN_KNOBS: dict[str, Knob] = {
    k.name: k
    for k in (
        Knob("epochs", int, 10, minimum=1, maximum=1000, help="epochs to train (a resumed run counts its own)"),
        Knob("workers", int, 1, minimum=1, maximum=256, help="Horovod workers: processes (local) or pods (Kubernetes)"),
        Knob("gpus_per_worker", int, 0, minimum=0, maximum=16, help="GPUs per worker; one Horovod process per GPU"),
        Knob("image_size", int, 64, minimum=32, maximum=1024, help="square input size in pixels"),
        Knob("batch_size", int, 64, minimum=1, maximum=4096, help="per worker"),
        Knob(
            "learning_rate", float, 1e-3, exclusive_minimum=0, maximum=10, help="per worker; scaled by the world size"
        ),
        Knob("model", str, "small_resnet", choices=MODEL_ARCHS, help="architecture"),
    )
}
