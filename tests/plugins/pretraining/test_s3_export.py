"""Content-addressed export to real S3 APIs on loopback: moto's server and SeaweedFS, the local profile's on-prem
store (a real S3-compatible server, with its own ways: metadata, multipart ETags). Layout, checksums, reruns."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from pathlib import Path

import pytest

from plugins.tlpipe.config import S3Config
from plugins.tlpipe.pretraining.export import MODEL_FILES, S3Exporter, UploadReport, build_model_tarball
from training.curate import read_list


@pytest.fixture(params=["moto", "seaweedfs"])
def exporter(request):
    if request.param == "moto":
        request.getfixturevalue("s3_endpoint")
        conn_id = "aws_default"
    else:
        from onprem_fixtures import ONPREM_CONN_ID

        request.getfixturevalue("onprem_store")
        conn_id = ONPREM_CONN_ID
    prefix = f"t/{request.node.name[:40]}"
    return S3Exporter(
        S3Config(
            aws_conn_id=conn_id,
            bucket="tlpipe-export",
            prefix=prefix,
            create_bucket=True,
            multipart_threshold_mb=5,
            multipart_chunksize_mb=5,
        )
    )


@pytest.fixture()
def best_dir(tmp_path) -> Path:
    best = tmp_path / "best"
    best.mkdir()
    # Large enough that model.keras goes up in several multipart chunks.
    (best / "model.keras").write_bytes(random.Random(0).randbytes(12 * 2**20))
    (best / "meta.json").write_text(json.dumps({"epoch": 3, "class_names": ["a", "b"]}))
    (best / "metrics.json").write_text(json.dumps({"epoch": 3, "val_accuracy": 0.8}))
    return best


def _keys(exporter, prefix: str) -> list[str]:
    pages = exporter.client.get_paginator("list_objects_v2").paginate(Bucket=exporter.bucket, Prefix=prefix)
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


def test_tarball_is_reproducible_with_files_at_its_root(best_dir, tmp_path):
    a, b = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    assert build_model_tarball(best_dir, a) == build_model_tarball(best_dir, b)
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as tar:
        assert tar.getnames() == list(MODEL_FILES)
        assert tar.extractfile("meta.json").read() == (best_dir / "meta.json").read_bytes()
    (best_dir / "metrics.json").write_text("{}")
    assert build_model_tarball(best_dir, b) != hashlib.sha256(a.read_bytes()).hexdigest()


def test_model_export_is_content_addressed_and_uploaded_once(exporter, best_dir, tiny_manifest):
    first = exporter.export_model(best_dir, tiny_manifest)
    sha = first["model_sha256"]
    base = f"{exporter.cfg.prefix}/pretrained/{sha}"
    assert first["model_uri"] == f"s3://tlpipe-export/{base}/model.tar.gz"
    assert _keys(exporter, f"{base}/") == [f"{base}/manifest.json", f"{base}/metrics.json", f"{base}/model.tar.gz"]
    assert len(first["uploaded"]) == 3 and first["skipped"] == []

    body = exporter.client.get_object(Bucket=exporter.bucket, Key=f"{base}/model.tar.gz")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == sha
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert tar.extractfile("model.keras").read() == (best_dir / "model.keras").read_bytes()
    manifest = exporter.client.get_object(Bucket=exporter.bucket, Key=f"{base}/manifest.json")["Body"].read()
    assert manifest == Path(tiny_manifest).read_bytes()
    head = exporter.client.head_object(Bucket=exporter.bucket, Key=f"{base}/model.tar.gz", ChecksumMode="ENABLED")
    assert head["Metadata"]["sha256"] == sha
    # Above the 5 MB threshold: a multipart upload, in 5 MB parts (the ETag of a multipart object ends in -<parts>).
    parts = -(-head["ContentLength"] // (5 * 2**20))
    assert parts >= 2 and head["ETag"].strip('"').endswith(f"-{parts}"), head["ETag"]

    again = exporter.export_model(best_dir, tiny_manifest)
    assert again["model_sha256"] == sha
    assert again["uploaded"] == [] and again["bytes_uploaded"] == 0 and len(again["skipped"]) == 3


def test_domain_upload_layout_and_rerun(exporter, tiny_manifest):
    manifest = json.loads(Path(tiny_manifest).read_text())
    domain = sorted(c["name"] for c in manifest["domain_classes"])
    first = exporter.upload_domain(tiny_manifest)
    base = f"{exporter.cfg.prefix}/domain/{manifest['fingerprint']}"
    assert first["train_uri"] == f"s3://tlpipe-export/{base}/train/"
    assert first["validation_uri"] == f"s3://tlpipe-export/{base}/validation/"
    assert first["classes"] == domain

    expected = []
    for split, name in (("train", "domain_train"), ("validation", "domain_val")):
        for rel, cls in read_list(Path(tiny_manifest).parent / manifest["files"][name]):
            assert cls in domain
            expected.append(f"{base}/{split}/{cls}/{rel.split('/', 1)[1]}")
    keys = _keys(exporter, f"{base}/")
    assert keys == sorted(expected + [f"{base}/index.json"])
    assert sorted(first["uploaded"]) == keys
    index = exporter.get_json(f"{base}/index.json")
    assert len(index["files"]) == len(expected)

    again = exporter.upload_domain(tiny_manifest)
    assert again["uploaded"] == [] and again["bytes_uploaded"] == 0

    # An interrupted earlier run: the index and one image missing. Only those two go up.
    victim = expected[0]
    for key in (victim, f"{base}/index.json"):
        exporter.client.delete_object(Bucket=exporter.bucket, Key=key)
    resumed = exporter.upload_domain(tiny_manifest)
    assert sorted(resumed["uploaded"]) == sorted([victim, f"{base}/index.json"])
    assert len(resumed["skipped"]) == len(expected) - 1


def test_latest_pointer(exporter):
    assert exporter.read_latest() is None
    exporter.write_latest({"model_sha256": "abc", "dataset_fingerprint": "f"})
    exporter.write_latest({"model_sha256": "def", "dataset_fingerprint": "f"})
    assert exporter.read_latest() == {"model_sha256": "def", "dataset_fingerprint": "f"}


def test_missing_bucket_is_an_error_when_creating_is_off(s3_endpoint, best_dir, tiny_manifest):
    exporter = S3Exporter(S3Config(bucket="tlpipe-nobody-made-this", prefix="p", create_bucket=False))
    assert exporter.read_latest() is None
    with pytest.raises(RuntimeError, match="does not exist"):
        exporter.export_model(best_dir, tiny_manifest)


def test_stored_sha_ignores_the_case_of_metadata_names(exporter, monkeypatch):
    """Some S3-compatible servers hand user metadata back capitalised (rclone's ``Sha256``): still a match,
    so a re-export of the same model uploads nothing there either."""
    real_head = exporter.client.head_object

    def capitalised(**kwargs):
        head = real_head(**kwargs)
        head["Metadata"] = {k.capitalize(): v for k, v in head.get("Metadata", {}).items()}
        return head

    exporter.ensure_bucket()
    exporter.put_json("case/probe.json", {"a": 1})
    monkeypatch.setattr(exporter.client, "head_object", capitalised)
    report = UploadReport()
    exporter.put_json("case/probe.json", {"a": 1}, report)
    assert report.uploaded == [] and report.skipped == ["case/probe.json"]
