"""Shared inputs for the fine-tuning, serving, edge and report tests, built once per test session.

A tiny synthetic tree is curated into general and domain classes; a tiny model (32x32 images, width 8) is
pretrained on it for two epochs with ``training.pretrain.main``; the domain lists become ImageFolder channels
in a SageMaker-layout directory; one fine-tuning job (``python -m training.finetune``, a real subprocess)
writes the artifact the serving and edge tests use. The module-level cache makes each step happen once even
though several test modules import these fixtures.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from training.contracts import pretrained_dir

REPO = Path(__file__).resolve().parents[1]
FINETUNE_HP = {
    "epochs_head": "4",
    "epochs_finetune": "2",
    "batch_size": "16",
    "early_stopping_patience": "0",
    "bn_recalibration_batches": "4",
}
_cache: dict[str, object] = {}


def subprocess_env() -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def build_world(base: Path) -> dict:
    """Synthetic data -> curation -> 2-epoch pretraining -> SageMaker channels. Returns the paths."""
    from training import curate, pretrain, synth_data

    raw, curated, ckpt = base / "raw", base / "curated", base / "ckpt"
    # Class sizes 40, 35, 30, 26, 23, 20: the first four are kept (>= 25), the last two become domain classes.
    synth_data.generate(raw, classes=6, seed=3, largest=40, smallest=20, min_size=36, max_size=48, defects=False)
    assert (
        curate.main(
            [
                "--data-dir",
                str(raw),
                "--out",
                str(curated),
                "--min-images",
                "25",
                "--domain-classes",
                "2",
                "--val-fraction",
                "0.3",
            ]
        )
        == 0
    )
    previous = signal.getsignal(signal.SIGTERM)
    try:
        rc = pretrain.main(
            [
                "--manifest",
                str(curated / "manifest.json"),
                "--checkpoint-dir",
                str(ckpt),
                "--epochs",
                "2",
                "--image-size",
                "32",
                "--width",
                "8",
                "--batch-size",
                "16",
            ]
        )
    finally:
        signal.signal(signal.SIGTERM, previous)  # pretrain installs its own handler
    assert rc == 0 and (pretrained_dir(ckpt) / "model.keras").is_file()

    from training.report_inputs import domain_channels

    channels = domain_channels(curated / "manifest.json", base / "channels")
    return {
        "raw": raw,
        "manifest": curated / "manifest.json",
        "pretrained": pretrained_dir(ckpt),
        "train": channels["train"],
        "validation": channels["validation"],
        "classes": sorted(p.name for p in channels["train"].iterdir()),
    }


def make_job(
    root: Path,
    world: dict,
    hyperparameters: dict | None = None,
    channels=("pretrained", "train", "validation"),
    pretrained: Path | None = None,
) -> Path:
    """A SageMaker training-job directory whose channels are copies of the tiny world's."""
    data = root / "input" / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name in channels:
        # The tiny world has no third split: the test channel repeats the validation images (plumbing only).
        src = (
            pretrained
            if (name == "pretrained" and pretrained is not None)
            else world["validation" if name == "test" else name]
        )
        dest = data / name
        if Path(src).is_dir():
            shutil.copytree(src, dest, symlinks=False)
        else:
            dest.mkdir()
            shutil.copy2(src, dest / Path(src).name)
    config = root / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps({**FINETUNE_HP, **(hyperparameters or {})}))
    return root


def run_finetune_cli(root: Path, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training.finetune", "--sm-root", str(root), *extra],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=timeout,
        cwd=REPO,
    )


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> dict:
    if "world" not in _cache:
        _cache["world"] = build_world(tmp_path_factory.mktemp("finetune-world"))
    return _cache["world"]


@pytest.fixture(scope="session")
def finetuned(world, tmp_path_factory) -> dict:
    """One real fine-tuning job (CLI, compare_scratch=true, a test channel): its root, model dir, output and log."""
    if "finetuned" not in _cache:
        root = make_job(
            tmp_path_factory.mktemp("finetune-job"),
            world,
            {"compare_scratch": '"true"', "baseline_policy": "prefer_transfer", "sagemaker_program": "ignored"},
            channels=("pretrained", "train", "validation", "test"),
        )
        proc = run_finetune_cli(root)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        _cache["finetuned"] = {
            "root": root,
            "model_dir": root / "model",
            "output": root / "output",
            "stdout": proc.stdout,
        }
    return _cache["finetuned"]


def image_bytes(world: dict, suffix: str) -> tuple[str, bytes]:
    """(class name, bytes) of the first validation image with this suffix (.jpg or .png)."""
    for split in ("validation", "train"):
        for cls in world["classes"]:
            for p in sorted((world[split] / cls).iterdir()):
                if p.suffix == suffix:
                    return cls, p.read_bytes()
    raise AssertionError(f"no {suffix} validation image")
