"""SageMaker state in SQLite under the data directory.

Every resource (training job, tuning job, model, endpoint config, endpoint) is one row holding its JSON document, written
in its own committed transaction (WAL, ``synchronous=FULL``) before the API call that changed it answers. A
restart, clean or after a crash, therefore finds every resource the clients were told about, with the status
and process ids localcloud last recorded; :mod:`localcloud.jobs` and :mod:`localcloud.endpoints` pick up
from there.

Document keys that start with ``_`` are localcloud's own bookkeeping (process ids, ports, local paths) and
never reach a client: responses are filtered through the service model's output shapes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    arn TEXT NOT NULL,
    created REAL NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX IF NOT EXISTS resources_arn ON resources (arn);
CREATE TABLE IF NOT EXISTS tags (
    arn TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (arn, key)
);
"""

TRAINING_JOB = "training-job"
MODEL = "model"
ENDPOINT_CONFIG = "endpoint-config"
ENDPOINT = "endpoint"
TUNING_JOB = "hyper-parameter-tuning-job"
MODEL_PACKAGE_GROUP = "model-package-group"
MODEL_PACKAGE = "model-package"  # keyed <group>/<version>
KINDS = (TRAINING_JOB, MODEL, ENDPOINT_CONFIG, ENDPOINT, TUNING_JOB, MODEL_PACKAGE_GROUP, MODEL_PACKAGE)


class State:
    """Thread-safe access to the resource documents; names are case-insensitive as in SageMaker."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- resources ---------------------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> dict | None:
        with self._lock:
            row = self._db.execute(
                "SELECT doc FROM resources WHERE kind = ? AND key = ?", (kind, name.lower())
            ).fetchone()
        return json.loads(row[0]) if row else None

    def insert(self, kind: str, name: str, arn: str, created: float, doc: dict) -> bool:
        """Create the resource; False when one with that name already exists."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO resources (kind, key, arn, created, doc) VALUES (?, ?, ?, ?, ?)",
                (kind, name.lower(), arn.lower(), created, json.dumps(doc)),
            )
            return cursor.rowcount == 1

    def put(self, kind: str, name: str, doc: dict) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE resources SET doc = ? WHERE kind = ? AND key = ?", (json.dumps(doc), kind, name.lower())
            )

    def update(self, kind: str, name: str, change: Callable[[dict], None]) -> dict | None:
        """Read, change in place and write back atomically; None if the resource is gone."""
        with self._lock:
            doc = self.get(kind, name)
            if doc is None:
                return None
            change(doc)
            self.put(kind, name, doc)
            return doc

    def delete(self, kind: str, name: str) -> dict | None:
        with self._lock:
            doc = self.get(kind, name)
            if doc is None:
                return None
            row = self._db.execute(
                "SELECT arn FROM resources WHERE kind = ? AND key = ?", (kind, name.lower())
            ).fetchone()
            self._db.execute("BEGIN")
            try:
                self._db.execute("DELETE FROM resources WHERE kind = ? AND key = ?", (kind, name.lower()))
                self._db.execute("DELETE FROM tags WHERE arn = ?", (row[0],))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return doc

    def list(self, kind: str) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT doc FROM resources WHERE kind = ? ORDER BY created", (kind,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def by_arn(self, arn: str) -> tuple[str, dict] | None:
        with self._lock:
            row = self._db.execute("SELECT kind, doc FROM resources WHERE arn = ?", (arn.lower(),)).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    # -- tags --------------------------------------------------------------------------------------------
    def add_tags(self, arn: str, tags: list[dict]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                start = self._db.execute(
                    "SELECT COALESCE(MAX(position), 0) FROM tags WHERE arn = ?", (arn.lower(),)
                ).fetchone()[0]
                for offset, tag in enumerate(tags, start=1):
                    existing = self._db.execute(
                        "SELECT position FROM tags WHERE arn = ? AND key = ?", (arn.lower(), tag["Key"])
                    ).fetchone()
                    position = existing[0] if existing else start + offset
                    self._db.execute(
                        "INSERT OR REPLACE INTO tags (arn, key, value, position) VALUES (?, ?, ?, ?)",
                        (arn.lower(), tag["Key"], tag.get("Value", ""), position),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def list_tags(self, arn: str) -> list[dict]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key, value FROM tags WHERE arn = ? ORDER BY position", (arn.lower(),)
            ).fetchall()
        return [{"Key": k, "Value": v} for k, v in rows]

    def delete_tags(self, arn: str, keys: list[str]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM tags WHERE arn = ? AND key = ?", [(arn.lower(), k) for k in keys])
