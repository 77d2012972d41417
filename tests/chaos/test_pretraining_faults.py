"""Faults during a real 2-rank Horovod pretraining: a rank or the launcher killed mid-epoch, the Airflow task
killed, the checkpoint store down mid-run, the disk full. Each asserts what must hold and records the work lost."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from chaos_record import outage_seconds
from pretrain_runs import ENV, kill_leftovers, pretrain_cmd

from training.contracts import CheckpointDir, file_digests, file_problem

pytestmark = [pytest.mark.chaos, pytest.mark.slow]
STEPS = ("--steps-per-epoch", "40", "--progress-seconds", "0.3")
EVERY = 10  # steps between the checkpoints inside an epoch (--checkpoint-every-steps)
MID_EPOCH_2 = re.compile(r"\[pretrain\] epoch 2 step (\d+)/")


def _committed(ckpt: Path) -> list[int]:
    return sorted(int(p.parent.name) for p in (ckpt / "epochs").glob("*/COMMITTED"))


def _wait_for(predicate, proc, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {_output(proc)[-3000:]}")
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)
    return found


def _training_processes(marker: str) -> list[psutil.Process]:
    """Every live process of the run (horovodrun, its /bin/sh wrappers, the ranks) by its checkpoint path."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if marker in " ".join(proc.info["cmdline"] or []) and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def _rank(marker: str, rank: int) -> psutil.Process:
    for proc in _training_processes(marker):
        try:
            cmd = proc.cmdline()
            if "training.pretrain" in cmd and proc.environ().get("HOROVOD_RANK") == str(rank):
                return proc
        except psutil.Error:
            continue
    raise AssertionError(f"no rank {rank} process found")


def _best_is_whole(ckpt: Path) -> int:
    run = CheckpointDir(str(ckpt))
    best = json.loads(Path(run.best_json).read_text())
    assert file_problem(file_digests(run.epoch(best["epoch"])), best["files"]) is None
    return best["epoch"]


def _files(run: CheckpointDir, epoch: int) -> dict:
    return json.loads(Path(run.committed_marker(epoch)).read_text())["files"]


