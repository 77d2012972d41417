"""The distributed training loop: Horovod setup, the model and optimizer (new or resumed), the train and eval
steps, and one epoch at a time until the last, each committed by rank 0 alone."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from training import store as st
from training.contracts import CheckpointDir
from training.pretrain.checkpoints import _local_copy, check_writable, resume_state, utcnow
from training.pretrain.chief import ChiefWriter
from training.pretrain.inputs import Inputs, load_inputs
from training.pretrain.lease import Lease
from training.pretrain.partial import position, resume_partial


def bind_to_cores(local_rank: int, local_size: int) -> set[int]:
    """Pin this process (and the threads it starts) to its own slice of the cores it may use.

    Ranks on one host then stop preempting each other: in synchronous training every preemption of one rank
    stalls all of them at the next allreduce (MPI's ``--bind-to core``; worth about 5% with 2 ranks on 2 cores).
    """
    cores = sorted(os.sched_getaffinity(0))
    per = max(1, len(cores) // local_size)
    mine = set(cores[local_rank * per : (local_rank + 1) * per]) or set(cores)
    os.sched_setaffinity(0, mine)
    return mine


def init_horovod(args):
    """Horovod, TensorFlow threads, core binding and this rank's GPU; returns the ``hvd`` module."""
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import horovod.tensorflow as hvd

    # Horovod: initialise, then give each local rank its own cores and its own GPU.
    hvd.init()
    if args.bind_cores == "on" or (args.bind_cores == "auto" and hvd.local_size() > 1):
        bind_to_cores(hvd.local_rank(), hvd.local_size())
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:
        tf.config.set_visible_devices(gpus[hvd.local_rank()], "GPU")
    return hvd


def model_and_optimizer(
    args, data: Inputs, start: int, store: st.Store, run_dir: CheckpointDir, workdir: Path, size: int, log, inside=None
):
    """(model, optimizer, blocks): restored from the checkpoint ``inside`` an epoch, or from epoch ``start``,
    when resuming; else built and compiled."""
    import keras

    from training.model import WarmupCosine, build_model

    total_steps = data.steps_per_epoch * args.epochs
    if start or inside:
        uri = inside or run_dir.epoch(start)
        src = _local_copy(store, uri, workdir / "resume")
        model = keras.models.load_model(src / "model.keras")
        log(f"resuming after epoch {start} from {uri}")
        blocks = getattr(model, "blocks", None) or json.loads((src / "meta.json").read_text())["blocks"]
        return model, model.optimizer, blocks
    model = build_model(len(data.class_names), data.image_size, args.model, args.dropout, args.width)
    # Horovod: the learning rate scales with the number of workers (the global batch grows with it).
    schedule = WarmupCosine(args.learning_rate * size, int(args.warmup_epochs * data.steps_per_epoch), total_steps)
    if args.optimizer == "adam":
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=args.weight_decay)
    else:
        optimizer = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True)
    if args.mixed_precision:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    return model, optimizer, getattr(model, "blocks", None) or []


def make_steps(args, hvd, model, optimizer, num_classes: int):
    """The compiled train step (gradients averaged by Horovod) and eval step."""
    import keras
    import tensorflow as tf

    loss_fn = keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing)
    compression = hvd.Compression.fp16 if args.fp16_allreduce else hvd.Compression.none

    @tf.function(jit_compile=args.xla)
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            probs = model(images, training=True)
            loss = loss_fn(tf.one_hot(labels, num_classes), probs)
            scaled = optimizer.scale_loss(loss) if args.mixed_precision else loss
        # Horovod: average the gradients across ranks (Keras 3: hand Horovod the backing tf.Variables).
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

    return train_step, eval_step


