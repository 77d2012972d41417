"""The pretraining DAG's Params: JSON schemas with defaults from the active configuration profile.

Airflow validates a run's ``conf`` against these schemas when the run is created (the REST API answers 400
on a violation), so a bad value never reaches a task.
"""

from __future__ import annotations

from airflow.sdk import Param

from plugins.tlpipe.config import PipelineConfig
from plugins.tlpipe.schemas import whole
from training.contracts import PRETRAIN_KNOBS

LAUNCHERS = ["auto", "pod", "mpijob", "local"]
CLASS_NAME = whole(r"^[^/\\]+$")
# An absolute path with no ".." segment; the prepare task then confines it to the configured data roots.
DATASET_PATH = whole(r"^(?!.*(?:^|/)\.\.(?:/|$))/.+$")
# The training knobs among the Params, in the order the UI shows them; their bounds are training.contracts'.
KNOB_PARAMS = ("epochs", "workers", "gpus_per_worker", "image_size", "batch_size", "learning_rate", "model")
# What the Params add to a knob's own bounds: image sizes the convolution stacks divide evenly.
PARAM_EXTRAS = {"image_size": {"multipleOf": 8}}


def knob_param(name: str, default) -> Param:
    """The JSON-schema Param of a pretraining knob: type, bounds and choices from ``PRETRAIN_KNOBS``."""
    knob = PRETRAIN_KNOBS[name]
    schema: dict = {"type": {int: "integer", float: "number", str: "string"}[knob.type]}
    for key, value in (
        ("minimum", knob.minimum),
        ("exclusiveMinimum", knob.exclusive_minimum),
        ("maximum", knob.maximum),
    ):
        if value is not None:
            schema[key] = value
    if knob.choices:
        schema["enum"] = list(knob.choices)
    return Param(default, description=knob.help, **schema, **PARAM_EXTRAS.get(name, {}))


def pretraining_params(cfg: PipelineConfig) -> dict[str, Param]:
    d, t = cfg.dataset, cfg.training
    return {
        "dataset_uri": Param(
            d.uri,
            type="string",
            minLength=1,
            pattern=DATASET_PATH,
            title="Dataset",
            description="ImageFolder tree: an absolute path below one of the configured data roots (dataset.roots)",
        ),
        "min_images_per_class": Param(
            d.min_images_per_class,
            type="integer",
            minimum=1,
            maximum=1_000_000,
            description="classes with fewer valid images are not pretrained on",
        ),
        "domain_classes": Param(
            d.domain_classes,
            description="how many of the dropped classes to hold out for transfer learning, or their names",
            oneOf=[
                {"type": "integer", "minimum": 0, "maximum": 10_000},
                {
                    "type": "array",
                    "minItems": 1,
                    "uniqueItems": True,
                    "items": {"type": "string", "minLength": 1, "pattern": CLASS_NAME},
                },
            ],
        ),
        "val_fraction": Param(d.val_fraction, type="number", exclusiveMinimum=0, exclusiveMaximum=1),
        **{name: knob_param(name, getattr(t, name)) for name in KNOB_PARAMS},
        "launcher": Param(
            t.launcher,
            type="string",
            enum=LAUNCHERS,
            description="auto: local in the local profile, else pod (1 worker) or mpijob",
        ),
        "force": Param(
            False, type="boolean", description="train even when the data and parameters match the last exported model"
        ),
    }
