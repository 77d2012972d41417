"""A tiny model server for localcloud's tests, following the SageMaker inference contract.

``serve.py --model-dir D --port P``: loads ``D/model.json`` (written by ``train.py``) and exits 1 if it cannot,
as a container with a broken model artifact does; ``GET /ping`` answers 200 (with ``SERVE_READY_FILE`` set,
503 until that file exists: a model still loading); with ``SERVE_DELAY_SECONDS``, every answer waits that
long first (a slow model); ``POST /invocations`` classifies raw image bytes
(``application/x-image``) or ``{"instances": [{"b64": ...}]}`` by nearest mean colour.
"""

import argparse
import base64
import io
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image


def mean_colour(data: bytes) -> list[float]:
    with Image.open(io.BytesIO(data)) as img:
        pixels = list(img.convert("RGB").resize((8, 8)).getdata())
    return [sum(p[i] for p in pixels) / len(pixels) for i in range(3)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        model = json.loads((Path(args.model_dir) / "model.json").read_text())
        centroids = model["centroids"]
    except (OSError, ValueError, KeyError) as err:
        print(f"cannot load the model from {args.model_dir}: {err}", file=sys.stderr, flush=True)
        return 1

    def classify(data: bytes) -> dict:
        colour = mean_colour(data)
        label = min(centroids, key=lambda c: sum((a - b) ** 2 for a, b in zip(centroids[c], colour)))
        return {"label": label}

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/ping":
                gate = os.environ.get("SERVE_READY_FILE")
                if gate and not os.path.exists(gate):
                    self._send(503, {"status": "loading"})
                else:
                    self._send(200, {"status": "ok"})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self):
            if self.path != "/invocations":
                self._send(404, {"error": "not found"})
                return
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            time.sleep(float(os.environ.get("SERVE_DELAY_SECONDS") or 0))
            kind = (self.headers.get("Content-Type") or "").split(";")[0]
            try:
                if kind == "application/json":
                    images = [base64.b64decode(i["b64"]) for i in json.loads(data)["instances"]]
                elif kind.startswith("image/") or kind == "application/x-image":
                    images = [data]
                else:
                    self._send(415, {"error": f"unsupported content type {kind!r}"})
                    return
                predictions = [classify(i) for i in images]
            except Exception as err:
                self._send(400, {"error": f"bad input: {err}"})
                return
            self._send(200, {"predictions": predictions, "model_version": model.get("version")})

        def log_message(self, fmt, *fargs):
            print(fmt % fargs, flush=True)

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"serving model version {model.get('version')} on port {args.port}", flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
