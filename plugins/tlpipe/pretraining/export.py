"""Content-addressed export of the pretrained model and the domain dataset to S3.

    <prefix>/pretrained/<sha256 of model.tar.gz>/{model.tar.gz, manifest.json, metrics.json}
    <prefix>/domain/<dataset fingerprint>/{train,validation}/<class>/<file>   + index.json, written last
    <prefix>/pretrained/latest.json                                            what was exported last

Keys are derived from content (the tarball is byte-for-byte reproducible), every object carries its sha256 as
metadata and an S3 SHA-256 checksum, and an object whose key already holds the same sha256 is not sent again,
so a rerun uploads nothing twice. S3 makes an object visible only once its upload (single or multipart) has
completed, so no reader sees part of one; index.json and latest.json are written after everything they name.

Uploads go through the Amazon provider's S3Hook (connection, endpoint, credentials) and boto3's transfer
manager (multipart above the threshold, concurrent small files).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from plugins.tlpipe.aws import S3_MISSING, error_code
from plugins.tlpipe.config import S3Config

log = logging.getLogger(__name__)

MODEL_FILES = ("model.keras", "meta.json", "metrics.json")
SPLITS = {"train": "domain_train", "validation": "domain_val"}
SHA_META = "sha256"


def user_metadata(head: dict) -> dict[str, str]:
    """An object's user metadata with lower-case names: S3 folds them to lower case, but some S3-compatible
    servers hand them back as they were sent or capitalised (rclone's ``Sha256``)."""
    return {name.lower(): value for name, value in (head.get("Metadata") or {}).items()}


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class UploadReport:
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0


class S3Exporter:
    """Write-once uploads under one bucket, through an S3Hook connection."""

    def __init__(self, s3: S3Config, hook=None):
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        self.cfg = s3
        self.hook = hook or S3Hook(aws_conn_id=s3.aws_conn_id)
        self.bucket = s3.bucket

    # -- plumbing -------------------------------------------------------------------------------------------
    @property
    def client(self):
        return self.hook.get_conn()

    def transfer_config(self):
        from boto3.s3.transfer import TransferConfig

        mb = 1024 * 1024
        return TransferConfig(
            multipart_threshold=self.cfg.multipart_threshold_mb * mb,
            multipart_chunksize=self.cfg.multipart_chunksize_mb * mb,
            max_concurrency=self.cfg.max_concurrency,
            use_threads=True,
        )

    def ensure_bucket(self) -> None:
        if self.hook.check_for_bucket(self.bucket):
            return
        if not self.cfg.create_bucket:
            raise RuntimeError(f"bucket {self.bucket!r} does not exist (s3.create_bucket is off)")
        log.info("creating bucket %s", self.bucket)
        self.hook.create_bucket(bucket_name=self.bucket, region_name=self.cfg.region)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def stored_sha(self, key: str) -> str | None:
        """The sha256 an object was uploaded with, or None when there is no object."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as err:
            if error_code(err) in S3_MISSING:
                return None
            raise
        return user_metadata(head).get(SHA_META, "")

    def _riding_out(self, upload, key: str) -> None:
        """One upload, retried while the S3 API is unreachable (a multipart upload is invisible until it
        completes, so a reader never sees part of an object)."""
        from training.store import riding_out

        riding_out(upload, self.cfg.outage_seconds, f"uploading s3://{self.bucket}/{key}", log.warning)

    @staticmethod
    def _extra_args(sha: str, content_type: str) -> dict:
        return {"Metadata": {SHA_META: sha}, "ChecksumAlgorithm": "SHA256", "ContentType": content_type}

    def put_file(
        self,
        path: Path,
        key: str,
        report: UploadReport,
        content_type: str = "application/octet-stream",
        sha: str | None = None,
    ) -> None:
        sha = sha or sha256_file(path)
        if self.stored_sha(key) == sha:
            report.skipped.append(key)
            return
        self._riding_out(
            lambda: self.client.upload_file(
                str(path),
                self.bucket,
                key,
                ExtraArgs=self._extra_args(sha, content_type),
                Config=self.transfer_config(),
            ),
            key,
        )
        report.uploaded.append(key)
        report.bytes_uploaded += path.stat().st_size

    def put_json(self, key: str, obj, report: UploadReport | None = None, once: bool = True) -> None:
        body = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
        sha = hashlib.sha256(body).hexdigest()
        if once and self.stored_sha(key) == sha:
            if report is not None:
                report.skipped.append(key)
            return
        self._riding_out(
            lambda: self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                Metadata={SHA_META: sha},
                ChecksumAlgorithm="SHA256",
                ContentType="application/json",
            ),
            key,
        )
        if report is not None:
            report.uploaded.append(key)
            report.bytes_uploaded += len(body)

    def get_json(self, key: str):
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as err:
            if error_code(err) in S3_MISSING | {"NoSuchBucket"}:
                return None
            raise
        return json.loads(body)

    # -- the pretrained model -------------------------------------------------------------------------------
    def export_model(self, best_dir: str | Path, manifest_path: str | Path) -> dict:
        """Upload model.tar.gz (the best epoch's files at its root), the dataset manifest and the best metrics."""
        best_dir, manifest_path = Path(best_dir), Path(manifest_path)
        report = UploadReport()
        self.ensure_bucket()
        with tempfile.TemporaryDirectory(prefix="export-") as tmp:
            tarball = Path(tmp, "model.tar.gz")
            sha = build_model_tarball(best_dir, tarball)
            base = self.cfg.key("pretrained", sha)
            # The model first, the small files after: whoever finds manifest.json finds the model beside it.
            self.put_file(tarball, f"{base}/model.tar.gz", report, "application/gzip", sha)
            self.put_file(best_dir / "metrics.json", f"{base}/metrics.json", report, "application/json")
            self.put_file(manifest_path, f"{base}/manifest.json", report, "application/json")
        log.info(
            "model %s: uploaded %d object(s) (%d bytes), already there: %d",
            sha[:12],
            len(report.uploaded),
            report.bytes_uploaded,
            len(report.skipped),
        )
        return {
            "model_sha256": sha,
            "prefix_uri": self.uri(base) + "/",
            "model_uri": self.uri(f"{base}/model.tar.gz"),
            "manifest_uri": self.uri(f"{base}/manifest.json"),
            "metrics_uri": self.uri(f"{base}/metrics.json"),
            **asdict(report),
        }

    # -- the domain dataset ---------------------------------------------------------------------------------
    def upload_domain(self, manifest_path: str | Path) -> dict:
        """Upload the domain classes' train/validation images as ``<split>/<class>/<file>`` under the fingerprint."""
        from boto3.s3.transfer import create_transfer_manager

        from training.contracts import read_list

        manifest_path = Path(manifest_path)
        manifest = json.loads(manifest_path.read_text())
        fingerprint = manifest["fingerprint"]
        classes = sorted(c["name"] for c in manifest.get("domain_classes", []))
        if not classes:
            raise ValueError("the manifest has no domain classes to upload (domain_classes is 0)")
        base = self.cfg.key("domain", fingerprint)
        result = {
            "fingerprint": fingerprint,
            "classes": classes,
            "prefix_uri": self.uri(base) + "/",
            "train_uri": self.uri(f"{base}/train") + "/",
            "validation_uri": self.uri(f"{base}/validation") + "/",
            "index_uri": self.uri(f"{base}/index.json"),
        }
        report = UploadReport()
        self.ensure_bucket()
        if self.get_json(f"{base}/index.json") is not None:
            # index.json is written after every file it lists: the whole set is there.
            report.skipped.append(f"{base}/index.json")
            log.info("domain dataset %s is complete in S3; nothing to upload", fingerprint[:12])
            return {**result, **asdict(report)}

        data_root = Path(manifest["data_root"])
        wanted: dict[str, Path] = {}
        for split, list_name in SPLITS.items():
            for rel, cls in read_list(manifest_path.parent / manifest["files"][list_name]):
                parts = rel.split("/")
                inside = "/".join(parts[1:]) if parts[0] == cls and len(parts) > 1 else parts[-1]
                wanted[f"{base}/{split}/{cls}/{inside}"] = data_root / rel
        present = {}
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{base}/"):
            for obj in page.get("Contents", []):
                present[obj["Key"]] = obj["Size"]

        index = {"fingerprint": fingerprint, "classes": classes, "files": {}}
        todo = []
        for key, path in sorted(wanted.items()):
            sha = sha256_file(path)
            index["files"][key[len(base) + 1 :]] = {"sha256": sha, "size": path.stat().st_size}
            # A key left by an interrupted run counts only if it holds the same bytes.
            if key in present and present[key] == path.stat().st_size and self.stored_sha(key) == sha:
                report.skipped.append(key)
            else:
                todo.append((key, path, sha))
        log.info("domain dataset %s: %d files, %d to upload", fingerprint[:12], len(wanted), len(todo))
        if todo:
            with create_transfer_manager(self.client, self.transfer_config()) as manager:
                futures = [
                    manager.upload(str(path), self.bucket, key, extra_args=self._extra_args(sha, _content_type(path)))
                    for key, path, sha in todo
                ]
                for (key, path, _), fut in zip(todo, futures):
                    fut.result()
                    report.uploaded.append(key)
                    report.bytes_uploaded += path.stat().st_size
        self.put_json(f"{base}/index.json", index, report)
        return {**result, **asdict(report)}

    # -- what was exported last ----------------------------------------------------------------------------
    def latest_key(self) -> str:
        return self.cfg.key("pretrained", "latest.json")

    def read_latest(self) -> dict | None:
        return self.get_json(self.latest_key())

    def write_latest(self, record: dict) -> None:
        self.put_json(self.latest_key(), record, once=False)


def _content_type(path: Path) -> str:
    suffix = path.suffix.lower()
    return {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}.get(suffix, "application/octet-stream")


def build_model_tarball(best_dir: Path, dest: Path) -> str:
    """A reproducible model.tar.gz of the best epoch (files at the root): same files in, same bytes out. Returns sha256."""
    missing = [n for n in MODEL_FILES if not (best_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{best_dir} lacks {', '.join(missing)}")
    with (
        open(dest, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name in MODEL_FILES:
            data = (best_dir / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return sha256_file(dest)
