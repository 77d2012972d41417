import gzip
import json
import os
import subprocess
import sys

import pytest

from training.curate import CurationError, curate, read_list, split_files


def _lists(out):
    return {k: read_list(out / f"{k}.tsv.gz") for k in ("train", "val", "domain_train", "domain_val")}


def test_kept_dropped_and_domain_classes(tiny_tree, tiny_manifest):
    m = json.loads(tiny_manifest.read_text())
    kept = {c["name"]: c["count"] for c in m["classes"]}
    excluded = {c["name"]: c["count"] for c in m["excluded_classes"]}
    assert kept and excluded
    assert all(n >= 25 for n in kept.values())
    assert all(n < 25 for n in excluded.values())
    # The two largest dropped classes become the domain classes.
    largest_dropped = sorted(excluded, key=lambda n: (-excluded[n], n))[:2]
    assert sorted(c["name"] for c in m["domain_classes"]) == sorted(largest_dropped)
    assert m["parameters"]["min_images"] == 25


def test_odd_but_valid_files_are_used_and_broken_ones_reported(tiny_tree, tiny_manifest):
    m = json.loads(tiny_manifest.read_text())
    synth = json.loads((tiny_tree.parent / "raw.synth.json").read_text())
    out = tiny_manifest.parent
    listed = {p for pairs in _lists(out).values() for p, _ in pairs}
    # CMYK, grayscale, RGBA, PNG named .jpg and .JPEG all count as images of their class.
    for rel in synth["defects"]["valid_odd"]:
        cls = rel.split("/")[0]
        if cls in {c["name"] for c in m["classes"] + m["domain_classes"]}:
            assert rel in listed, rel
    skipped = {s["path"]: s["reason"] for s in m["skipped_files"]}
    assert set(skipped) == set(synth["defects"]["broken"])
    reasons = sorted(skipped.values())
    assert reasons == ["empty file", "not an image (unknown signature)", "truncated jpeg"]
    with gzip.open(out / "skipped.tsv.gz", "rt") as fh:
        assert len(fh.readlines()) == 3
    assert m["totals"]["skipped_files"] == 3


def test_splits_are_disjoint_complete_and_deterministic(tiny_tree, tiny_manifest, tmp_path):
    m = json.loads(tiny_manifest.read_text())
    lists = _lists(tiny_manifest.parent)
    for c in m["classes"]:
        train = {p for p, n in lists["train"] if n == c["name"]}
        val = {p for p, n in lists["val"] if n == c["name"]}
        assert not train & val
        assert len(train) == c["train"] and len(val) == c["val"] and len(train) + len(val) == c["count"]
        assert val, "every class gets validation images"
    again = tmp_path / "again"
    curate(tiny_tree, again, min_images=25, domain_classes=2, val_fraction=0.25, progress=False)
    assert (again / "manifest.json").read_bytes() == tiny_manifest.read_bytes()


def test_hash_split_is_stable_when_files_are_added():
    files = [f"c/{i:04d}.jpg" for i in range(200)]
    _, val = split_files(files, 0.1)
    _, val_more = split_files(files + [f"c/x{i}.jpg" for i in range(20)], 0.1)
    # New files can push some out of validation, but never move a training file into it.
    assert set(val_more) - set(val) <= {f"c/x{i}.jpg" for i in range(20)}


def test_domain_classes_by_name(tiny_tree, tiny_manifest, tmp_path):
    m = json.loads(tiny_manifest.read_text())
    name = m["excluded_classes"][-1]["name"]
    out = curate(tiny_tree, tmp_path, min_images=25, domain_classes=[name], val_fraction=0.25, progress=False)
    assert [c["name"] for c in out["domain_classes"]] == [name]
    with pytest.raises(CurationError, match="dropped classes"):
        curate(tiny_tree, tmp_path / "x", min_images=25, domain_classes=[m["classes"][0]["name"]], progress=False)
    with pytest.raises(CurationError, match="not found"):
        curate(tiny_tree, tmp_path / "y", min_images=25, domain_classes=["no-such-class"], progress=False)


def test_fingerprint_changes_with_data_and_parameters(tiny_tree, tiny_manifest, tmp_path):
    base = json.loads(tiny_manifest.read_text())["fingerprint"]
    other = curate(tiny_tree, tmp_path, min_images=20, domain_classes=2, val_fraction=0.25, progress=False)
    assert other["fingerprint"] != base


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "training.curate", *args], capture_output=True, text=True)


