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


@pytest.mark.parametrize(
    "fmt,mode",
    [("JPEG", "RGB"), ("JPEG", "CMYK"), ("JPEG", "L"), ("PNG", "RGBA"), ("PNG", "RGB"), ("GIF", "P"), ("BMP", "RGB")],
)
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


def test_decode_and_resize_passes_images_at_size_through_unchanged():
    pixels = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    png = tf.io.encode_png(pixels)
    assert np.array_equal(tdata.decode_and_resize(png, (24, 24)).numpy(), pixels)
    # Resizing rounds to nearest: a flat image stays exactly flat.
    flat = tf.io.encode_png(np.full((40, 30, 3), 77, np.uint8))
    assert np.all(tdata.decode_and_resize(flat, (16, 16)).numpy() == 77)


def test_augment_image_is_a_seeded_flip_and_bounded_shift():
    image = tf.constant(np.arange(20 * 20 * 3, dtype=np.int64).reshape(20, 20, 3) % 251 + 1, tf.uint8)
    outs = [tdata.augment_image(image, tf.constant([3, k], tf.int64)).numpy() for k in range(40)]
    again = tdata.augment_image(image, tf.constant([3, 5], tf.int64)).numpy()
    assert np.array_equal(outs[5], again)  # same seed, same image
    src = image.numpy()
    flips = shifts = 0
    for out in outs:
        assert out.shape == (20, 20, 3) and out.dtype == np.uint8
        # The content is the source (or its mirror) moved by at most 2 px per axis, zero-filled at the edges.
        matches = [
            (f, dy, dx)
            for f in (False, True)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if np.array_equal(out, _shifted(src[:, ::-1] if f else src, dy, dx))
        ]
        assert len(matches) == 1, "not a flip + shift of the source"
        f, dy, dx = matches[0]
        flips += f
        shifts += (dy, dx) != (0, 0)
    assert 5 < flips < 35 and shifts > 20  # both transforms are actually drawn


def _shifted(a, dy, dx):
    out = np.zeros_like(a)
    h, w = a.shape[:2]
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = a[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def test_training_pipeline_is_reproducible_and_augmented(tiny_manifest):
    m = json.loads(tiny_manifest.read_text())
    train = tdata.load_split(m, tiny_manifest.parent, "train")

    def first(seed, cache):
        ds = tdata.make_dataset(train, (16, 16), 8, training=True, seed=seed, cache=cache, drop_remainder=True)
        return next(iter(ds))[0].numpy()

    assert np.array_equal(first(1, False), first(1, False))
    assert np.array_equal(first(1, True), first(1, True))
    assert not np.array_equal(first(1, False), first(2, False))
    plain = np.concatenate([x.numpy() for x, _, _ in tdata.make_dataset(train, (16, 16), 8, training=False)])
    # Augmented images are transformed copies of the plain ones, not the plain ones themselves.
    batch = first(1, True)
    assert sum(any(np.array_equal(img, p) for p in plain) for img in batch) < len(batch)


@pytest.mark.parametrize("cache", [False, True])
def test_a_stream_resumed_at_a_position_continues_exactly(tmp_path, cache):
    """A run resumed inside an epoch sees the very batches (images, augmentations, order) that the interrupted
    run would have seen next, across pass boundaries and with the decoded images cached or not."""
    paths = []
    for i in range(13):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (20, 20), (i * 19, 3 * i, 255 - i * 9)).save(path)
        paths.append(str(path))
    split = tdata.Split(paths, [i % 3 for i in range(13)], ["a", "b", "c"])

    def batches(start, count):
        ds = tdata.make_dataset(
            split, (16, 16), 4, training=True, seed=7, cache=cache, drop_remainder=True, start=start
        )
        return [tuple(t.numpy() for t in b) for b in ds.take(count)]

    whole = batches(0, 10)
    for done in (1, 3, 7):  # inside the first pass, at its end, two passes on
        resumed = batches(4 * done, 10 - done)
        assert all(all(np.array_equal(a, b) for a, b in zip(x, y)) for x, y in zip(whole[done:], resumed)), done
    order = np.concatenate([b[2] for b in whole])
    # Each pass is a permutation of the shard, and the next pass another one.
    assert sorted(order[:13]) == list(range(13)) and sorted(order[13:26]) == list(range(13))
    assert not np.array_equal(order[:13], order[13:26])


def test_a_resumed_partial_pass_reports_only_what_is_missing(tmp_path):
    split = tdata.Split([str(tmp_path / f"{i}.png") for i in range(5)], [0] * 5, ["a"])
    order = [int(i) for i in tdata.pass_order(5, 3, 0).take(20)]
    assert list(tdata.pass_prefix(5, 3, 7)) == order[5:7]
    # Resumed at position 7 (two positions into the second pass); one file is undecodable and never arrives.
    lost = order[8]
    tracker = tdata.SkipTracker(split, already_seen=tdata.pass_prefix(5, 3, 7))
    found = []
    for i in [j for j in order[7:] if j != lost]:
        found += tracker.update(np.array([i]))
    assert found == [split.paths[lost]]  # once, not for the partial pass
