"""Checkpoints inside an epoch: written before their pointer, one kept at a time, resumed from only when they
belong to the next epoch, have the same layout and pass their checksums, and removed by the epoch's commit."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from training import store as st
from training.contracts import CheckpointDir
from training.pretrain.partial import PartialCheckpoints, position, resume_partial

DATA = SimpleNamespace(steps_per_epoch=40, global_batch=16, batch_size=8)
SUMS = {"loss_sum": 12.5, "correct_sum": 30.0, "seen": 80.0, "train_seconds": 4.0}


class BytesModel:
    def save(self, path):
        Path(path).write_bytes(b"weights" * 1000)


def _partials(tmp_path, every_steps=10, every_minutes=0.0):
    run = CheckpointDir(str(tmp_path / "ckpt"))
    args = SimpleNamespace(checkpoint_every_steps=every_steps, checkpoint_every_minutes=every_minutes)
    logged = []
    partials = PartialCheckpoints(st.Store(), run, tmp_path / "work", args, DATA, logged.append, 0)
    return run, partials, logged


def test_one_partial_checkpoint_is_kept_behind_its_pointer(tmp_path):
    run, partials, logged = _partials(tmp_path)
    assert [s for s in range(1, 41) if partials.due(s, 40)] == [10, 20, 30]  # not 40: the commit follows
    partials.save(BytesModel(), {"epoch": 2}, 2, 10, SUMS)
    partials.save(BytesModel(), {"epoch": 2}, 2, 20, SUMS)
    pointer = json.loads(Path(run.partial_json).read_text())
    assert pointer["path"] == run.partial(2, 20) and pointer["step"] == 20 and pointer["sums"] == SUMS
    assert sorted(pointer["files"]) == ["meta.json", "model.keras", "state.json"]
    assert st.Store().list_dirs(run.path(run.PARTIAL)) == [Path(run.partial(2, 20)).name]
    assert logged[-1].startswith("checkpoint at epoch 2 step 20 ")
    partials.clear()  # the epoch's commit
    assert not Path(run.partial_json).exists() and st.Store().list_dirs(run.path(run.PARTIAL)) == []


def test_minutes_make_a_checkpoint_due(tmp_path):
    _, partials, _ = _partials(tmp_path, every_steps=0, every_minutes=0.5)
    assert not partials.due(3, 40)
    partials.last_saved -= 31
    assert partials.due(3, 40) and not partials.due(40, 40)


def test_resume_takes_the_next_epochs_checkpoint_and_refuses_any_other(tmp_path):
    run, partials, _ = _partials(tmp_path)
    partials.save(BytesModel(), {"epoch": 2}, 2, 30, SUMS)
    logged = []
    found = resume_partial(st.Store(), run, 1, DATA, tmp_path / "v1", logged.append)
    assert found["step"] == 30 and found["path"] == run.partial(2, 30) and logged == []
    # Resumed at epoch 2 step 31: 1 epoch and 30 steps of 8 images into this rank's stream.
    assert position(DATA, 1, 30) == (40 + 30) * 8

    other = SimpleNamespace(steps_per_epoch=50, global_batch=16, batch_size=8)
    assert resume_partial(st.Store(), run, 1, other, tmp_path / "v2", logged.append) is None
    assert "another layout" in logged[-1] and not Path(run.partial_json).exists()
    assert st.Store().list_dirs(run.path(run.PARTIAL)) == []


def test_a_stale_or_damaged_checkpoint_is_dropped_saying_why(tmp_path):
    run, partials, _ = _partials(tmp_path)
    partials.save(BytesModel(), {"epoch": 2}, 2, 10, SUMS)
    logged = []
    assert resume_partial(st.Store(), run, 2, DATA, tmp_path / "v1", logged.append) is None  # epoch 2 committed
    assert "belongs to epoch 2, and epoch 2 is the last committed" in logged[-1]
    assert not Path(run.partial_json).exists()

    partials.save(BytesModel(), {"epoch": 2}, 2, 20, SUMS)
    model = Path(run.partial(2, 20)) / "model.keras"
    model.write_bytes(model.read_bytes()[:100])  # a partial copy
    assert resume_partial(st.Store(), run, 1, DATA, tmp_path / "v2", logged.append) is None
    assert "model.keras" in logged[-1] and not Path(run.partial(2, 20)).exists()
