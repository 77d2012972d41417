"""Pretraining runs for the tests that start them: the command line, its environment, and cleaning up after
a kill."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def pretrain_cmd(manifest, ckpt, epochs, *extra, np=2):
    train = [
        sys.executable,
        "-m",
        "training.pretrain",
        "--manifest",
        str(manifest),
        "--checkpoint-dir",
        str(ckpt),
        "--epochs",
        str(epochs),
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--threads",
        "1",
        *extra,
    ]
    return [str(BIN / "horovodrun"), "-np", str(np), *train] if np else train


def kill_leftovers(marker: str) -> None:
    """Workers orphaned by the SIGKILL of their launcher (as after a node loss) must not outlive the test."""
    import psutil

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
        if not left:
            return
        for p in left:
            p.kill()
        time.sleep(0.2)
