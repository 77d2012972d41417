"""Run a command so that nothing it starts outlives it or the process that asked for it.

    python -m training.supervise --parent-pid PID [--grace S] -- COMMAND ...

The local launcher runs horovodrun through this. Horovod's workers and their ``/bin/sh`` wrappers run in
process groups of their own, so signalling one group, or killing horovodrun, leaves them training. Here:

- this process is the command tree's *subreaper* (``PR_SET_CHILD_SUBREAPER``): a process whose parent dies is
  re-parented to it, not to init, so every descendant stays findable;
- it gets SIGTERM when its own parent dies (``PR_SET_PDEATHSIG``), even by SIGKILL, as an Airflow task process
  killed by its supervisor does;
- on SIGTERM/SIGINT, on its parent's death, and when the command ends, it stops every descendant (SIGTERM, then
  SIGKILL after ``--grace`` seconds) and exits with the command's code (or 143 when it was stopped).

Linux only (prctl); elsewhere it runs the command and forwards signals.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def terminate(procs: list, grace: float, on_kill=None) -> None:
    """SIGTERM ``procs`` (psutil processes), SIGKILL those left after ``grace`` s (``on_kill(proc)`` first)."""
    import psutil

    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        if on_kill is not None:
            on_kill(proc)
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def stop_descendants(grace: float) -> int:
    """Stop every descendant (and any started meanwhile), reap them; how many there were."""
    import psutil

    me = psutil.Process()
    procs = me.children(recursive=True)
    terminate(procs, grace)
    terminate(me.children(recursive=True), 0)
    _reap()
    return len(procs)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parent-pid", type=int, default=None, help="stop everything when this process is gone")
    p.add_argument("--grace", type=float, default=30.0)
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("no command given")
    stopping = {"signal": None}

    def on_signal(signum, _frame):
        stopping["signal"] = signum

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if args.parent_pid and os.getppid() != args.parent_pid:
        return 143  # the parent died before the death signal was armed: start nothing
    child = subprocess.Popen(command)
    while child.poll() is None and stopping["signal"] is None:
        if args.parent_pid and os.getppid() != args.parent_pid:  # belt and braces beside PDEATHSIG
            stopping["signal"] = signal.SIGTERM
            break
        time.sleep(0.2)
    if stopping["signal"] is not None:
        print(f"[supervise] stopping {command[0]} and its descendants (signal {stopping['signal']})", flush=True)
    left = stop_descendants(args.grace)
    if stopping["signal"] is None and left:
        print(f"[supervise] {command[0]} exited; stopped {left} process(es) it left behind", flush=True)
    return 128 + stopping["signal"] if stopping["signal"] is not None else child.returncode


if __name__ == "__main__":
    sys.exit(main())
