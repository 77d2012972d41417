"""Training: the datasets, BatchNorm re-estimation, the epoch tracker, a training phase, the scratch run, evaluation."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from training.finetune.hyperparameters import Hyperparameters, log, metric_value
from training.finetune.inputs import DomainData, Pretrained


@dataclass
class Datasets:
    train: object  # augmented (image, one-hot) batches, repeating
    val: object  # one pass, (image, one-hot)
    plain: object  # the training images without augmentation, one pass: BatchNorm re-estimation
    steps: int  # training steps per epoch: one pass over the training images
    test: object = None


def datasets_for(data: DomainData, image_size, hp: Hyperparameters, seed: int) -> Datasets:
    import tensorflow as tf

    from training.data import make_dataset

    k = len(data.class_names)

    def xy(x, y, _i):
        return x, tf.one_hot(y, k)

    n = len(data.train)
    if hp.augment:
        train = make_dataset(data.train, image_size, hp.batch_size, training=True, seed=seed, cache=True).map(xy)
    else:
        train = (
            make_dataset(data.train, image_size, hp.batch_size, training=False, cache=True)
            .unbatch()
            .shuffle(n, seed=seed, reshuffle_each_iteration=True)
            .repeat()
            .batch(hp.batch_size)
            .map(xy)
        )
    val = make_dataset(data.val, image_size, hp.batch_size, training=False, cache=True).map(xy)
    plain = make_dataset(data.train, image_size, hp.batch_size, training=False, cache=True)
    test = make_dataset(data.test, image_size, hp.batch_size, training=False).map(xy) if data.test else None
    return Datasets(train.prefetch(2), val, plain, max(1, math.ceil(n / hp.batch_size)), test)


def recalibrate_batchnorm(model, dataset, max_batches: int) -> int:
    """Re-estimate every BatchNorm layer's moving mean/variance as the plain average over ``dataset`` batches.

    Weights do not change. Returns the number of batches used.
    """
    import keras

    from training.model import set_jitter

    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    if not bns or max_batches <= 0:
        return 0
    saved = [(l.momentum, l.trainable) for l in bns]
    used = 0
    jitter = set_jitter(model, False)  # statistics of the images as inference sees them
    try:
        for l in bns:
            l.trainable = True  # a frozen BatchNorm always runs in inference mode and would not update
        for images, *_ in dataset.take(max_batches):
            used += 1
            for l in bns:
                l.momentum = 1.0 - 1.0 / used  # cumulative average: batch i gets weight 1/i
            model(images, training=True)
    finally:
        for l, (m, t) in zip(bns, saved):
            l.momentum, l.trainable = m, t
        set_jitter(model, jitter)
    return used


class EpochTracker:
    """Logs each epoch, keeps the best weights across phases and stops a phase after ``patience`` bad epochs."""

    def __init__(self, run: str, role: str, monitor: str, patience: int, total_epochs: int):
        self.run, self.role, self.monitor, self.patience = run, role, monitor, patience
        self.total = total_epochs
        self.history: list[dict] = []
        self.best: dict | None = None
        self.best_weights = None
        self.epochs_done = 0

    def better(self, m: dict) -> bool:
        if self.best is None:
            return True
        if self.monitor == "val_loss":
            return m["val_loss"] < self.best["val_loss"] - 1e-9
        if m["val_accuracy"] > self.best["val_accuracy"] + 1e-9:
            return True
        return abs(m["val_accuracy"] - self.best["val_accuracy"]) <= 1e-9 and m["val_loss"] < self.best["val_loss"]

    def callback(self, model, phase: str):
        import keras

        tracker = self

        class _Callback(keras.callbacks.Callback):
            wait = 0

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                tracker.epochs_done += 1
                keys = (
                    ("train_loss", "loss"),
                    ("train_accuracy", "accuracy"),
                    ("val_loss", "val_loss"),
                    ("val_accuracy", "val_accuracy"),
                )
                m = {
                    "epoch": tracker.epochs_done,
                    "phase": phase,
                    **{k: float(logs.get(src, "nan")) for k, src in keys},
                    "learning_rate": float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)),
                }
                tracker.history.append(m)
                p = "scratch_" if tracker.role == "baseline" else ""
                log(
                    f"{tracker.run} {phase} epoch {m['epoch']}/{tracker.total}: "
                    f"{p}train_loss={metric_value(m['train_loss'])} {p}train_accuracy={metric_value(m['train_accuracy'])} "
                    f"{p}val_loss={metric_value(m['val_loss'])} {p}val_accuracy={metric_value(m['val_accuracy'])}"
                )
                if tracker.better(m):
                    tracker.best = m
                    tracker.best_weights = model.get_weights()
                    self.wait = 0
                else:
                    self.wait += 1
                    if tracker.patience and self.wait >= tracker.patience:
                        self.model.stop_training = True

        return _Callback()


def learning_rate(lr: float, epochs: int, steps: int, hp: Hyperparameters):
    """The phase's learning rate: constant, or cosine-decayed to 1% over the phase (``lr_schedule``)."""
    import keras

    if hp.lr_schedule == "constant":
        return lr
    return keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, epochs * steps), alpha=0.01)


