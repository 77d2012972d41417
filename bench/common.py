"""Shared helpers: result records, timing, and the data the benchmarks run on (built once under var/bench)."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("TLPIPE_BENCH_DIR", ROOT / "var" / "bench"))
RESULTS = Path(os.environ.get("TLPIPE_BENCH_RESULTS", ROOT / "bench" / "results.json"))
BIN = Path(sys.executable).parent


@dataclass
class Result:
    """One figure: ``value`` and ``baseline`` measured in the same run; ``ratio`` = value / baseline."""

    value: float
    baseline: float
    target: float | None
    unit: str
    note: str = ""
    # For figures whose target is a bound on the value itself (e.g. "overhead < 2 ms"), not on the ratio.
    max_value: float | None = None

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("nan")

    @property
    def met(self) -> bool | None:
        if self.max_value is not None:
            return self.value < self.max_value
        return None if self.target is None else self.ratio >= self.target

    def record(self) -> dict:
        return {**asdict(self), "ratio": round(self.ratio, 3), "met": self.met}


def rate(fn, n_items: int, min_seconds: float = 2.0) -> float:
    """Items per second of ``fn`` (which processes ``n_items``), repeated until ``min_seconds`` have passed."""
    done, t0 = 0, time.perf_counter()
    while True:
        fn()
        done += n_items
        dt = time.perf_counter() - t0
        if dt >= min_seconds:
            return done / dt


def demo_manifest() -> Path:
    """The demo dataset (synth defaults, curated as in the local profile)."""
    from training.curate import curate
    from training.synth_data import generate

    raw, out = WORK / "demo" / "raw", WORK / "demo" / "curated"
    if not (out / "manifest.json").exists():
        if not raw.exists():
            generate(raw)
        curate(raw, out, min_images=120, domain_classes=4, val_fraction=0.2, progress=False)
    return out / "manifest.json"


def large_jpegs(n: int = 400, size: int = 224) -> list[Path]:
    """``n`` synthetic 224x224 JPEGs, the size ImageNet-style pipelines decode."""
    import numpy as np

    from training.synth_data import class_pairs, render

    d = WORK / f"jpeg{size}"
    files = sorted(d.glob("*.jpg"))
    if len(files) >= n:
        return files[:n]
    d.mkdir(parents=True, exist_ok=True)
    pairs = class_pairs(12, 0)
    for i in range(n):
        rng = np.random.default_rng([7, i])
        render(*pairs[i % len(pairs)], size, rng).save(d / f"{i:05d}.jpg", "JPEG", quality=90)
    return sorted(d.glob("*.jpg"))[:n]


def save(results: dict[str, Result]) -> None:
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    old.update({k: v.record() for k, v in results.items()})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")
