"""training.edge: TFLite export from the fine-tuned artifact, quantization options, parity with the SavedModel."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from training import edge


@pytest.mark.slow
def test_float16_export_takes_uint8_and_matches_the_savedmodel(finetuned, world, tmp_path):
    out = tmp_path / "model.tflite"
    assert (
        edge.main(
            [
                "--model-dir",
                str(finetuned["model_dir"]),
                "--out",
                str(out),
                "--validation-dir",
                str(world["validation"]),
            ]
        )
        == 0
    )
    info = json.loads((tmp_path / "model.tflite.json").read_text())
    assert info["quantize"] == "float16" and info["labels"] == world["classes"]
    assert info["input"]["dtype"] == "uint8" and info["input"]["shape"] == [-1, 32, 32, 3]
    n_val = sum(1 for p in world["validation"].rglob("*") if p.is_file())
    assert info["parity"]["images"] == n_val
    assert info["parity"]["top1_agreement"] >= 0.99 and info["parity"]["passed"]

    # The file on disk runs on its own: dynamic batch, uint8 in, probabilities out.
    model = edge.TFLiteModel(out.read_bytes())
    images = edge.decode(sorted(p for p in world["validation"].rglob("*") if p.is_file())[:3], (32, 32))
    assert images.dtype == np.uint8
    probs = model.predict(images)
    assert probs.shape == (3, len(world["classes"]))
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-3)


@pytest.mark.slow
def test_int8_export_is_smaller_and_calibrated(finetuned, world, tmp_path):
    f16 = tmp_path / "f16.tflite"
    i8 = tmp_path / "i8.tflite"
    edge.export(finetuned["model_dir"], f16, "float16")
    # Parity over every domain image (train and validation, 40-odd): on the 13 validation images alone a single
    # near-tie flipped by int8 rounding is 8 points, and the check would measure luck rather than calibration.
    parity = tmp_path / "parity"
    for split in ("train", "validation"):
        shutil.copytree(world[split], parity, dirs_exist_ok=True)
    info = edge.export(
        finetuned["model_dir"],
        i8,
        "int8",
        validation_dir=parity,
        representative_dir=world["train"],
        representative_count=64,
    )
    assert info["parity"]["images"] >= 40
    assert info["input"]["dtype"] == "uint8"
    assert i8.stat().st_size < f16.stat().st_size
    assert info["parity"]["top1_agreement"] >= info["parity"]["min_agreement"] == 0.95
    interp = edge.TFLiteModel(i8.read_bytes()).interpreter
    kinds = {d["dtype"] for d in interp.get_tensor_details()}
    assert np.int8 in kinds  # activations really are quantized


@pytest.mark.slow
def test_failed_parity_fails_the_export(finetuned, world, tmp_path, capsys):
    out = tmp_path / "m.tflite"
    rc = edge.main(
        [
            "--model-dir",
            str(finetuned["model_dir"]),
            "--out",
            str(out),
            "--quantize",
            "none",
            "--validation-dir",
            str(world["validation"]),
            "--min-agreement",
            "1.01",
        ]
    )
    assert rc == 1
    assert "below 101%" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.tflite.json").read_text())["parity"]["passed"] is False


def test_int8_without_images_is_refused(finetuned, tmp_path, capsys):
    assert (
        edge.main(
            ["--model-dir", str(finetuned["model_dir"]), "--out", str(tmp_path / "m.tflite"), "--quantize", "int8"]
        )
        == 1
    )
    assert "representative" in capsys.readouterr().out
