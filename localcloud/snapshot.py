"""S3 and CloudWatch Logs snapshots, so moto's in-memory stores survive a restart.

A snapshot is taken through the services' own APIs (no moto internals): every bucket's current objects with
their content type and user metadata, and every log group's streams and events. Object bodies are stored
once per content (keyed by ETag and size) and events are appended per stream, so a snapshot only copies
what changed since the last one. ``manifest.json`` is replaced atomically; a crash during a snapshot leaves
the previous one intact.

What is not kept: bucket policies, ACLs, tags, versions other than the latest, lifecycle rules; log group
retention settings; log events older than 14 days at restore time (CloudWatch Logs refuses them). IAM and
STS state is never kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from botocore.exceptions import ClientError

log = logging.getLogger("localcloud.snapshot")

_OBJECT_HEADERS = ("ContentType", "ContentEncoding", "ContentDisposition", "ContentLanguage", "CacheControl")
_DAY_MS = 24 * 3600 * 1000


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _known_objects(manifest: dict) -> dict:
    return {(b["name"], o["key"]): o for b in manifest.get("buckets", []) for o in b.get("objects", [])}


class Snapshot:
    def __init__(self, directory: Path, s3, logs):
        self.dir = Path(directory)
        self.blobs = self.dir / "blobs"
        self.events = self.dir / "logs"
        self.manifest_path = self.dir / "manifest.json"
        self.s3 = s3
        self.logs = logs
        self._lock = threading.Lock()
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.events.mkdir(parents=True, exist_ok=True)

    def _manifest(self) -> dict:
        if self.manifest_path.exists():
            return json.loads(self.manifest_path.read_text())
        return {"version": 1, "buckets": [], "logs": []}

    # -- save --------------------------------------------------------------------------------------------
    def save(self) -> None:
        with self._lock:
            previous = self._manifest()
            manifest = {"version": 1, "buckets": self._save_s3(previous), "logs": self._save_logs(previous)}
            _atomic_write(self.manifest_path, json.dumps(manifest).encode())
            self._collect_garbage(manifest)

    def save_bucket(self, name: str) -> None:
        """Snapshot one bucket now (after a write to it, before the write is acknowledged), the rest as it was."""
        with self._lock:
            previous = self._manifest()
            known = _known_objects(previous)
            names = {b["Name"] for b in self.s3.list_buckets().get("Buckets", [])}
            buckets = [b for b in previous.get("buckets", []) if b["name"] != name and b["name"] in names]
            if name in names:
                buckets.append(self._save_bucket(name, known))
            manifest = {"version": 1, "buckets": buckets, "logs": previous.get("logs", [])}
            _atomic_write(self.manifest_path, json.dumps(manifest).encode())

    def _save_s3(self, previous: dict) -> list[dict]:
        known = _known_objects(previous)
        return [self._save_bucket(b["Name"], known) for b in self.s3.list_buckets().get("Buckets", [])]

    def _save_bucket(self, name: str, known: dict) -> dict:
        try:
            region = self.s3.get_bucket_location(Bucket=name).get("LocationConstraint") or "us-east-1"
        except ClientError:
            region = "us-east-1"
        objects = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                try:
                    objects.append(self._save_object(name, obj, known.get((name, obj["Key"]))))
                except ClientError as err:  # deleted between listing and reading
                    log.debug("snapshot skipped s3://%s/%s: %s", name, obj["Key"], err)
        return {"name": name, "region": region, "objects": objects}

    def _save_object(self, bucket: str, obj: dict, known: dict | None) -> dict:
        etag = obj["ETag"].strip('"')
        blob = hashlib.sha1(f"{etag}:{obj['Size']}".encode()).hexdigest()
        if known is not None and known.get("etag") == etag and (self.blobs / blob).exists():
            return known
        entry = {"key": obj["Key"], "etag": etag, "size": obj["Size"], "blob": blob}
        path = self.blobs / blob
        if path.exists():
            head = self.s3.head_object(Bucket=bucket, Key=obj["Key"])
        else:
            head = self.s3.get_object(Bucket=bucket, Key=obj["Key"])
            tmp = path.with_name(blob + ".tmp")
            with open(tmp, "wb") as fh:
                for chunk in head["Body"].iter_chunks(1 << 20):
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        for header in _OBJECT_HEADERS:
            if head.get(header):
                entry[header] = head[header]
        if head.get("Metadata"):
            entry["Metadata"] = head["Metadata"]
        return entry

    def _save_logs(self, previous: dict) -> list[dict]:
        known = {(g["group"], s["name"]): s for g in previous.get("logs", []) for s in g.get("streams", [])}
        groups = []
        for page in self.logs.get_paginator("describe_log_groups").paginate():
            for group in page.get("logGroups", []):
                group_name = group["logGroupName"]
                streams = []
                for stream_page in self.logs.get_paginator("describe_log_streams").paginate(logGroupName=group_name):
                    for stream in stream_page.get("logStreams", []):
                        streams.append(self._save_stream(group_name, stream["logStreamName"], known))
                groups.append({"group": group_name, "streams": streams})
        return groups

    def _save_stream(self, group: str, stream: str, known: dict) -> dict:
        entry = dict(
            known.get((group, stream))
            or {
                "name": stream,
                "file": hashlib.sha1(f"{group}\0{stream}".encode()).hexdigest() + ".jsonl",
                "last_ts": 0,
                "skip": 0,
                "count": 0,
            }
        )
        last_ts, skip = entry["last_ts"], entry["skip"]
        new: list[dict] = []
        token = None
        while True:
            kwargs = {"logGroupName": group, "logStreamName": stream, "startFromHead": True, "startTime": last_ts}
            if token:
                kwargs["nextToken"] = token
            response = self.logs.get_log_events(**kwargs)
            for event in response.get("events", []):
                new.append({"timestamp": event["timestamp"], "message": event["message"]})
            next_token = response.get("nextForwardToken")
            if not response.get("events") or next_token == token:
                break
            token = next_token
        # Events at the last saved timestamp were saved already, up to ``skip`` of them.
        at_last = [e for e in new if e["timestamp"] == last_ts]
        fresh = at_last[skip:] + [e for e in new if e["timestamp"] > last_ts]
        if fresh:
            with open(self.events / entry["file"], "a") as fh:
                for event in fresh:
                    fh.write(json.dumps(event) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            newest = max(e["timestamp"] for e in fresh)
            if newest == last_ts:
                entry["skip"] = skip + len(fresh)
            else:
                entry["last_ts"] = newest
                entry["skip"] = sum(1 for e in new if e["timestamp"] == newest)
            entry["count"] += len(fresh)
        return entry

    def _collect_garbage(self, manifest: dict) -> None:
        blobs = {o["blob"] for b in manifest["buckets"] for o in b["objects"]}
        for path in self.blobs.iterdir():
            if path.name not in blobs:
                path.unlink(missing_ok=True)
        files = {s["file"] for g in manifest["logs"] for s in g["streams"]}
        for path in self.events.iterdir():
            if path.name not in files:
                path.unlink(missing_ok=True)

    # -- restore -----------------------------------------------------------------------------------------
    def restore(self) -> tuple[int, int]:
        """Load the last snapshot into the (empty) services; returns (objects, log events) restored."""
        with self._lock:
            manifest = self._manifest()
            objects = self._restore_s3(manifest)
            events = self._restore_logs(manifest)
            return objects, events

    def _restore_s3(self, manifest: dict) -> int:
        jobs = []
        for bucket in manifest.get("buckets", []):
            kwargs = {"Bucket": bucket["name"]}
            if bucket["region"] != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": bucket["region"]}
            try:
                self.s3.create_bucket(**kwargs)
            except ClientError as err:
                if err.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
            jobs.extend((bucket["name"], obj) for obj in bucket["objects"])

        def put(item) -> None:
            bucket, obj = item
            kwargs = {k: obj[k] for k in _OBJECT_HEADERS if obj.get(k)}
            if obj.get("Metadata"):
                kwargs["Metadata"] = obj["Metadata"]
            with open(self.blobs / obj["blob"], "rb") as body:
                self.s3.put_object(Bucket=bucket, Key=obj["key"], Body=body, **kwargs)

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(put, jobs))
        return len(jobs)

    def _restore_logs(self, manifest: dict) -> int:
        restored = 0
        for group in manifest.get("logs", []):
            try:
                self.logs.create_log_group(logGroupName=group["group"])
            except self.logs.exceptions.ResourceAlreadyExistsException:
                pass
            for stream in group["streams"]:
                try:
                    self.logs.create_log_stream(logGroupName=group["group"], logStreamName=stream["name"])
                except self.logs.exceptions.ResourceAlreadyExistsException:
                    pass
                path = self.events / stream["file"]
                if not path.exists():
                    continue
                with open(path) as fh:
                    events = [json.loads(line) for line in fh if line.strip()]
                events.sort(key=lambda e: e["timestamp"])
                for batch in _batches(events):
                    self.logs.put_log_events(logGroupName=group["group"], logStreamName=stream["name"], logEvents=batch)
                restored += len(events)
        return restored


def _batches(events: list[dict]):
    """PutLogEvents limits: 10,000 events, 1 MiB, and 24 hours per batch."""
    batch: list[dict] = []
    size = 0
    for event in events:
        cost = len(event["message"].encode("utf-8")) + 26
        if batch and (
            len(batch) >= 10_000 or size + cost > 1_000_000 or event["timestamp"] - batch[0]["timestamp"] >= _DAY_MS
        ):
            yield batch
            batch, size = [], 0
        batch.append(event)
        size += cost
    if batch:
        yield batch
