"""The model artifact: the TensorFlow Serving SavedModel (checked against Keras), the handlers, the Keras model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from training import inference
from training.finetune.hyperparameters import IMAGES_SIGNATURE, SERVING_SIGNATURE, FinetuneError


def export_servable(model, image_size, export_dir: Path) -> None:
    """The TensorFlow Serving SavedModel: raw image bytes in, probabilities out (plus a uint8 signature)."""
    import keras
    import tensorflow as tf

    from training.data import decode_and_resize

    h, w = (int(s) for s in image_size)

    def decode_batch(image_bytes):
        return tf.map_fn(
            lambda b: decode_and_resize(b, (h, w)), image_bytes, fn_output_signature=tf.TensorSpec([h, w, 3], tf.uint8)
        )

    def serve_bytes(image_bytes):
        return {"probabilities": model(decode_batch(image_bytes), training=False)}

    def serve_images(image):
        return {"probabilities": model(image, training=False)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        SERVING_SIGNATURE, serve_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")]
    )
    archive.add_endpoint(
        IMAGES_SIGNATURE, serve_images, input_signature=[tf.TensorSpec([None, h, w, 3], tf.uint8, name="image")]
    )
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


def write_artifact(
    model_dir: Path, model, class_names: list[str], image_size, meta: dict, version: str, check_split
) -> dict:
    model_dir.mkdir(parents=True, exist_ok=True)
    for stale in (model_dir / version, model_dir / "code"):
        shutil.rmtree(stale, ignore_errors=True)
    export_dir = model_dir / version
    export_servable(model, image_size, export_dir)
    diff = check_servable(export_dir, model, check_split, image_size)
    code = model_dir / "code"
    code.mkdir()
    # The endpoint's handlers travel inside the artifact (the TFS container's code/inference.py contract).
    shutil.copy2(inference.__file__, code / "inference.py")
    (code / "labels.json").write_text(json.dumps(class_names, indent=1))
    model.save(model_dir / "model.keras")
    (model_dir / "meta.json").write_text(json.dumps(meta, indent=2))
    return {"saved_model": str(export_dir), "serving_check_max_abs_diff": diff}
