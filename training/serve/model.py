"""The served model: the newest SavedModel version's serving signature, the artifact's own handlers, the
TensorFlow Serving request/response shapes, and the header check that keeps decompression bombs out."""

from __future__ import annotations

import base64
import collections
import importlib.util
import io
import json
import sys
from pathlib import Path

SIGNATURE = "serving_default"
# The context object the SageMaker TFS container passes to input_handler/output_handler: the same fields, in
# the same order. Like the container, a request without Content-Type or Accept is taken as JSON.
Context = collections.namedtuple(
    "Context",
    "model_name model_version method rest_uri grpc_port channel custom_attributes request_content_type "
    "accept_header content_length",
)
DEFAULT_CONTENT_TYPE = DEFAULT_ACCEPT = "application/json"


def log(msg: str) -> None:
    print(f"[serve] {msg}", flush=True)


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class TFSResponse:
    """What ``output_handler`` receives: the parts of a ``requests.Response`` from TensorFlow Serving it uses."""

    def __init__(self, status_code: int, body):
        self.status_code = status_code
        self.content = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.headers = {"Content-Type": "application/json"}

    @property
    def text(self) -> str:
        return self.content.decode("utf-8")

    def json(self):
        return json.loads(self.content)


def image_pixels(raw: bytes) -> int:
    """Pixels a decode of ``raw`` would produce (width × height × frames), from its header alone."""
    from PIL import Image, UnidentifiedImageError

    # Pillow's own bomb check would refuse before the size is known; --max-image-pixels is the limit here.
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(io.BytesIO(raw)) as img:
            width, height = img.size
            frames = getattr(img, "n_frames", 1) if img.format == "GIF" else 1
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"unreadable image header: {err}") from None
    return width * height * max(1, frames)


def check_pixels(images: list[bytes], max_image: int, max_request: int) -> None:
    """Refuse images that would decode into more memory than allowed, before decoding any of them."""
    total = 0
    for i, raw in enumerate(images):
        pixels = image_pixels(raw)
        if pixels > max_image:
            raise ValueError(f"instance {i}: {pixels:,} pixels is over the {max_image:,}-pixel limit per image")
        total += pixels
    if total > max_request:
        raise ValueError(f"the request's images hold {total:,} pixels, over the {max_request:,}-pixel limit")


def latest_version(model_dir: Path) -> Path:
    """The highest numeric version directory holding a SavedModel, as TensorFlow Serving picks it."""
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file()]
    if not versions:
        raise FileNotFoundError(f"{model_dir} has no <version>/saved_model.pb")
    return max(versions, key=lambda p: int(p.name))


def load_handlers(model_dir: Path):
    """The artifact's ``code/inference.py`` as a module (its own directory on sys.path for its imports)."""
    path = model_dir / "code" / "inference.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("model_inference", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    spec.loader.exec_module(module)
    missing = [f for f in ("input_handler", "output_handler") if not callable(getattr(module, f, None))]
    if missing:
        raise AttributeError(f"{path} lacks {', '.join(missing)}")
    return module


class Model:
    def __init__(self, model_dir: Path, threads: int = 0):
        import tensorflow as tf

        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        self.tf = tf
        self.version_dir = latest_version(model_dir)
        self.version = self.version_dir.name
        self.name = model_dir.name or "model"
        loaded = tf.saved_model.load(str(self.version_dir))
        if SIGNATURE not in loaded.signatures:
            raise KeyError(f"{self.version_dir} has no {SIGNATURE!r} signature")
        self._loaded = loaded  # keeps the variables alive
        self.fn = loaded.signatures[SIGNATURE]
        inputs = self.fn.structured_input_signature[1]
        if len(inputs) != 1:
            raise ValueError(f"{SIGNATURE} must take one input, takes {sorted(inputs)}")
        self.input_name = next(iter(inputs))
        self.output_name = next(iter(self.fn.structured_outputs))
        self.handlers = load_handlers(model_dir)

    def predict(self, images: list[bytes]):
        out = self.fn(**{self.input_name: self.tf.constant(images, dtype=self.tf.string)})
        return out[self.output_name].numpy()

    def warm_up(self) -> None:
        png = self.tf.io.encode_png(self.tf.zeros([8, 8, 3], self.tf.uint8)).numpy()
        self.predict([png, png])


def _op_error_message(err: BaseException) -> str:
    """The op's own words from a TensorFlow error, without the graph-location boilerplate around them."""
    text = getattr(err, "message", None) or str(err)
    noise = ("Graph execution error", "Detected at node", "<stack traces", "[[")
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith(noise)]
    return lines[0] if lines else (text.strip().splitlines() or [type(err).__name__])[0]


def _instance_bytes(instance, input_name: str) -> bytes:
    if isinstance(instance, dict) and input_name in instance and len(instance) == 1:
        instance = instance[input_name]
    if isinstance(instance, dict) and "b64" in instance:
        return base64.b64decode(instance["b64"], validate=True)
    raise ValueError(f'instances must be {{"b64": ...}} objects for the string input {input_name!r}')
