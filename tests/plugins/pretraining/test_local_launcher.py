"""The local launcher: horovodrun as a subprocess of the task, its failure reason, and killing it with the task."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from airflow.sdk.exceptions import AirflowException

from plugins.tlpipe.pretraining.launchers import LocalTrainingOperator
from plugins.tlpipe.pretraining.spec import TrainingSpec

VENV_BIN = Path(sys.executable).parent


def _spec(manifest, ckpt, **kw) -> TrainingSpec:
    base = dict(
        launcher="local",
        horovodrun=str(VENV_BIN / "horovodrun"),
        python=sys.executable,
        workers=2,
        manifest=str(manifest),
        checkpoint_dir=str(ckpt),
        epochs=1,
        image_size=32,
        batch_size=8,
        threads=1,
    )
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


def test_training_processes_get_no_airflow_secret_and_no_credential_on_a_command_line(tmp_path, monkeypatch):
    """Horovod's Gloo launcher copies the environment onto every worker's command line, readable by any local
    user (``ps -eo args``): the task's secrets must not be in that environment, and the checkpoint store's keys
    arrive as 0600 files instead, removed when training ends."""
    secrets = {
        "AIRFLOW__API_AUTH__JWT_SECRET": "jwt-secret-value-1",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://airflow:db-password-2@127.0.0.1/airflow",
        "AIRFLOW__CORE__FERNET_KEY": "fernet-key-value-3",
        "AIRFLOW_CONN_AWS_DEFAULT": '{"conn_type": "aws", "login": "AKIADEFAULT", "password": "aws-default-4"}',
        "AWS_SECRET_ACCESS_KEY": "ambient-secret-5",
        "AIRFLOW_CONN_CHECKPOINT_STORE": '{"conn_type": "aws", "login": "AKIACKPT", "password": "ckpt-secret-6"}',
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "seen"
    out.mkdir()
    # Stands in for the interpreter: records what each rank sees while horovodrun and its shells are alive.
    fake = tmp_path / "python"
    fake.write_text(f"""#!/bin/sh
rank=${{HOROVOD_RANK:-x}}
for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < "$f" 2>/dev/null; echo; done > {out}/$rank.cmdlines
env > {out}/$rank.env
cat "$TLPIPE_S3_CREDENTIALS_DIR/AWS_ACCESS_KEY_ID" "$TLPIPE_S3_CREDENTIALS_DIR/AWS_SECRET_ACCESS_KEY" > {out}/$rank.keys
stat -c %a "$TLPIPE_S3_CREDENTIALS_DIR" "$TLPIPE_S3_CREDENTIALS_DIR/AWS_SECRET_ACCESS_KEY" > {out}/$rank.modes
""")
    fake.chmod(0o755)
    spec = _spec("/data/manifest.json", "s3://checkpoints/run", python=str(fake))
    LocalTrainingOperator(task_id="local", spec=spec, checkpoint_conn_id="checkpoint_store").execute({})

    for rank in ("0", "1"):
        cmdlines = (out / f"{rank}.cmdlines").read_text()
        env = (out / f"{rank}.env").read_text()
        assert "HOROVOD_RANK" in cmdlines, "the recording ran without horovodrun's shells around it"
        for name, value in secrets.items():
            secret = value.split('"password": "')[-1].split('"')[0] if "password" in value else value
            assert secret not in cmdlines, f"{name} is on a command line"
            assert secret not in env, f"{name} reached the training processes"
        assert "AIRFLOW" not in env
        assert (out / f"{rank}.keys").read_text() == "AKIACKPTckpt-secret-6"
        assert (out / f"{rank}.modes").read_text().split() == ["700", "600"]
        creds_dir = next(l.split("=", 1)[1] for l in env.splitlines() if l.startswith("TLPIPE_S3_CREDENTIALS_DIR="))
        assert not Path(creds_dir).exists(), "the credentials outlived the training run"
