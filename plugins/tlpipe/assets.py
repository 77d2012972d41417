"""The Asset that chains the two DAGs, and the exact shape of its events' ``extra``.

``general_pretraining`` emits one event on ``pretrained-model`` per exported model; ``transfer_learning_deploy``
is scheduled on it and reads the URIs from the triggering event:

    event = PretrainedModelEvent.model_validate(triggering_asset_events[PRETRAINED_MODEL][-1].extra)
"""

from __future__ import annotations

from airflow.sdk import Asset
from pydantic import BaseModel, ConfigDict, Field

from plugins.tlpipe.config import PipelineConfig

ASSET_NAME = "pretrained-model"


def pretrained_model_asset(cfg: PipelineConfig | None = None) -> Asset:
    """The Asset, identified by name alone: where the models go (bucket, prefix) is in each event's extra, so
    moving them does not make a new Asset that the deploy DAG is not scheduled on."""
    return Asset(name=ASSET_NAME, group="model")


class PretrainedModelEvent(BaseModel):
    """``extra`` of a ``pretrained-model`` event: where the model and the domain data are, and their lineage."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_uri: str = Field(description="s3://…/pretrained/<sha>/model.tar.gz (the best epoch's files at its root)")
    model_sha256: str
    manifest_uri: str = Field(description="s3://…/pretrained/<sha>/manifest.json (the curated dataset manifest)")
    metrics_uri: str = Field(description="s3://…/pretrained/<sha>/metrics.json (the best epoch's metrics)")
    domain_train_uri: str = Field(description="s3://…/domain/<fingerprint>/train/ (one folder per class)")
    domain_validation_uri: str = Field(description="s3://…/domain/<fingerprint>/validation/")
    domain_classes: list[str]
    dataset_fingerprint: str
    manifest_sha256: str
    checkpoint_uri: str = Field(description="the epoch directory (best.json's pointer) the model was exported from")
    epoch: int
    val_accuracy: float
    training_params: dict
    training_key: str
    dag_id: str
    run_id: str
