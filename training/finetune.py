"""Fine-tune the pretrained general model on the domain classes, as a SageMaker training job.

    python -m training.finetune                       # inside the training container (root /opt/ml)
    python -m training.finetune --sm-root DIR         # a local SageMaker-layout directory (or SM_ROOT=DIR)
    python -m training.finetune --sm-root DIR --init scratch --epochs-head 5   # hyperparameter overrides

Inputs follow the training-container contract (see ``training.sagemaker``): hyperparameters from
``<root>/input/config/hyperparameters.json`` and three channels, ``SM_CHANNEL_<NAME>`` or
``<root>/input/data/<name>``:

  pretrained   the pretraining ``best/`` directory (model.keras + meta.json), or a tar.gz of it
               (optional with ``init=scratch``)
  train        the domain training images, one folder per class (ImageFolder); the classes are its folders
  validation   the domain validation images, same layout: early stopping and the best epoch are chosen on it
  test         optional, same layout: images that no choice is made on; reported as test:* metrics

Transfer recipe: the pretrained network up to its ``features`` layer, with a new softmax head for the domain
classes. BatchNorm statistics are first re-estimated on the domain training images (the pretrained moving
averages can lag the weights, and the domain's images differ), then frozen: BatchNorm runs in inference
mode throughout. Phase 1 trains the head with the base frozen; phase 2 unfreezes the top
``unfreeze_blocks`` blocks (``meta.json`` ``blocks``, ordered input -> output) at a low learning rate. Each
phase stops early when the monitored validation metric stops improving; the best epoch's weights are kept.
``init=scratch`` trains the same architecture from random weights for the same number of epochs;
``compare_scratch=true`` trains that baseline as well and reports both accuracies.

Outputs
  SM_MODEL_DIR/<model_version>/saved_model.pb, variables/   the TensorFlow Serving model:
        serving_default(image_bytes: string[None]) -> probabilities: float32[None, K]   (JPEG/PNG/GIF/BMP bytes)
        predict_images(image: uint8[None, H, W, 3]) -> probabilities                (decoded images; edge export)
  SM_MODEL_DIR/code/inference.py, code/labels.json    the TFS container's handlers and the class names
  SM_MODEL_DIR/model.keras, meta.json                 the fine-tuned Keras model and its metadata
  SM_OUTPUT_DATA_DIR/metrics.json                     final metrics, per-epoch history of every run, per-class
                                                      accuracy, counts, hyperparameters
  <root>/output/failure                               on failure: the reason (also logged); exit status 1

Hyperparameters (all optional; string values as SageMaker passes them):
  init                      pretrained | scratch                                   (pretrained)
  compare_scratch           also train the scratch baseline and report both        (false)
  epochs_head               phase 1 epochs: head only, base frozen                 (30)
  epochs_finetune           phase 2 epochs: top blocks unfrozen                    (20)
  unfreeze_blocks           blocks unfrozen in phase 2, counted from the top; 0 skips phase 2   (1)
  learning_rate_head        phase 1 learning rate (AdamW)                           (0.003)
  learning_rate_finetune    phase 2 learning rate                                   (0.0001)
  learning_rate_scratch     learning rate of the scratch model                      (0.001)
  scratch_epochs            scratch epochs; 0 = epochs_head + epochs_finetune (same budget)   (0)
  batch_size                images per step                                         (32)
  dropout                   dropout before the new head                             (0.2)
  weight_decay              AdamW weight decay                                      (0.0001)
  label_smoothing           cross-entropy label smoothing                           (0.0)
  augment                   random flip/shift/brightness/contrast on training images   (true)
  early_stopping_patience   epochs without improvement before a phase stops; 0 = never   (8)
  early_stopping_monitor    val_accuracy (ties broken by val_loss) | val_loss      (val_accuracy)
  bn_recalibration_batches  batches of domain images to re-estimate BatchNorm statistics; 0 = off   (50)
  finetune_batchnorm        let phase 2 update the unfrozen blocks' BatchNorm layers   (false)
  bn_momentum               momentum of BatchNorm layers that train (scratch; phase 2 with finetune_batchnorm)   (0.9)
  images_per_class          use at most this many training images per class; 0 = all   (0)
  image_size                expected input size (e.g. 64 or 64,64); must match the pretrained model   (from meta.json)
  arch                      scratch architecture when there is no pretrained channel   (small_resnet)
  width                     small_resnet width when there is no pretrained channel     (32)
  model_version             TensorFlow Serving version directory name (digits)     (1)
  seed                      random seed (weights, shuffling, augmentation, subsampling)   (0)
  threads                   TensorFlow intra/inter-op threads; 0 = TensorFlow decides   (0)

Log lines (one per epoch, then a final line) carry ``key=value`` pairs; ``METRIC_DEFINITIONS`` holds the
SageMaker ``MetricDefinitions`` that read them, so the deploy DAG and the local SageMaker use the same list::

  [finetune] transfer head epoch 3/50: train_loss=0.412345 train_accuracy=0.881250 val_loss=0.398765 \
             val_accuracy=0.887500
  [finetune] scratch baseline epoch 3/50: scratch_train_loss=1.3 scratch_train_accuracy=0.4 \
             scratch_val_loss=1.2 scratch_val_accuracy=0.45
  [finetune] final: train_loss=0.2 train_accuracy=0.95 val_loss=0.301234 val_accuracy=0.912500 \
             scratch_val_loss=1.01 scratch_val_accuracy=0.55 transfer_gain=0.3625
  (each is one line in the log; wrapped here)

  train:loss                  " train_loss=([0-9.]+)"
  train:accuracy              " train_accuracy=([0-9.]+)"
  validation:loss             " val_loss=([0-9.]+)"
  validation:accuracy         " val_accuracy=([0-9.]+)"
  scratch:validation:loss     " scratch_val_loss=([0-9.]+)"
  scratch:validation:accuracy " scratch_val_accuracy=([0-9.]+)"
  transfer:gain               " transfer_gain=(-?[0-9.]+)"
  test:loss                   " test_loss=([0-9.]+)"              (with a test channel; final line only)
  test:accuracy               " test_accuracy=([0-9.]+)"
  scratch:test:loss           " scratch_test_loss=([0-9.]+)"
  scratch:test:accuracy       " scratch_test_accuracy=([0-9.]+)"
  transfer:test_gain          " transfer_test_gain=(-?[0-9.]+)"

The final line comes last, so a metric's final value (``FinalMetricDataList``) is the kept model's: the best
epoch's weights evaluated again. ``validation:*`` and ``test:*`` always describe the model in SM_MODEL_DIR
(transfer, or scratch with ``init=scratch``); ``scratch:*`` the baseline of ``compare_scratch``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from training.contracts import CHANNELS, METRIC_DEFINITIONS, PRIMARY_METRIC  # noqa: F401 - the job's contract
from training.sagemaker import ContractError, TrainingEnv, extract_tar, user_hyperparameters

SERVING_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "predict_images"


class FinetuneError(RuntimeError):
    """Bad input to the job: the message is the job's failure reason."""


