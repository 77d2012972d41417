"""The export to S3 with the S3 API gone mid-upload (SeaweedFS SIGKILLed as model.tar.gz starts, restarted after
the outage): the export waits it out and completes, and no reader ever sees part of an object."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import threading
import time

import pytest
from chaos_record import outage_seconds

from plugins.tlpipe.config import S3Config
from plugins.tlpipe.pretraining.export import S3Exporter

pytestmark = pytest.mark.chaos


def test_the_s3_api_down_during_the_export(restartable_store, tiny_manifest, tmp_path, monkeypatch, chaos):
    down_for = outage_seconds()
    chaos.fault(
        "deploy",
        f"the S3 API down for {down_for:.0f} s as the export's model.tar.gz upload starts",
        "the export retries and completes; no partial object is ever visible",
    )
    store = restartable_store
    monkeypatch.setenv("AIRFLOW_CONN_CHAOS_S3", json.dumps(store.connection()))
    cfg = S3Config(
        aws_conn_id="chaos_s3",
        bucket="tlpipe-export",
        prefix="t",
        create_bucket=True,
        multipart_threshold_mb=5,
        multipart_chunksize_mb=5,
        outage_seconds=down_for + 120,
    )
    exporter = S3Exporter(cfg)
    best = tmp_path / "best"
    best.mkdir()
    (best / "model.keras").write_bytes(random.Random(0).randbytes(16 * 2**20))
    (best / "meta.json").write_text(json.dumps({"epoch": 3, "class_names": ["a", "b"]}))
    (best / "metrics.json").write_text(json.dumps({"epoch": 3, "val_accuracy": 0.8}))

    outage = {}

    def restart_later():
        time.sleep(down_for)
        store.process = store.up()
        outage["up_at"] = time.monotonic()

    real = S3Exporter._riding_out

    def riding_out(self, upload, key):
        if key.endswith("model.tar.gz") and "down_at" not in outage:
            os.killpg(store.process.pid, signal.SIGKILL)  # gone as the multipart upload starts
            store.process.wait()
            outage["down_at"] = time.monotonic()
            threading.Thread(target=restart_later, daemon=True).start()
        return real(self, upload, key)

    monkeypatch.setattr(S3Exporter, "_riding_out", riding_out)
    seen_sizes, stop = [], threading.Event()

    def watch():  # a reader, polling the object all along
        client = store.client()
        while not stop.wait(0.2):
            try:
                for o in client.list_objects_v2(Bucket="tlpipe-export", Prefix="t/").get("Contents", []):
                    if o["Key"].endswith("model.tar.gz"):
                        seen_sizes.append(o["Size"])
            except Exception:  # noqa: BLE001 - the server is down: nothing to see
                pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    try:
        exported = exporter.export_model(best, tiny_manifest)
    finally:
        stop.set()
        watcher.join(10)
    finished = time.monotonic()
    assert "down_at" in outage and outage["up_at"] - outage["down_at"] >= down_for
    body = store.client().get_object(Bucket="tlpipe-export", Key=exported["model_uri"].split("/", 3)[3])["Body"]
    data = body.read()
    assert hashlib.sha256(data).hexdigest() == exported["model_sha256"]
    assert set(seen_sizes) <= {len(data)}, seen_sizes  # never a part
    chaos.figure("S3 down (s)", down_for)
    chaos.figure("export finished after the restart (s)", finished - outage["up_at"])
    chaos.figure("partial objects seen", sum(1 for s in seen_sizes if s != len(data)))
    chaos.figure("export wall time (s)", finished - started)
