"""A small object-store abstraction over local paths and ``s3://`` URIs.

Checkpoints, manifests and models are written through this module so the same code runs against a local
directory (the embedded profile) and an S3-compatible store (on-prem object storage or AWS S3). It imports
no TensorFlow, so the Airflow side (the best-checkpoint sensor) can use it at task time.

S3 endpoint and credentials come from the usual boto3 sources; ``TLPIPE_S3_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL``) points it at a non-AWS endpoint. ``TLPIPE_S3_CREDENTIALS_DIR`` names a directory holding
the files ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and optionally ``AWS_SESSION_TOKEN`` (a Kubernetes
secret mounted as a volume, or the local launcher's 0600 files): credentials that never pass through an
environment, which Horovod's launchers copy onto every worker's command line.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse


class UnsafeKey(ValueError):
    """An object key that would be written outside the directory it is downloaded into."""


def safe_destination(root: str | Path, relative: str, key: str) -> Path:
    """``root/relative`` for the object ``key``; refuses keys that resolve outside ``root`` (``..``, ``.``,
    absolute, empty segments, backslashes, NUL), so a planted key cannot write anywhere else on this machine."""
    parts = relative.split("/")
    if (
        not relative
        or relative.startswith("/")
        or "\\" in relative
        or "\x00" in relative
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise UnsafeKey(
            f"refusing to download object {key!r}: its path {relative!r} would resolve outside "
            f"{root} ('..', '.', absolute or empty path segments)"
        )
    root = Path(root)
    dest = root.joinpath(*parts)
    if not dest.resolve().is_relative_to(root.resolve()):  # a symlink inside root pointing out
        raise UnsafeKey(f"refusing to download object {key!r}: {dest} resolves outside {root}")
    return dest


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def join(base: str, *parts: str) -> str:
    base = str(base)
    if is_s3(base):
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return str(Path(base, *parts))


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


CREDENTIALS_DIR_ENV = "TLPIPE_S3_CREDENTIALS_DIR"
CREDENTIAL_FILES = {
    "AWS_ACCESS_KEY_ID": "aws_access_key_id",
    "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key",
    "AWS_SESSION_TOKEN": "aws_session_token",
}


def write_credentials_dir(directory: str | Path, access_key: str, secret_key: str, token: str | None = None) -> Path:
    """The files ``file_credentials`` reads, each readable by this user only."""
    directory = Path(directory)
    values = {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key, "AWS_SESSION_TOKEN": token}
    for name, value in values.items():
        if value:
            fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(value)
    return directory


def file_credentials(directory: str | None = None) -> dict[str, str]:
    """boto3 client arguments from ``TLPIPE_S3_CREDENTIALS_DIR``; empty when it is not set."""
    directory = directory or os.environ.get(CREDENTIALS_DIR_ENV)
    if not directory:
        return {}
    out = {}
    for name, argument in CREDENTIAL_FILES.items():
        path = Path(directory, name)
        if path.is_file():
            out[argument] = path.read_text().strip()
    if "aws_access_key_id" not in out or "aws_secret_access_key" not in out:
        raise FileNotFoundError(f"{CREDENTIALS_DIR_ENV}={directory} lacks AWS_ACCESS_KEY_ID or AWS_SECRET_ACCESS_KEY")
    return out


def s3_client(endpoint_url: str | None = None):
    import boto3
    from botocore.config import Config

    endpoint_url = endpoint_url or os.environ.get("TLPIPE_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    # A session of its own: boto3's default session keeps the first credentials it resolved for the process,
    # and a store's may differ from them (or be rotated in the environment since).
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url or None,
        config=Config(retries={"max_attempts": 8, "mode": "adaptive"}, max_pool_connections=32),
        **file_credentials(),
    )


def transient(err: BaseException | None) -> bool:
    """A store error worth waiting out: no connection, a timeout, a 5xx (the server restarting, failing over or
    overloaded); found along the exception's cause chain (boto3's transfer manager wraps what it met)."""
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (BotoConnectionError, HTTPClientError)):
            return True
        if isinstance(err, ClientError):
            status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            return status >= 500 or err.response.get("Error", {}).get("Code") in ("SlowDown", "ServiceUnavailable")
        err = err.__cause__ or err.__context__
    return False


def riding_out(fn, seconds: float, what: str, log=print):
    """``fn()``, retried with backoff while the store is unavailable (``transient``), for up to ``seconds``;
    any other error, or the outage lasting longer, is raised."""
    from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

    def before_sleep(state) -> None:
        err = state.outcome.exception()
        log(f"{what}: the store is unavailable ({type(err).__name__}: {err}); retry in {state.next_action.sleep:.0f} s")

    retrying = Retrying(
        stop=stop_after_delay(seconds),
        wait=wait_exponential(multiplier=1, min=1, max=15),
        retry=retry_if_exception(transient),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(fn)


@dataclass
class Store:
    """Read and write small objects and whole directories under local paths or S3 URIs."""

    endpoint_url: str | None = None
    _client: object | None = None

    @property
    def s3(self):
        if self._client is None:
            self._client = s3_client(self.endpoint_url)
        return self._client

    # -- single objects ------------------------------------------------------------------------------
    def exists(self, uri: str) -> bool:
        if is_s3(uri):
            from botocore.exceptions import ClientError

            bucket, key = split_s3(uri)
            try:
                self.s3.head_object(Bucket=bucket, Key=key)
                return True
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
        return Path(uri).exists()

    def read_bytes(self, uri: str) -> bytes:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        return Path(uri).read_bytes()

    def read_text(self, uri: str) -> str:
        return self.read_bytes(uri).decode("utf-8")

    def read_json(self, uri: str):
        return json.loads(self.read_text(uri))

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write atomically: a reader sees the old object or the whole new one, never a part."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            self.s3.put_object(Bucket=bucket, Key=key, Body=data)  # a single PUT is atomic
            return
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes(uri, text.encode("utf-8"))

    def write_json(self, uri: str, obj) -> None:
        self.write_text(uri, json.dumps(obj, indent=2, sort_keys=True) + "\n")

    def delete(self, uri: str) -> None:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            self.s3.delete_object(Bucket=bucket, Key=key)
        else:
            Path(uri).unlink(missing_ok=True)

    # -- directories ---------------------------------------------------------------------------------
    def delete_dir(self, uri: str) -> None:
        """Remove everything below ``uri`` (nothing when it does not exist)."""
        if not is_s3(uri):
            shutil.rmtree(uri, ignore_errors=True)
            return
        bucket, prefix = split_s3(uri)
        for rel, _ in list(self.walk_files(uri)):
            self.s3.delete_object(Bucket=bucket, Key=f"{prefix.rstrip('/')}/{rel}")

    def list_dirs(self, uri: str) -> list[str]:
        """Names of the immediate sub-"directories" of ``uri``."""
        if is_s3(uri):
            bucket, prefix = split_s3(uri)
            prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
            names = []
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
                for cp in page.get("CommonPrefixes", []):
                    names.append(cp["Prefix"][len(prefix) :].rstrip("/"))
            return sorted(names)
        path = Path(uri)
        if not path.is_dir():
            return []
        return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))

    def walk_files(self, uri: str) -> Iterator[tuple[str, int]]:
        """(relative path, size) of every object below ``uri``."""
        if is_s3(uri):
            bucket, prefix = split_s3(uri)
            prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    yield obj["Key"][len(prefix) :], obj["Size"]
            return
        root = Path(uri)
        for path in sorted(root.rglob("*")):
            if path.is_file():
                yield path.relative_to(root).as_posix(), path.stat().st_size

    def upload_dir(self, local_dir: str | Path, uri: str) -> None:
        """Copy a local directory to ``uri``. Local targets appear at once (rename of a sibling temp dir)."""
        local_dir = Path(local_dir)
        if is_s3(uri):
            from boto3.s3.transfer import TransferConfig

            bucket, prefix = split_s3(uri)
            cfg = TransferConfig(multipart_threshold=64 * 2**20, max_concurrency=8)
            for path in sorted(local_dir.rglob("*")):
                if path.is_file():
                    key = f"{prefix.rstrip('/')}/{path.relative_to(local_dir).as_posix()}"
                    self.s3.upload_file(str(path), bucket, key, Config=cfg)
            return
        target = Path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            shutil.copytree(local_dir, tmp, dirs_exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def download_dir(self, uri: str, local_dir: str | Path) -> Path:
        """Copy everything below ``uri`` into ``local_dir``. Every key is checked before anything is written:
        one that would land outside ``local_dir`` fails the whole download (``UnsafeKey``, naming the key)."""
        local_dir = Path(local_dir)
        if is_s3(uri):
            bucket, prefix = split_s3(uri)
            prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
            planned = []
            for rel, size in self.walk_files(uri):
                if size == 0 and (rel == "" or rel.endswith("/")):
                    continue  # a "folder" marker object, as consoles create: nothing to write
                planned.append((prefix + rel, safe_destination(local_dir, rel, prefix + rel)))
            for key, dest in planned:
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.s3.download_file(bucket, key, str(dest))
            return local_dir
        shutil.copytree(uri, local_dir, dirs_exist_ok=True)
        return local_dir

    def copy_dir(self, src: str, dst: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            self.download_dir(src, tmp)
            self.upload_dir(tmp, dst)
