"""Curation scan files/s on generated trees of 20k, 100k and 200k small files, vs an ``os.scandir``
count-only walk and vs ``os.walk`` + opening each image with PIL; peak memory per tree size (flat is the
goal); and the same scan of an ``s3://`` prefix on a local S3 API server, concurrent vs one thread.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import WORK, Result

CLASSES = 100


def make_tree(n: int) -> Path:
    root = WORK / f"scan{n // 1000}k"
    marker = root / ".complete"
    if marker.exists():
        return root
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (20, 160, 40)).save(buf, "JPEG")
    data = buf.getvalue()
    for c in range(CLASSES):
        d = root / f"class{c:04d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n // CLASSES):
            (d / f"{i:06d}.jpg").write_bytes(data)
    marker.write_text("")
    return root


def _warm(root: Path) -> None:
    for d, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                fh.read()


def scandir_rate(root: Path) -> float:
    def count(p):
        n = 0
        for e in os.scandir(p):
            if e.is_dir():
                n += count(e.path)
            else:
                n += 1
        return n

    t0 = time.perf_counter()
    n = count(root)
    return n / (time.perf_counter() - t0)


def open_close_rate(root: Path, limit: int = 50_000) -> float:
    """Opening and closing each file, nothing else, in one process: the floor of any scan that looks inside."""
    n, t0 = 0, time.perf_counter()
    for d, _, files in os.walk(root):
        for f in files:
            os.close(os.open(os.path.join(d, f), os.O_RDONLY))
            n += 1
            if n >= limit:
                return n / (time.perf_counter() - t0)
    return n / (time.perf_counter() - t0)


def naive_rate(root: Path, limit: int = 20_000) -> float:
    from PIL import Image

    n, t0 = 0, time.perf_counter()
    for d, _, files in os.walk(root):
        for f in files:
            if f.startswith("."):
                continue
            with Image.open(os.path.join(d, f)) as im:
                im.verify()
            n += 1
            if n >= limit:
                return n / (time.perf_counter() - t0)
    return n / (time.perf_counter() - t0)


_CHILD = """
import json, sys, time
from training.curate import curate
t0 = time.perf_counter()
m = curate(sys.argv[1], sys.argv[2], min_images=10, progress=False)
dt = time.perf_counter() - t0
# VmHWM is this process's own peak (ru_maxrss would carry the parent's peak across exec).
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"files": m["totals"]["valid_images"], "seconds": dt, "maxrss_mb": hwm / 1024}))
"""


def curate_in_child(root: Path) -> dict:
    out = tempfile.mkdtemp(prefix="bench-curate-")
    try:
        r = subprocess.run([sys.executable, "-c", _CHILD, str(root), out], capture_output=True, text=True, check=True)
        return json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(out, ignore_errors=True)


def s3_scan(n_objects: int) -> tuple[float, float]:
    """(concurrent files/s, one-thread files/s) of curating an s3:// tree on moto's server."""
    import socket

    import boto3

    from training import curate as cur

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The server runs in its own process, as a real object store would: in this process it would share the
    # GIL with the client threads and no amount of client concurrency could show.
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for_port(port, server)
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        url = f"http://127.0.0.1:{port}"
        s3 = boto3.client("s3", endpoint_url=url)
        s3.create_bucket(Bucket="images")
        from concurrent.futures import ThreadPoolExecutor

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (16, 16)).save(buf, "JPEG")
        keys = [f"raw/class{i % 20:02d}/{i:06d}.jpg" for i in range(n_objects)]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: s3.put_object(Bucket="images", Key=k, Body=buf.getvalue()), keys))
        rates = []
        for workers in (16, 1):
            out = tempfile.mkdtemp()
            names = cur._s3_class_names("s3://images/raw", url)
            t0 = time.perf_counter()
            scans = cur._s3_scans("s3://images/raw", names, workers, url) if workers > 1 else _sequential(s3, names)
            n = sum(len(s.files) for s in scans)
            rates.append(n / (time.perf_counter() - t0))
            shutil.rmtree(out, ignore_errors=True)
        return rates[0], rates[1]
    finally:
        server.terminate()
        server.wait(30)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the local S3 API server did not start") from None
            time.sleep(0.2)


def _sequential(s3, names):
    """The one-thread baseline: list and check each object in turn."""
    from training.curate import ClassScan
    from training.imageio import HEAD, TAIL, classify

    for name in names:
        scan = ClassScan(name)
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="images", Prefix=f"raw/{name}/"):
            for o in page.get("Contents", []):
                data = s3.get_object(Bucket="images", Key=o["Key"])["Body"].read()
                fmt, _ = classify(data[:HEAD], data[-TAIL:], o["Size"])
                if fmt:
                    scan.files.append((o["Key"], o["Size"]))
        yield scan


def run(quick: bool = False) -> dict[str, Result]:
    sizes = (20_000, 100_000) if quick else (20_000, 100_000, 200_000)
    out = {}
    mem = {}
    for n in sizes:
        root = make_tree(n)
        _warm(root)  # every figure on a warm page cache, whichever runs first
        base = scandir_rate(root)
        child = curate_in_child(root)
        rate = child["files"] / child["seconds"]
        mem[n] = child["maxrss_mb"]
        k = f"{n // 1000}k"
        out[f"curation.{k}.vs_scandir"] = Result(rate, base, 0.5, "files/s", "os.scandir count-only walk")
        if n == sizes[-1]:
            out[f"curation.{k}.open_close_only_vs_scandir"] = Result(
                open_close_rate(root),
                base,
                None,
                "files/s",
                "context: os.walk + open/close of each file in one process, the floor of a content check",
            )
        naive = naive_rate(root)  # its first 20k files: the per-file cost does not depend on the tree size
        out[f"curation.{k}.vs_naive_pil"] = Result(
            rate, naive, 10.0, "files/s", "os.walk + PIL open/verify (first 20k files of the same tree)"
        )
    first, last = sizes[0], sizes[-1]
    out["curation.memory_growth"] = Result(
        mem[last],
        mem[first],
        None,
        "MB peak RSS",
        f"{last // 1000}k files vs {first // 1000}k files: ~1.0 means flat "
        + json.dumps({f"{k // 1000}k": round(v) for k, v in mem.items()}),
    )
    conc, seq = s3_scan(1000 if quick else 3000)
    out["curation.s3.concurrent_vs_one_thread"] = Result(
        conc, seq, None, "objects/s", "s3:// tree on a local S3 API server"
    )
    return out
