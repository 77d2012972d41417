"""``python -m training.pretrain``: the flags, and the FAILED record when training fails."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback

from training import store as st
from training.contracts import CHECKPOINT_EVERY_MINUTES, PRETRAIN_KNOBS, CheckpointDir
from training.pretrain.checkpoints import utcnow


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Horovod pretraining of the general image model.")
    p.add_argument("--manifest", required=True, help="manifest.json written by training.curate (local or s3://)")
    p.add_argument("--checkpoint-dir", required=True, help="local path or s3:// URI")
    for name in ("epochs", "model", "image_size", "batch_size", "learning_rate"):  # declared in training.contracts
        knob = PRETRAIN_KNOBS[name]
        p.add_argument(knob.flag, type=knob.type, default=knob.default, choices=knob.choices or None, help=knob.help)
    p.add_argument("--data-root", default=None, help="where the images are, if not the manifest's data_root")
    p.add_argument("--width", type=int, default=32, help="small_resnet channel width")
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--label-smoothing", type=float, default=0.05)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--cache",
        default="auto",
        choices=["auto", "on", "off"],
        help="keep decoded images in memory (auto: when they fit in 2 GB per worker)",
    )
    p.add_argument("--mixed-precision", action="store_true", help="mixed_float16 (GPUs)")
    p.add_argument("--xla", action="store_true", help="compile the train step with XLA (GPUs)")
    p.add_argument("--fp16-allreduce", action="store_true", help="compress gradients to fp16 for the allreduce")
    p.add_argument(
        "--bind-cores",
        default="auto",
        choices=["auto", "on", "off"],
        help="pin each rank to its slice of the host's cores (auto: when several ranks share a host)",
    )
    p.add_argument(
        "--allreduce-groups",
        type=int,
        default=1,
        help="gradient allreduce groups per step (1: one grouped allreduce of every gradient, which "
        "pays the per-collective latency once; 0: one allreduce per gradient, fused by Horovod "
        "as they come ready)",
    )
    p.add_argument("--threads", type=int, default=0, help="TF intra/inter-op threads per worker (0: TF decides)")
    p.add_argument("--steps-per-epoch", type=int, default=0, help="0: one pass over the training list")
    p.add_argument(
        "--progress-seconds",
        type=float,
        default=30.0,
        help="rank 0 logs its step, loss and speed this often inside an epoch (0: only at the epoch's end)",
    )
    p.add_argument(
        "--lease-owner",
        default=None,
        help="who holds the checkpoint directory's lease (a run id: its retries take over); default host:pid",
    )
    p.add_argument("--lease-ttl", type=float, default=120.0, help="seconds of silence after which a lease expires")
    p.add_argument(
        "--store-outage-seconds",
        type=float,
        default=600.0,
        help="how long rank 0 waits out an unreachable checkpoint store (a restart, a failover) before failing",
    )
    p.add_argument(
        "--checkpoint-every-minutes",
        type=float,
        default=CHECKPOINT_EVERY_MINUTES,
        help="rank 0 also checkpoints inside an epoch this often, so a kill loses at most that (0: off)",
    )
    p.add_argument("--checkpoint-every-steps", type=int, default=0, help="and/or every this many steps (0: off)")
    p.add_argument("--tfrecords", default=None, help="read the splits from this training.tfrecords directory")
    p.add_argument("--s3-endpoint-url", default=None)
    p.add_argument("--fail-at-epoch", type=int, default=0, help=argparse.SUPPRESS)  # for failure-path tests
    return p.parse_args(argv)


def main(argv=None) -> int:
    from training.pretrain.lease import LeaseHeld

    args = parse_args(argv)
    # A SIGTERM (pod deletion, Airflow kill) is a stop, not a failure: the run resumes on retry.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        from training.pretrain.loop import train

        return train(args)
    except SystemExit:
        raise
    except LeaseHeld as err:  # another run's directory: write nothing there, FAILED included
        print(f"[pretrain] refused: {err}", file=sys.stderr, flush=True)
        return 1
    except BaseException as err:  # noqa: BLE001 - record why, then fail
        reason = f"{type(err).__name__}: {err}"
        traceback.print_exc()
        if int(os.environ.get("HOROVOD_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0"))) == 0:
            try:
                st.Store(args.s3_endpoint_url).write_json(
                    CheckpointDir(args.checkpoint_dir).failed, {"reason": reason, "failed_at": utcnow()}
                )
            except Exception as write_err:  # noqa: BLE001
                print(f"[pretrain] could not write FAILED: {write_err}", file=sys.stderr)
        print(f"[pretrain] failed: {reason}", file=sys.stderr, flush=True)
        return 1
