"""``python -m localcloud --port P --data-dir D``: serve the pipeline's AWS APIs until SIGTERM or Ctrl-C.

Requests must be SigV4-signed with ``LOCALCLOUD_ACCESS_KEY_ID`` / ``LOCALCLOUD_SECRET_ACCESS_KEY`` (default
``test`` / ``test``); the pair is written to ``<data-dir>/ready.json`` (mode 0600) for clients to read.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from .auth import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY, AccessKey
from .images import ImageMap
from .server import LocalCloud, Settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m localcloud", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    parser.add_argument("--port", type=int, default=4566, help="port to listen on; 0 picks a free one")
    parser.add_argument("--data-dir", default="var/localcloud", help="state, snapshots, job and endpoint files")
    parser.add_argument(
        "--images",
        default=None,
        help="image map: JSON file or text mapping image URIs to train/serve commands "
        "(default: $LOCALCLOUD_IMAGES, then the built-in entries for the project image)",
    )
    parser.add_argument("--stop-grace", type=float, default=30.0, help="seconds from SIGTERM to SIGKILL for children")
    parser.add_argument("--health-timeout", type=float, default=600.0, help="default model server /ping timeout")
    parser.add_argument("--invoke-timeout", type=float, default=60.0, help="InvokeEndpoint timeout in seconds")
    parser.add_argument(
        "--max-instances", type=int, default=4, help="model server processes per endpoint variant at most"
    )
    parser.add_argument("--snapshot-interval", type=float, default=10.0, help="seconds between S3/Logs snapshots")
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a browser origin (scheme://host:port) allowed to call localcloud; repeatable; none by default",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG also logs every request")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.log_level.upper() != "DEBUG":
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    settings = Settings(
        stop_grace=args.stop_grace,
        health_timeout=args.health_timeout,
        invoke_timeout=args.invoke_timeout,
        max_instances=args.max_instances,
        snapshot_interval=args.snapshot_interval,
        access_key=AccessKey(
            os.environ.get("LOCALCLOUD_ACCESS_KEY_ID") or DEFAULT_ACCESS_KEY_ID,
            os.environ.get("LOCALCLOUD_SECRET_ACCESS_KEY") or DEFAULT_SECRET_ACCESS_KEY,
        ),
        cors_origins=tuple(args.cors_origin),
    )
    try:
        images = ImageMap.load(args.images)
        cloud = LocalCloud(args.data_dir, host=args.host, port=args.port, images=images, settings=settings)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"localcloud: {err}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        url = cloud.start()
    except OSError as err:
        print(f"localcloud: cannot listen on {args.host}:{args.port}: {err.strerror or err}", file=sys.stderr)
        cloud.stop()
        return 2
    except Exception:
        logging.getLogger("localcloud").exception("start-up failed")
        cloud.stop()
        return 1
    print(url, flush=True)
    logging.getLogger("localcloud").info(
        "serving on %s (data in %s); requests must be signed with access key %s (the pair is in %s)",
        url,
        cloud.data_dir,
        settings.access_key.access_key_id,
        cloud.data_dir / "ready.json",
    )
    while not stop.wait(1.0):
        pass
    cloud.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
