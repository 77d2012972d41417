"""The checkpoint directory from the training side: what to resume from, and committing an epoch (epoch
directory first, COMMITTED last; then best/ and best.json when the epoch is the most accurate)."""

from __future__ import annotations

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


def resume_state(store: st.Store, run_dir: CheckpointDir) -> dict:
    """Rank 0's view of the run so far: the last committed epoch and best.json; a stale FAILED is cleared."""
    state = {"resume_from": run_dir.last_committed_epoch(store), "best": run_dir.read_best(store)}
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
    store.upload_dir(local, uri)
    store.write_json(run_dir.committed_marker(metrics["epoch"]), {"committed_at": utcnow()})
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
