"""Horovod training throughput: 2 processes x 1 thread vs 1 process x 1 thread, and vs two independent
1-process runs at the same time (what this machine can really do in parallel), plus the Horovod knobs.

Each run is the real ``training.pretrain`` on the demo data with decoded images cached, so the figure is the
training step (forward, backward, allreduce, update), not the input pipeline. Throughput is global images/s
over the epochs after the first (which includes tracing and the cache fill).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import BIN, Result, demo_manifest

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _launch(manifest: Path, np: int, steps: int, epochs: int, extra=(), env=None) -> tuple[subprocess.Popen, Path]:
    ckpt = Path(tempfile.mkdtemp(prefix="bench-hvd-"))
    cmd = [
        str(BIN / "horovodrun"),
        "-np",
        str(np),
        sys.executable,
        "-m",
        "training.pretrain",
        "--manifest",
        str(manifest),
        "--checkpoint-dir",
        str(ckpt),
        "--epochs",
        str(epochs),
        "--steps-per-epoch",
        str(steps),
        "--threads",
        "1",
        "--cache",
        "on",
        *extra,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**ENV, **(env or {})}
    )
    return proc, ckpt


def _throughput(proc: subprocess.Popen, ckpt: Path) -> float:
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"pretrain failed: {err[-2000:]}")
    epochs = sorted((ckpt / "epochs").iterdir())[1:]
    metrics = [json.loads((e / "metrics.json").read_text()) for e in epochs]
    shutil.rmtree(ckpt, ignore_errors=True)
    return sum(m["train_images"] for m in metrics) / sum(m["train_seconds"] for m in metrics)


def run_one(manifest, np, steps, epochs, extra=(), env=None) -> float:
    proc, ckpt = _launch(manifest, np, steps, epochs, extra, env)
    return _throughput(proc, ckpt)


def run(quick: bool = False) -> dict[str, Result]:
    manifest = demo_manifest()
    steps, epochs = (8, 3) if quick else (15, 4)
    one = run_one(manifest, 1, steps, epochs)
    two = run_one(manifest, 2, steps, epochs)
    a, ca = _launch(manifest, 1, steps, epochs)
    b, cb = _launch(manifest, 1, steps, epochs)
    pair = _throughput(a, ca) + _throughput(b, cb)
    out = {
        "horovod.2x1_vs_1x1": Result(two, one, 1.7, "images/s", "2 processes x 1 thread vs 1 process x 1 thread"),
        "horovod.2x1_vs_independent_pair": Result(
            two, pair, 0.9, "images/s", "vs two independent 1-process runs at the same time"
        ),
    }
    variants = {
        "per_gradient_allreduce": (["--allreduce-groups", "0"], {}),
        "no_core_binding": (["--bind-cores", "off"], {}),
        "batch32": (["--batch-size", "32"], {}),
        "batch128": (["--batch-size", "128"], {}),
        "fp16_allreduce": (["--fp16-allreduce"], {}),
        "fusion_off": ([], {"HOROVOD_FUSION_THRESHOLD": "0"}),
        "cycle_time_1ms": ([], {"HOROVOD_CYCLE_TIME": "1"}),
    }
    if quick:
        variants = {k: variants[k] for k in ("per_gradient_allreduce", "no_core_binding")}
    for name, (extra, env) in variants.items():
        value = run_one(manifest, 2, steps, epochs, extra, env)
        out[f"horovod.tuning.{name}"] = Result(value, two, None, "images/s", "2x1 with this change vs 2x1 default")
    return out
