"""Input pipeline images/s (read + decode + resize + augment + batch, as training uses it).

Baselines, measured in the same run over the same files: a single-threaded raw decode loop over the bytes
already in memory (PIL, libjpeg-turbo: the work no pipeline can avoid), scaled by the cores the pipeline may
use; and a naive loop that opens, decodes and resizes each file with PIL and stacks batches.
"""

from __future__ import annotations

import io
import json
import os
import time

import numpy as np
from PIL import Image

from bench.common import Result, demo_manifest, large_jpegs, rate


def _pipeline_rate(paths, image_size, batch=64, batches=30) -> float:
    from training.data import Split, make_dataset

    split = Split([str(p) for p in paths], [0] * len(paths), ["x"])
    ds = make_dataset(split, (image_size, image_size), batch, training=True, seed=0, cache=False, drop_remainder=True)
    it = iter(ds)
    for _ in range(3):  # warm-up: tf.data autotuning and thread start
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t0)


def _decode_only_rate(paths, batch=64, batches=30) -> float:
    """The ceiling: tf.data reading and decoding the same files in parallel and batching them, nothing else
    (no resize, no augmentation); only valid when every image is already at the model's size."""
    import tensorflow as tf

    files = tf.constant([str(p) for p in paths])
    ds = (
        tf.data.Dataset.range(len(paths))
        .repeat()
        .map(lambda i: tf.io.decode_jpeg(tf.io.read_file(files[i]), channels=3), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    it = iter(ds)
    for _ in range(3):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t0)


def _raw_decode_rate(blobs) -> float:
    def loop():
        for b in blobs:
            Image.open(io.BytesIO(b)).convert("RGB").load()

    return rate(loop, len(blobs))


def _naive_rate(paths, image_size, batch=64) -> float:
    def loop():
        for i in range(0, len(paths) - batch + 1, batch):
            np.stack(
                [
                    np.asarray(Image.open(p).convert("RGB").resize((image_size, image_size)))
                    for p in paths[i : i + batch]
                ]
            )

    return rate(loop, (len(paths) // batch) * batch)


def run(quick: bool = False) -> dict[str, Result]:
    from training.contracts import read_list

    manifest = demo_manifest()
    m = json.loads(manifest.read_text())
    demo = [os.path.join(m["data_root"], rel) for rel, _ in read_list(manifest.parent / m["files"]["train"])]
    cases = {"demo": (demo[: 640 if quick else 1280], 64), "jpeg224": (large_jpegs(192 if quick else 384), 224)}
    cores = os.cpu_count() or 1
    out = {}
    for name, (paths, size) in cases.items():
        blobs = [open(p, "rb").read() for p in paths]
        raw = _raw_decode_rate(blobs)
        naive = _naive_rate(paths, size)
        pipe = _pipeline_rate(paths, size, batches=10 if quick else 20)
        out[f"input_pipeline.{name}.vs_raw_decode_x_cores"] = Result(
            pipe, raw * cores, 0.9, "images/s", f"raw single-thread decode {raw:.0f}/s x {cores} cores"
        )
        out[f"input_pipeline.{name}.vs_naive_pil"] = Result(pipe, naive, 3.0, "images/s", "naive PIL open+resize loop")
        if name == "jpeg224":
            ceiling = _decode_only_rate(paths, batches=10 if quick else 20)
            out[f"input_pipeline.{name}.decode_only_vs_raw_decode_x_cores"] = Result(
                ceiling,
                raw * cores,
                None,
                "images/s",
                "context: tf.data read + decode + batch and nothing else, the ceiling of any pipeline here",
            )
    return out