def test_empty_tree_is_an_error(tmp_path):
    (tmp_path / "data").mkdir()
    r = _run_cli("--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"))
    assert r.returncode != 0
    assert "no class folders" in r.stderr
    (tmp_path / "data" / "cats").mkdir()
    (tmp_path / "data" / "cats" / "x.jpg").write_bytes(b"")
    r = _run_cli("--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"))
    assert r.returncode != 0 and "no valid images" in r.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_no_class_reaching_threshold_is_an_error(tiny_tree, tmp_path):
    r = _run_cli("--data-dir", str(tiny_tree), "--out", str(tmp_path / "out"), "--min-images", "500")
    assert r.returncode != 0
    assert "no class reaches --min-images 500" in r.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_cli_reports_skipped_files(tiny_tree, tmp_path):
    r = _run_cli(
        "--data-dir", str(tiny_tree), "--out", str(tmp_path / "out"), "--min-images", "25", "--domain-classes", "2"
    )
    assert r.returncode == 0, r.stderr
    assert "3 files skipped" in r.stdout
    assert "truncated jpeg" in r.stdout


def test_worker_processes_give_the_same_manifest(tiny_tree, tiny_manifest, tmp_path):
    curate(tiny_tree, tmp_path, min_images=25, domain_classes=2, val_fraction=0.25, progress=False, workers=2)
    assert (tmp_path / "manifest.json").read_bytes() == tiny_manifest.read_bytes()


def test_s3_tree_curates_like_the_local_one(tiny_tree, tiny_manifest, tmp_path, moto_url, aws_test_env):
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_url)
    s3.create_bucket(Bucket="images")
    for p in sorted(tiny_tree.rglob("*")):
        if p.is_file():
            s3.upload_file(str(p), "images", f"raw/{p.relative_to(tiny_tree).as_posix()}")
    m = curate(
        "s3://images/raw",
        tmp_path,
        min_images=25,
        domain_classes=2,
        val_fraction=0.25,
        progress=False,
        endpoint_url=moto_url,
    )
    local = json.loads(tiny_manifest.read_text())
    assert m["data_root"] == "s3://images/raw"
    assert m["fingerprint"] == local["fingerprint"]
    for key in ("classes", "domain_classes", "excluded_classes", "skipped_files"):
        assert m[key] == local[key]
    assert _lists(tmp_path) == _lists(tiny_manifest.parent)


def _small_tree(tiny_tree, root, classes=("alpha", "beta"), per_class=12):
    """Real images from the tiny tree, ``per_class`` of them under each new class name."""
    import shutil

    images = sorted(p for p in tiny_tree.rglob("*.jpg") if p.stat().st_size > 1000)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            shutil.copy(images[c * per_class + i], root / name / f"{i:03d}.jpg")
    return root


def test_a_symlink_loop_is_scanned_once(tiny_tree, tmp_path):
    data = _small_tree(tiny_tree, tmp_path / "data")
    (data / "alpha" / "loop").symlink_to(".")  # alpha/loop/loop/... is alpha again
    (data / "beta" / "again").symlink_to("../beta")
    curate(data, tmp_path / "out", min_images=10, domain_classes=0, val_fraction=0.25, progress=False)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert {c["name"]: c["count"] for c in manifest["classes"]} == {"alpha": 12, "beta": 12}
    lists = _lists(tmp_path / "out")
    train, val = {r for r, _ in lists["train"]}, {r for r, _ in lists["val"]}
    assert not train & val and len(train | val) == 24
    reasons = {s["path"]: s["reason"] for s in manifest["skipped_files"]}
    assert "symlink loop" in reasons["alpha/loop/"] and "symlink loop" in reasons["beta/again/"]


def test_names_that_cannot_be_listed_are_reported_and_skipped(tiny_tree, tmp_path):
    data = _small_tree(tiny_tree, tmp_path / "data")
    image = (data / "alpha" / "000.jpg").read_bytes()
    fd = os.open(os.path.join(os.fsencode(data / "alpha"), b"caf\xe9.jpg"), os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, image)
    os.close(fd)
    (data / "alpha" / "tab\there.jpg").write_bytes(image)
    (data / "beta" / "new\nline.jpg").write_bytes(image)
    os.mkdir(os.path.join(os.fsencode(data), b"gamm\xe4"))  # a class folder name that is not UTF-8
    r = _run_cli("--data-dir", str(data), "--out", str(tmp_path / "out"), "--min-images", "10", "--domain-classes", "0")
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert {c["name"]: c["count"] for c in manifest["classes"]} == {"alpha": 12, "beta": 12}
    reasons = {s["path"]: s["reason"] for s in manifest["skipped_files"]}
    assert reasons == {
        "alpha/caf\\xe9.jpg": "name is not UTF-8",
        "alpha/tab\\there.jpg": "name contains a control character (tab, newline, ...)",
        "beta/new\\nline.jpg": "name contains a control character (tab, newline, ...)",
    }
    assert "skipped class folder 'gamm\\\\xe4': name is not UTF-8" in r.stdout
    # The lists the training reads stay one file per line.
    assert all(len(line.split("\t")) == 2 for line in gzip.open(tmp_path / "out" / "train.tsv.gz", "rt"))