def _start(cmd, env=ENV):
    """The command, its output collected by a thread into ``proc.lines`` (so a test can wait for a line)."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    proc.lines = []
    proc.reader = threading.Thread(target=lambda: proc.lines.extend(proc.stdout), daemon=True)
    proc.reader.start()
    return proc


def _mid_epoch_2(proc) -> int:
    """The step rank 0 reported in epoch 2, once it has (the run is then mid-epoch)."""
    found = [m for line in list(proc.lines) if (m := MID_EPOCH_2.search(line))]
    return int(found[0].group(1)) if found else 0


def _last_step_of_epoch_2(proc) -> int:
    found = [m for line in list(proc.lines) if (m := MID_EPOCH_2.search(line))]
    return int(found[-1].group(1)) if found else 0


def _partial_of_epoch_2(ckpt: Path) -> int:
    """The step of epoch 2 its checkpoint inside the epoch was taken at (0: none yet)."""
    try:
        pointer = json.loads((ckpt / CheckpointDir.PARTIAL_JSON).read_text())
    except (OSError, ValueError):
        return 0
    return int(pointer["step"]) if pointer["epoch"] == 2 else 0


def _output(proc) -> str:
    proc.reader.join(30)
    return "".join(proc.lines)


def _supervised(cmd: list[str]) -> list[str]:
    return [sys.executable, "-m", "training.supervise", "--grace", "5", "--", *cmd]


@pytest.mark.parametrize(
    "target, sig",
    [("rank 1", signal.SIGKILL), ("rank 0", signal.SIGKILL), ("horovodrun", signal.SIGTERM), ("horovodrun", "SIGKILL")],
)
def test_a_rank_or_the_launcher_killed_mid_epoch(tiny_manifest, tmp_path, chaos, target, sig):
    sig = signal.Signals[sig] if isinstance(sig, str) else sig
    chaos.fault(
        "pretraining",
        f"{sig.name} of {target} mid-epoch (local launcher, under its supervisor)",
        "the run stops with every process of it; the rerun resumes inside the epoch, from its last checkpoint",
    )
    ckpt = tmp_path / "ckpt"
    cmd = pretrain_cmd(tiny_manifest, ckpt, 2, *STEPS, "--checkpoint-every-steps", str(EVERY), "--lease-owner", "r-1")
    proc = _start(_supervised(cmd))
    try:
        # Killed between two checkpoints inside epoch 2: after the first, before the next is due.
        saved = _wait_for(lambda: _partial_of_epoch_2(ckpt), proc, 300, "checkpoint inside epoch 2")
        _wait_for(lambda: _last_step_of_epoch_2(proc) > saved, proc, 120, "step past the checkpoint")
        if target == "horovodrun":
            victim = next(p for p in _training_processes(str(ckpt)) if "horovodrun" in " ".join(p.cmdline()[:2]))
        else:
            victim = _rank(str(ckpt), int(target[-1]))
        killed_at = time.time()
        victim.send_signal(sig)
        proc.wait(120)
        stopped_in = time.time() - killed_at
        left = [p for p in _training_processes(str(ckpt)) if p.is_running()]
        assert left == [], [p.cmdline() for p in left]
    finally:
        kill_leftovers(str(ckpt))
    assert proc.returncode != 0
    assert _committed(ckpt) == [1] and not (ckpt / "COMPLETE").exists()
    assert _best_is_whole(ckpt) == 1
    resume_at, reached = _partial_of_epoch_2(ckpt), _last_step_of_epoch_2(proc)
    assert 0 < resume_at < 40, resume_at
    chaos.figure("run stopped after (s)", stopped_in)
    chaos.figure("checkpoint every (steps)", EVERY)
    chaos.figure("work lost (steps, at least)", max(0, reached - resume_at))
    chaos.figure("processes left", 0)

    started = time.monotonic()
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"resuming epoch 2 at step {resume_at + 1} from " in rerun.stdout
    assert re.findall(r"\[0\]<stdout>:\[pretrain\] epoch (\d)/2 ", rerun.stdout) == ["2"]
    metrics = json.loads((ckpt / "epochs" / "0002" / "metrics.json").read_text())
    assert metrics["resumed_at_step"] == resume_at
    assert _committed(ckpt) == [1, 2] and (ckpt / "COMPLETE").exists()
    assert not (ckpt / CheckpointDir.PARTIAL_JSON).exists() and not list((ckpt / CheckpointDir.PARTIAL).iterdir())
    _best_is_whole(ckpt)
    chaos.figure("rerun to completion (s)", time.monotonic() - started)


def test_the_airflow_task_killed_stops_the_whole_training_tree(tiny_manifest, tmp_path, chaos):
    """The local launcher's command under ``training.supervise``, its parent (the task process) SIGKILLed."""
    chaos.fault(
        "pretraining",
        "the Airflow task process SIGKILLed (local launcher)",
        "every training process stops; no epoch is committed after the kill",
    )
    ckpt = tmp_path / "ckpt"
    cmd = pretrain_cmd(tiny_manifest, ckpt, 6, *STEPS)
    parent = (
        "import os, subprocess, sys, time\n"
        f"cmd = [sys.executable, '-m', 'training.supervise', '--parent-pid', str(os.getpid()), '--grace', '5', "
        f"'--', *{cmd!r}]\n"
        "subprocess.Popen(cmd, start_new_session=True)\n"
        "time.sleep(600)\n"
    )
    task = subprocess.Popen([sys.executable, "-c", parent], env=ENV)
    try:
        deadline = time.monotonic() + 300
        while _committed(ckpt) != [1]:
            assert task.poll() is None and time.monotonic() < deadline, "no committed epoch"
            time.sleep(0.05)
        at_kill = _committed(ckpt)
        task.kill()
        task.wait()
        killed_at = time.monotonic()
        while _training_processes(str(ckpt)) and time.monotonic() - killed_at < 60:
            time.sleep(0.1)
        gone_in = time.monotonic() - killed_at
        left = _training_processes(str(ckpt))
        assert left == [], [p.cmdline() for p in left]
        committed = _committed(ckpt)
        time.sleep(3)
        assert _committed(ckpt) == committed and not (ckpt / "COMPLETE").exists()
    finally:
        kill_leftovers(str(ckpt))
    chaos.figure("tree gone after (s)", gone_in)
    chaos.figure("epochs committed after the kill", len(committed) - len(at_kill))
    chaos.figure("processes left", len(left))