class Hyperparameters(BaseModel):
    """Every knob of the job; see the module docstring for what each does."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    init: Literal["pretrained", "scratch"] = "pretrained"
    compare_scratch: bool = False
    epochs_head: int = Field(30, ge=0)
    epochs_finetune: int = Field(20, ge=0)
    unfreeze_blocks: int = Field(1, ge=0)
    learning_rate_head: float = Field(3e-3, gt=0)
    learning_rate_finetune: float = Field(1e-4, gt=0)
    learning_rate_scratch: float = Field(1e-3, gt=0)
    scratch_epochs: int = Field(0, ge=0)
    batch_size: int = Field(32, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: bool = True
    early_stopping_patience: int = Field(8, ge=0)
    early_stopping_monitor: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    bn_recalibration_batches: int = Field(50, ge=0)
    finetune_batchnorm: bool = False
    bn_momentum: float = Field(0.9, gt=0, lt=1)
    images_per_class: int = Field(0, ge=0)
    image_size: tuple[int, int] | None = None
    arch: Literal["small_resnet", "resnet50"] = "small_resnet"
    width: int = Field(32, ge=1)
    model_version: str = Field("1", pattern=r"^[0-9]{1,18}$")
    seed: int = 0
    threads: int = Field(0, ge=0)

    @field_validator("image_size", mode="before")
    @classmethod
    def _size(cls, v):
        if v is None or v == "":
            return None
        if isinstance(v, int):
            return (v, v)
        if isinstance(v, str):
            parts = [p for p in v.replace("x", ",").replace("[", "").replace("]", "").split(",") if p.strip()]
            nums = [int(p) for p in parts]
            return (nums[0], nums[0]) if len(nums) == 1 else tuple(nums)
        return tuple(v)

    @property
    def scratch_budget(self) -> int:
        return self.scratch_epochs or (self.epochs_head + self.epochs_finetune)


def parse_hyperparameters(raw: dict) -> Hyperparameters:
    try:
        return Hyperparameters(**user_hyperparameters(raw))
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'hyperparameters'}: {e['msg']}"
                             for e in err.errors())
        raise FinetuneError(f"invalid hyperparameters: {problems}") from None
    except ValueError as err:
        raise FinetuneError(f"invalid hyperparameters: {err}") from None


def log(msg: str) -> None:
    print(f"[finetune] {msg}", flush=True)


def _num(x: float) -> str:
    """Fixed-point, so the MetricDefinitions regexes never meet an exponent."""
    return f"{x:.6f}" if math.isfinite(x) else "nan"


# -- inputs -------------------------------------------------------------------------------------------------
@dataclass
class Pretrained:
    path: Path
    meta: dict
    model: object  # keras.Model


def locate_pretrained(channel: Path, workdir: Path) -> Path:
    """The directory holding model.keras + meta.json: the channel itself, its best/, or inside a tarball in it."""
    if not channel.is_dir():
        raise FinetuneError(f"missing channel 'pretrained': {channel} does not exist")

    def find(root: Path) -> Path | None:
        for d in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
            if (d / "model.keras").is_file() and (d / "meta.json").is_file():
                return d
        return None

    for d in (channel, channel / "best"):  # the best/ directory itself, or the checkpoint directory above it
        if (d / "model.keras").is_file() and (d / "meta.json").is_file():
            return d
    found = find(channel)
    if found:
        return found
    archives = sorted(p for p in channel.iterdir() if p.is_file() and p.name.endswith((".tar.gz", ".tgz", ".tar")))
    if not archives:
        raise FinetuneError(f"pretrained channel {channel} holds neither model.keras + meta.json "
                            "(the pretraining best/ directory) nor a tar.gz of it")
    for archive in archives:
        dest = workdir / "pretrained" / archive.name.split(".")[0]
        try:
            extract_tar(archive, dest)
        except Exception as err:  # noqa: BLE001 - tarfile raises several unrelated types
            raise FinetuneError(f"corrupt pretrained artifact {archive.name}: {type(err).__name__}: {err}") from None
        found = find(dest)
        if found:
            return found
    raise FinetuneError(f"pretrained archive(s) {', '.join(a.name for a in archives)} hold no model.keras + meta.json")


def load_pretrained(path: Path) -> Pretrained:
    import keras

    import training.model  # noqa: F401 - registers the learning-rate schedule the saved model refers to

    try:
        meta = json.loads((path / "meta.json").read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        size = meta["image_size"]
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
            raise ValueError(f"image_size must be [H, W], got {size!r}")
    except (ValueError, KeyError) as err:
        raise FinetuneError(f"corrupt pretrained artifact: meta.json unusable ({type(err).__name__}: {err})") from None
    try:
        model = keras.models.load_model(path / "model.keras", compile=False)
    except Exception as err:  # noqa: BLE001 - any load failure means the artifact is unusable
        raise FinetuneError(
            f"corrupt pretrained artifact: model.keras does not load ({type(err).__name__}: {err})") from None
    feature = meta.get("feature_layer", "features")
    try:
        model.get_layer(feature)
    except ValueError:
        raise FinetuneError(f"corrupt pretrained artifact: no layer {feature!r} (meta.json feature_layer)") from None
    in_shape = tuple(model.input_shape[1:3])
    if in_shape != tuple(size):
        raise FinetuneError(f"corrupt pretrained artifact: model input is {list(in_shape)} but meta.json image_size "
                            f"is {size}")
    return Pretrained(path, meta, model)


@dataclass
class DomainData:
    class_names: list[str]
    train: object  # training.data.Split
    val: object
    test: object = None
    counts: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def _valid_files(split, check_image) -> tuple[list[str], list[int], list[str]]:
    paths, labels, skipped = [], [], []
    for p, y in zip(split.paths, split.labels):
        if check_image(p)[0]:  # (format, reason, ...): a format means a usable image
            paths.append(p)
            labels.append(y)
        else:
            skipped.append(p)
    return paths, labels, skipped


def per_class_subset(paths: list[str], labels: list[int], class_names: list[str], n: int, seed: int):
    """At most ``n`` items per class: ``(kept paths, kept labels, rest paths, rest labels)``.

    Each class is shuffled by a seed of its own, then cut: smaller subsets are contained in larger ones.
    """
    keep_p, keep_l, rest_p, rest_l = [], [], [], []
    for i, c in enumerate(class_names):
        mine = sorted(p for p, y in zip(paths, labels) if y == i)
        random.Random(f"{seed}:{c}").shuffle(mine)
        keep_p += sorted(mine[:n])
        keep_l += [i] * len(mine[:n])
        rest_p += sorted(mine[n:])
        rest_l += [i] * len(mine[n:])
    return keep_p, keep_l, rest_p, rest_l


def load_domain(env: TrainingEnv, hp: Hyperparameters) -> DomainData:
    from training.data import Split, image_folder_split
    from training.imageio import check_image

    dirs = {}
    for name in ("train", "validation", "test"):
        d = env.channel(name)
        if not d.is_dir():
            if name == "test":  # optional: a held-out set that model selection never sees
                continue
            raise FinetuneError(f"missing channel '{name}': {d} does not exist")
        dirs[name] = d
    classes = sorted(p.name for p in dirs["train"].iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise FinetuneError(f"train channel {dirs['train']} needs at least 2 class folders, found {len(classes)}")

    data = DomainData(classes, None, None)
    splits = {}
    for name, d in dirs.items():
        present = sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        unknown = sorted(set(present) - set(classes))
        if unknown:
            raise FinetuneError(f"{name} channel has classes the train channel lacks: {', '.join(unknown)}")
        paths, labels, skipped = _valid_files(image_folder_split(d, classes), check_image)
        data.skipped += skipped
        per_class = [labels.count(i) for i in range(len(classes))]
        empty = [c for c, n in zip(classes, per_class) if n == 0 and (name == "train" or c in present)]
        if empty:
            raise FinetuneError(f"empty class in the {name} channel (no valid images): {', '.join(empty)}")
        if not paths:
            raise FinetuneError(f"the {name} channel {d} holds no images")
        splits[name] = (paths, labels)
    tpaths, tlabels = splits["train"]
    if hp.images_per_class:
        tpaths, tlabels, _, _ = per_class_subset(tpaths, tlabels, classes, hp.images_per_class, hp.seed)
    data.train = Split(tpaths, tlabels, classes)
    data.val = Split(*splits["validation"], classes)
    data.test = Split(*splits["test"], classes) if "test" in splits else None
    data.counts = {name: {c: split.labels.count(i) for i, c in enumerate(classes)}
                   for name, split in (("train", data.train), ("validation", data.val), ("test", data.test)) if split}
    data.counts["skipped_files"] = len(data.skipped)
    return data


# -- training -----------------------------------------------------------------------------------------------
@dataclass
class Datasets:
    train: object  # augmented (image, one-hot) batches, repeating
    val: object  # one pass, (image, one-hot)
    plain: object  # the training images without augmentation, one pass: BatchNorm re-estimation
    steps: int  # training steps per epoch: one pass over the training images
    test: object = None


def _datasets(data: DomainData, image_size, hp: Hyperparameters, seed: int) -> Datasets:
    import tensorflow as tf

    from training.data import make_dataset

    k = len(data.class_names)

    def xy(x, y, _i):
        return x, tf.one_hot(y, k)

    n = len(data.train)
    if hp.augment:
        train = make_dataset(data.train, image_size, hp.batch_size, training=True, seed=seed, cache=True).map(xy)
    else:
        train = (make_dataset(data.train, image_size, hp.batch_size, training=False, cache=True).unbatch()
                 .shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat().batch(hp.batch_size).map(xy))
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
                keys = (("train_loss", "loss"), ("train_accuracy", "accuracy"), ("val_loss", "val_loss"),
                        ("val_accuracy", "val_accuracy"))
                m = {"epoch": tracker.epochs_done, "phase": phase,
                     **{k: float(logs.get(src, "nan")) for k, src in keys},
                     "learning_rate": float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))}
                tracker.history.append(m)
                p = "scratch_" if tracker.role == "baseline" else ""
                log(f"{tracker.run} {phase} epoch {m['epoch']}/{tracker.total}: "
                    f"{p}train_loss={_num(m['train_loss'])} {p}train_accuracy={_num(m['train_accuracy'])} "
                    f"{p}val_loss={_num(m['val_loss'])} {p}val_accuracy={_num(m['val_accuracy'])}")
                if tracker.better(m):
                    tracker.best = m
                    tracker.best_weights = model.get_weights()
                    self.wait = 0
                else:
                    self.wait += 1
                    if tracker.patience and self.wait >= tracker.patience:
                        self.model.stop_training = True

        return _Callback()


def _compile(model, learning_rate: float, hp: Hyperparameters) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=hp.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=hp.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )


def _fit(model, tracker: EpochTracker, phase: str, epochs: int, lr: float, hp: Hyperparameters, ds) -> None:
    if epochs <= 0:
        return
    _compile(model, lr, hp)
    model.fit(ds.train, steps_per_epoch=ds.steps, epochs=epochs, validation_data=ds.val,
              callbacks=[tracker.callback(model, phase)], verbose=0)
    model.set_weights(tracker.best_weights)  # the next phase starts from, and the run ends with, the best epoch


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


def train_transfer(pre: Pretrained, data: DomainData, hp: Hyperparameters, ds, role: str = "primary") -> dict:
    import keras

    image_size = tuple(pre.meta["image_size"])
    model = transfer_model(pre, len(data.class_names), hp)
    base_layers = {id(l) for l in pre.model.layers}
    head = {l.name for l in model.layers if id(l) not in base_layers}
    bn_batches = recalibrate_batchnorm(model, ds.plain, hp.bn_recalibration_batches)
    if bn_batches:
        log(f"transfer: BatchNorm statistics re-estimated on {bn_batches} batch(es) of domain training images")
    for layer in model.layers:
        layer.trainable = layer.name in head
    blocks = list(pre.meta.get("blocks") or [])
    n_unfreeze = min(hp.unfreeze_blocks, len(blocks))
    epochs_ft = hp.epochs_finetune if n_unfreeze else 0
    if hp.unfreeze_blocks and not blocks:
        log("transfer: meta.json lists no blocks, so phase 2 (unfreezing) is skipped")
    tracker = EpochTracker("transfer", role, hp.early_stopping_monitor, hp.early_stopping_patience,
                           hp.epochs_head + epochs_ft)
    t0 = time.perf_counter()
    _fit(model, tracker, "head", hp.epochs_head, hp.learning_rate_head, hp, ds)
    unfrozen = []
    if epochs_ft:
        prefixes = tuple(blocks[-n_unfreeze:])
        for layer in model.layers:
            if layer.name.startswith(prefixes):
                bn = isinstance(layer, keras.layers.BatchNormalization)
                layer.trainable = hp.finetune_batchnorm or not bn
                if bn and hp.finetune_batchnorm:
                    layer.momentum = hp.bn_momentum
                unfrozen.append(layer.name)
        log(f"transfer: phase 2 unfreezes block(s) {', '.join(prefixes)} ({len(unfrozen)} layers)")
        _fit(model, tracker, "finetune", epochs_ft, hp.learning_rate_finetune, hp, ds)
    return {"model": model, "tracker": tracker, "image_size": image_size, "seconds": time.perf_counter() - t0,
            "bn_recalibration_batches": bn_batches, "unfrozen_layers": len(unfrozen)}


def train_scratch(template, data: DomainData, hp: Hyperparameters, image_size, ds, role: str) -> dict:
    model = scratch_model(template, hp, len(data.class_names), image_size)
    tracker = EpochTracker("scratch", role, hp.early_stopping_monitor, hp.early_stopping_patience, hp.scratch_budget)
    t0 = time.perf_counter()
    phase = "baseline" if role == "baseline" else "all"
    _fit(model, tracker, phase, hp.scratch_budget, hp.learning_rate_scratch, hp, ds)
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
    per_class = {c: (float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None)
                 for i, c in enumerate(class_names)}
    return {"loss": loss_sum / max(n, 1), "accuracy": float(np.trace(confusion) / max(n, 1)), "images": n,
            "per_class_accuracy": per_class, "confusion": confusion.tolist()}


# -- artifact -----------------------------------------------------------------------------------------------
def export_servable(model, image_size, export_dir: Path) -> None:
    """The TensorFlow Serving SavedModel: raw image bytes in, probabilities out (plus a uint8 signature)."""
    import keras
    import tensorflow as tf

    from training.data import decode_and_resize

    h, w = (int(s) for s in image_size)

    def decode_batch(image_bytes):
        return tf.map_fn(lambda b: decode_and_resize(b, (h, w)), image_bytes,
                         fn_output_signature=tf.TensorSpec([h, w, 3], tf.uint8))

    def serve_bytes(image_bytes):
        return {"probabilities": model(decode_batch(image_bytes), training=False)}

    def serve_images(image):
        return {"probabilities": model(image, training=False)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SERVING_SIGNATURE, serve_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.add_endpoint(IMAGES_SIGNATURE, serve_images,
                         input_signature=[tf.TensorSpec([None, h, w, 3], tf.uint8, name="image")])
    archive.write_out(str(export_dir), verbose=False)


def check_servable(export_dir: Path, model, split, image_size, limit: int = 16) -> float:
    """Run the exported signature on real files and compare with the Keras model: the artifact must agree."""
    import numpy as np
    import tensorflow as tf

    from training.data import decode_and_resize

    paths = split.paths[:limit]
    raw = [Path(p).read_bytes() for p in paths]
    fn = tf.saved_model.load(str(export_dir)).signatures[SERVING_SIGNATURE]
    served = fn(image_bytes=tf.constant(raw))["probabilities"].numpy()
    images = tf.stack([decode_and_resize(tf.constant(b), tuple(image_size)) for b in raw])
    direct = np.asarray(model(images, training=False))
    diff = float(np.abs(served - direct).max())
    if served.shape != direct.shape or diff > 1e-3:
        raise FinetuneError(f"exported model disagrees with the trained model (max difference {diff:.2e})")
    return diff


def write_artifact(model_dir: Path, model, class_names: list[str], image_size, meta: dict, version: str,
                   check_split) -> dict:
    model_dir.mkdir(parents=True, exist_ok=True)
    for stale in (model_dir / version, model_dir / "code"):
        shutil.rmtree(stale, ignore_errors=True)
    export_dir = model_dir / version
    export_servable(model, image_size, export_dir)
    diff = check_servable(export_dir, model, check_split, image_size)
    code = model_dir / "code"
    code.mkdir()
    shutil.copy2(Path(__file__).with_name("inference.py"), code / "inference.py")
    (code / "labels.json").write_text(json.dumps(class_names, indent=1))
    model.save(model_dir / "model.keras")
    (model_dir / "meta.json").write_text(json.dumps(meta, indent=2))
    return {"saved_model": str(export_dir), "serving_check_max_abs_diff": diff}


# -- the job ------------------------------------------------------------------------------------------------
def final_metrics(results: dict, primary_name: str, compared: bool) -> tuple[dict, list[str]]:
    """The job's metrics (names as in METRIC_DEFINITIONS) and the ``key=value`` pairs of the final log line."""
    primary = results[primary_name]
    metrics, final = {}, []
    if primary["train_loss"] is not None:  # the kept (best) epoch's, not the last one's
        metrics.update({"train:loss": primary["train_loss"], "train:accuracy": primary["train_accuracy"]})
        final += [f"train_loss={_num(primary['train_loss'])}", f"train_accuracy={_num(primary['train_accuracy'])}"]
    splits = [("val", "validation")] + ([("test", "test")] if "test_accuracy" in primary else [])
    for split, metric in splits:
        metrics.update({f"{metric}:accuracy": primary[f"{split}_accuracy"], f"{metric}:loss": primary[f"{split}_loss"]})
        final += [f"{split}_loss={_num(primary[f'{split}_loss'])}",
                  f"{split}_accuracy={_num(primary[f'{split}_accuracy'])}"]
    if compared:
        s = results["scratch"]
        for split, metric in splits:
            gain = primary[f"{split}_accuracy"] - s[f"{split}_accuracy"]
            gain_key = "transfer:gain" if split == "val" else "transfer:test_gain"
            metrics.update({f"scratch:{metric}:accuracy": s[f"{split}_accuracy"],
                            f"scratch:{metric}:loss": s[f"{split}_loss"], gain_key: gain})
            final += [f"scratch_{split}_loss={_num(s[f'{split}_loss'])}",
                      f"scratch_{split}_accuracy={_num(s[f'{split}_accuracy'])}",
                      f"transfer_{'gain' if split == 'val' else 'test_gain'}={_num(gain)}"]
    return metrics, final


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run(env: TrainingEnv, overrides: dict[str, str]) -> dict:
    hp = parse_hyperparameters({**env.raw_hyperparameters(), **overrides})
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if hp.threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(hp.threads)
            tf.config.threading.set_inter_op_parallelism_threads(hp.threads)
        except RuntimeError:  # TensorFlow already running in this process (an in-process caller)
            log(f"threads={hp.threads} ignored: TensorFlow is already initialised in this process")
    import keras

    # Keras warns when the validation pass ends (its length is unknown because unreadable files are dropped).
    warnings.filterwarnings("ignore", message=".*ran out of data.*")
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="finetune-"))
    try:
        pre = None
        pre_channel = env.channel("pretrained")
        if hp.init == "pretrained" or pre_channel.is_dir():
            pre = load_pretrained(locate_pretrained(pre_channel, workdir))
        image_size = tuple(pre.meta["image_size"]) if pre else (hp.image_size or (64, 64))
        if hp.image_size and tuple(hp.image_size) != tuple(image_size):
            raise FinetuneError(f"image size mismatch: hyperparameter image_size is {list(hp.image_size)} but the "
                                f"pretrained model takes {list(image_size)}")
        data = load_domain(env, hp)
        k = len(data.class_names)
        log(f"{k} classes ({', '.join(data.class_names)}); {len(data.train)} train / {len(data.val)} validation "
            f"images; image size {list(image_size)}; init {hp.init}"
            + (f"; pretrained {pre.meta.get('arch', '?')} from {pre.path}" if pre else "")
            + (f"; {len(data.skipped)} unreadable file(s) skipped" if data.skipped else ""))
        if hp.compare_scratch and hp.init == "scratch":
            log("compare_scratch ignored: init is already scratch")

        keras.utils.set_random_seed(hp.seed)
        ds = _datasets(data, image_size, hp, hp.seed)
        runs: dict[str, dict] = {}
        if hp.init == "pretrained":
            runs["transfer"] = train_transfer(pre, data, hp, ds, "primary")
            if hp.compare_scratch:
                keras.utils.set_random_seed(hp.seed)
                runs["scratch"] = train_scratch(runs["transfer"]["model"], data, hp, image_size, ds, "baseline")
        else:
            template = transfer_model(pre, k, hp) if pre else None
            keras.utils.set_random_seed(hp.seed)
            runs["scratch"] = train_scratch(template, data, hp, image_size, ds, "primary")
        primary_name = "transfer" if hp.init == "pretrained" else "scratch"

        results = {}
        for name, r in runs.items():
            tr = r["tracker"]
            results[name] = {"best_epoch": tr.best and tr.best["epoch"], "epochs_run": tr.epochs_done,
                             "train_loss": tr.best and tr.best["train_loss"],
                             "train_accuracy": tr.best and tr.best["train_accuracy"],
                             "seconds": round(r["seconds"], 2), "history": tr.history,
                             **{k2: r[k2] for k2 in ("bn_recalibration_batches", "unfrozen_layers") if k2 in r}}
            for split, dataset in (("val", ds.val), ("test", ds.test)):
                if dataset is not None:
                    ev = evaluate(r["model"], dataset, data.class_names)
                    prefix = "" if split == "val" else "test_"
                    results[name].update({f"{split}_accuracy": ev["accuracy"], f"{split}_loss": ev["loss"],
                                          f"{split}_images": ev["images"],
                                          f"{prefix}per_class_accuracy": ev["per_class_accuracy"],
                                          f"{prefix}confusion": ev["confusion"]})
        metrics, final = final_metrics(results, primary_name, hp.init == "pretrained" and "scratch" in results)
        primary = results[primary_name]

        model = runs[primary_name]["model"]
        meta = {
            "class_names": data.class_names,
            "image_size": list(image_size),
            "feature_layer": (pre.meta.get("feature_layer", "features") if pre else "features"),
            "blocks": list(pre.meta.get("blocks") or []) if pre else list(getattr(model, "blocks", []) or []),
            "arch": pre.meta.get("arch") if pre else hp.arch,
            "input": {"dtype": "uint8", "layout": "NHWC", "channels": 3, "range": [0, 255]},
            "init": hp.init,
            "val_accuracy": primary["val_accuracy"],
            "serving": {"version": hp.model_version, "signature": SERVING_SIGNATURE, "input": "image_bytes",
                        "output": "probabilities", "images_signature": IMAGES_SIGNATURE},
            "pretrained": ({k2: pre.meta.get(k2) for k2 in ("arch", "epoch", "val_accuracy", "manifest_sha256",
                                                             "manifest_fingerprint")} if pre else None),
            "hyperparameters": hp.model_dump(mode="json"),
            "keras_version": keras.__version__,
            "tensorflow_version": tf.__version__,
            "created_at": utcnow(),
        }
        artifact = write_artifact(env.model_dir, model, data.class_names, image_size, meta, hp.model_version, data.val)
        report = {
            "metrics": metrics,
            "primary": primary_name,
            "runs": results,
            "classes": data.class_names,
            "counts": data.counts,
            "image_size": list(image_size),
            "hyperparameters": hp.model_dump(mode="json"),
            "pretrained": meta["pretrained"],
            "artifact": artifact,
            "seconds": round(time.perf_counter() - started, 2),
            "finished_at": utcnow(),
        }
        env.output_data_dir.mkdir(parents=True, exist_ok=True)
        (env.output_data_dir / "metrics.json").write_text(json.dumps(report, indent=2))
        log(f"model written to {env.model_dir} (version {hp.model_version}); metrics in "
            f"{env.output_data_dir / 'metrics.json'}")
        log("final: " + " ".join(final))
        return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def parse_args(argv=None) -> tuple[argparse.Namespace, dict[str, str]]:
    p = argparse.ArgumentParser(
        description="Fine-tune the pretrained model on the SageMaker training-container contract. Any other "
                    "--name value pair overrides the hyperparameter of that name.")
    p.add_argument("--sm-root", default=None, help="SageMaker root directory (default: $SM_ROOT or /opt/ml)")
    args, rest = p.parse_known_args(argv)
    if rest and rest[0] == "train":  # `docker run IMAGE train`, as SageMaker starts a training image
        rest = rest[1:]
    overrides: dict[str, str] = {}
    i = 0
    while i < len(rest):
        tok = rest[i]
        if not tok.startswith("--") or len(tok) < 3:
            p.error(f"unexpected argument {tok!r}")
        key, eq, value = tok[2:].partition("=")
        if not eq:
            if i + 1 >= len(rest):
                p.error(f"{tok} needs a value")
            value = rest[i + 1]
            i += 1
        overrides[key.replace("-", "_")] = value
        i += 1
    return args, overrides


def main(argv=None) -> int:
    args, overrides = parse_args(argv)
    env = TrainingEnv.from_env(args.sm_root)
    env.clear_failure()
    # StopTrainingJob sends SIGTERM: stop now, as a failure SageMaker records as Stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run(env, overrides)
        return 0
    except (FinetuneError, ContractError) as err:
        reason = str(err)
    except SystemExit:
        raise
    except BaseException as err:  # noqa: BLE001 - any failure must leave its reason for DescribeTrainingJob
        traceback.print_exc()
        reason = f"{type(err).__name__}: {err}"
    log(f"error: {reason}")
    try:
        env.write_failure(reason)
    except OSError as err:
        log(f"could not write {env.failure_path}: {err}")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
