"""The local launcher: horovodrun as a subprocess of the task, its failure reason, and killing it with the task."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from airflow.sdk.exceptions import AirflowException

from plugins.launchers import LocalTrainingOperator
from plugins.training_spec import TrainingSpec

VENV_BIN = Path(sys.executable).parent


def _spec(manifest, ckpt, **kw) -> TrainingSpec:
    base = dict(launcher="local", horovodrun=str(VENV_BIN / "horovodrun"), python=sys.executable, workers=2,
                manifest=str(manifest), checkpoint_dir=str(ckpt), epochs=1, image_size=32, batch_size=8, threads=1)
    return TrainingSpec(**{**base, **kw})


def _workers(root_pid: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for proc in children:
        try:
            cmd = proc.cmdline()
            if cmd and cmd[0] == sys.executable and "training.pretrain" in cmd and "horovodrun" not in cmd[1]:
                out.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
            pass
    return out


def test_command_is_the_spec_argv(tiny_manifest, tmp_path):
    spec = _spec(tiny_manifest, tmp_path / "ckpt")
    op = LocalTrainingOperator(task_id="local", spec=spec.model_dump(mode="json"))
    assert op.command() == spec.argv()
    assert op.command()[:3] == [str(VENV_BIN / "horovodrun"), "-np", "2"]
    assert op.environment()["PYTHONUNBUFFERED"] == "1"
    with pytest.raises(AirflowException, match="cannot run a 'pod' spec"):
        LocalTrainingOperator(task_id="x", spec=spec.model_copy(update={"launcher": "pod"})).execute({})


@pytest.mark.slow
def test_failure_reason_comes_from_the_checkpoint_directory(tiny_manifest, tmp_path):
    spec = _spec(tiny_manifest, tmp_path / "ckpt", workers=1, extra_args=("--fail-at-epoch", "1"))
    with pytest.raises(AirflowException, match="exited with code .*: RuntimeError: injected failure at epoch 1"):
        LocalTrainingOperator(task_id="local", spec=spec).execute({})


@pytest.mark.slow
def test_killing_the_task_stops_horovod_and_every_worker(tiny_manifest, tmp_path):
    op = LocalTrainingOperator(task_id="local", spec=_spec(tiny_manifest, tmp_path / "ckpt", epochs=500))
    outcome: list[BaseException] = []

    def run():
        try:
            op.execute({})
        except BaseException as err:  # noqa: BLE001 - the test looks at it
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 180
        workers: list[psutil.Process] = []
        while time.monotonic() < deadline and len(workers) < 2:  # one Python process per Horovod rank
            proc = op._hook.sub_process if op._hook else None
            workers = _workers(proc.pid) if proc else []
            time.sleep(0.5)
        assert len(workers) == 2, "the two training processes never started"
        root = psutil.Process(op._hook.sub_process.pid)
        tree = [root, *root.children(recursive=True)]
    finally:
        op.on_kill()
    thread.join(60)
    assert not thread.is_alive()
    assert outcome and isinstance(outcome[0], AirflowException)
    for proc in tree:
        assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE, proc
