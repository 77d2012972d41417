"""Checkpoints inside an epoch, so a kill loses minutes of training and not an epoch.

Rank 0 saves the model (with its optimizer), the epoch's running sums and the input position every
``--checkpoint-every-steps`` steps or ``--checkpoint-every-minutes`` minutes: first ``partial/EEEE-SSSSSSS/``,
then ``partial.json`` (one object, written last, with the files' sha256) pointing to it, then the previous one is
deleted. The epoch's commit removes them. A resume continues from the partial checkpoint when it belongs to the
epoch after the last committed one and its files pass their checksums; the input pipeline is a function of the
position (``training.data.passes_from``), so the resumed run sees what the killed one would have seen next.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from training import store as st
from training.contracts import CheckpointDir, file_digests, file_problem
from training.pretrain.checkpoints import _local_copy, utcnow


def _layout(data) -> dict:
    """What a partial checkpoint's position means: it is only valid for the same steps and batches."""
    return {"steps_per_epoch": data.steps_per_epoch, "global_batch": data.global_batch}


class PartialCheckpoints:
    """Rank 0's checkpoints inside an epoch."""

    def __init__(self, store: st.Store, run_dir: CheckpointDir, workdir: Path, args, data, log, outage: float):
        self.store, self.run_dir, self.workdir, self.log, self.outage = store, run_dir, workdir, log, outage
        self.every_steps = max(0, int(args.checkpoint_every_steps))
        self.every_seconds = max(0.0, float(args.checkpoint_every_minutes)) * 60
        self.layout = _layout(data)
        self.last_saved = time.monotonic()
        self.current: str | None = None  # the partial directory partial.json names

    def due(self, step: int, steps_per_epoch: int) -> bool:
        if step >= steps_per_epoch:
            return False  # the epoch's commit follows at once
        if self.every_steps and step % self.every_steps == 0:
            return True
        return bool(self.every_seconds) and time.monotonic() - self.last_saved >= self.every_seconds

    def save(self, model, meta: dict, epoch: int, step: int, sums: dict) -> None:
        t0 = time.perf_counter()
        st.riding_out(
            lambda: self._write(model, meta, epoch, step, sums),
            self.outage,
            f"saving the checkpoint at epoch {epoch} step {step}",
            self.log,
        )
        self.last_saved = time.monotonic()
        self.log(f"checkpoint at epoch {epoch} step {step} ({time.perf_counter() - t0:.1f}s)")

    def _write(self, model, meta: dict, epoch: int, step: int, sums: dict) -> None:
        uri = self.run_dir.partial(epoch, step)
        local = self.workdir / "partial" / Path(uri).name
        local.mkdir(parents=True, exist_ok=True)
        model.save(local / "model.keras")
        (local / "meta.json").write_text(json.dumps(meta, indent=2))
        state = {"epoch": epoch, "step": step, "sums": sums, **self.layout, "saved_at": utcnow()}
        (local / "state.json").write_text(json.dumps(state, indent=2))
        files = file_digests(local)
        self.store.upload_dir(local, uri)
        self.store.write_json(self.run_dir.partial_json, {**state, "path": uri, "files": files})  # last
        shutil.rmtree(local, ignore_errors=True)
        previous, self.current = self.current, uri
        if previous and previous != uri:
            self.store.delete_dir(previous)

    def clear(self) -> None:
        """After an epoch's commit: its partial checkpoints are superseded."""
        st.riding_out(lambda: drop_partials(self.store, self.run_dir), self.outage, "removing checkpoints", self.log)
        self.current = None
        self.last_saved = time.monotonic()


def drop_partials(store: st.Store, run_dir: CheckpointDir, keep: str | None = None) -> None:
    """Delete partial.json (unless it names ``keep``) and every partial directory but ``keep``."""
    pointer = store.read_json(run_dir.partial_json) if store.exists(run_dir.partial_json) else None
    if pointer is None or pointer.get("path") != keep:
        store.delete(run_dir.partial_json)
    for name in store.list_dirs(run_dir.path(run_dir.PARTIAL)):
        uri = run_dir.path(run_dir.PARTIAL, name)
        if uri != keep:
            store.delete_dir(uri)


def resume_partial(store: st.Store, run_dir: CheckpointDir, committed: int, data, workdir: Path, log) -> dict | None:
    """The partial checkpoint to resume from (epoch ``committed + 1``, files whole, same layout), or None; any
    other partial checkpoint is deleted, saying why."""
    pointer = store.read_json(run_dir.partial_json) if store.exists(run_dir.partial_json) else None
    problem = None
    if pointer is not None:
        if int(pointer["epoch"]) != committed + 1:
            problem = f"belongs to epoch {pointer['epoch']}, and epoch {committed} is the last committed"
        elif any(pointer.get(k) != v for k, v in _layout(data).items()):
            problem = f"was taken with another layout ({ {k: pointer.get(k) for k in _layout(data)} })"
        else:
            try:
                local = _local_copy(store, pointer["path"], workdir / "verify-partial")
                problem = file_problem(file_digests(local) if local.is_dir() else {}, pointer["files"])
            except Exception as err:  # noqa: BLE001 - an unreadable checkpoint is one not to resume from
                problem = f"cannot be read ({err})"
        if problem:
            log(f"not resuming from the checkpoint at epoch {pointer['epoch']} step {pointer['step']}: it {problem}")
    keep = pointer["path"] if pointer is not None and problem is None else None
    drop_partials(store, run_dir, keep)
    return pointer if keep else None


def position(data, epochs_done: int, steps_done: int) -> int:
    """This rank's position in its training stream (images) after that many epochs and steps."""
    return (epochs_done * data.steps_per_epoch + steps_done) * data.batch_size
