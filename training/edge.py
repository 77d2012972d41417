"""Export the fine-tuned model to TensorFlow Lite for edge devices, and check it against the SavedModel.

    python -m training.edge --model-dir D --out model.tflite [--quantize float16|int8|none]
                            [--validation-dir V] [--min-agreement 0.99]

``D`` is the untarred ``model.tar.gz`` root written by ``training.finetune``. The TFLite model comes from
the SavedModel's ``predict_images`` signature: it takes ``uint8[N, H, W, 3]`` decoded, resized RGB images
(image decoding is not a TFLite builtin; on the device, decode and resize to H x W, nothing else: scaling
is inside the model) and returns ``probabilities: float32[N, K]``. ``N`` is dynamic (resize the input).

  --quantize float16   weights stored as float16, computation in float32 (half the size; the default)
  --quantize int8      full-integer: weights and activations int8, calibrated on a representative dataset
                       (``--representative-dir``, default the validation images; up to
                       ``--representative-count``); uint8 input, float32 output
  --quantize none      float32

Parity check: with ``--validation-dir`` (an ImageFolder tree, or any folder of images) the TFLite model
and the SavedModel's ``serving_default`` (the endpoint's path, from the same image bytes) classify every
image there; the export fails (exit status 1) unless their top-1 labels agree on at least
``--min-agreement`` of them (default 0.99; 0.95 for int8, whose rounding moves a few borderline images).

Beside the model it writes ``<out>.json``: labels, input shape and type, quantization, parity figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

IMAGES_SIGNATURE = "predict_images"
SERVING_SIGNATURE = "serving_default"
DEFAULT_MIN_AGREEMENT = {"none": 0.99, "float16": 0.99, "int8": 0.95}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


def log(msg: str) -> None:
    print(f"[edge] {msg}", flush=True)


class EdgeError(RuntimeError):
    pass


def image_files(root: Path, limit: int = 0) -> list[Path]:
    from training.imageio import check_image

    files = [
        p
        for p in sorted(Path(root).rglob("*"))
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and check_image(p)[0]
    ]
    return files[:limit] if limit else files


def decode(paths: list[Path], image_size) -> "object":
    """``uint8[N, H, W, 3]`` through the training/serving decoder, so both sides see identical pixels."""
    import numpy as np
    import tensorflow as tf

    from training.data import decode_and_resize

    return np.stack([decode_and_resize(tf.constant(p.read_bytes()), tuple(image_size)).numpy() for p in paths])


def convert(version_dir: Path, quantize: str, representative=None) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(version_dir), signature_keys=[IMAGES_SIGNATURE])
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        if representative is None or len(representative) == 0:
            raise EdgeError("int8 quantization needs representative images (--representative-dir)")

        def dataset():
            for image in representative:
                yield {"image": image[None]}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
    elif quantize != "none":
        raise EdgeError(f"unknown quantization {quantize!r}")
    return converter.convert()


class TFLiteModel:
    def __init__(self, model_bytes: bytes, threads: int | None = None):
        try:  # the LiteRT runtime devices use, when installed; TensorFlow's own copy otherwise
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            import warnings

            import tensorflow as tf

            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
            Interpreter = tf.lite.Interpreter
        self.interpreter = Interpreter(model_content=model_bytes, num_threads=threads)
        self.runner = self.interpreter.get_signature_runner(IMAGES_SIGNATURE)
        details = self.runner.get_input_details()["image"]
        self.input_dtype = details["dtype"]
        self.input_shape = [int(s) for s in details["shape_signature"]]

    def predict(self, images, batch_size: int = 32):
        import numpy as np

        out = []
        for i in range(0, len(images), batch_size):
            batch = np.ascontiguousarray(images[i : i + batch_size], dtype=self.input_dtype)
            out.append(self.runner(image=batch)["probabilities"])
        return np.concatenate(out)


def parity(version_dir: Path, tflite: TFLiteModel, paths: list[Path], image_size, batch_size: int = 32) -> dict:
    """Top-1 agreement between the SavedModel's serving signature (image bytes) and TFLite (decoded uint8)."""
    import numpy as np
    import tensorflow as tf

    serve = tf.saved_model.load(str(version_dir)).signatures[SERVING_SIGNATURE]
    ref = np.concatenate(
        [
            serve(image_bytes=tf.constant([p.read_bytes() for p in paths[i : i + batch_size]]))["probabilities"].numpy()
            for i in range(0, len(paths), batch_size)
        ]
    )
    got = tflite.predict(decode(paths, image_size), batch_size)
    agree = ref.argmax(-1) == got.argmax(-1)
    return {
        "images": len(paths),
        "top1_agreement": float(agree.mean()),
        "disagreements": [str(p) for p, ok in zip(paths, agree) if not ok][:20],
        "max_abs_probability_diff": float(np.abs(ref - got).max()),
    }


