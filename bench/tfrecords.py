"""TFRecord conversion (sharded, parallel) and training from TFRecords vs from files.

Conversion: images/s of ``training.tfrecords.convert`` with all cores vs one process. Reading: the training
input pipeline from TFRecord shards vs from the individual files, without the decoded-image cache (the
regime of a dataset too large to cache).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import Result, demo_manifest


def _convert_rate(manifest: Path, workers: int) -> tuple[float, Path]:
    from training.tfrecords import convert

    out = Path(tempfile.mkdtemp(prefix="bench-tfr-"))
    t0 = time.perf_counter()
    index = convert(manifest, out, ("train", "val"), shards=8, workers=workers)
    n = sum(s["count"] for s in index["splits"].values())
    return n / (time.perf_counter() - t0), out


def _read_rate(ds, batches: int, batch: int, warmup: int) -> float:
    """Steady-state rate: the warm-up drains a full shuffle buffer first, so buffered images are not counted."""
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t0)


def run(quick: bool = False) -> dict[str, Result]:
    import os

    from training.data import load_split, make_dataset
    from training.tfrecords import make_tfrecord_dataset, tfrecord_split

    manifest = demo_manifest()
    parallel, out = _convert_rate(manifest, os.cpu_count() or 1)
    single, out1 = _convert_rate(manifest, 1)
    shutil.rmtree(out1, ignore_errors=True)
    m = json.loads(manifest.read_text())
    split = load_split(m, manifest.parent, "train")
    passes = 1 if quick else 2
    batches, warmup = passes * len(split) // 64, len(split) // 64 + 3
    files_rate = _read_rate(make_dataset(split, (64, 64), 64, training=True, drop_remainder=True), batches, 64, warmup)
    shards, _, _ = tfrecord_split(out, "train")
    tfr_rate = _read_rate(
        make_tfrecord_dataset(shards, (64, 64), 64, training=True, drop_remainder=True), batches, 64, warmup
    )
    shutil.rmtree(out, ignore_errors=True)
    return {
        "tfrecords.convert_parallel_vs_one_process": Result(
            parallel, single, None, "images/s", f"{os.cpu_count()} processes vs 1"
        ),
        "tfrecords.read_vs_files": Result(
            tfr_rate, files_rate, None, "images/s", "training input pipeline, no cache: TFRecord shards vs files"
        ),
    }
