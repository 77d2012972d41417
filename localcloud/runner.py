"""Run a training command and record its exit status in a file.

``python -m localcloud.runner EXIT_FILE -- ARGV...``. localcloud starts every training container command
through this wrapper in a session of its own, so the job survives a crash of localcloud itself and the next
localcloud still learns how it ended. SIGTERM (StopTrainingJob) reaches the whole process group; the wrapper
outlives the command to write its status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m localcloud.runner EXIT_FILE -- ARGV...", file=sys.stderr)
        return 2
    exit_file, command = argv[0], argv[2:]
    # A handler, not SIG_IGN: handlers reset on exec, so the command still receives SIGTERM normally.
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    try:
        code = subprocess.call(command)
    except OSError as err:
        print(f"cannot start {command[0]!r}: {err.strerror}", flush=True)
        code = 127
    tmp = f"{exit_file}.tmp"
    with open(tmp, "w") as fh:
        fh.write(str(code))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, exit_file)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
