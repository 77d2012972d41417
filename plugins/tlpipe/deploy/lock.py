"""One deploy at a time per endpoint: a lock object in S3, created only if absent.

    lock = EndpointLock(s3_client, bucket, key=s3cfg.key("locks", "endpoints", f"{endpoint}.json"),
                        owner={"dag_id": ..., "run_id": ...})
    lock.acquire()     # EndpointLocked when another run holds it
    ...
    lock.release()     # only the owner's lock is removed

``max_active_runs=1`` already keeps two runs of the deploy DAG apart; the lock also keeps apart anything else
that deploys with it (another Airflow deployment, a copy of the DAG) and covers the stretch from reading
the live model to the smoke test and rollback. It is an S3 conditional write (``If-None-Match: *``), so two
writers cannot both create it. The same run may re-enter (an Airflow retry); a lock older than its TTL
(its holder died without the teardown releasing it) is taken over with ``If-Match`` on its ETag.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, Mapping

from plugins.tlpipe.aws import S3_MISSING, error_code

DEFAULT_TTL = timedelta(hours=6)
_CONFLICT = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


class EndpointLocked(RuntimeError):
    """Another run is deploying to the endpoint."""


@dataclass(frozen=True)
class LockDecision:
    action: Literal["reenter", "take_over", "busy"]
    reason: str


def decide(existing: Mapping[str, Any], owner: Mapping[str, Any], now: datetime, ttl: timedelta) -> LockDecision:
    """What to do about a lock that is already there."""
    holder = f"{existing.get('dag_id')}/{existing.get('run_id')}"
    if existing.get("run_id") == owner.get("run_id") and existing.get("dag_id") == owner.get("dag_id"):
        return LockDecision("reenter", f"this run already holds the lock (since {existing.get('acquired_at')})")
    try:
        since = datetime.fromisoformat(str(existing.get("acquired_at")))
    except ValueError:
        return LockDecision("take_over", f"the lock held by {holder} is unreadable: taking it over")
    since = since if since.tzinfo else since.replace(tzinfo=timezone.utc)
    if now - since > ttl:
        return LockDecision(
            "take_over", f"the lock held by {holder} since {since.isoformat()} is older than {ttl}: taking it over"
        )
    return LockDecision("busy", f"{holder} has been deploying since {since.isoformat()}")


class EndpointLock:
    def __init__(
        self,
        client,
        bucket: str,
        key: str,
        owner: Mapping[str, Any],
        ttl: timedelta = DEFAULT_TTL,
        clock=lambda: datetime.now(timezone.utc),
    ):
        self.client, self.bucket, self.key = client, bucket, key
        self.owner, self.ttl, self.clock = dict(owner), ttl, clock

    def _body(self) -> bytes:
        return json.dumps({**self.owner, "acquired_at": self.clock().isoformat()}, sort_keys=True).encode()

    def read(self) -> tuple[dict, str] | None:
        from botocore.exceptions import ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as err:
            if error_code(err) in S3_MISSING:
                return None
            raise
        try:
            record = json.loads(obj["Body"].read())
        except ValueError:
            record = {}
        return (record if isinstance(record, dict) else {}), obj["ETag"]

    def acquire(self) -> str:
        """Take the lock; returns what happened, raises ``EndpointLocked`` when someone else holds it."""
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self.key, Body=self._body(), IfNoneMatch="*", ContentType="application/json"
            )
            return f"acquired s3://{self.bucket}/{self.key}"
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") not in _CONFLICT:
                raise
        current = self.read()
        if current is None:  # released in between: try once more from the start
            return self.acquire()
        record, etag = current
        decision = decide(record, self.owner, self.clock(), self.ttl)
        if decision.action == "reenter":
            return decision.reason
        if decision.action == "take_over":
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=self.key, Body=self._body(), IfMatch=etag, ContentType="application/json"
                )
                return decision.reason
            except ClientError as err:
                if error_code(err) not in _CONFLICT | S3_MISSING:
                    raise
                raise EndpointLocked(f"s3://{self.bucket}/{self.key}: another run took the stale lock first") from None
        raise EndpointLocked(f"s3://{self.bucket}/{self.key}: {decision.reason}")

    def release(self) -> bool:
        """Remove the lock if this run holds it; True when it did."""
        current = self.read()
        if current is None:
            return False
        record, _ = current
        if record.get("run_id") != self.owner.get("run_id") or record.get("dag_id") != self.owner.get("dag_id"):
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self.key)
        return True