def _compile(model, hp: Hyperparameters, optimizer) -> None:
    import keras

    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=hp.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )


def fit_phase(
    model, tracker: EpochTracker, phase: str, epochs: int, lr: float, hp: Hyperparameters, ds, slow=None
) -> None:
    """``epochs`` epochs (fewer if early stopping says so); the model ends on the tracker's best epoch.

    ``slow``: ``(variable paths, ratio)`` for discriminative learning rates, the paths' steps ``ratio`` times smaller.
    """
    import keras

    if epochs <= 0:
        return
    rate = learning_rate(lr, epochs, ds.steps, hp)
    if slow:
        from training.finetune.recipes import discriminative_adamw

        optimizer = discriminative_adamw(rate, hp.weight_decay, *slow)
    else:
        optimizer = keras.optimizers.AdamW(rate, weight_decay=hp.weight_decay)
    _compile(model, hp, optimizer)
    model.fit(
        ds.train,
        steps_per_epoch=ds.steps,
        epochs=epochs,
        validation_data=ds.val,
        callbacks=[tracker.callback(model, phase)],
        verbose=0,
    )
    model.set_weights(tracker.best_weights)  # the next phase starts from, and the run ends with, the best epoch
    # The saved model names a stock optimizer with a plain rate: loadable without this package.
    _compile(model, hp, keras.optimizers.AdamW(lr, weight_decay=hp.weight_decay))


def transfer_model(pre: Pretrained, num_classes: int, hp: Hyperparameters):
    import keras

    from training.model import attach_head, set_jitter

    base = pre.model
    features = base.get_layer(pre.meta.get("feature_layer", "features")).output
    outputs = attach_head(features, num_classes, hp.dropout)
    model = keras.Model(base.input, outputs, name=f"{base.name}_finetuned")
    set_jitter(model, hp.augment)
    return model


def scratch_model(template, hp: Hyperparameters, num_classes: int, image_size):
    import keras

    from training.model import build_model, set_jitter

    if template is not None:
        model = keras.models.clone_model(template)  # same architecture, freshly initialised weights
    else:
        model = build_model(num_classes, image_size, hp.arch, hp.dropout, hp.width)
    for layer in model.layers:
        layer.trainable = True
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = hp.bn_momentum
    set_jitter(model, hp.augment)
    return model


def train_scratch(template, data: DomainData, hp: Hyperparameters, image_size, ds, role: str) -> dict:
    model = scratch_model(template, hp, len(data.class_names), image_size)
    tracker = EpochTracker("scratch", role, hp.early_stopping_monitor, hp.early_stopping_patience, hp.scratch_budget)
    t0 = time.perf_counter()
    phase = "baseline" if role == "baseline" else "all"
    fit_phase(model, tracker, phase, hp.scratch_budget, hp.learning_rate_scratch, hp, ds)
    return {"model": model, "tracker": tracker, "image_size": image_size, "seconds": time.perf_counter() - t0}


def evaluate(model, dataset, class_names: list[str]) -> dict:
    """Loss, accuracy, per-class accuracy and confusion matrix of ``model`` on a one-pass dataset."""
    import numpy as np

    k = len(class_names)
    confusion = np.zeros((k, k), dtype=np.int64)
    loss_sum, n = 0.0, 0
    for images, onehot in dataset:
        probs = np.asarray(model(images, training=False), dtype=np.float64)
        y = np.argmax(onehot.numpy(), axis=-1)
        loss_sum += float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)).sum())
        np.add.at(confusion, (y, probs.argmax(-1)), 1)
        n += len(y)
    per_class = {
        c: (float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None)
        for i, c in enumerate(class_names)
    }
    return {
        "loss": loss_sum / max(n, 1),
        "accuracy": float(np.trace(confusion) / max(n, 1)),
        "images": n,
        "per_class_accuracy": per_class,
        "confusion": confusion.tolist(),
    }