class EpochRunner:
    """One epoch: this rank's training steps, the BatchNorm sync, validation, and the metrics summed over ranks."""

    def __init__(self, args, hvd, model, optimizer, data: Inputs, rank: int, size: int, start: int = 0, on_step=None):
        from training import data as tdata

        self.args, self.hvd, self.model, self.optimizer, self.data = args, hvd, model, optimizer, data
        self.rank, self.size, self.on_step = rank, size, on_step
        self.train_step, self.eval_step = make_steps(args, hvd, model, optimizer, len(data.class_names))
        # The stream begins where the run left off (``start`` images into this rank's stream).
        self.train_iter = iter(data.train_from(start))
        # Skipped files are named from the file lists; TFRecord readers only count them (val images seen).
        self.track = not args.tfrecords
        done = tdata.pass_prefix(len(data.train_split), data.seed, start) if self.track else ()
        self.train_skips = tdata.SkipTracker(data.train_split, already_seen=done)
        self.skipped_total = 0

    def _train(self, epoch: int, first_step: int = 1, sums: dict | None = None) -> tuple[float, float, float, float]:
        """This rank's steps ``first_step``.. of ``epoch``, continuing the running ``sums`` of a checkpoint."""
        sums = sums or {}
        loss_sum, correct_sum, seen = sums.get("loss_sum", 0.0), sums.get("correct_sum", 0.0), sums.get("seen", 0.0)
        steps, every = self.data.steps_per_epoch, getattr(self.args, "progress_seconds", 0) if self.rank == 0 else 0
        start = last_report = time.perf_counter() - sums.get("train_seconds", 0.0)
        for step in range(first_step, steps + 1):
            images, labels, idx = next(self.train_iter)
            loss, correct = self.train_step(images, labels)
            loss_sum += float(loss)
            correct_sum += float(correct)
            seen += int(labels.shape[0])
            # A long epoch shows its progress in the task's log (rank 0, at most every --progress-seconds).
            if every and step < steps and time.perf_counter() - last_report >= every:
                last_report = time.perf_counter()
                print(
                    f"[pretrain] epoch {epoch} step {step}/{steps} ({100 * step / steps:.0f}%): "
                    f"loss {loss_sum / step:.4f} accuracy {correct_sum / seen:.4f} "
                    f"{seen / (last_report - start):.0f} img/s on rank 0",
                    flush=True,
                )
            for path in self.train_skips.update(idx.numpy()) if self.track else []:
                self.skipped_total += 1
                print(f"[pretrain] rank {self.rank}: skipped undecodable file {path}", flush=True)
            if self.on_step is not None:
                running = {"loss_sum": loss_sum, "correct_sum": correct_sum, "seen": seen}
                self.on_step(epoch, step, {**running, "train_seconds": time.perf_counter() - start})
        return loss_sum, correct_sum, seen, time.perf_counter() - start

    def _validate(self) -> tuple[float, float, float, int]:
        from training import data as tdata

        val_skips = tdata.SkipTracker(self.data.val_split)
        v_loss = v_correct = v_n = 0.0
        for images, labels, idx in self.data.val_ds:
            loss, correct = self.eval_step(images, labels)
            v_loss += float(loss)
            v_correct += float(correct)
            v_n += int(labels.shape[0])
            if self.track:
                val_skips.update(idx.numpy())
        return v_loss, v_correct, v_n, len(val_skips.finish()) if self.track else 0

    def run(self, epoch: int, first_step: int = 1, sums: dict | None = None) -> dict:
        import keras
        import tensorflow as tf

        hvd, t0 = self.hvd, time.perf_counter()
        loss_sum, correct_sum, seen, train_time = self._train(epoch, first_step, sums)
        # Horovod: BatchNorm moving statistics are per rank (each sees its own shard); average them so every
        # rank holds the same model and evaluates the same network.
        if self.size > 1:
            for v in self.model.non_trainable_variables:
                v.assign(hvd.allreduce(v.value, op=hvd.Average, name=f"sync_{v.path}"))
        v_loss, v_correct, v_n, val_skipped = self._validate()
        # Horovod: one allreduce of this epoch's sums gives every rank the same metrics.
        totals = hvd.allreduce(
            tf.constant(
                [
                    loss_sum / self.data.steps_per_epoch,
                    correct_sum,
                    seen,
                    v_loss,
                    v_correct,
                    v_n,
                    float(val_skipped + self.skipped_total),
                ],
                tf.float64,
            ),
            op=hvd.Sum,
            name=f"epoch_metrics_{epoch}",
        ).numpy()
        return {
            "epoch": epoch,
            "loss": totals[0] / self.size,
            "accuracy": totals[1] / max(totals[2], 1),
            "val_loss": totals[3] / max(totals[5], 1),
            "val_accuracy": totals[4] / max(totals[5], 1),
            "val_images": int(totals[5]),
            "skipped_files": int(totals[6]),
            "learning_rate": float(keras.ops.convert_to_numpy(self.optimizer.learning_rate)),
            "images_per_second": totals[2] / train_time,
            "train_images": int(totals[2]),
            "train_seconds": round(train_time, 4),
            "epoch_seconds": round(time.perf_counter() - t0 + (sums or {}).get("train_seconds", 0.0), 3),
            "resumed_at_step": first_step - 1,
            "finished_at": utcnow(),
        }


def model_meta(args, data: Inputs, blocks: list) -> dict:
    """What every epoch's meta.json shares: what the model takes and what it was trained on."""
    import keras
    import tensorflow as tf

    from training.model import FEATURE_LAYER

    return {
        "class_names": data.class_names,
        "image_size": list(data.image_size),
        "feature_layer": FEATURE_LAYER,
        "blocks": blocks,
        "arch": args.model,
        "input": {"dtype": "uint8", "layout": "NHWC", "channels": 3, "range": [0, 255]},
        "manifest_sha256": data.manifest_sha256,
        "manifest_fingerprint": data.manifest["fingerprint"],
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
    }


