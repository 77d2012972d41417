"""Request and response handlers of the fine-tuned model, in the SageMaker TensorFlow Serving container's form.

Fine-tuning copies this file into the model artifact as ``code/inference.py``, next to ``code/labels.json``
(the class names, in output order). The managed TFS container calls ``input_handler`` before and
``output_handler`` after its TensorFlow Serving predict; ``python -m training.serve`` calls the same two
functions around a local predict, so one file defines the endpoint's protocol in both places. It needs only
the standard library, because the TFS container has nothing else of this project.

Requests (``Content-Type``):
  application/json                        {"instances": [{"b64": "<base64 JPEG/PNG>"}, ...]}
                                          (also {"image_bytes": {"b64": ...}} instances, or bare base64 strings)
  application/x-image, image/jpeg, image/png, image/gif, image/bmp
                                          the raw bytes of one image
Response (``application/json``):
  {"predictions": [[{"label": "circle-dots", "probability": 0.93}, ...top-k], ...one list per instance]}

``top_k`` is 5 (at most the number of classes); ``top_k=N`` in the ``X-Amzn-SageMaker-Custom-Attributes``
header or the ``TLPIPE_TOP_K`` environment variable changes it.

Errors raise ``RequestError`` subclasses whose ``status`` is the HTTP status the local server answers with
(400 bad request, 415 unsupported media type); the TFS container answers any handler exception itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import os

DEFAULT_TOP_K = 5
JSON_TYPES = ("application/json",)
IMAGE_TYPES = ("application/x-image", "image/jpeg", "image/png", "image/gif", "image/bmp", "application/octet-stream")
# Formats the serving signature decodes (tf.io.decode_image): checked up front so one bad instance is refused
# before it reaches a batch.
MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")

_labels: list[str] | None = None


class RequestError(ValueError):
    status = 400


class UnsupportedMediaType(RequestError):
    status = 415


class PredictionError(RequestError):
    """The model server refused the request (e.g. an image that does not decode)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def labels() -> list[str]:
    global _labels
    if _labels is None:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "labels.json")) as f:
            _labels = json.load(f)
    return _labels


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _read(data) -> bytes:
    if data is None:
        return b""
    if hasattr(data, "read"):
        data = data.read()
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def _check_image(raw: bytes, where: str) -> None:
    if not raw:
        raise RequestError(f"{where}: empty image")
    if not raw.startswith(MAGIC):
        raise RequestError(f"{where}: not a JPEG, PNG, GIF or BMP image")


def _b64(text, where: str) -> bytes:
    if not isinstance(text, str):
        raise RequestError(f"{where}: expected a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(f"{where}: invalid base64 ({err})") from None


def _instance_bytes(instance, i: int) -> bytes:
    where = f"instance {i}"
    if isinstance(instance, dict) and "image_bytes" in instance and len(instance) == 1:
        instance = instance["image_bytes"]
    if isinstance(instance, dict) and set(instance) == {"b64"}:
        raw = _b64(instance["b64"], where)
    elif isinstance(instance, str):
        raw = _b64(instance, where)
    else:
        raise RequestError(f'{where}: expected {{"b64": "<base64 image>"}}')
    _check_image(raw, where)
    return raw


def parse_request(body: bytes, content_type: str | None) -> list[bytes]:
    """The images of one request, validated; raises ``RequestError`` / ``UnsupportedMediaType``."""
    media = _media_type(content_type)
    if media in JSON_TYPES:
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RequestError(f"malformed JSON: {err}") from None
        instances = doc.get("instances") if isinstance(doc, dict) else None
        if not isinstance(instances, list) or not instances:
            raise RequestError('expected {"instances": [{"b64": "<base64 image>"}, ...]} with at least one instance')
        return [_instance_bytes(inst, i) for i, inst in enumerate(instances)]
    if media in IMAGE_TYPES:
        _check_image(body, "request body")
        return [body]
    raise UnsupportedMediaType(
        f"unsupported content type {content_type!r}; use application/json or application/x-image"
    )


def tfs_request(images: list[bytes]) -> str:
    """The TensorFlow Serving REST predict request for the serving signature ``image_bytes: string[None]``."""
    return json.dumps(
        {
            "signature_name": "serving_default",
            "instances": [{"b64": base64.b64encode(b).decode("ascii")} for b in images],
        }
    )


def _top_k(context) -> int:
    k = DEFAULT_TOP_K
    env = os.environ.get("TLPIPE_TOP_K")
    if env and env.strip().isdigit():
        k = int(env)
    for item in (getattr(context, "custom_attributes", None) or "").split(","):
        key, _, value = item.partition("=")
        if key.strip() == "top_k" and value.strip().isdigit():
            k = int(value)
    return max(1, k)


def format_predictions(probabilities, k: int) -> list[list[dict]]:
    names = labels()
    k = min(k, len(names))
    out = []
    for row in probabilities:
        order = sorted(range(len(row)), key=lambda j: row[j], reverse=True)[:k]
        out.append([{"label": names[j], "probability": round(float(row[j]), 6)} for j in order])
    return out


def input_handler(data, context):
    """Request body (stream or bytes) -> TensorFlow Serving REST request (JSON string)."""
    return tfs_request(parse_request(_read(data), getattr(context, "request_content_type", None)))


def output_handler(response, context):
    """TensorFlow Serving response -> ``(body, content type)`` with the top-k labels per instance."""
    if response.status_code != 200:
        content = response.content
        text = content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)
        try:
            text = json.loads(text).get("error", text)
        except (ValueError, AttributeError):
            pass
        raise PredictionError(f"model server refused the request: {text}", 400 if response.status_code < 500 else 500)
    predictions = json.loads(response.content)["predictions"]
    return json.dumps({"predictions": format_predictions(predictions, _top_k(context))}), "application/json"
