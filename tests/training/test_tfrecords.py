import json
import subprocess
import sys

import pytest

from training.tfrecords import convert, make_tfrecord_dataset, tfrecord_split


def test_convert_and_read_back(tiny_manifest, tmp_path):
    m = json.loads(tiny_manifest.read_text())
    index = convert(tiny_manifest, tmp_path / "tfr", shards=3, workers=2)
    assert index["splits"]["train"]["count"] == sum(c["train"] for c in m["classes"])
    shards, names, count = tfrecord_split(tmp_path / "tfr", "val")
    assert len(shards) == 3 and names == [c["name"] for c in m["classes"]]
    n = 0
    labels = set()
    for images, lbl, _ in make_tfrecord_dataset(shards, (16, 16), 8, training=False):
        assert images.shape[1:] == (16, 16, 3)
        n += int(lbl.shape[0])
        labels |= set(lbl.numpy().tolist())
    assert n == count == sum(c["val"] for c in m["classes"])
    assert labels <= set(range(len(names)))
    # Rank shards partition the records.
    per_rank = [
        sum(int(l.shape[0]) for _, l, _ in make_tfrecord_dataset(shards, (16, 16), 8, False, r, 2)) for r in range(2)
    ]
    assert sum(per_rank) == count
    # A rerun keeps the finished shards.
    before = {p: (tmp_path / "tfr" / p).stat().st_mtime_ns for p in index["splits"]["train"]["shards"]}
    convert(tiny_manifest, tmp_path / "tfr", shards=3, workers=1)
    assert {p: (tmp_path / "tfr" / p).stat().st_mtime_ns for p in before} == before


@pytest.mark.slow
def test_pretrain_from_tfrecords(tiny_manifest, tmp_path):
    convert(tiny_manifest, tmp_path / "tfr", shards=2, workers=1)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.pretrain",
            "--manifest",
            str(tiny_manifest),
            "--checkpoint-dir",
            str(tmp_path / "ckpt"),
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--batch-size",
            "8",
            "--tfrecords",
            str(tmp_path / "tfr"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "ckpt" / "epochs" / "0001" / "metrics.json").read_text())
    assert metrics["val_images"] == sum(c["val"] for c in json.loads(tiny_manifest.read_text())["classes"])
