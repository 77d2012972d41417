"""``python -m training.serve``: arguments, the open-file limit, signals and the serving loop."""

from __future__ import annotations

import argparse
import os
import resource
import signal
import threading
from pathlib import Path

from training.serve.model import log
from training.serve.server import Server


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="SageMaker-compatible endpoint server for the fine-tuned model.")
    p.add_argument("command", nargs="?", choices=["serve"], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (the image's serve entrypoint binds 0.0.0.0 for SageMaker)"
    )
    p.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080")),
        help="0 picks a free port (printed)",
    )
    p.add_argument("--max-batch-size", type=int, default=int(os.environ.get("TLPIPE_MAX_BATCH_SIZE", "32")))
    p.add_argument("--max-wait-ms", type=float, default=float(os.environ.get("TLPIPE_MAX_WAIT_MS", "5")))
    p.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("SAGEMAKER_MODEL_SERVER_WORKERS", "2")),
        help="threads running batches (2: one predicts while the next batch forms)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="TensorFlow intra/inter-op threads (0: the cores divided among the workers)",
    )
    p.add_argument("--max-payload-mb", type=float, default=6.0)
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=int(os.environ.get("TLPIPE_MAX_IMAGE_PIXELS", 4096 * 4096)),
        help="largest image (width × height × frames, from its header) decoded; larger gets 400",
    )
    p.add_argument(
        "--max-request-pixels",
        type=int,
        default=int(os.environ.get("TLPIPE_MAX_REQUEST_PIXELS", 4 * 4096 * 4096)),
        help="largest sum of pixels over one request's images",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=int(os.environ.get("TLPIPE_MAX_CONNECTIONS", "256")),
        help="open connections served at once; more get 503 and are closed",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds from a request's first byte until its headers must be complete",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        help="seconds a connection may stay silent (between requests or mid-body) before it is closed",
    )
    p.add_argument("--grace-seconds", type=float, default=20.0, help="how long SIGTERM waits for requests in flight")
    p.add_argument("--access-log", action="store_true")
    return p.parse_args(argv)


def _raise_open_file_limit(connections: int) -> None:
    """Room for every allowed connection plus the model's own files (the soft limit is often 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + 512
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError):
            pass


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _raise_open_file_limit(args.max_connections)
    if not Path(args.model_dir).is_dir():
        log(f"error: model directory {args.model_dir} does not exist")
        return 1
    server = Server((args.host, args.port), args)
    host, port = server.server_address[:2]
    log(
        f"listening on http://{host}:{port} (model {args.model_dir}; batch <= {args.max_batch_size}, "
        f"wait <= {args.max_wait_ms:g} ms, {args.workers} worker(s)); loading"
    )

    def stop(signum, _frame):
        if not server.stopping.is_set():
            log(f"{signal.Signals(signum).name}: stopping")
        server.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=server.load, name="load", daemon=True).start()
    accept = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="accept", daemon=True)
    accept.start()
    while not server.stopping.wait(0.5):
        pass
    server.shutdown()
    server.stop_listening()  # the backlog is served; new connections are refused
    drained = server.drain(args.grace_seconds)
    if server.batcher:
        server.batcher.close()
    server.server_close()
    if server.failed:
        return 1
    b = server.batcher
    served = f"; {b.images} images in {b.batches} batches (mean {b.images / b.batches:.1f})" if b and b.batches else ""
    log(
        "stopped"
        + served
        + ("" if drained else f" (requests still running after {args.grace_seconds:g}s were dropped)")
    )
    return 0