def test_the_checkpoint_store_down_mid_run(tiny_manifest, restartable_store, tmp_path, chaos):
    from training.store import CREDENTIALS_DIR_ENV, write_credentials_dir

    down_for = outage_seconds()
    chaos.fault(
        "pretraining",
        f"the S3 checkpoint store (SeaweedFS) stopped for {down_for:.0f} s mid-run, then restarted",
        "rank 0 waits the outage out and the run completes; no epoch lost, best.json whole",
    )
    store = restartable_store
    store.ensure_bucket("ckpt")
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o700)
    write_credentials_dir(creds, store.access_key, store.secret_key)
    env = {k: v for k, v in ENV.items() if not k.startswith("AWS_")}
    env[CREDENTIALS_DIR_ENV] = str(creds)
    cmd = pretrain_cmd(
        tiny_manifest, "s3://ckpt/run", 3, *STEPS, "--s3-endpoint-url", store.endpoint_url, "--lease-ttl", "300"
    )
    s3 = store.client()

    def committed() -> list[str]:
        listed = s3.list_objects_v2(Bucket="ckpt", Prefix="run/epochs/").get("Contents", [])
        return sorted(o["Key"].split("/")[2] for o in listed if o["Key"].endswith("/COMMITTED"))

    started = time.monotonic()
    proc = _start(cmd, env)
    try:
        _wait_for(lambda: _mid_epoch_2(proc), proc, 300, "step of epoch 2")
        os.killpg(store.process.pid, signal.SIGKILL)  # the server gone at once, mid-epoch 2
        store.process.wait()
        time.sleep(down_for)
        store.process = store.up()
        proc.wait(600)
        out = _output(proc)
    finally:
        kill_leftovers("s3://ckpt/run")
    assert proc.returncode == 0, out[-4000:]
    assert committed() == ["0001", "0002", "0003"]
    best = json.loads(s3.get_object(Bucket="ckpt", Key="run/best.json")["Body"].read())
    listed = s3.list_objects_v2(Bucket="ckpt", Prefix=f"run/epochs/{best['epoch']:04d}/")["Contents"]
    sizes = {o["Key"].rsplit("/", 1)[1]: o["Size"] for o in listed}
    assert {name: f["size"] for name, f in best["files"].items()} == {n: sizes[n] for n in best["files"]}
    chaos.figure("store down (s)", down_for)
    # Short outages are absorbed by the S3 client's own retries; longer ones by rank 0's wait (a line each).
    chaos.figure("waits logged by rank 0", out.count("the store is unavailable"))
    chaos.figure("epochs lost", 0)
    chaos.figure("run wall time (s)", time.monotonic() - started)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MB tmpfs for the checkpoint directory (needs the privilege to mount one)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_the_disk_fills_mid_run(tiny_manifest, small_disk, tmp_path, chaos):
    chaos.fault(
        "pretraining",
        "the checkpoint disk full after the first epoch",
        "the run fails saying so; committed epochs and best.json stay whole; the rerun, once space is freed, resumes",
    )
    ckpt = small_disk / "ckpt"
    cmd = pretrain_cmd(tiny_manifest, ckpt, 3, *STEPS)
    proc = _start(cmd)
    try:
        _wait_for(lambda: _mid_epoch_2(proc), proc, 300, "step of epoch 2")
        filler = small_disk / "filler"
        with open(filler, "wb") as fh:  # everything but a few kB
            free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
            fh.write(b"\0" * max(0, free - 16 * 1024))
        proc.wait(600)
        out = _output(proc)
    finally:
        kill_leftovers(str(ckpt))
    assert proc.returncode != 0
    assert "No space left on device" in out
    assert _committed(ckpt) == [1] and _best_is_whole(ckpt) == 1
    run = CheckpointDir(str(ckpt))
    damaged = [e for e in _committed(ckpt) if file_problem(file_digests(run.epoch(e)), _files(run, e))]
    assert damaged == []
    filler.unlink()
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "resuming after epoch 1 " in rerun.stdout and _committed(ckpt) == [1, 2, 3]
    chaos.figure("epochs committed before the disk filled", 1)
    chaos.figure("committed epochs damaged", len(damaged))
