"""What every rank trains on: the manifest (fetched from S3 when it lives there), this rank's shard of the
training and validation lists, and their tf.data pipelines (image files, or a TFRecord conversion)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from training import store as st


@dataclass
class Inputs:
    manifest: dict
    manifest_sha256: str
    class_names: list[str]
    train_all: object  # training.data.Split: every training image
    val_all: object
    train_split: object  # this rank's shard
    val_split: object
    train_from: Callable  # image position in this rank's stream -> (image, label, index) batches from there
    val_ds: object  # one pass
    image_size: tuple[int, int]
    steps_per_epoch: int
    batch_size: int  # per rank
    seed: int  # this rank's training stream (its order and augmentations)
    global_batch: int
    cache: bool


def _manifest_dir(args, manifest: dict, store: st.Store, workdir: Path) -> Path:
    """The manifest's directory on this machine (its list files copied from S3 when it lives there)."""
    if not st.is_s3(args.manifest):
        return Path(args.manifest).parent
    manifest_dir = workdir / "manifest"
    for name in manifest["files"].values():
        uri = st.join(args.manifest.rsplit("/", 1)[0], name)
        (manifest_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (manifest_dir / name).write_bytes(store.read_bytes(uri))
    return manifest_dir


def _seed(args, rank: int) -> int:
    return args.seed * 1000 + rank


def _train_dataset(args, train_split, class_names, image_size, rank: int, size: int, cache: bool, start: int = 0):
    from training import data as tdata

    if args.tfrecords:
        from training.tfrecords import make_tfrecord_dataset, tfrecord_split

        train_shards, names, _ = tfrecord_split(args.tfrecords, "train")
        if names != class_names:
            raise ValueError(f"{args.tfrecords} was converted from another manifest (class names differ)")
        return make_tfrecord_dataset(
            train_shards, image_size, args.batch_size, True, rank, size, _seed(args, rank), True, cache, start
        )
    return tdata.make_dataset(
        train_split,
        image_size,
        args.batch_size,
        training=True,
        seed=_seed(args, rank),
        cache=cache,
        drop_remainder=True,
        start=start,
    )


def _val_dataset(args, val_split, image_size, rank: int, size: int, cache: bool):
    from training import data as tdata

    if args.tfrecords:
        from training.tfrecords import make_tfrecord_dataset, tfrecord_split

        val_shards, _, _ = tfrecord_split(args.tfrecords, "val")
        return make_tfrecord_dataset(val_shards, image_size, args.batch_size, False, rank, size, cache=cache)
    return tdata.make_dataset(val_split, image_size, args.batch_size, training=False, cache=cache)


def load_inputs(args, store: st.Store, workdir: Path, rank: int, size: int) -> Inputs:
    from training import data as tdata

    manifest_bytes = store.read_bytes(args.manifest)
    manifest = json.loads(manifest_bytes)
    manifest_dir = _manifest_dir(args, manifest, store, workdir)
    train_all = tdata.load_split(manifest, manifest_dir, "train", args.data_root)
    val_all = tdata.load_split(manifest, manifest_dir, "val", args.data_root)
    # Horovod: each rank trains and validates on its own shard.
    train_split, val_split = train_all.shard(rank, size), val_all.shard(rank, size)
    image_size = (args.image_size, args.image_size)
    global_batch = args.batch_size * size
    cache = args.cache == "on" or (args.cache == "auto" and len(train_split) * args.image_size**2 * 3 < 2 * 2**30)
    train_from = partial(_train_dataset, args, train_split, train_all.class_names, image_size, rank, size, cache)
    return Inputs(
        manifest=manifest,
        manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
        class_names=train_all.class_names,
        train_all=train_all,
        val_all=val_all,
        train_split=train_split,
        val_split=val_split,
        train_from=train_from,
        val_ds=_val_dataset(args, val_split, image_size, rank, size, cache),
        image_size=image_size,
        steps_per_epoch=args.steps_per_epoch or max(1, len(train_all) // global_batch),
        batch_size=args.batch_size,
        seed=_seed(args, rank),
        global_batch=global_batch,
        cache=cache,
    )
