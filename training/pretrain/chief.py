"""Rank 0's side effects: the log, the epoch commit (and the checkpoints inside an epoch), TensorBoard
(uploaded next to S3 checkpoints) and COMPLETE, each waiting out a store outage."""

from __future__ import annotations

from pathlib import Path

from training import store as st
from training.contracts import CheckpointDir
from training.pretrain.checkpoints import commit_epoch, utcnow

SUMMARY_SCALARS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "images_per_second")


class ChiefWriter:
    """Rank 0's side effects: the log, the epoch commit, TensorBoard (uploaded next to S3 checkpoints)."""

    def __init__(
        self, is_chief: bool, store: st.Store, run_dir: CheckpointDir, workdir: Path, lease=None, outage_seconds=0.0
    ):
        import tensorflow as tf

        self.is_chief, self.store, self.run_dir, self.workdir = is_chief, store, run_dir, workdir
        self.lease, self.outage_seconds = lease, outage_seconds
        self.remote = st.is_s3(run_dir.uri)
        # TensorBoard writes locally; for an s3:// checkpoint dir the files are uploaded after each epoch.
        tb_dir = workdir / run_dir.LOGS if self.remote else Path(run_dir.logs_dir)
        self.tb = tf.summary.create_file_writer(str(tb_dir)) if is_chief else None
        self.partials = None  # training.pretrain.partial.PartialCheckpoints, once the inputs are known

    def keep_partials(self, args, data, model, meta: dict):
        """Rank 0's step callback saving checkpoints inside an epoch when asked for (None otherwise)."""
        if not self.is_chief or not (args.checkpoint_every_steps or args.checkpoint_every_minutes):
            return None
        from training.pretrain.partial import PartialCheckpoints

        self.partials = PartialCheckpoints(
            self.store, self.run_dir, self.workdir, args, data, self.log, self.outage_seconds
        )

        def step_done(epoch: int, step: int, sums: dict) -> None:
            if self.partials.due(step, data.steps_per_epoch):
                if self.lease is not None:
                    self.lease.check()  # another run took the directory over: write nothing more
                self.partials.save(model, {**meta, "epoch": epoch}, epoch, step, sums)

        return step_done

    def log(self, msg: str) -> None:
        if self.is_chief:
            print(f"[pretrain] {msg}", flush=True)

    def epoch_done(self, model, metrics: dict, meta: dict, best: dict | None, epochs: int) -> dict | None:
        if not self.is_chief:
            return best
        import tensorflow as tf

        if self.lease is not None:
            self.lease.check()  # another run took the directory over: commit nothing more
        # A store restarting or failing over mid-run is waited out (the other ranks wait at the next allreduce);
        # the commit is safe to repeat: its pointer is written last.
        best = st.riding_out(
            lambda: commit_epoch(self.store, self.run_dir, model, metrics, meta, best, self.workdir),
            self.outage_seconds,
            f"committing epoch {metrics['epoch']}",
            self.log,
        )
        if self.partials is not None:
            self.partials.clear()
        with self.tb.as_default(step=metrics["epoch"]):
            for key in SUMMARY_SCALARS:
                tf.summary.scalar(key, metrics[key])
        self.tb.flush()
        if self.remote:
            st.riding_out(
                lambda: self.store.upload_dir(self.workdir / self.run_dir.LOGS, self.run_dir.logs_dir),
                self.outage_seconds,
                "uploading the TensorBoard logs",
                self.log,
            )
        self.log(
            f"epoch {metrics['epoch']}/{epochs} loss {metrics['loss']:.4f} acc {metrics['accuracy']:.4f} "
            f"val_loss {metrics['val_loss']:.4f} val_acc {metrics['val_accuracy']:.4f} "
            f"lr {metrics['learning_rate']:.2e} {metrics['images_per_second']:.0f} img/s "
            f"{metrics['epoch_seconds']:.1f}s skipped {metrics['skipped_files']} "
            f"best {best['epoch']}:{best['val_accuracy']:.4f}"
        )
        return best

    def complete(self, epochs: int, best: dict | None) -> None:
        if self.is_chief:
            record = {"epochs": epochs, "best_epoch": best and best["epoch"], "finished_at": utcnow()}
            st.riding_out(
                lambda: self.store.write_json(self.run_dir.complete, record),
                self.outage_seconds,
                "writing COMPLETE",
                self.log,
            )
            self.log(
                f"complete: best epoch {best['epoch']} val_accuracy {best['val_accuracy']:.4f} -> "
                f"{best['path']} (best.json)"
            )
