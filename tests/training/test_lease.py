"""One writer per checkpoint directory: the lease is refused to a second run, taken over by a retry of the same
run and by anyone once its holder has been silent for the ttl; a holder that lost it finds out."""

from __future__ import annotations

import threading
import time

import pytest

from training import store as st
from training.contracts import CheckpointDir
from training.pretrain.lease import Lease, LeaseHeld, LeaseLost


@pytest.fixture()
def run_dir(tmp_path):
    return CheckpointDir(str(tmp_path / "ckpt"))


def test_a_second_run_is_refused_and_a_retry_of_the_same_run_takes_over(run_dir):
    store = st.Store()
    first = Lease(store, run_dir, "dag/run-1")
    assert first.acquire(settle=0) is None
    with pytest.raises(LeaseHeld, match=r"being written by dag/run-1 \(host .*heartbeat 0 s ago"):
        Lease(store, run_dir, "dag/run-2").acquire(settle=0)
    retry = Lease(store, run_dir, "dag/run-1")
    assert retry.acquire(settle=0)["token"] == first.token  # what it replaced: the earlier attempt's lease
    first.release()  # the earlier attempt's release leaves the retry's lease alone
    assert store.read_json(retry.uri)["token"] == retry.token
    retry.release()
    assert not store.exists(retry.uri)


def test_a_silent_holder_loses_the_lease_after_the_ttl_and_finds_out(run_dir):
    store = st.Store()
    holder = Lease(store, run_dir, "dag/run-1", ttl=0.6, every=0.1)
    holder.acquire(settle=0)
    holder._stop.set()  # its heartbeat stops: a hung or dead process
    holder._thread.join()
    time.sleep(0.8)
    other = Lease(store, run_dir, "dag/run-2", ttl=30, every=0.1)
    assert other.acquire(settle=0)["owner"] == "dag/run-1"
    # A holder that comes back to life sees the new token at its next heartbeat and stops committing.
    revived = Lease(store, run_dir, "dag/run-1", ttl=30, every=0.1)
    revived.token = holder.token
    threading.Thread(target=revived._beat, daemon=True).start()
    deadline = time.monotonic() + 5
    while not revived._lost and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(LeaseLost, match="taken over by dag/run-2"):
        revived.check()
    revived._stop.set()
    other.release()


def test_the_heartbeat_keeps_a_live_holders_lease(run_dir):
    store = st.Store()
    holder = Lease(store, run_dir, "dag/run-1", ttl=0.5, every=0.1)
    holder.acquire(settle=0)
    time.sleep(1.0)  # twice the ttl, heartbeats all along
    with pytest.raises(LeaseHeld):
        Lease(store, run_dir, "dag/run-2").acquire(settle=0)
    holder.check()
    holder.release()


def test_a_dead_holder_on_this_host_is_taken_over_at_once(run_dir):
    """A killed run rerun by hand (another pid, no run id) need not wait out the ttl."""
    import subprocess
    import sys

    store = st.Store()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    holder = Lease(store, run_dir, "host:killed-run", ttl=3600)
    store.write_json(holder.uri, {**holder._record(), "pid": gone.pid})
    assert Lease(store, run_dir, "host:rerun").acquire(settle=0)["owner"] == "host:killed-run"
