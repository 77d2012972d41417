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

from training.contracts import read_list

AUTOTUNE = tf.data.AUTOTUNE


def decode_and_resize(contents: tf.Tensor, image_size) -> tf.Tensor:
    """JPEG/PNG/GIF/BMP bytes (any colour mode) -> ``uint8[H, W, 3]``.

    Images already at ``image_size`` pass through untouched (no float round trip). Otherwise bilinear for mild
    scaling, area averaging when shrinking more than 2x (no aliasing, at a fraction of the cost of an
    antialiased kernel). Both are convex combinations of pixels, so the result needs rounding, not clipping.
    """
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    size = tf.constant(image_size, tf.int32)
    shape = tf.shape(image)[:2]

    def resize():
        shrink = tf.reduce_max(tf.cast(shape, tf.float32) / tf.cast(size, tf.float32))
        x = tf.cond(
            shrink > 2.0,
            lambda: tf.image.resize(image, image_size, method="area"),
            lambda: tf.image.resize(image, image_size, method="bilinear"),
        )
        return tf.cast(x + 0.5, tf.uint8)

    out = tf.cond(tf.reduce_all(tf.equal(shape, size)), lambda: image, resize)
    out.set_shape([*image_size, 3])
    return out


def augment_image(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Random horizontal flip and translation (up to 10% each way, zero-filled) of one ``uint8`` image.

    Geometry only, all on ``uint8`` (a slice and a zero pad: reflected edges cost a kernel several times
    slower than the decode), so it costs a fraction of the decode. Photometric jitter (brightness, contrast)
    happens inside the model at training time, fused with its input scaling: on the accelerator, where it is
    free, instead of float passes here. Stateless: the same ``seed`` (``int64[2]``) gives the same image.
    """
    h, w = image.shape[0], image.shape[1]
    limit = tf.constant([max(1, h // 10), max(1, w // 10)])
    u = tf.random.stateless_uniform([3], seed)  # one draw: vertical shift, horizontal shift, flip
    # Per-axis shift in [-limit, limit]; > 0 moves the content down / right.
    shift = tf.cast(tf.floor(u[:2] * tf.cast(2 * limit + 1, tf.float32)), tf.int32) - limit
    kept = tf.constant([h, w]) - tf.abs(shift)
    image = tf.slice(image, tf.concat([tf.maximum(-shift, 0), [0]], 0), tf.concat([kept, [3]], 0))
    pad = tf.stack([tf.maximum(shift, 0), tf.maximum(-shift, 0)], axis=1)
    image = tf.pad(image, tf.concat([pad, [[0, 0]]], 0))
    image.set_shape([h, w, 3])
    return tf.cond(u[2] < 0.5, lambda: tf.reverse(image, [1]), lambda: image)


def augment_elements(ds: tf.data.Dataset, seed: int, load=None, start: int = 0) -> tf.data.Dataset:
    """Augment each ``(image, label, index)`` element with its own stateless seed (its position in the stream,
    counted from ``start``), so every pass sees new variants and runs are reproducible.

    ``load``, if given, first turns each element (a file index, a record) into ``(image, label, index)`` in the
    same map: decoding and augmenting then cost one function call per element.
    """

    def augment(k, el):
        image, label, index = load(el) if load else el
        return augment_image(image, tf.stack([tf.cast(seed, tf.int64), k])), label, index

    return ds.enumerate(start=start).map(augment, num_parallel_calls=AUTOTUNE)


def _permutation(n: tf.Tensor, seed: tf.Tensor, p: tf.Tensor) -> tf.Tensor:
    """Pass ``p``'s order of ``n`` positions: a pure function of ``(seed, p)``."""
    keys = tf.random.stateless_uniform(tf.reshape(n, [1]), seed=tf.stack([seed, p]))
    return tf.cast(tf.argsort(keys), tf.int64)


def pass_order(n, seed: int, start: int = 0) -> tf.data.Dataset:
    """Positions ``0..n-1`` pass after pass, each pass a permutation drawn from ``(seed, pass)`` alone, beginning
    at element ``start`` of that endless stream.

    The order is a pure function of the position, so a run resumed at ``start`` sees exactly what the
    interrupted run would have seen next; whole passes are skipped for free, and a full permutation replaces a
    shuffle buffer (no window bias past the buffer's size)."""
    n = tf.cast(n, tf.int64)
    tf.debugging.assert_positive(n, "no training image of this shard could be read")
    start = tf.constant(int(start), tf.int64)
    seed = tf.constant(int(seed), tf.int64)

    def one(p):
        return tf.data.Dataset.from_tensor_slices(_permutation(n, seed, p))

    return tf.data.Dataset.range(start // n, 2**62).flat_map(one).skip(start % n)


def pass_prefix(n: int, seed: int, start: int) -> np.ndarray:
    """The positions of ``start``'s pass that come before it (what a resumed stream's first pass lacks)."""
    if n <= 0 or start % n == 0:
        return np.zeros(0, np.int64)
    perm = _permutation(tf.constant(n, tf.int64), tf.constant(int(seed), tf.int64), tf.constant(start // n, tf.int64))
    return perm.numpy()[: start % n]


def _passes_over_memory(loaded: tf.data.Dataset, n: int, seed: int, start: int) -> tf.data.Dataset:
    """The training stream over decoded images held in memory (``--cache``): every image of the shard as one
    tensor, then the same ``pass_order`` as the files, read by index."""

    def stream(images, labels, indices):
        order = pass_order(tf.shape(labels, out_type=tf.int64)[0], seed, start)
        return order.map(lambda i: (images[i], labels[i], indices[i]))

    return loaded.batch(max(1, n)).flat_map(stream)


def load_elements(
    ds: tf.data.Dataset,
    load,
    training: bool,
    cache: bool,
    seed: int,
    shuffle_buffer: int = 10_000,
    n: int | None = None,
    start: int = 0,
) -> tf.data.Dataset:
    """Sources (file indices, records) -> ``(image, label, index)`` elements, undecodable ones dropped.

    Training streams over ``n`` sources (file indices) follow ``pass_order`` from element ``start`` (a resume):
    without a cache each index is loaded and augmented in one map, with one the decoded images are held in
    memory and augmented as they are read. Records of unknown number (TFRecords) are shuffled in a buffer, the
    loaded ones after a cache when asked; a resume there gets a new order seeded by its position. Augmentation
    always follows the position, so every pass gets new variants.
    """
    if training and n is not None:
        if not cache:
            return augment_elements(pass_order(n, seed, start), seed, load, start).ignore_errors()
        loaded = ds.map(load, num_parallel_calls=AUTOTUNE).ignore_errors()
        return augment_elements(_passes_over_memory(loaded, n, seed, start), seed, start=start)
    if training and not cache:  # records of unknown number: no position to skip to, a new order from it
        ds = ds.shuffle(shuffle_buffer, seed=seed + start, reshuffle_each_iteration=True).repeat()
        return augment_elements(ds, seed, load, start).ignore_errors()
    ds = ds.map(load, num_parallel_calls=AUTOTUNE).ignore_errors()
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed + start, reshuffle_each_iteration=True)
        ds = augment_elements(ds.repeat(), seed, start=start)
    return ds


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


def make_dataset(
    split: Split,
    image_size,
    batch_size: int,
    training: bool,
    seed: int = 0,
    cache: bool = False,
    drop_remainder: bool = False,
    start: int = 0,
) -> tf.data.Dataset:
    """Elements: ``(uint8 images [B,H,W,3], int32 labels [B], int64 shard indices [B])``.

    Training datasets repeat forever (each pass reshuffled) and begin at image ``start`` of that stream (a
    resumed run); evaluation datasets make one pass in order. ``cache`` keeps decoded, resized images in memory
    (small datasets, many epochs).
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

    ds = load_elements(tf.data.Dataset.range(n), load, training, cache, seed, n=n, start=start)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE)
    return ds.with_options(opts).prefetch(AUTOTUNE)


class SkipTracker:
    """Finds the files of a shard that never came out of the pipeline in a pass (undecodable)."""

    def __init__(self, split: Split, already_seen=()):
        self.split = split
        self.seen = np.zeros(len(split), dtype=bool)
        # A stream resumed inside a pass: what its first pass lacks was trained before (``pass_prefix``).
        self.seen[np.asarray(already_seen, dtype=np.int64)] = True
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
