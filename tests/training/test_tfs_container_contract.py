"""The artifact's ``code/inference.py`` under the managed TensorFlow Serving container's own request handling.

SageMaker's ``tensorflow-inference`` container imports ``/opt/ml/model/code/inference.py`` by file location,
builds its ``Context`` (ten fields, ``request_content_type`` and ``accept_header`` defaulting to
``application/json``), hands ``input_handler`` the request stream, POSTs what it returns to TensorFlow
Serving's REST ``:predict`` with ``requests``, passes the ``requests`` response to ``output_handler``, and answers
any handler exception with 500 and ``{"error": ...}``. This test does each of those steps the container's way.

TensorFlow Serving's model server itself is not installable here (no wheel): its REST ``:predict`` is stood in
for by a small server running the artifact's SavedModel signature, answering as TFS does.
"""

from __future__ import annotations

import base64
import collections
import importlib.util
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import requests
from _finetune_helpers import image_bytes

pytestmark = pytest.mark.slow

# The container's Context, field for field (sagemaker-tensorflow-serving-container, tfs_utils.py).
ContainerContext = collections.namedtuple(
    "Context",
    "model_name, model_version, method, rest_uri, grpc_port, channel, "
    "custom_attributes, request_content_type, accept_header, content_length",
)


@pytest.fixture(scope="module")
def tfs_rest(finetuned):
    """TensorFlow Serving's REST predict for the artifact's newest version: ``/v1/models/<name>[...]:predict``."""
    import tensorflow as tf

    version_dir = max((p for p in finetuned["model_dir"].iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    fn = tf.saved_model.load(str(version_dir)).signatures["serving_default"]

    class TFS(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            try:
                doc = json.loads(body)
                images = [base64.b64decode(i["b64"]) for i in doc["instances"]]
                probs = fn(image_bytes=tf.constant(images))["probabilities"].numpy().tolist()
                status, out = 200, {"predictions": probs}
            except Exception as err:  # noqa: BLE001 - TFS answers bad input with 400 and {"error": ...}
                status, out = 400, {"error": str(err).splitlines()[0]}
            data = json.dumps(out).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), TFS)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{server.server_address[1]}", signature=fn)
    server.shutdown()


@pytest.fixture(scope="module")
def model_says(finetuned, tfs_rest):
    """The class the SavedModel itself ranks first for an image: what every container path must answer (the
    tiny test model is not right on every image, so a label from the data would test its accuracy instead)."""
    import tensorflow as tf

    names = json.loads((finetuned["model_dir"] / "code" / "labels.json").read_text())

    def top(data: bytes) -> str:
        probs = tfs_rest.signature(image_bytes=tf.constant([data]))["probabilities"].numpy()[0]
        return names[int(probs.argmax())]

    return top


@pytest.fixture(scope="module")
def container(finetuned, tfs_rest):
    """``invoke(body, headers) -> (status, body, content type)`` the way the container handles /invocations."""
    spec = importlib.util.spec_from_file_location("inference", finetuned["model_dir"] / "code" / "inference.py")
    inference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(inference)
    assert hasattr(inference, "input_handler") and hasattr(inference, "output_handler")
    assert not hasattr(inference, "handler")  # else the container would call it instead of the pair

    def invoke(body: bytes, headers: dict[str, str]):
        attributes = headers.get("X-Amzn-SageMaker-Custom-Attributes")
        tfs = dict(a.split("=", 1) for a in (attributes or "").split(",") if a.strip().startswith("tfs-"))
        context = ContainerContext(
            tfs.get("tfs-model-name"),
            tfs.get("tfs-model-version"),
            tfs.get("tfs-method"),
            f"{tfs_rest.url}/v1/models/{tfs.get('tfs-model-name', 'model')}:{tfs.get('tfs-method', 'predict')}",
            9000,
            None,
            attributes,
            headers.get("Content-Type") or "application/json",
            headers.get("Accept") or "application/json",
            len(body),
        )
        try:
            processed = inference.input_handler(io.BytesIO(body), context)
            response = requests.post(context.rest_uri, data=processed, timeout=60)
            out, content_type = inference.output_handler(response, context)
            return 200, out, content_type
        except Exception as err:  # noqa: BLE001 - the container's own catch-all
            return 500, json.dumps({"error": str(err)}), "application/json"

    return invoke


def test_a_raw_image_is_classified(container, world, model_says):
    _, data = image_bytes(world, ".jpg")
    status, body, content_type = container(data, {"Content-Type": "application/x-image"})
    assert status == 200 and content_type == "application/json", body
    (predictions,) = json.loads(body)["predictions"]
    assert predictions[0]["label"] == model_says(data)
    assert len(predictions) == min(5, len(world["classes"]))


def test_a_request_without_content_type_is_json(container, world, model_says):
    _, data = image_bytes(world, ".png")
    doc = json.dumps({"instances": [{"b64": base64.b64encode(data).decode()}]}).encode()
    status, body, _ = container(doc, {})
    assert status == 200, body
    assert json.loads(body)["predictions"][0][0]["label"] == model_says(data)
    # Raw image bytes without a Content-Type are JSON too, so they are refused as JSON.
    status, body, _ = container(data, {})
    assert status == 500 and "malformed JSON" in json.loads(body)["error"]


def test_custom_attributes_reach_the_handlers(container, world):
    _, data = image_bytes(world, ".jpg")
    headers = {"Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "tfs-model-name=model,top_k=2"}
    status, body, _ = container(data, headers)
    assert status == 200 and len(json.loads(body)["predictions"][0]) == 2


def test_handler_errors_are_the_containers_500_with_the_reason(container):
    status, body, _ = container(b"plain text", {"Content-Type": "text/plain"})
    assert status == 500 and "unsupported content type" in json.loads(body)["error"]
    status, body, _ = container(b"\xff\xd8\xff not really a jpeg", {"Content-Type": "application/x-image"})
    assert status == 500 and "model server refused the request" in json.loads(body)["error"]
