"""One declaration per pretraining knob: the flags of ``training.pretrain``, the ``TrainingSpec``, the configuration
section, the run's checked Params and their JSON schemas all say what ``training.contracts.PRETRAIN_KNOBS`` says."""

from __future__ import annotations

import typing

import annotated_types
import pytest

from plugins.tlpipe.config import ModelArch, TrainingConfig, load_config
from plugins.tlpipe.pretraining.params import KNOB_PARAMS, pretraining_params
from plugins.tlpipe.pretraining.spec import TrainingSpec
from plugins.tlpipe.pretraining.steps import RunParams
from training.contracts import MODEL_ARCHS, PRETRAIN_KNOBS
from training.pretrain.cli import parse_args


def lower_bounds(field) -> dict:
    out = {}
    for meta in field.metadata:
        if isinstance(meta, annotated_types.Ge):
            out["minimum"] = meta.ge
        if isinstance(meta, annotated_types.Gt):
            out["exclusive_minimum"] = meta.gt
    return out


@pytest.mark.parametrize("name", sorted(PRETRAIN_KNOBS))
def test_every_layer_says_what_the_knob_says(name):
    knob = PRETRAIN_KNOBS[name]
    expected = {
        k: v for k, v in (("minimum", knob.minimum), ("exclusive_minimum", knob.exclusive_minimum)) if v is not None
    }
    for model in (TrainingSpec, TrainingConfig, RunParams):
        field = model.model_fields[name]
        assert lower_bounds(field) == expected, f"{model.__name__}.{name}"
        if not field.is_required():
            assert field.default == knob.default, f"{model.__name__}.{name}"
    if name in ("epochs", "model", "image_size", "batch_size", "learning_rate"):  # the job's own flags
        args = parse_args(["--manifest", "m", "--checkpoint-dir", "c"])
        assert getattr(args, name) == knob.default
        assert parse_args(["--manifest", "m", "--checkpoint-dir", "c", knob.flag, str(knob.default)]) == args
    schema = pretraining_params(load_config(profile="production", environ={}))[name].schema
    assert schema.get("minimum") == knob.minimum and schema.get("exclusiveMinimum") == knob.exclusive_minimum
    assert schema.get("maximum") == knob.maximum
    assert schema.get("enum", []) == list(knob.choices)


def test_the_table_covers_the_params_and_the_architectures():
    assert set(KNOB_PARAMS) == set(PRETRAIN_KNOBS)
    assert typing.get_args(ModelArch) == MODEL_ARCHS == PRETRAIN_KNOBS["model"].choices
    # The profile defaults are values of the knobs, so they pass the Params' own schemas.
    for profile in ("local", "production"):
        params = pretraining_params(load_config(profile=profile, environ={}))
        for name in KNOB_PARAMS:
            params[name].resolve(suppress_exception=False)
