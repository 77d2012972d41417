"""Distributed pretraining of the general model with Horovod + TensorFlow (Keras 3).

    horovodrun -np 2 python -m training.pretrain --manifest OUT/manifest.json --checkpoint-dir C --epochs 10

Every rank trains on its shard of the curated training list; gradients are averaged with Horovod, variables
start equal (broadcast from rank 0) and validation metrics are averaged across ranks. Rank 0 alone writes,
into ``C`` (a local path or ``s3://…``):

  C/epochs/NNNN/   one immutable directory per epoch: model.keras (with optimizer state), meta.json,
                   metrics.json, and COMMITTED written last
  C/best/          the most accurate epoch so far: model.keras + meta.json (the transfer-learning input)
  C/best.json      epoch, val_accuracy, val_loss, path, manifest_sha256, timestamps; written last, atomically
  C/logs/          TensorBoard event files
  C/COMPLETE       when all epochs are done, or C/FAILED with the reason when training fails

(The names are ``training.contracts.CheckpointDir``'s, which the Airflow side reads with.) Rerunning the same command after a kill resumes after the last committed epoch.

Keras 3 note: ``horovod.tensorflow.keras`` targets Keras 2, so this uses ``horovod.tensorflow`` directly and
hands Horovod each Keras variable's backing ``tf.Variable`` (``v.value``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from training import store as st
from training.contracts import CheckpointDir


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Horovod pretraining of the general image model.")
    p.add_argument("--manifest", required=True, help="manifest.json written by training.curate (local or s3://)")
    p.add_argument("--checkpoint-dir", required=True, help="local path or s3:// URI")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--data-root", default=None, help="where the images are, if not the manifest's data_root")
    p.add_argument("--model", default="small_resnet", choices=["small_resnet", "resnet50"])
    p.add_argument("--width", type=int, default=32, help="small_resnet channel width")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64, help="per worker")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="per worker; scaled by the world size")
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--label-smoothing", type=float, default=0.05)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default="auto", choices=["auto", "on", "off"],
                   help="keep decoded images in memory (auto: when they fit in 2 GB per worker)")
    p.add_argument("--mixed-precision", action="store_true", help="mixed_float16 (GPUs)")
    p.add_argument("--xla", action="store_true", help="compile the train step with XLA (GPUs)")
    p.add_argument("--fp16-allreduce", action="store_true", help="compress gradients to fp16 for the allreduce")
    p.add_argument("--bind-cores", default="auto", choices=["auto", "on", "off"],
                   help="pin each rank to its slice of the host's cores (auto: when several ranks share a host)")
    p.add_argument("--allreduce-groups", type=int, default=1,
                   help="gradient allreduce groups per step (1: one grouped allreduce of every gradient, which "
                        "pays the per-collective latency once; 0: one allreduce per gradient, fused by Horovod "
                        "as they come ready)")
    p.add_argument("--threads", type=int, default=0, help="TF intra/inter-op threads per worker (0: TF decides)")
    p.add_argument("--steps-per-epoch", type=int, default=0, help="0: one pass over the training list")
    p.add_argument("--tfrecords", default=None, help="read the splits from this training.tfrecords directory")
    p.add_argument("--s3-endpoint-url", default=None)
    p.add_argument("--fail-at-epoch", type=int, default=0, help=argparse.SUPPRESS)  # for failure-path tests
    return p.parse_args(argv)


# -- checkpoint directory (its layout: training.contracts.CheckpointDir) -------------------------------------
def _local_copy(store: st.Store, uri: str, tmp: Path) -> Path:
    """A local directory with the contents of ``uri`` (the directory itself when it is local)."""
    if st.is_s3(uri):
        return store.download_dir(uri, tmp / Path(uri).name)
    return Path(uri)


def bind_to_cores(local_rank: int, local_size: int) -> set[int]:
    """Pin this process (and the threads it starts) to its own slice of the cores it may use.

    Ranks on one host then stop preempting each other: in synchronous training every preemption of one rank
    stalls all of them at the next allreduce (MPI's ``--bind-to core``; worth about 5% with 2 ranks on 2 cores).
    """
    cores = sorted(os.sched_getaffinity(0))
    per = max(1, len(cores) // local_size)
    mine = set(cores[local_rank * per:(local_rank + 1) * per]) or set(cores)
    os.sched_setaffinity(0, mine)
    return mine


def train(args: argparse.Namespace) -> int:
    import numpy as np
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import horovod.tensorflow as hvd

    hvd.init()
    if args.bind_cores == "on" or (args.bind_cores == "auto" and hvd.local_size() > 1):
        bind_to_cores(hvd.local_rank(), hvd.local_size())
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:
        tf.config.set_visible_devices(gpus[hvd.local_rank()], "GPU")

    import keras

    from training import data as tdata
    from training.model import FEATURE_LAYER, WarmupCosine, build_model

    rank, size = hvd.rank(), hvd.size()
    is_chief = rank == 0
    store = st.Store(args.s3_endpoint_url)
    ckpt = args.checkpoint_dir.rstrip("/") if st.is_s3(args.checkpoint_dir) else str(Path(args.checkpoint_dir).resolve())
    run_dir = CheckpointDir(ckpt)
    workdir = Path(tempfile.mkdtemp(prefix=f"pretrain-r{rank}-"))

    def log(msg: str) -> None:
        if is_chief:
            print(f"[pretrain] {msg}", flush=True)

    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(args.seed + rank)

    # -- data --------------------------------------------------------------------------------------------
    manifest_bytes = store.read_bytes(args.manifest)
    manifest = json.loads(manifest_bytes)
    manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
    manifest_dir = Path(args.manifest).parent
    if st.is_s3(args.manifest):
        manifest_dir = workdir / "manifest"
        for name in manifest["files"].values():
            uri = st.join(args.manifest.rsplit("/", 1)[0], name)
            (manifest_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (manifest_dir / name).write_bytes(store.read_bytes(uri))
    train_all = tdata.load_split(manifest, manifest_dir, "train", args.data_root)
    val_all = tdata.load_split(manifest, manifest_dir, "val", args.data_root)
    class_names = train_all.class_names
    train_split, val_split = train_all.shard(rank, size), val_all.shard(rank, size)
    image_size = (args.image_size, args.image_size)
    global_batch = args.batch_size * size
    steps_per_epoch = args.steps_per_epoch or max(1, len(train_all) // global_batch)
    cache = args.cache == "on" or (args.cache == "auto" and len(train_split) * args.image_size**2 * 3 < 2 * 2**30)
    if args.tfrecords:
        from training.tfrecords import make_tfrecord_dataset, tfrecord_split

        train_shards, names, _ = tfrecord_split(args.tfrecords, "train")
        val_shards, _, _ = tfrecord_split(args.tfrecords, "val")
        if names != class_names:
            raise ValueError(f"{args.tfrecords} was converted from another manifest (class names differ)")
        train_ds = make_tfrecord_dataset(train_shards, image_size, args.batch_size, True, rank, size,
                                         seed=args.seed * 1000 + rank, drop_remainder=True, cache=cache)
        val_ds = make_tfrecord_dataset(val_shards, image_size, args.batch_size, False, rank, size, cache=cache)
    else:
        train_ds = tdata.make_dataset(train_split, image_size, args.batch_size, training=True,
                                      seed=args.seed * 1000 + rank, cache=cache, drop_remainder=True)
        val_ds = tdata.make_dataset(val_split, image_size, args.batch_size, training=False, cache=cache)

    # -- model, optimizer, resume --------------------------------------------------------------------------
    state = {"resume_from": 0, "best": None}
    if is_chief:
        state["resume_from"] = run_dir.last_committed_epoch(store)
        state["best"] = run_dir.read_best(store)
        if store.exists(run_dir.failed):
            store.delete(run_dir.failed)
    state = hvd.broadcast_object(state, root_rank=0, name="resume_state")
    start = state["resume_from"]
    best = state["best"]

    total_steps = steps_per_epoch * args.epochs
    if start:
        src = _local_copy(store, run_dir.epoch(start), workdir / "resume")
        model = keras.models.load_model(src / "model.keras")
        optimizer = model.optimizer
        log(f"resuming after epoch {start} from {run_dir.epoch(start)}")
    else:
        model = build_model(len(class_names), image_size, args.model, args.dropout, args.width)
        schedule = WarmupCosine(args.learning_rate * size, int(args.warmup_epochs * steps_per_epoch), total_steps)
        if args.optimizer == "adam":
            optimizer = keras.optimizers.AdamW(schedule, weight_decay=args.weight_decay)
        else:
            optimizer = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True)
        if args.mixed_precision:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    blocks = getattr(model, "blocks", None) or (json.loads((src / "meta.json").read_text())["blocks"] if start else [])
    optimizer.build(model.trainable_variables)

    # Every rank starts from rank 0's variables (weights, BatchNorm statistics, optimizer slots).
    hvd.broadcast_variables([v.value for v in model.variables], root_rank=0)
    hvd.broadcast_variables([v.value for v in optimizer.variables], root_rank=0)

    loss_fn = keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing)
    compression = hvd.Compression.fp16 if args.fp16_allreduce else hvd.Compression.none
    num_classes = len(class_names)

    @tf.function(jit_compile=args.xla)
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            probs = model(images, training=True)
            loss = loss_fn(tf.one_hot(labels, num_classes), probs)
            scaled = optimizer.scale_loss(loss) if args.mixed_precision else loss
        tape = hvd.DistributedGradientTape(tape, compression=compression, num_groups=args.allreduce_groups)
        grads = tape.gradient(scaled, [v.value for v in model.trainable_variables])
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, -1, output_type=tf.int32), labels), tf.float32))
        return loss, correct

    @tf.function
    def eval_step(images, labels):
        probs = model(images, training=False)
        losses = keras.losses.sparse_categorical_crossentropy(labels, probs)
        correct = tf.cast(tf.equal(tf.argmax(probs, -1, output_type=tf.int32), labels), tf.float32)
        return tf.reduce_sum(losses), tf.reduce_sum(correct)

    meta_base = {
        "class_names": class_names,
        "image_size": list(image_size),
        "feature_layer": FEATURE_LAYER,
        "blocks": blocks,
        "arch": args.model,
        "input": {"dtype": "uint8", "layout": "NHWC", "channels": 3, "range": [0, 255]},
        "manifest_sha256": manifest_sha,
        "manifest_fingerprint": manifest["fingerprint"],
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
    }
    # TensorBoard writes locally; for an s3:// checkpoint dir the files are uploaded after each epoch.
    tb_dir = workdir / "logs" if st.is_s3(ckpt) else Path(ckpt, "logs")
    tb = tf.summary.create_file_writer(str(tb_dir)) if is_chief else None

    log(f"{size} worker(s), {len(train_all)} train / {len(val_all)} val images, {num_classes} classes, "
        f"{steps_per_epoch} steps/epoch of {global_batch}, epochs {start + 1}..{args.epochs}, model {args.model}, "
        f"cache {'on' if cache else 'off'}")
    if start >= args.epochs:
        log(f"nothing to do: {start} epochs already committed")
    if is_chief and start < args.epochs and store.exists(run_dir.complete):
        store.delete(run_dir.complete)

    train_iter = iter(train_ds)
    # Skipped files are named from the file lists; TFRecord readers only count them (val images seen).
    track = not args.tfrecords
    train_skips = tdata.SkipTracker(train_split)
    skipped_total = 0
    for epoch in range(start + 1, args.epochs + 1):
        t0 = time.perf_counter()
        loss_sum = correct_sum = seen = 0.0
        for _ in range(steps_per_epoch):
            images, labels, idx = next(train_iter)
            loss, correct = train_step(images, labels)
            loss_sum += float(loss)
            correct_sum += float(correct)
            seen += int(labels.shape[0])
            for path in (train_skips.update(idx.numpy()) if track else []):
                skipped_total += 1
                print(f"[pretrain] rank {rank}: skipped undecodable file {path}", flush=True)
        train_time = time.perf_counter() - t0
        # BatchNorm moving statistics are per rank (each sees its own shard); average them so every rank
        # holds the same model and evaluates the same network.
        if size > 1:
            for v in model.non_trainable_variables:
                v.assign(hvd.allreduce(v.value, op=hvd.Average, name=f"sync_{v.path}"))

        val_skips = tdata.SkipTracker(val_split)
        v_loss = v_correct = v_n = 0.0
        for images, labels, idx in val_ds:
            l, c = eval_step(images, labels)
            v_loss += float(l)
            v_correct += float(c)
            v_n += int(labels.shape[0])
            if track:
                val_skips.update(idx.numpy())
        val_skipped = val_skips.finish() if track else []
        totals = hvd.allreduce(tf.constant([loss_sum / steps_per_epoch, correct_sum, seen, v_loss, v_correct, v_n,
                                            float(len(val_skipped) + skipped_total)], tf.float64),
                               op=hvd.Sum, name=f"epoch_metrics_{epoch}").numpy()
        metrics = {
            "epoch": epoch,
            "loss": totals[0] / size,
            "accuracy": totals[1] / max(totals[2], 1),
            "val_loss": totals[3] / max(totals[5], 1),
            "val_accuracy": totals[4] / max(totals[5], 1),
            "val_images": int(totals[5]),
            "skipped_files": int(totals[6]),
            "learning_rate": float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
            "images_per_second": totals[2] / train_time,
            "train_images": int(totals[2]),
            "train_seconds": round(train_time, 4),
            "epoch_seconds": round(time.perf_counter() - t0, 3),
            "finished_at": utcnow(),
        }
        if args.fail_at_epoch and epoch == args.fail_at_epoch:
            raise RuntimeError(f"injected failure at epoch {epoch}")
        if is_chief:
            best = _commit_epoch(store, run_dir, model, metrics, {**meta_base, "epoch": epoch}, best, workdir)
            with tb.as_default(step=epoch):
                for k in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "images_per_second"):
                    tf.summary.scalar(k, metrics[k])
            tb.flush()
            if st.is_s3(ckpt):
                store.upload_dir(workdir / "logs", st.join(ckpt, "logs"))
            log(f"epoch {epoch}/{args.epochs} loss {metrics['loss']:.4f} acc {metrics['accuracy']:.4f} "
                f"val_loss {metrics['val_loss']:.4f} val_acc {metrics['val_accuracy']:.4f} "
                f"lr {metrics['learning_rate']:.2e} {metrics['images_per_second']:.0f} img/s "
                f"{metrics['epoch_seconds']:.1f}s skipped {metrics['skipped_files']} "
                f"best {best['epoch']}:{best['val_accuracy']:.4f}")

    # Every rank prints a digest of its variables: equal digests prove the ranks stayed in sync.
    digest = hashlib.sha256()
    for v in model.variables:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(v)).tobytes())
    print(f"[pretrain] rank {rank} weights sha256 {digest.hexdigest()}", flush=True)
    if is_chief:
        store.write_json(run_dir.complete, {"epochs": args.epochs, "best_epoch": best and best["epoch"],
                                                     "finished_at": utcnow()})
        log(f"complete: best epoch {best['epoch']} val_accuracy {best['val_accuracy']:.4f} -> {run_dir.best_dir}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _commit_epoch(store: st.Store, run_dir: CheckpointDir, model, metrics: dict, meta: dict, best: dict | None,
                  workdir: Path) -> dict:
    """Write the epoch directory, then best/ and best.json if this epoch is the most accurate so far."""
    local = workdir / f"epoch-{metrics['epoch']:0{run_dir.EPOCH_DIGITS}d}"
    local.mkdir(parents=True, exist_ok=True)
    model.save(local / "model.keras")
    (local / "meta.json").write_text(json.dumps({**meta, "val_accuracy": metrics["val_accuracy"]}, indent=2))
    (local / "metrics.json").write_text(json.dumps(metrics, indent=2))
    uri = run_dir.epoch(metrics["epoch"])
    store.upload_dir(local, uri)
    store.write_json(run_dir.committed_marker(metrics["epoch"]), {"committed_at": utcnow()})
    if best is None or metrics["val_accuracy"] > best["val_accuracy"]:
        best_dir = workdir / "best"
        shutil.rmtree(best_dir, ignore_errors=True)
        best_dir.mkdir()
        for name in ("model.keras", "meta.json", "metrics.json"):
            shutil.copy2(local / name, best_dir / name)
        store.upload_dir(best_dir, run_dir.best_dir)
        best = {
            "epoch": metrics["epoch"],
            "val_accuracy": metrics["val_accuracy"],
            "val_loss": metrics["val_loss"],
            "path": uri,
            "best_dir": run_dir.best_dir,
            "manifest_sha256": meta["manifest_sha256"],
            "manifest_fingerprint": meta["manifest_fingerprint"],
            "created_at": (best or {}).get("created_at", utcnow()),
            "updated_at": utcnow(),
        }
        store.write_json(run_dir.best_json, best)  # last, atomically
    shutil.rmtree(local, ignore_errors=True)
    return best


def main(argv=None) -> int:
    args = parse_args(argv)
    # A SIGTERM (pod deletion, Airflow kill) is a stop, not a failure: the run resumes on retry.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return train(args)
    except SystemExit:
        raise
    except BaseException as err:  # noqa: BLE001 - record why, then fail
        reason = f"{type(err).__name__}: {err}"
        traceback.print_exc()
        if int(os.environ.get("HOROVOD_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0"))) == 0:
            try:
                st.Store(args.s3_endpoint_url).write_json(
                    CheckpointDir(args.checkpoint_dir).failed, {"reason": reason, "failed_at": utcnow()})
            except Exception as write_err:  # noqa: BLE001
                print(f"[pretrain] could not write FAILED: {write_err}", file=sys.stderr)
        print(f"[pretrain] failed: {reason}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
