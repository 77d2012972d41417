"""Child processes (training commands, model servers) and their logs.

Children run in sessions of their own with output to a file, not a pipe: if localcloud dies they keep
running, and the next localcloud recognises them by pid *and* start time (a recycled pid is not adopted).
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import psutil

log = logging.getLogger("localcloud.procs")

# What a container command inherits from localcloud's own environment: enough to find the interpreter and run
# it as configured, none of the caller's secrets or connections (a container on SageMaker starts from its image's
# environment, not from the caller's).
INHERITED = (
    "PATH",
    "HOME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "USER",
    "LOGNAME",
    "VIRTUAL_ENV",
    "PYTHONPATH",
    "OMP_NUM_THREADS",
    "TF_CPP_MIN_LOG_LEVEL",
    "TF_ENABLE_ONEDNN_OPTS",
    "CUDA_VISIBLE_DEVICES",
)


def base_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in INHERITED or k.startswith("LC_")}


# CloudWatch Logs limits: 256 KiB per event, 10,000 events or 1 MiB per PutLogEvents batch.
MAX_EVENT_BYTES = 256 * 1024 - 26
MAX_BATCH_EVENTS = 10_000
MAX_BATCH_BYTES = 1_000_000


_RECENT_PORTS: collections.deque = collections.deque(maxlen=256)
_PORTS_LOCK = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A free port, never one handed out recently: a server started a moment ago may not have bound it yet."""
    with _PORTS_LOCK:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
            if port not in _RECENT_PORTS:
                _RECENT_PORTS.append(port)
                return port


def spawn(argv: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            argv,
            cwd=str(cwd),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def alive(pid: int | None, started: float | None) -> bool:
    """True if ``pid`` is still the process localcloud started (same start time) and has not exited."""
    if not pid or started is None:
        return False
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - started) > 0.01:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def signal_group(pid: int, started: float | None, sig: int) -> None:
    if not alive(pid, started):
        return
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:  # not a group leader any more: signal the process itself
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def terminate(pid: int | None, started: float | None, grace: float, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds, and reap our own child."""
    if not pid:
        return
    signal_group(pid, started, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        if proc is None and not alive(pid, started):
            break
        time.sleep(0.05)
    # Whatever is left of the group (the command may have started helpers) goes now.
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.warning("process %s did not exit after SIGKILL", pid)


class LineReader:
    """Complete lines appended to a file since ``offset`` (a partial last line waits for its newline)."""

    def __init__(self, path: Path, offset: int = 0):
        self.path = path
        self.offset = offset

    def read(self, final: bool = False) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        if not data:
            return []
        end = len(data) if final else data.rfind(b"\n") + 1
        if end <= 0:
            return []
        self.offset += end
        text = data[:end].decode("utf-8", errors="replace")
        lines = text.split("\n")
        if text.endswith("\n"):
            lines.pop()
        return [line.rstrip("\r") for line in lines]


class CloudWatchStream:
    """Appends lines to one CloudWatch Logs stream, creating group and stream on first use."""

    def __init__(self, logs_client, group: str, stream: str):
        self.client = logs_client
        self.group = group
        self.stream = stream
        self._ready = False
        self._lock = threading.Lock()

    def _ensure(self) -> None:
        if self._ready:
            return
        for call, kwargs in (
            (self.client.create_log_group, {"logGroupName": self.group}),
            (self.client.create_log_stream, {"logGroupName": self.group, "logStreamName": self.stream}),
        ):
            try:
                call(**kwargs)
            except self.client.exceptions.ResourceAlreadyExistsException:
                pass
        self._ready = True

    def put(self, lines: list[str], timestamp_ms: int | None = None) -> None:
        if not lines:
            return
        ts = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
        events = []
        for line in lines:
            message = line if line else " "  # CloudWatch rejects empty messages
            encoded = message.encode("utf-8")
            if len(encoded) > MAX_EVENT_BYTES:
                message = encoded[:MAX_EVENT_BYTES].decode("utf-8", errors="ignore")
            events.append({"timestamp": ts, "message": message})
        with self._lock:
            self._ensure()
            batch: list[dict] = []
            size = 0
            for event in events:
                cost = len(event["message"].encode("utf-8")) + 26
                if batch and (len(batch) >= MAX_BATCH_EVENTS or size + cost > MAX_BATCH_BYTES):
                    self._send(batch)
                    batch, size = [], 0
                batch.append(event)
                size += cost
            if batch:
                self._send(batch)

    def _send(self, batch: list[dict]) -> None:
        self.client.put_log_events(logGroupName=self.group, logStreamName=self.stream, logEvents=batch)
