"""The contracts both sides share: the checkpoint directory as pretraining writes it, read the way the Airflow side
reads it; the fine-tune job's channels and metrics as the job prints them."""

from __future__ import annotations

import gzip
import re

import pytest

from training import store as st
from training.contracts import CHANNELS, METRIC_DEFINITIONS, PRIMARY_METRIC, CheckpointDir, read_list


def test_checkpoint_dir_names_and_reads(tmp_path):
    store, run = st.Store(), CheckpointDir(str(tmp_path / "run"))
    assert run.epoch(7) == str(tmp_path / "run" / "epochs" / "0007")
    assert run.committed_marker(7).endswith("epochs/0007/COMMITTED")
    assert run.best_json == str(tmp_path / "run" / "best.json") and run.best_checkpoint(store) is None
    assert CheckpointDir.of_checkpoint(run.epoch(7)) == run
    assert CheckpointDir.of_checkpoint("s3://b/runs/r1/epochs/0012/") == CheckpointDir("s3://b/runs/r1")
    assert CheckpointDir.of_checkpoint("s3://b/runs/r1/best") == CheckpointDir("s3://b/runs/r1")  # older runs
    with pytest.raises(ValueError, match="not a run's epochs/NNNN"):
        CheckpointDir.of_checkpoint("s3://b/runs/r1/logs")
    assert run.last_committed_epoch(store) == 0 and run.read_best(store) is None
    assert run.failure_reason(store) is None
    for epoch in (1, 2, 3):
        store.write_text(st.join(run.epoch(epoch), "model.keras"), "w")
    store.write_json(run.committed_marker(1), {})
    store.write_json(run.committed_marker(2), {})  # epoch 3 never committed: a kill mid-upload
    assert run.last_committed_epoch(store) == 2
    store.write_json(run.best_json, {"epoch": 2})
    assert run.read_best(store) == {"epoch": 2}
    store.write_json(run.failed, {"reason": "RuntimeError: boom"})
    assert run.failure_reason(store) == "RuntimeError: boom"
    assert CheckpointDir("s3://bucket/pretrain/run").epoch(12) == "s3://bucket/pretrain/run/epochs/0012"


def test_fine_tune_metrics_match_what_the_job_prints():
    line = (
        "epoch 3 train_loss=0.51 train_accuracy=0.8 val_loss=0.62 val_accuracy=0.75 scratch_val_accuracy=0.5 "
        "transfer_gain=-0.02"
    )
    found = {d["Name"]: float(m.group(1)) for d in METRIC_DEFINITIONS if (m := re.search(d["Regex"], line))}
    assert found[PRIMARY_METRIC] == 0.75 and found["transfer:gain"] == -0.02
    assert "validation:accuracy" not in {
        d["Name"] for d in METRIC_DEFINITIONS if re.search(d["Regex"], " scratch_val_accuracy=0.5")
    }
    assert CHANNELS == ("pretrained", "train", "validation")


def test_read_list(tmp_path):
    path = tmp_path / "train.tsv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("a/1.jpg\ta\nb/2 with space.png\tb\n\n")
    assert read_list(path) == [("a/1.jpg", "a"), ("b/2 with space.png", "b")]
