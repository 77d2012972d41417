"""The endpoint server: the SageMaker inference-container contract around the fine-tuned SavedModel.

    python -m training.serve --model-dir D --port 8080 [--max-batch-size 32 --max-wait-ms 5 --workers 1]

``D`` is the untarred ``model.tar.gz`` root (``<version>/saved_model.pb``, ``code/inference.py``,
``code/labels.json``), by default ``/opt/ml/model``; the port defaults to ``SAGEMAKER_BIND_TO_PORT`` or
8080. A leading ``serve`` argument (how SageMaker starts an inference image) is accepted and ignored.

  GET  /ping                   200 once the model is loaded and warmed up; 503 before that and while stopping
  POST /invocations            the artifact's own ``code/inference.py``: ``input_handler(data, context)`` turns
                               the request into a TensorFlow Serving REST request, which is run here on the
                               newest SavedModel version's ``serving_default`` signature; ``output_handler
                               (response, context)`` turns the TFS-shaped response into the reply
  GET  /execution-parameters   batch-transform hints (SageMaker asks for them)

Bad requests are answered, never fatal: a handler exception with a ``status`` attribute answers with that
status (400 malformed JSON or image, 415 unsupported content type), other ``ValueError``s with 400,
anything else with 500; a body over ``--max-payload-mb`` (SageMaker's 6 MB) gets 413 without being read.
Every error body is JSON: ``{"error": "..."}``.

Dynamic micro-batching: requests that arrive together are run as one batch of up to ``--max-batch-size``
images. A batch waits at most ``--max-wait-ms`` for requests that are already being received, and for its
share of the clients that sent a request in the last second (keep-alive connections under load come straight
back), but not at all when neither is pending, so a lone client pays no batching delay. ``--workers`` threads
run batches (TensorFlow releases the GIL, so while one worker predicts the next batch forms and starts on
another, and the Python HTTP work overlaps inference); ``--threads`` sets TensorFlow's per-op threads, by
default the cores divided among the workers. If an image in a batch fails to decode, the batch's requests are
retried one by one, so only the bad request fails.

Limits against clients that would exhaust it: an image whose header (read before anything is decoded) gives
more than ``--max-image-pixels`` (counting every GIF frame), or a request whose images add up to more than
``--max-request-pixels``, is refused with 400; a connection has ``--header-timeout`` seconds from its first
byte to send its headers and ``--idle-timeout`` seconds of silence before it is closed (a stalled body too);
past ``--max-connections`` open connections a new one gets 503 and is closed. It binds to 127.0.0.1 unless
``--host`` says otherwise; the image's ``serve`` entrypoint binds 0.0.0.0, as SageMaker's container contract
needs.

SIGTERM (or SIGINT) stops without failing a request it has accepted: ``/ping`` turns 503 (SageMaker and a
Kubernetes readiness probe stop routing), the connections already in the listen backlog are accepted and the
listener closes (a new client is refused, never reset), every request that reached the server is answered with
``Connection: close``, kept-alive connections close once idle for a second, and once all are closed (or after
``--grace-seconds``) the process exits 0.
"""

from training.serve.batching import MicroBatcher
from training.serve.cli import main, parse_args
from training.serve.model import SIGNATURE, Model, TFSResponse, check_pixels, image_pixels, latest_version
from training.serve.server import Server

__all__ = [
    "SIGNATURE",
    "MicroBatcher",
    "Model",
    "Server",
    "TFSResponse",
    "check_pixels",
    "image_pixels",
    "latest_version",
    "main",
    "parse_args",
]