def weights_digest(model) -> str:
    """sha256 of every variable: equal digests on every rank prove the ranks stayed in sync."""
    import keras
    import numpy as np

    digest = hashlib.sha256()
    for v in model.variables:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(v)).tobytes())
    return digest.hexdigest()


def checkpoint_uri(checkpoint_dir: str) -> str:
    return checkpoint_dir.rstrip("/") if st.is_s3(checkpoint_dir) else str(Path(checkpoint_dir).resolve())


def train(args) -> int:
    """The run: rank 0 checks the store and takes the directory's lease (one writer), then every rank trains."""
    hvd = init_horovod(args)
    rank, size = hvd.rank(), hvd.size()
    is_chief = rank == 0
    store = st.Store(args.s3_endpoint_url)
    run_dir = CheckpointDir(checkpoint_uri(args.checkpoint_dir))
    workdir = Path(tempfile.mkdtemp(prefix=f"pretrain-r{rank}-"))
    lease = None
    if is_chief:
        check_writable(store, run_dir)  # before anything is loaded or trained
        owner = args.lease_owner or f"{socket.gethostname()}:{os.getpid()}"
        lease = Lease(store, run_dir, owner, ttl=args.lease_ttl, every=min(30.0, args.lease_ttl / 4))
        taken = lease.acquire()
        if taken:
            print(f"[pretrain] took the checkpoint lease over from {taken.get('owner')}", flush=True)
    try:
        return _train(args, hvd, rank, size, store, run_dir, workdir, lease)
    finally:
        if lease is not None:
            lease.release()


def start_inside(args, state: dict) -> bool:
    """Whether the run resumes inside its next epoch (a partial checkpoint of it, and epochs left to train)."""
    return bool(state.get("partial")) and state["resume_from"] < args.epochs


def _train(args, hvd, rank, size, store, run_dir, workdir, lease) -> int:
    import keras

    is_chief = rank == 0
    chief = ChiefWriter(is_chief, store, run_dir, workdir, lease, args.store_outage_seconds)
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(args.seed + rank)
    data = load_inputs(args, store, workdir, rank, size)

    # Horovod: rank 0 reads the checkpoint directory; every rank resumes from what it found.
    state = {"resume_from": 0, "best": None, "partial": None}
    if is_chief:
        state = resume_state(store, run_dir, workdir, chief.log)
        state["partial"] = resume_partial(store, run_dir, state["resume_from"], data, workdir, chief.log)
    state = hvd.broadcast_object(state, root_rank=0, name="resume_state")
    start, best, partial = state["resume_from"], state["best"], state["partial"] if start_inside(args, state) else None
    model, optimizer, blocks = model_and_optimizer(
        args, data, start, store, run_dir, workdir, size, chief.log, partial and partial["path"]
    )
    optimizer.build(model.trainable_variables)
    # Horovod: every rank starts from rank 0's variables (weights, BatchNorm statistics, optimizer slots).
    hvd.broadcast_variables([v.value for v in model.variables], root_rank=0)
    hvd.broadcast_variables([v.value for v in optimizer.variables], root_rank=0)
    meta_base = model_meta(args, data, blocks)
    done_steps = partial["step"] if partial else 0
    on_step = chief.keep_partials(args, data, model, meta_base)  # rank 0's checkpoints inside an epoch
    runner = EpochRunner(args, hvd, model, optimizer, data, rank, size, position(data, start, done_steps), on_step)

    chief.log(
        f"{size} worker(s), {len(data.train_all)} train / {len(data.val_all)} val images, "
        f"{len(data.class_names)} classes, {data.steps_per_epoch} steps/epoch of {data.global_batch}, "
        f"epochs {start + 1}..{args.epochs}, model {args.model}, cache {'on' if data.cache else 'off'}"
    )
    if partial:
        chief.log(f"resuming epoch {start + 1} at step {done_steps + 1} from {partial['path']}")
    if start >= args.epochs:
        chief.log(f"nothing to do: {start} epochs already committed")
    if is_chief and start < args.epochs and store.exists(run_dir.complete):
        store.delete(run_dir.complete)
    for epoch in range(start + 1, args.epochs + 1):
        first = (done_steps + 1, partial["sums"]) if partial and epoch == start + 1 else (1, None)
        metrics = runner.run(epoch, *first)
        if args.fail_at_epoch and epoch == args.fail_at_epoch:
            raise RuntimeError(f"injected failure at epoch {epoch}")
        best = chief.epoch_done(model, metrics, {**meta_base, "epoch": epoch}, best, args.epochs)

    print(f"[pretrain] rank {rank} weights sha256 {weights_digest(model)}", flush=True)
    chief.complete(args.epochs, best)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0
