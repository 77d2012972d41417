"""Convert a curated split into sharded TFRecord files, in parallel.

    python -m training.tfrecords --manifest OUT/manifest.json --out OUT/tfrecords --shards 16 --workers 4

Each record holds the file's original encoded bytes (no re-encoding, so no quality loss and any image size can
be chosen at training time), its label and its relative path. Millions of small files become a few hundred
large sequential reads, which is what network file systems and object stores are fast at. Training reads them
with ``--tfrecords DIR`` (see ``training.pretrain``).

Layout: ``OUT/<split>-SSSSS-of-NNNNN.tfrecord`` plus ``OUT/index.json`` (class names, counts per shard, the
manifest's sha256). Shards are written to a temporary name and renamed, so a reader never sees a partial one,
and a rerun skips the shards that already exist.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from training.contracts import read_list


def _shard_name(split: str, i: int, n: int) -> str:
    return f"{split}-{i:05d}-of-{n:05d}.tfrecord"


def _write_shard(args) -> tuple[str, int, int]:
    out_path, items = args
    import tensorflow as tf

    def feature_bytes(b):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[b]))

    if os.path.exists(out_path):
        return out_path, len(items), 0
    tmp = f"{out_path}.tmp-{os.getpid()}"
    written = failed = 0
    with tf.io.TFRecordWriter(tmp) as w:
        for path, rel, label in items:
            try:
                data = Path(path).read_bytes()
            except OSError:
                failed += 1
                continue
            ex = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "image": feature_bytes(data),
                        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                        "path": feature_bytes(rel.encode()),
                    }
                )
            )
            w.write(ex.SerializeToString())
            written += 1
    os.replace(tmp, out_path)
    return out_path, written, failed


def convert(
    manifest_path: str | Path,
    out: str | Path,
    splits=("train", "val"),
    shards: int = 16,
    workers: int = 0,
    data_root: str | None = None,
) -> dict:
    manifest_path = Path(manifest_path)
    manifest = json.loads(manifest_path.read_text())
    root = data_root or manifest["data_root"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    index = {"manifest_sha256": hashlib.sha256(manifest_path.read_bytes()).hexdigest(), "splits": {}}
    jobs = []
    for split in splits:
        names = [c["name"] for c in (manifest["domain_classes"] if split.startswith("domain") else manifest["classes"])]
        label = {n: i for i, n in enumerate(names)}
        pairs = read_list(manifest_path.parent / manifest["files"][split])
        n = max(1, min(shards, len(pairs)))
        # Round-robin keeps every shard a mix of classes; the training reader interleaves shards.
        buckets = [[] for _ in range(n)]
        for i, (rel, cls) in enumerate(pairs):
            buckets[i % n].append((os.path.join(root, rel), rel, label[cls]))
        index["splits"][split] = {
            "class_names": names,
            "shards": [_shard_name(split, i, n) for i in range(n)],
            "count": len(pairs),
        }
        jobs += [(str(out / _shard_name(split, i, n)), b) for i, b in enumerate(buckets)]
    failed = 0
    # forkserver: TensorFlow is not fork-safe, and the caller may have imported it (or other threads) already.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
        for _path, _written, f in pool.map(_write_shard, jobs):
            failed += f
    index["unreadable_files"] = failed
    (out / "index.json").write_text(json.dumps(index, indent=2))
    return index


def tfrecord_split(directory: str | Path, split: str):
    """(shard paths, class names, count) of one converted split."""
    directory = Path(directory)
    info = json.loads((directory / "index.json").read_text())["splits"][split]
    return [str(directory / s) for s in info["shards"]], info["class_names"], info["count"]


def make_tfrecord_dataset(
    shards: list[str],
    image_size,
    batch_size: int,
    training: bool,
    rank: int = 0,
    size: int = 1,
    seed: int = 0,
    drop_remainder: bool = False,
    cache: bool = False,
    start: int = 0,
):
    """Elements ``(uint8 images, int32 labels, int64 zeros)``, the same shape as ``data.make_dataset``'s. A training
    stream resumed at image ``start`` gets a new order seeded by it (records cannot be skipped to cheaply)."""
    import tensorflow as tf

    from training.data import AUTOTUNE, decode_and_resize, load_elements

    image_size = tuple(int(s) for s in image_size)
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        return decode_and_resize(ex["image"], image_size), tf.cast(ex["label"], tf.int32), tf.constant(0, tf.int64)

    files = tf.data.Dataset.from_tensor_slices(shards)
    if len(shards) >= size:
        files = files.shard(size, rank)  # whole shards per rank: sequential reads
    ds = files.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(8, len(shards)),
        num_parallel_calls=AUTOTUNE,
        deterministic=not training,
    )
    if len(shards) < size:
        ds = ds.shard(size, rank)
    ds = load_elements(ds, parse, training, cache, seed, shuffle_buffer=10_000, start=start)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Convert curated splits to sharded TFRecords.")
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--splits", default="train,val")
    p.add_argument("--shards", type=int, default=16, help="shards per split")
    p.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    p.add_argument("--data-root", default=None)
    args = p.parse_args(argv)
    index = convert(args.manifest, args.out, tuple(args.splits.split(",")), args.shards, args.workers, args.data_root)
    for split, info in index["splits"].items():
        print(f"tfrecords: {split}: {info['count']} images in {len(info['shards'])} shards")
    if index["unreadable_files"]:
        print(f"tfrecords: {index['unreadable_files']} files could not be read and were left out", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
