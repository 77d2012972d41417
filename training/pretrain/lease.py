"""One writer per checkpoint directory: a lease object (``C/LEASE``) with its owner and a heartbeat.

    lease = Lease(store, run_dir, owner="general_pretraining/manual__2026-12-01T10:00:00")
    lease.acquire()          # LeaseHeld when another owner's heartbeat is fresh
    ...                      # a thread renews the heartbeat; lease.check() raises LeaseLost if another took over
    lease.release()

The owner names the run, not the process: a retry of the same Airflow run takes the lease over at once (its
previous attempt is gone: the launchers stop every process of a killed task), a different run is refused while
the holder's heartbeat is younger than the lease's ``ttl``, and takes it over once the holder is that long
silent, or at once when the holder ran on this host and its process is gone (a dead owner). An object store has no compare-and-swap, so taking a lease is write-then-read-back: of
two writers racing, the one whose token is read back holds it; the other is refused.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid

from training import store as st
from training.contracts import CheckpointDir


class LeaseHeld(RuntimeError):
    """Another run is writing this checkpoint directory."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over (its heartbeat stopped for longer than the ttl)."""


def _dead_here(held: dict) -> bool:
    """The holder ran on this host and its process is gone (a killed run rerun by hand): no need to wait out
    the ttl. A holder on another host (a pod) is judged by its heartbeat alone."""
    if held.get("host") != socket.gethostname() or not isinstance(held.get("pid"), int):
        return False
    try:
        os.kill(held["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class Lease:
    def __init__(self, store: st.Store, run_dir: CheckpointDir, owner: str, ttl: float = 120.0, every: float = 30.0):
        self.store, self.run_dir, self.owner, self.ttl, self.every = store, run_dir, owner, ttl, every
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._lost: str | None = None
        self._thread: threading.Thread | None = None

    @property
    def uri(self) -> str:
        return self.run_dir.path(self.run_dir.LEASE)

    def _record(self) -> dict:
        return {
            "owner": self.owner,
            "token": self.token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "ttl": self.ttl,
            "heartbeat_at": time.time(),
        }

    def read(self) -> dict | None:
        return self.store.read_json(self.uri) if self.store.exists(self.uri) else None

    def acquire(self, settle: float = 0.5) -> dict | None:
        """Take the lease; returns the record it replaced (None when there was none)."""
        held = self.read()
        if held and held.get("owner") != self.owner and not _dead_here(held):
            age = time.time() - float(held.get("heartbeat_at", 0))
            if age < float(held.get("ttl", self.ttl)):
                raise LeaseHeld(
                    f"the checkpoint directory {self.run_dir.uri} is being written by {held.get('owner')} "
                    f"(host {held.get('host')}, pid {held.get('pid')}, heartbeat {age:.0f} s ago; the lease "
                    f"expires {float(held.get('ttl', self.ttl)) - age:.0f} s after its last heartbeat): "
                    "refusing to write beside it"
                )
        self.store.write_json(self.uri, self._record())
        time.sleep(settle)  # a racing writer's object lands in this window: read back who holds it
        now = self.read() or {}
        if now.get("token") != self.token:
            raise LeaseHeld(f"the checkpoint directory {self.run_dir.uri} was taken by {now.get('owner')} just now")
        self._thread = threading.Thread(target=self._beat, name="checkpoint-lease", daemon=True)
        self._thread.start()
        return held

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            try:
                now = self.read() or {}
                if now.get("token") != self.token:
                    self._lost = f"the lease of {self.run_dir.uri} was taken over by {now.get('owner')}"
                    return
                self.store.write_json(self.uri, self._record())
            except Exception as err:  # noqa: BLE001 - a missed heartbeat is retried; the ttl covers several
                print(f"[pretrain] lease heartbeat failed (retrying): {err}", flush=True)

    def check(self) -> None:
        """Raise ``LeaseLost`` when another writer holds the directory now (call before each commit)."""
        if self._lost:
            raise LeaseLost(self._lost)

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        try:
            if (self.read() or {}).get("token") == self.token:
                self.store.delete(self.uri)
        except Exception as err:  # noqa: BLE001 - an expired lease frees the directory anyway
            print(f"[pretrain] could not release the lease: {err}", flush=True)
