"""Committing epochs and the best.json pointer, with the store failing part-way: what a reader finds is always
a whole, committed epoch whose files match the pointer's checksums (no TensorFlow: the model only saves bytes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training import store as st
from training.contracts import CheckpointDir, file_digests, file_problem, pretrained_dir
from training.pretrain.checkpoints import commit_epoch, resume_state

META = {"manifest_sha256": "m" * 64, "manifest_fingerprint": "f" * 64}


class BytesModel:
    def __init__(self, tag: str):
        self.tag = tag

    def save(self, path):
        Path(path).write_bytes(f"weights of {self.tag}".encode() * 1000)


class FailingStore(st.Store):
    """A store that goes away after ``allowed`` more writes (every object of an upload counts)."""

    def __init__(self, allowed: int | None = None):
        super().__init__()
        self.allowed = allowed

    def write_bytes(self, uri, data):
        if self.allowed is not None:
            if self.allowed <= 0:
                raise ConnectionError("the checkpoint store is unavailable")
            self.allowed -= 1
        super().write_bytes(uri, data)

    def upload_dir(self, local_dir, uri):
        for path in sorted(Path(local_dir).rglob("*")):
            if path.is_file():
                self.write_bytes(st.join(uri, path.relative_to(local_dir).as_posix()), path.read_bytes())


def _commit(store, run, epoch, acc, best, tmp_path):
    metrics = {"epoch": epoch, "val_accuracy": acc, "val_loss": 1 - acc}
    return commit_epoch(store, run, BytesModel(f"epoch {epoch}"), metrics, {**META, "epoch": epoch}, best, tmp_path)


@pytest.mark.parametrize("allowed", range(5))  # 3 files, COMMITTED, then best.json: fail before each of them
def test_a_store_failing_mid_commit_leaves_the_previous_best_whole(tmp_path, allowed):
    store, run = FailingStore(), CheckpointDir(str(tmp_path / "run"))
    best = _commit(store, run, 1, 0.5, None, tmp_path / "w")
    best = _commit(store, run, 2, 0.4, best, tmp_path / "w")
    store.allowed = allowed
    with pytest.raises(ConnectionError):
        _commit(store, run, 3, 0.9, best, tmp_path / "w")
    store.allowed = None
    pointer = run.read_best(store)
    assert pointer["epoch"] == 1 and run.best_checkpoint(store) == run.epoch(1)
    epoch_dir = Path(run.epoch(1))
    assert file_problem(file_digests(epoch_dir), pointer["files"]) is None
    assert json.loads((epoch_dir / "meta.json").read_text())["epoch"] == 1
    assert pretrained_dir(run.uri) == epoch_dir
    assert not Path(run.path(run.BEST)).exists()  # nothing rewritten in place
    # The resume trains epoch 3 again (or, committed before best.json failed, points to it).
    state = resume_state(store, run, tmp_path / "w", lambda _: None)
    committed_3 = allowed == 4
    assert state["resume_from"] == (3 if committed_3 else 2)
    assert state["best"]["epoch"] == (3 if committed_3 else 1) == run.read_best(store)["epoch"]
    if not committed_3:
        state["best"] = _commit(store, run, 3, 0.9, state["best"], tmp_path / "w")
    assert run.read_best(store)["epoch"] == 3 == state["best"]["epoch"]
    assert file_problem(file_digests(run.epoch(3)), state["best"]["files"]) is None


def test_resume_past_a_corrupt_best_epoch_points_best_json_back_first(tmp_path):
    store, run = st.Store(), CheckpointDir(str(tmp_path / "run"))
    best = None
    for epoch, acc in ((1, 0.5), (2, 0.7), (3, 0.6), (4, 0.8)):
        best = _commit(store, run, epoch, acc, best, tmp_path / "w")
    assert best["epoch"] == 4
    model = Path(run.epoch(4), "model.keras")
    model.write_bytes(model.read_bytes()[:100])  # truncated by a disk error
    lines = []
    state = resume_state(store, run, tmp_path / "w", lines.append)
    assert state["resume_from"] == 3
    assert state["best"]["epoch"] == 2 and run.read_best(store)["epoch"] == 2
    assert state["best"]["files"] == json.loads(Path(run.committed_marker(2)).read_text())["files"]
    assert any("epoch 4 is committed but model.keras fails its checksum" in line for line in lines)
    assert not Path(run.committed_marker(4)).exists()  # trained again, not trusted meanwhile


def test_resume_with_no_good_epoch_left_removes_the_pointer(tmp_path):
    store, run = st.Store(), CheckpointDir(str(tmp_path / "run"))
    _commit(store, run, 1, 0.5, None, tmp_path / "w")
    Path(run.epoch(1), "meta.json").unlink()
    state = resume_state(store, run, tmp_path / "w", lambda _: None)
    assert state == {"resume_from": 0, "best": None} and not Path(run.best_json).exists()


def test_the_export_refuses_an_epoch_that_fails_the_pointers_checksums(tmp_path):
    from plugins.tlpipe.pretraining.steps import export_model

    store, run = st.Store(), CheckpointDir(str(tmp_path / "run"))
    pointer = _commit(store, run, 1, 0.5, None, tmp_path / "w")
    best = {"uri": run.epoch(1), "epoch": 1, "files": pointer["files"]}

    class Exporter:
        def export_model(self, local, manifest_path):
            return {"exported_from": str(local)}

    assert export_model(best, {"manifest_path": "m"}, Exporter(), None) == {"exported_from": run.epoch(1)}
    Path(run.epoch(1), "metrics.json").write_text("{}")
    with pytest.raises(RuntimeError, match=r"epochs/0001 \(epoch 1, best.json's pointer\): metrics.json fails"):
        export_model(best, {"manifest_path": "m"}, Exporter(), None)
