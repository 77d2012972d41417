import io
import json

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

from training import data as tdata  # noqa: E402


def _bytes(fmt, mode):
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 60)).convert(mode).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt,mode", [("JPEG", "RGB"), ("JPEG", "CMYK"), ("JPEG", "L"), ("PNG", "RGBA"),
                                      ("PNG", "RGB"), ("GIF", "P"), ("BMP", "RGB")])
def test_decode_and_resize_any_colour_mode(fmt, mode):
    out = tdata.decode_and_resize(tf.constant(_bytes(fmt, mode)), (24, 24))
    assert out.shape == (24, 24, 3) and out.dtype == tf.uint8
    if mode in ("RGB", "RGBA", "CMYK"):
        # The colour survives (a CMYK JPEG must not come out as its raw ink channels).
        r, g, b = np.asarray(out, dtype=float).reshape(-1, 3).mean(0)
        assert r > 150 and g < 90 and b < 110, (r, g, b)


def test_pipeline_shards_batches_and_reports_undecodable(tmp_path):
    paths, labels = [], []
    for i in range(10):
        p = tmp_path / f"{i}.jpg"
        p.write_bytes(_bytes("JPEG", "RGB"))
        paths.append(str(p))
        labels.append(i % 2)
    # Passes the cheap content check (JPEG magic and end marker) but cannot be decoded.
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9")
    paths.insert(3, str(bad))
    labels.insert(3, 0)
    split = tdata.Split(paths, labels, ["a", "b"])

    shards = [split.shard(r, 2) for r in range(2)]
    assert sorted(p for s in shards for p in s.paths) == sorted(paths)

    ds = tdata.make_dataset(split, (16, 16), 4, training=False)
    tracker = tdata.SkipTracker(split)
    n = 0
    for images, lbl, idx in ds:
        assert images.dtype == tf.uint8 and images.shape[1:] == (16, 16, 3)
        tracker.update(idx.numpy())
        n += int(lbl.shape[0])
    assert n == 10
    assert tracker.finish() == [str(bad)]

    # Training data repeats; the tracker names the bad file once the second pass begins.
    train = tdata.make_dataset(split, (16, 16), 4, training=True, seed=1, drop_remainder=True)
    tracker = tdata.SkipTracker(split)
    found = []
    for _, (images, _, idx) in zip(range(8), train):
        assert images.shape == (4, 16, 16, 3)
        found += tracker.update(idx.numpy())
    assert found == [str(bad)]


def test_cached_and_uncached_pipelines_agree(tiny_manifest):
    m = json.loads(tiny_manifest.read_text())
    val = tdata.load_split(m, tiny_manifest.parent, "val")
    a = np.concatenate([x.numpy() for x, _, _ in tdata.make_dataset(val, (16, 16), 8, training=False)])
    b = np.concatenate([x.numpy() for x, _, _ in tdata.make_dataset(val, (16, 16), 8, training=False, cache=True)])
    assert a.shape[0] == len(val) and np.array_equal(a, b)


def test_load_split_uses_manifest_lists(tiny_manifest):
    m = json.loads(tiny_manifest.read_text())
    train = tdata.load_split(m, tiny_manifest.parent, "train")
    dom = tdata.load_split(m, tiny_manifest.parent, "domain_val")
    assert train.class_names == [c["name"] for c in m["classes"]]
    assert dom.class_names == [c["name"] for c in m["domain_classes"]]
    assert len(train) == sum(c["train"] for c in m["classes"])
    assert all(p.startswith(m["data_root"]) for p in train.paths)
