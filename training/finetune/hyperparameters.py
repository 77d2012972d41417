"""The job's hyperparameters (one typed model, parsed from SageMaker's strings), its log and its errors."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from training.contracts import BASELINE_POLICIES, DEFAULT_BASELINE_MARGIN, DEFAULT_BASELINE_POLICY
from training.sagemaker import user_hyperparameters

SERVING_SIGNATURE = "serving_default"
# The transfer recipes the job can search over (training.finetune.recipes), in the order they are tried.
RECIPES = ("linear_probe", "top_blocks", "full")
Recipe = Literal["linear_probe", "top_blocks", "full"]
IMAGES_SIGNATURE = "predict_images"


class FinetuneError(RuntimeError):
    """Bad input to the job: the message is the job's failure reason."""


class Hyperparameters(BaseModel):
    """Every knob of the job; see the module docstring for what each does."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    init: Literal["pretrained", "scratch"] = "pretrained"
    recipes: tuple[Recipe, ...] = RECIPES
    compare_scratch: bool = False
    baseline_policy: Literal[BASELINE_POLICIES] = DEFAULT_BASELINE_POLICY
    baseline_margin: float = Field(DEFAULT_BASELINE_MARGIN, ge=0, le=1)
    epochs_head: int = Field(10, ge=0)
    epochs_finetune: int = Field(40, ge=0)
    unfreeze_blocks: int = Field(1, ge=0)
    learning_rate_head: float = Field(3e-3, gt=0)
    learning_rate_finetune: float = Field(1e-4, gt=0)
    backbone_lr_ratio: float = Field(0.3, gt=0, le=1)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    learning_rate_scratch: float = Field(1e-3, gt=0)
    scratch_epochs: int = Field(0, ge=0)
    batch_size: int = Field(32, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: bool = True
    early_stopping_patience: int = Field(12, ge=0)
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

    @field_validator("recipes", mode="before")
    @classmethod
    def _recipes(cls, v):
        names = [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else list(v)
        if not names:
            raise ValueError(f"name at least one recipe of {', '.join(RECIPES)}")
        if len(set(names)) != len(names):
            raise ValueError("a recipe is named twice")
        return tuple(names)

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
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'hyperparameters'}: {e['msg']}" for e in err.errors()
        )
        raise FinetuneError(f"invalid hyperparameters: {problems}") from None
    except ValueError as err:
        raise FinetuneError(f"invalid hyperparameters: {err}") from None


def log(msg: str) -> None:
    print(f"[finetune] {msg}", flush=True)


def metric_value(x: float) -> str:
    """Fixed-point, so the MetricDefinitions regexes never meet an exponent."""
    return f"{x:.6f}" if math.isfinite(x) else "nan"
