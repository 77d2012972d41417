"""The tf.data input pipeline: shard by Horovod rank, parallel decode/resize/augment, batch, prefetch.

``decode_and_resize`` is the one definition of how bytes become model input; the serving signature of the
exported model calls the same function, so training and serving cannot drift apart.

Files that pass curation but still fail to decode are dropped from the stream (``ignore_errors``) and
reported: every element carries its index in the shard, and ``SkipTracker`` names the indices that never
arrived in a pass.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from training.curate import read_list

AUTOTUNE = tf.data.AUTOTUNE


def decode_and_resize(contents: tf.Tensor, image_size) -> tf.Tensor:
    """JPEG/PNG/GIF/BMP bytes (any colour mode) -> ``uint8[H, W, 3]``.

    Bilinear for mild scaling; area averaging when shrinking more than 2x, which avoids aliasing at a
    fraction of the cost of an antialiased bilinear kernel.
    """
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    shrink = tf.reduce_max(shape / tf.constant(image_size, tf.float32))
    image = tf.cond(shrink > 2.0,
                    lambda: tf.image.resize(image, image_size, method="area"),
                    lambda: tf.image.resize(image, image_size, method="bilinear"))
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def augment_batch(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Per-image random flip, translation (up to 10%), brightness and contrast, on a whole batch at once.

    Vectorised over the batch (one op per step instead of one per image) and stateless: the same seed gives
    the same batch. Flip and translation are one projective transform applied to the uint8 pixels.
    """
    n = tf.shape(images)[0]
    h, w = images.shape[1], images.shape[2]
    s = tf.random.experimental.stateless_split(seed, 4)
    flip = tf.cast(tf.random.stateless_uniform([n, 1], s[0]) < 0.5, tf.float32)
    shift = tf.random.stateless_uniform([n, 2], s[1], -0.1, 0.1) * tf.constant([w, h], tf.float32)
    ones, zeros = tf.ones([n, 1]), tf.zeros([n, 1])
    # Output pixel (x, y) samples input (a0*x + a2, y + b2): a0 = -1 mirrors, a2/b2 translate.
    a0 = 1.0 - 2.0 * flip
    a2 = flip * (w - 1) - shift[:, :1]
    transforms = tf.concat([a0, zeros, a2, zeros, ones, -shift[:, 1:], zeros, zeros], axis=1)
    x = tf.raw_ops.ImageProjectiveTransformV3(images=images, transforms=transforms, output_shape=[h, w],
                                              fill_value=0.0, interpolation="NEAREST", fill_mode="REFLECT")
    brightness = tf.random.stateless_uniform([n, 1, 1, 1], s[2], -20.0, 20.0)
    contrast = tf.random.stateless_uniform([n, 1, 1, 1], s[3], 0.8, 1.2)
    x = tf.cast(x, tf.float32)
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    # (x - mean) * contrast + mean + brightness, folded into one multiply-add.
    x = x * contrast + (mean * (1.0 - contrast) + brightness)
    return tf.cast(tf.clip_by_value(x, 0, 255), tf.uint8)


def augment_batches(ds: tf.data.Dataset, seed: int) -> tf.data.Dataset:
    """Augment each batch with its own stateless seed (the batch counter), so runs are reproducible."""
    counter = tf.data.Dataset.counter()
    return tf.data.Dataset.zip((ds, counter)).map(
        lambda el, c: (augment_batch(el[0], tf.stack([tf.cast(seed, tf.int64), c])), el[1], el[2]),
        num_parallel_calls=AUTOTUNE)


@dataclass
class Split:
    paths: list[str]
    labels: list[int]
    class_names: list[str]

    def __len__(self):
        return len(self.paths)

    def shard(self, rank: int, size: int) -> "Split":
        return Split(self.paths[rank::size], self.labels[rank::size], self.class_names)


def load_split(manifest: dict, manifest_dir: str | Path, split: str, data_root: str | None = None) -> Split:
    """Absolute paths and integer labels of one list (``train``, ``val``, ``domain_train``, ``domain_val``)."""
    root = data_root or manifest["data_root"]
    names = [c["name"] for c in (manifest["domain_classes"] if split.startswith("domain") else manifest["classes"])]
    index = {n: i for i, n in enumerate(names)}
    pairs = read_list(Path(manifest_dir) / manifest["files"][split])
    return Split([os.path.join(root, rel) for rel, _ in pairs], [index[c] for _, c in pairs], names)


def image_folder_split(root: str | Path, class_names: list[str] | None = None) -> Split:
    """An ImageFolder tree (one folder per class) as a Split; class order is sorted folder names."""
    root = Path(root)
    names = class_names or sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, labels = [], []
    for i, name in enumerate(names):
        for p in sorted((root / name).rglob("*")):
            if p.is_file() and not p.name.startswith("."):
                paths.append(str(p))
                labels.append(i)
    return Split(paths, labels, names)


def make_dataset(split: Split, image_size, batch_size: int, training: bool, seed: int = 0,
                 cache: bool = False, drop_remainder: bool = False) -> tf.data.Dataset:
    """Elements: ``(uint8 images [B,H,W,3], int32 labels [B], int64 shard indices [B])``.

    Training datasets repeat forever (each pass reshuffled); evaluation datasets make one pass in order.
    ``cache`` keeps decoded, resized images in memory (small datasets, many epochs).
    """
    image_size = tuple(int(s) for s in image_size)
    n = len(split)
    paths = tf.constant(split.paths or [""], tf.string)
    labels = tf.constant(split.labels or [0], tf.int32)

    def load(i):
        image = decode_and_resize(tf.io.read_file(paths[i]), image_size)
        return image, labels[i], i

    opts = tf.data.Options()
    # Order is kept (still parallel) so a pass ends before the next begins: SkipTracker relies on it.
    opts.deterministic = True
    opts.experimental_optimization.map_parallelization = True

    ds = tf.data.Dataset.range(n)
    if training and not cache:
        ds = ds.shuffle(min(n, 200_000), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(load, num_parallel_calls=AUTOTUNE).ignore_errors()
    if cache:
        ds = ds.cache()
        if training:
            ds = ds.shuffle(min(n, 50_000), seed=seed, reshuffle_each_iteration=True)
    if training:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE)
    if training:
        ds = augment_batches(ds, seed)
    return ds.with_options(opts).prefetch(AUTOTUNE)


class SkipTracker:
    """Finds the files of a shard that never came out of the pipeline in a pass (undecodable)."""

    def __init__(self, split: Split):
        self.split = split
        self.seen = np.zeros(len(split), dtype=bool)
        self.reported: set[int] = set()

    def update(self, indices: np.ndarray) -> list[str]:
        """Record a batch's indices; returns newly found undecodable paths when a new pass begins."""
        newly = []
        for i in np.asarray(indices).tolist():
            if self.seen[i]:  # an index seen again: the previous pass is complete
                newly += self._close_pass()
            self.seen[i] = True
        return newly

    def finish(self) -> list[str]:
        """For single-pass (evaluation) datasets: everything not seen was skipped."""
        return self._close_pass()

    def _close_pass(self) -> list[str]:
        missing = [int(i) for i in np.flatnonzero(~self.seen) if int(i) not in self.reported]
        self.reported.update(missing)
        self.seen[:] = False
        return [self.split.paths[i] for i in missing]
