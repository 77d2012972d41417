"""The checkpoint directory from the training side: what to resume from, and committing an epoch (epoch
directory first, COMMITTED last, holding the sha256 and size of every file of the epoch; then, when the epoch is
the most accurate, best.json pointing to it). Nothing is rewritten in place: no multi-object write on S3 is
atomic, so a reader only ever follows one object (COMMITTED, best.json) to files that no longer change.
A resume trusts a committed epoch only when its files match COMMITTED."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

from training import store as st
from training.contracts import CheckpointDir, file_digests, file_problem


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _local_copy(store: st.Store, uri: str, tmp: Path) -> Path:
    """A local directory with the contents of ``uri`` (the directory itself when it is local)."""
    if st.is_s3(uri):
        return store.download_dir(uri, tmp / Path(uri).name)
    return Path(uri)


def epoch_problem(store: st.Store, run_dir: CheckpointDir, epoch: int, tmp: Path) -> str | None:
    """Why the committed ``epoch`` cannot be resumed from (a file missing or failing its checksum), or None.
    Epochs committed before COMMITTED recorded their files are trusted as they are."""
    files = (store.read_json(run_dir.committed_marker(epoch)) or {}).get("files")
    if not files:
        return None
    try:
        local = _local_copy(store, run_dir.epoch(epoch), tmp / f"verify-{epoch}")
    except Exception as err:  # noqa: BLE001 - an unreadable epoch is one not to resume from
        return f"cannot be read ({err})"
    return file_problem(file_digests(local) if local.is_dir() else {}, files)


def check_writable(store: st.Store, run_dir: CheckpointDir) -> None:
    """Write, read back and delete a probe object, so an unwritable store fails the run before its first step
    and not after a GPU-epoch."""
    probe = run_dir.path(".write-probe")
    token = f"probe {utcnow()}".encode()
    try:
        store.write_bytes(probe, token)
        if store.read_bytes(probe) != token:
            raise OSError("what was read back differs from what was written")
        store.delete(probe)
    except Exception as err:  # noqa: BLE001 - any failure here is the same failure: say where and why
        raise RuntimeError(f"the checkpoint directory {run_dir.uri} is not writable: {err}") from err


def resume_state(store: st.Store, run_dir: CheckpointDir, workdir: Path, log=print) -> dict:
    """Rank 0's view of the run so far: the newest committed epoch whose files pass their checksums (falling back
    past any that do not, and saying so) and the best of the epochs up to it; a stale FAILED is cleared."""
    resume_from, passed = 0, []
    for epoch in run_dir.committed_epochs(store):
        problem = epoch_problem(store, run_dir, epoch, workdir)
        if problem is None:
            resume_from = epoch
            break
        passed.append(epoch)
        log(f"epoch {epoch} is committed but {problem}: not resuming from it")
    pointer = run_dir.read_best(store)
    # best.json must name the best good epoch up to resume_from: not one about to be trained again (a reader
    # would follow it into a directory being rewritten), nor lag behind one committed just before a crash.
    best = best_up_to(store, run_dir, resume_from, workdir)
    if (best and best["epoch"]) != (pointer and int(pointer["epoch"])):
        if best is None:
            store.delete(run_dir.best_json)
        else:
            store.write_json(run_dir.best_json, best)
        log(f"best.json pointed to epoch {pointer and pointer['epoch']}; now to {best and best['epoch']}")
    elif pointer is not None:
        best = pointer
    for epoch in passed:
        store.delete(run_dir.committed_marker(epoch))
    state = {"resume_from": resume_from, "best": best}
    if store.exists(run_dir.failed):
        store.delete(run_dir.failed)
    return state


def best_pointer(run_dir: CheckpointDir, metrics: dict, meta: dict, files: dict, created_at: str | None) -> dict:
    """best.json's contents for a committed epoch."""
    return {
        "epoch": metrics["epoch"],
        "val_accuracy": metrics["val_accuracy"],
        "val_loss": metrics["val_loss"],
        "path": run_dir.epoch(metrics["epoch"]),
        "files": files,
        "manifest_sha256": meta["manifest_sha256"],
        "manifest_fingerprint": meta["manifest_fingerprint"],
        "created_at": created_at or utcnow(),
        "updated_at": utcnow(),
    }


def best_up_to(store: st.Store, run_dir: CheckpointDir, last: int, workdir: Path) -> dict | None:
    """The pointer to the most accurate committed epoch up to ``last`` whose files pass their checksums."""
    scored = []
    for epoch in (e for e in run_dir.committed_epochs(store) if e <= last):
        metrics = store.read_json(st.join(run_dir.epoch(epoch), "metrics.json"))
        scored.append((-float(metrics["val_accuracy"]), epoch, metrics))
    for _, epoch, metrics in sorted(scored):  # the most accurate first; the earliest of equals, as in training
        if epoch == last or epoch_problem(store, run_dir, epoch, workdir) is None:
            meta = store.read_json(st.join(run_dir.epoch(epoch), "meta.json"))
            files = store.read_json(run_dir.committed_marker(epoch)).get("files") or {}
            return best_pointer(run_dir, metrics, meta, files, None)
    return None


def commit_epoch(
    store: st.Store, run_dir: CheckpointDir, model, metrics: dict, meta: dict, best: dict | None, workdir: Path
) -> dict:
    """Write the epoch directory and its COMMITTED record, then point best.json to it if it is the most accurate
    so far. best.json is one object written after the files it names: a reader never sees a half-written best."""
    epoch = metrics["epoch"]
    local = workdir / f"epoch-{epoch:0{run_dir.EPOCH_DIGITS}d}"
    local.mkdir(parents=True, exist_ok=True)
    model.save(local / "model.keras")
    (local / "meta.json").write_text(json.dumps({**meta, "val_accuracy": metrics["val_accuracy"]}, indent=2))
    (local / "metrics.json").write_text(json.dumps(metrics, indent=2))
    files = file_digests(local)
    if store.exists(run_dir.committed_marker(epoch)):  # an epoch trained again: no stale record over new files
        store.delete(run_dir.committed_marker(epoch))
    store.upload_dir(local, run_dir.epoch(epoch))
    store.write_json(run_dir.committed_marker(epoch), {"committed_at": utcnow(), "files": files})
    if best is None or metrics["val_accuracy"] > best["val_accuracy"]:
        best = best_pointer(run_dir, metrics, meta, files, (best or {}).get("created_at"))
        store.write_json(run_dir.best_json, best)  # last: the pointer, one object
    shutil.rmtree(local, ignore_errors=True)
    return best
