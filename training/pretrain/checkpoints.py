"""The checkpoint directory from the training side: what to resume from, and committing an epoch (epoch
directory first, COMMITTED last, holding the sha256 and size of every file of the epoch; then best/ and best.json
when the epoch is the most accurate). A resume trusts a committed epoch only when its files match COMMITTED."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

from training import store as st
from training.contracts import CheckpointDir


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _local_copy(store: st.Store, uri: str, tmp: Path) -> Path:
    """A local directory with the contents of ``uri`` (the directory itself when it is local)."""
    if st.is_s3(uri):
        return store.download_dir(uri, tmp / Path(uri).name)
    return Path(uri)


def file_digests(directory: Path) -> dict[str, dict]:
    """``{name: {"sha256", "size"}}`` of the files of an epoch directory."""
    out = {}
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        out[path.name] = {"sha256": digest.hexdigest(), "size": path.stat().st_size}
    return out


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
    found = file_digests(local) if local.is_dir() else {}
    for name, want in sorted(files.items()):
        if name not in found:
            return f"{name} is missing"
        if found[name] != want:
            return f"{name} fails its checksum"
    return None


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
    past any that do not, and saying so) and best.json; a stale FAILED is cleared."""
    resume_from = 0
    for epoch in run_dir.committed_epochs(store):
        problem = epoch_problem(store, run_dir, epoch, workdir)
        if problem is None:
            resume_from = epoch
            break
        log(f"epoch {epoch} is committed but {problem}: not resuming from it")
    state = {"resume_from": resume_from, "best": run_dir.read_best(store)}
    if store.exists(run_dir.failed):
        store.delete(run_dir.failed)
    return state


def commit_epoch(
    store: st.Store, run_dir: CheckpointDir, model, metrics: dict, meta: dict, best: dict | None, workdir: Path
) -> dict:
    """Write the epoch directory, then best/ and best.json if this epoch is the most accurate so far."""
    local = workdir / f"epoch-{metrics['epoch']:0{run_dir.EPOCH_DIGITS}d}"
    local.mkdir(parents=True, exist_ok=True)
    model.save(local / "model.keras")
    (local / "meta.json").write_text(json.dumps({**meta, "val_accuracy": metrics["val_accuracy"]}, indent=2))
    (local / "metrics.json").write_text(json.dumps(metrics, indent=2))
    uri = run_dir.epoch(metrics["epoch"])
    files = file_digests(local)
    store.upload_dir(local, uri)
    store.write_json(run_dir.committed_marker(metrics["epoch"]), {"committed_at": utcnow(), "files": files})
    if best is None or metrics["val_accuracy"] > best["val_accuracy"]:
        best_dir = workdir / "best"
        shutil.rmtree(best_dir, ignore_errors=True)
        best_dir.mkdir()
        for name in ("model.keras", "meta.json", "metrics.json"):
            shutil.copy2(local / name, best_dir / name)
        store.upload_dir(best_dir, run_dir.best_dir)
        best = {
            "epoch": metrics["epoch"],
            "val_accuracy": metrics["val_accuracy"],
            "val_loss": metrics["val_loss"],
            "path": uri,
            "best_dir": run_dir.best_dir,
            "manifest_sha256": meta["manifest_sha256"],
            "manifest_fingerprint": meta["manifest_fingerprint"],
            "created_at": (best or {}).get("created_at", utcnow()),
            "updated_at": utcnow(),
        }
        store.write_json(run_dir.best_json, best)  # last, atomically
    shutil.rmtree(local, ignore_errors=True)
    return best
