"""The benchmark harness runs and writes its documented record (a smoke run: no timing is asserted)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_bench_writes_ratio_records(tmp_path):
    results = tmp_path / "results.json"
    env = {
        **os.environ,
        "TLPIPE_BENCH_DIR": str(tmp_path / "data"),
        "TLPIPE_BENCH_RESULTS": str(results),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "tfrecords,serving", "--quick"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    records = json.loads(results.read_text())
    assert {"tfrecords.read_vs_files", "serving.throughput_16_clients", "serving.p50_latency_batch1"} <= set(records)
    for name, r in records.items():
        assert set(r) >= {"value", "baseline", "ratio", "target", "unit", "met", "note"}, name
        assert r["value"] > 0 and r["baseline"] > 0, name
        assert r["ratio"] == pytest.approx(r["value"] / r["baseline"], rel=1e-2), name
    served = records["serving.throughput_16_clients"]
    assert served["met"] == (served["ratio"] >= served["target"])
    assert re.search(r"mean batch \d", served["note"])  # the server's own account of its batching
