"""The pretraining DAG's Params: JSON schemas with defaults from the active configuration profile.

Airflow validates a run's ``conf`` against these schemas when the run is created (the REST API answers 400
on a violation), so a bad value never reaches a task.
"""

from __future__ import annotations

from airflow.sdk import Param

from plugins.tlpipe.config import PipelineConfig

LAUNCHERS = ["auto", "pod", "mpijob", "local"]
MODELS = ["small_resnet", "resnet50"]
CLASS_NAME = r"^[^/\\]+$"


def pretraining_params(cfg: PipelineConfig) -> dict[str, Param]:
    d, t = cfg.dataset, cfg.training
    return {
        "dataset_uri": Param(
            d.uri,
            type="string",
            minLength=1,
            pattern=r"^/.+$",
            title="Dataset",
            description="ImageFolder tree (absolute path where the data lives)",
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
        "epochs": Param(t.epochs, type="integer", minimum=1, maximum=1000),
        "workers": Param(
            t.workers,
            type="integer",
            minimum=1,
            maximum=256,
            description="Horovod workers: processes (local) or pods (Kubernetes)",
        ),
        "gpus_per_worker": Param(t.gpus_per_worker, type="integer", minimum=0, maximum=16),
        "image_size": Param(t.image_size, type="integer", minimum=32, maximum=1024, multipleOf=8),
        "batch_size": Param(t.batch_size, type="integer", minimum=1, maximum=4096, description="per process"),
        "learning_rate": Param(t.learning_rate, type="number", exclusiveMinimum=0, maximum=10),
        "model": Param(t.model, type="string", enum=MODELS),
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