def export(
    model_dir: Path,
    out: Path,
    quantize: str = "float16",
    validation_dir: Path | None = None,
    representative_dir: Path | None = None,
    representative_count: int = 200,
    min_agreement: float | None = None,
) -> dict:
    from training.serve import latest_version

    model_dir = Path(model_dir)
    version_dir = latest_version(model_dir)
    meta = json.loads((model_dir / "meta.json").read_text()) if (model_dir / "meta.json").is_file() else {}
    labels_path = model_dir / "code" / "labels.json"
    labels = json.loads(labels_path.read_text()) if labels_path.is_file() else meta.get("class_names")
    image_size = meta.get("image_size")
    if image_size is None:  # from the signature itself
        import tensorflow as tf

        spec = tf.saved_model.load(str(version_dir)).signatures[IMAGES_SIGNATURE].structured_input_signature[1]["image"]
        image_size = [int(spec.shape[1]), int(spec.shape[2])]

    representative = None
    if quantize == "int8":
        rep_dir = representative_dir or validation_dir
        if rep_dir is None:
            raise EdgeError("int8 quantization needs --representative-dir (or --validation-dir)")
        rep_paths = image_files(rep_dir, representative_count)
        if not rep_paths:
            raise EdgeError(f"no images in {rep_dir}")
        representative = decode(rep_paths, image_size)
        log(f"calibrating int8 on {len(rep_paths)} images from {rep_dir}")

    t0 = time.perf_counter()
    model_bytes = convert(version_dir, quantize, representative)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model_bytes)
    tfl = TFLiteModel(model_bytes)
    info = {
        "model": str(out),
        "bytes": len(model_bytes),
        "quantize": quantize,
        "source": str(version_dir),
        "labels": labels,
        "image_size": list(image_size),
        "input": {
            "name": "image",
            "dtype": str(tfl.input_dtype.__name__),
            "shape": tfl.input_shape,
            "layout": "NHWC",
            "range": [0, 255],
        },
        "output": {"name": "probabilities", "dtype": "float32"},
        "convert_seconds": round(time.perf_counter() - t0, 2),
    }
    log(f"wrote {out} ({len(model_bytes) / 1024:.0f} KiB, {quantize}) in {info['convert_seconds']:.1f}s")
    if validation_dir is not None:
        paths = image_files(validation_dir)
        if not paths:
            raise EdgeError(f"no images in {validation_dir}")
        threshold = DEFAULT_MIN_AGREEMENT[quantize] if min_agreement is None else min_agreement
        check = parity(version_dir, tfl, paths, image_size)
        check["min_agreement"] = threshold
        check["passed"] = check["top1_agreement"] >= threshold
        info["parity"] = check
        log(
            f"parity on {check['images']} images: top-1 agreement {check['top1_agreement']:.4f} "
            f"(need {threshold:.2f}); max probability difference {check['max_abs_probability_diff']:.4f}"
        )
    Path(f"{out}.json").write_text(json.dumps(info, indent=2))
    if "parity" in info and not info["parity"]["passed"]:
        raise EdgeError(
            f"TFLite top-1 agrees with the SavedModel on {info['parity']['top1_agreement']:.2%} of the "
            f"validation images, below {info['parity']['min_agreement']:.0%}"
        )
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="TensorFlow Lite export with a parity check (see module docstring).")
    p.add_argument("--model-dir", required=True, type=Path, help="untarred model.tar.gz root")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--quantize", default="float16", choices=["float16", "int8", "none"])
    p.add_argument("--validation-dir", type=Path, help="images for the parity check (ImageFolder or flat)")
    p.add_argument("--representative-dir", type=Path, help="int8 calibration images (default: --validation-dir)")
    p.add_argument("--representative-count", type=int, default=200)
    p.add_argument("--min-agreement", type=float, default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        export(
            args.model_dir,
            args.out,
            args.quantize,
            args.validation_dir,
            args.representative_dir,
            args.representative_count,
            args.min_agreement,
        )
    except (EdgeError, FileNotFoundError) as err:
        log(f"error: {err}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
