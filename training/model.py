"""Keras 3 classification models whose preprocessing lives inside the model.

Every model takes raw ``uint8[N, H, W, 3]`` images (decoded and resized, nothing else) and returns class
probabilities. Scaling to [-1, 1] is the model's first layer, so no serving code re-implements it. The global
pooling layer is named ``features``: that is where a new head attaches for transfer learning, and
``meta.json`` records it together with the block names, ordered from input to output, so fine-tuning can
unfreeze the top blocks by name.
"""

from __future__ import annotations

import math

import keras
from keras import layers

FEATURE_LAYER = "features"
HEAD_LAYER = "predictions"
ARCHS = ("small_resnet", "resnet50")
# Keras' default (0.99) leaves the moving statistics far from the data after the few hundred steps of a short
# run, so evaluation lags training badly; 0.9 tracks them within a few dozen steps.
BN_MOMENTUM = 0.9


@keras.saving.register_keras_serializable(package="tlpipe")
class Preprocess(layers.Layer):
    """``uint8`` pixels -> ``[-1, 1]``; at training time also a random brightness and contrast per image.

    The jitter is folded into the same multiply-add as the scaling, so photometric augmentation costs one
    mean per image on the accelerator instead of several float passes in the CPU input pipeline. It is not
    clipped: a jittered pixel may land slightly outside ``[-1, 1]``, which the network does not mind.
    Inference (``training=False``, and therefore every exported model) is the plain scaling. ``jitter`` turns
    the augmentation off (fine-tuning without augmentation, BatchNorm re-estimation).
    """

    def __init__(self, brightness: float = 20.0, contrast: float = 0.2, jitter: bool = True, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.brightness, self.contrast, self.jitter, self.seed = brightness, contrast, jitter, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=False):
        from keras import ops

        x = ops.cast(x, self.compute_dtype)
        if not (training and self.jitter):
            return x * (1.0 / 127.5) - 1.0
        shape = (ops.shape(x)[0], 1, 1, 1)
        c = keras.random.uniform(
            shape, 1.0 - self.contrast, 1.0 + self.contrast, dtype=self.compute_dtype, seed=self.seed_generator
        )
        b = keras.random.uniform(
            shape, -self.brightness, self.brightness, dtype=self.compute_dtype, seed=self.seed_generator
        )
        mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
        # ((x - mean) * c + mean + b) / 127.5 - 1, as one multiply-add per pixel.
        return x * (c / 127.5) + ((mean * (1.0 - c) + b) / 127.5 - 1.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "brightness": self.brightness,
            "contrast": self.contrast,
            "jitter": self.jitter,
            "seed": self.seed,
        }


def set_jitter(model: keras.Model, on: bool) -> bool:
    """Switch the training-time photometric jitter of ``model``'s input layer; returns the previous setting."""
    layer = next((l for l in model.layers if isinstance(l, Preprocess)), None)
    if layer is None:
        return False
    previous, layer.jitter = layer.jitter, on
    return previous


def _residual_block(x, filters: int, stride: int, name: str):
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn2")(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_proj")(shortcut)
        shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def _small_resnet(x, width: int = 32):
    """A ResNet-style backbone sized for CPU demos: stem + 3 stages, about 0.7M parameters at width 32."""
    x = layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = _residual_block(x, width, 1, "stage1_block1")
    x = _residual_block(x, width * 2, 2, "stage2_block1")
    x = _residual_block(x, width * 4, 2, "stage3_block1")
    x = _residual_block(x, width * 4, 1, "stage3_block2")
    return x, ["stem", "stage1", "stage2", "stage3"]


def _resnet50(x):
    base = keras.applications.ResNet50(include_top=False, weights=None, input_tensor=x)
    return base.output, ["conv1", "conv2", "conv3", "conv4", "conv5"]


def build_model(
    num_classes: int,
    image_size: tuple[int, int] = (64, 64),
    arch: str = "small_resnet",
    dropout: float = 0.2,
    width: int = 32,
) -> keras.Model:
    if arch not in ARCHS:
        raise ValueError(f"unknown model {arch!r}; choose one of {', '.join(ARCHS)}")
    inputs = keras.Input(shape=(*image_size, 3), dtype="uint8", name="image")
    x = Preprocess(name="preprocess")(inputs)
    if arch == "small_resnet":
        x, blocks = _small_resnet(x, width)
    else:
        x, blocks = _resnet50(x)
    features = layers.GlobalAveragePooling2D(name=FEATURE_LAYER)(x)
    outputs = attach_head(features, num_classes, dropout)
    model = keras.Model(inputs, outputs, name=arch)
    model.blocks = blocks  # not serialised; meta.json carries it
    return model


def attach_head(features, num_classes: int, dropout: float = 0.2, name: str = HEAD_LAYER):
    x = layers.Dropout(dropout, name=f"{name}_dropout")(features) if dropout else features
    # float32 output even under mixed precision, so the softmax is numerically stable.
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name=name)(x)


def block_names(model: keras.Model, prefixes: list[str]) -> dict[str, list[str]]:
    """Layer names of each block (by name prefix), for freezing and unfreezing."""
    return {p: [l.name for l in model.layers if l.name.startswith(p)] for p in prefixes}


@keras.saving.register_keras_serializable(package="tlpipe")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to ``peak`` over ``warmup_steps``, then cosine decay to ``floor * peak``.

    The peak is the base learning rate times the Horovod world size (linear scaling rule); the warmup keeps
    the first large-batch steps from diverging.
    """

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, floor: float = 0.01):
        self.peak = float(peak)
        self.warmup_steps = int(max(1, warmup_steps))
        self.total_steps = int(max(self.warmup_steps + 1, total_steps))
        self.floor = float(floor)

    def __call__(self, step):
        from keras import ops

        step = ops.cast(step, "float32")
        warm = self.peak * (step + 1.0) / self.warmup_steps
        progress = ops.clip((step - self.warmup_steps) / (self.total_steps - self.warmup_steps), 0.0, 1.0)
        cosine = self.peak * (self.floor + (1 - self.floor) * 0.5 * (1.0 + ops.cos(math.pi * progress)))
        return ops.where(step < self.warmup_steps, warm, cosine)

    def get_config(self):
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "floor": self.floor,
        }
