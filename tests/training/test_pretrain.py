"""Real Horovod runs of the pretraining script on a tiny dataset (2 CPU workers over Gloo)."""

import hashlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from pretrain_runs import ENV, kill_leftovers
from pretrain_runs import pretrain_cmd as _cmd

from training.contracts import pretrained_dir

pytestmark = pytest.mark.slow


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def two_rank_run(tiny_manifest, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ckpt-2ranks")
    r = subprocess.run(_cmd(tiny_manifest, ckpt, 3), capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return ckpt, r.stdout


def test_ranks_end_with_identical_weights(two_rank_run):
    _, out = two_rank_run
    digests = dict(re.findall(r"rank (\d) weights sha256 ([0-9a-f]{64})", out))
    assert set(digests) == {"0", "1"}
    assert digests["0"] == digests["1"]


def test_best_json_names_the_most_accurate_epoch(two_rank_run, tiny_manifest):
    ckpt, out = two_rank_run
    epochs = sorted((ckpt / "epochs").iterdir())
    assert [p.name for p in epochs] == ["0001", "0002", "0003"]
    assert all((p / "COMMITTED").exists() for p in epochs)
    accs = [json.loads((p / "metrics.json").read_text())["val_accuracy"] for p in epochs]
    best = json.loads((ckpt / "best.json").read_text())
    assert best["epoch"] == accs.index(max(accs)) + 1
    assert best["val_accuracy"] == max(accs)
    assert Path(best["path"]) == epochs[best["epoch"] - 1]
    assert best["manifest_sha256"] == hashlib.sha256(tiny_manifest.read_bytes()).hexdigest()
    assert not (ckpt / "best").exists()  # a pointer, never a directory rewritten in place
    pointed = epochs[best["epoch"] - 1]
    assert best["files"]["model.keras"]["sha256"] == _sha(pointed / "model.keras")
    assert best["files"] == json.loads((pointed / "COMMITTED").read_text())["files"]
    meta = json.loads((pointed / "meta.json").read_text())
    manifest = json.loads(tiny_manifest.read_text())
    assert meta["class_names"] == [c["name"] for c in manifest["classes"]]
    assert meta["image_size"] == [32, 32] and meta["feature_layer"] == "features"
    assert (ckpt / "COMPLETE").exists() and not (ckpt / "FAILED").exists()
    # One progress line per epoch, from rank 0 only.
    assert len(re.findall(r"\[0\]<stdout>:\[pretrain\] epoch \d/3", out)) == 3
    assert not re.findall(r"\[1\]<stdout>:\[pretrain\] epoch", out)


def test_best_model_takes_raw_uint8_images(two_rank_run):
    import keras
    import numpy as np

    import training.model  # noqa: F401  (registers the learning-rate schedule)

    ckpt, _ = two_rank_run
    best = pretrained_dir(ckpt)
    model = keras.models.load_model(best / "model.keras", compile=False)
    probs = model.predict(np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8), verbose=0)
    assert probs.shape == (3, len(json.loads((best / "meta.json").read_text())["class_names"]))
    assert np.allclose(probs.sum(-1), 1, atol=1e-4)
    assert model.get_layer("features") is not None


def test_resume_after_kill(tiny_manifest, tmp_path):
    ckpt = tmp_path / "ckpt"
    cmd = _cmd(tiny_manifest, ckpt, 5, "--steps-per-epoch", "25")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not (ckpt / "epochs" / "0002" / "COMMITTED").exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no second epoch within 300 s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kill_leftovers(str(ckpt))
    committed = sorted(p.name for p in (ckpt / "epochs").iterdir() if (p / "COMMITTED").exists())
    last = int(committed[-1])
    assert last < 5, "the run finished before it could be killed"
    assert not (ckpt / "COMPLETE").exists()
    before = {name: _sha(ckpt / "epochs" / name / "model.keras") for name in committed}

    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"resuming after epoch {last} " in r.stdout
    trained = [int(e) for e in re.findall(r"\[0\]<stdout>:\[pretrain\] epoch (\d)/5", r.stdout)]
    assert trained == list(range(last + 1, 6))
    # Nothing committed before the kill was lost or rewritten.
    assert {name: _sha(ckpt / "epochs" / name / "model.keras") for name in committed} == before
    assert sorted(p.name for p in (ckpt / "epochs").iterdir()) == [f"{i:04d}" for i in range(1, 6)]
    assert (ckpt / "COMPLETE").exists()
    best = json.loads((ckpt / "best.json").read_text())
    accs = [
        json.loads((ckpt / "epochs" / f"{i:04d}" / "metrics.json").read_text())["val_accuracy"] for i in range(1, 6)
    ]
    assert best["val_accuracy"] == max(accs)


@pytest.mark.chaos
def test_resume_skips_a_committed_epoch_whose_files_fail_their_checksum(tiny_manifest, tmp_path, chaos):
    """A truncated model.keras in the last committed epoch (a disk error, a partial copy): the rerun says so,
    resumes from the newest good epoch and trains on, instead of failing every retry."""
    chaos.fault(
        "pretraining",
        "the last committed epoch's model.keras truncated (a disk error, a partial copy)",
        "the rerun says which file fails its checksum, resumes from the newest good epoch and completes",
    )
    ckpt = tmp_path / "ckpt"
    r = subprocess.run(
        _cmd(tiny_manifest, ckpt, 2, "--steps-per-epoch", "3", np=0),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    marker = json.loads((ckpt / "epochs" / "0002" / "COMMITTED").read_text())
    assert set(marker["files"]) == {"model.keras", "meta.json", "metrics.json"}
    model = ckpt / "epochs" / "0002" / "model.keras"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    r = subprocess.run(
        _cmd(tiny_manifest, ckpt, 3, "--steps-per-epoch", "3", np=0),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "epoch 2 is committed but model.keras fails its checksum: not resuming from it" in r.stdout
    assert "resuming after epoch 1 " in r.stdout
    assert sorted(re.findall(r"\[pretrain\] epoch (\d)/3", r.stdout)) == ["2", "3"]
    assert (ckpt / "COMPLETE").exists()
    retrained = [e for e in re.findall(r"\[pretrain\] epoch (\d)/3", r.stdout) if int(e) <= 2]
    chaos.figure("committed epochs trained again", len(retrained))


def test_a_long_epoch_logs_its_progress(tiny_manifest, tmp_path):
    cmd = _cmd(tiny_manifest, tmp_path / "ckpt", 1, "--steps-per-epoch", "6", "--progress-seconds", "1e-9", np=0)
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    steps = re.findall(r"\[pretrain\] epoch 1 step (\d)/6 \(\d+%\): loss [0-9.]+ accuracy [0-9.]+ \d+ img/s", r.stdout)
    assert steps == ["1", "2", "3", "4", "5"], r.stdout[-2000:]


def test_failure_writes_reason_and_exits_nonzero(tiny_manifest, tmp_path):
    ckpt = tmp_path / "ckpt"
    r = subprocess.run(
        _cmd(tiny_manifest, ckpt, 2, "--fail-at-epoch", "1", np=0), capture_output=True, text=True, env=ENV, timeout=600
    )
    assert r.returncode != 0
    failed = json.loads((ckpt / "FAILED").read_text())
    assert "injected failure at epoch 1" in failed["reason"]
    assert not (ckpt / "COMPLETE").exists()
    # A rerun clears FAILED and trains.
    r = subprocess.run(_cmd(tiny_manifest, ckpt, 1, np=0), capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (ckpt / "FAILED").exists() and (ckpt / "COMPLETE").exists()


def test_an_unwritable_checkpoint_directory_fails_before_the_first_step(tiny_manifest, tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    r = subprocess.run(
        _cmd(tiny_manifest, tmp_path / "a-file" / "ckpt", 2, np=0), capture_output=True, text=True, env=ENV, timeout=600
    )
    assert r.returncode != 0
    assert f"the checkpoint directory {tmp_path / 'a-file' / 'ckpt'} is not writable" in r.stdout + r.stderr
    assert "epoch 1/2" not in r.stdout  # no step was trained


def test_missing_manifest_is_a_clear_failure(tmp_path):
    r = subprocess.run(
        _cmd(tmp_path / "nope.json", tmp_path / "ckpt", 1, np=0), capture_output=True, text=True, env=ENV, timeout=600
    )
    assert r.returncode != 0
    assert "FileNotFoundError" in json.loads((tmp_path / "ckpt" / "FAILED").read_text())["reason"]


def test_checkpoints_to_the_onprem_store_and_resume_after_kill(tiny_manifest, onprem_store, tmp_path):
    """Checkpoints through s3:// to a real S3-compatible server (the local profile's SeaweedFS), with the
    credentials in files as the launchers pass them; a run killed mid-way resumes from what the store holds."""
    from training.store import CREDENTIALS_DIR_ENV, write_credentials_dir

    s3 = onprem_store.client()
    onprem_store.ensure_bucket("ckpt-resume")
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o700)
    write_credentials_dir(creds, onprem_store.access_key, onprem_store.secret_key)
    env = {k: v for k, v in ENV.items() if not k.startswith("AWS_")}
    env[CREDENTIALS_DIR_ENV] = str(creds)
    uri = "s3://ckpt-resume/run-1"
    cmd = _cmd(tiny_manifest, uri, 3, "--steps-per-epoch", "10", "--s3-endpoint-url", onprem_store.endpoint_url)

    def committed() -> list[str]:
        listed = s3.list_objects_v2(Bucket="ckpt-resume", Prefix="run-1/epochs/").get("Contents", [])
        return sorted(o["Key"].split("/")[2] for o in listed if o["Key"].endswith("/COMMITTED"))

    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not committed():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no committed epoch within 300 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kill_leftovers(uri)
    last = int(committed()[-1])
    assert last < 3, "the run finished before it could be killed"

    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"resuming after epoch {last} " in r.stdout
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="ckpt-resume", Prefix="run-1/")["Contents"]}
    assert {"run-1/best.json", "run-1/COMPLETE"} <= keys and not any(k.startswith("run-1/best/") for k in keys)
    assert committed() == ["0001", "0002", "0003"]
    assert any(k.startswith("run-1/logs/") for k in keys)
    best = json.loads(s3.get_object(Bucket="ckpt-resume", Key="run-1/best.json")["Body"].read())
    assert best["path"].startswith("s3://ckpt-resume/run-1/epochs/")


def test_bind_to_cores_gives_each_local_rank_its_own_slice():
    import os

    from training.pretrain import bind_to_cores

    before = os.sched_getaffinity(0)
    try:
        cores = sorted(before)
        slices = []
        for r in range(2):
            slices.append(bind_to_cores(r, 2))
            assert os.sched_getaffinity(0) == slices[-1]
            os.sched_setaffinity(0, before)
        if len(cores) >= 2:
            assert slices[0] and slices[1] and not slices[0] & slices[1]
            assert slices[0] | slices[1] <= before
        else:
            assert slices[0] == slices[1] == before
    finally:
        os.sched_setaffinity(0, before)


@pytest.mark.chaos
def test_two_runs_on_one_checkpoint_directory(tiny_manifest, tmp_path, chaos):
    """The second run is refused with the holder's name and writes nothing there; the first one finishes."""
    chaos.fault(
        "pretraining",
        "a second run started on a checkpoint directory another run is writing",
        "the second is refused (naming the holder) and writes nothing; the first completes",
    )
    ckpt = tmp_path / "ckpt"
    first = subprocess.Popen(
        _cmd(tiny_manifest, ckpt, 3, "--steps-per-epoch", "10", "--lease-owner", "dag/run-1", np=0),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    )
    deadline = time.monotonic() + 120
    while not (ckpt / "LEASE").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()[-2000:]
        time.sleep(0.1)
    t0 = time.monotonic()
    second = subprocess.run(
        _cmd(tiny_manifest, ckpt, 3, "--lease-owner", "dag/run-2", np=0),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    second_seconds = time.monotonic() - t0
    assert second.returncode == 1
    assert "refused: the checkpoint directory" in second.stderr and "being written by dag/run-1" in second.stderr
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:]
    assert (ckpt / "COMPLETE").exists() and not (ckpt / "FAILED").exists() and not (ckpt / "LEASE").exists()
    assert sorted(p.name for p in (ckpt / "epochs").iterdir()) == ["0001", "0002", "0003"]
    chaos.figure("writers", 1)
    chaos.figure("refused in (s)", second_seconds)
