"""``training.supervise``: nothing a command starts outlives it or its parent, even in other sessions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

# A tree like horovodrun's: a child in a session of its own (as Horovod's /bin/sh wrappers are) and one not.
TREE = "setsid sleep {a} & sleep {b} & wait"


def _alive(marker: str) -> list[psutil.Process]:
    """Processes whose whole command line is ``marker`` (``sleep 1001``), not the shells that mention it."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if " ".join(proc.info["cmdline"] or []) == marker and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def _wait_gone(marker: str, timeout: float = 15) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(marker):
        time.sleep(0.1)
    return _alive(marker)


def _cleanup(marker: str) -> None:
    for proc in _alive(marker):
        proc.kill()


@pytest.mark.parametrize("supervised", [True, False])
def test_a_sigkilled_parent_leaves_no_process_behind(supervised):
    a, b = (1001, 1002) if supervised else (1003, 1004)
    command = ["bash", "-c", TREE.format(a=a, b=b)]
    parent = textwrap.dedent(f"""
        import os, subprocess, sys, time
        cmd = {command!r}
        if {supervised!r}:
            cmd = [sys.executable, "-m", "training.supervise", "--parent-pid", str(os.getpid()), "--grace", "2", "--", *cmd]
        subprocess.Popen(cmd, start_new_session=True)  # as Airflow's SubprocessHook starts a command
        time.sleep(300)
    """)
    task = subprocess.Popen([sys.executable, "-c", parent], cwd=os.getcwd())
    try:
        deadline = time.monotonic() + 30
        while not (_alive(f"sleep {a}") and _alive(f"sleep {b}")):
            assert time.monotonic() < deadline, "the tree did not start"
            time.sleep(0.1)
        task.send_signal(signal.SIGKILL)  # the Airflow task process, killed with no chance to clean up
        task.wait()
        wait = 15 if supervised else 3
        left = _wait_gone(f"sleep {a}", wait) + _wait_gone(f"sleep {b}", wait)
        if supervised:
            assert left == [], [p.info["cmdline"] for p in left]
        else:  # what happens without it: both sleepers outlive their task
            assert len(left) == 2
    finally:
        _cleanup(f"sleep {a}")
        _cleanup(f"sleep {b}")


def test_leftovers_are_stopped_when_the_command_ends_and_its_exit_code_is_kept():
    r = subprocess.run(
        [sys.executable, "-m", "training.supervise", "--grace", "1", "--", "bash", "-c", "setsid sleep 1005 & exit 3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 3
    assert "stopped 1 process(es) it left behind" in r.stdout
    assert _wait_gone("sleep 1005", 5) == []


def test_sigterm_stops_the_tree_and_says_so():
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.supervise", "--grace", "1", "--", "bash", "-c", TREE.format(a=1006, b=1007)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not _alive("sleep 1006"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 128 + signal.SIGTERM
        assert "stopping bash and its descendants" in proc.stdout.read()
        assert _wait_gone("sleep 1006", 5) == [] and _wait_gone("sleep 1007", 5) == []
    finally:
        _cleanup("sleep 1006")
        _cleanup("sleep 1007")
