"""The job end to end: inputs, runs, metrics, artifact, report; the command line and the failure file."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path

from training.contracts import judge_baseline
from training.finetune.artifact import write_artifact
from training.finetune.fit import datasets_for, evaluate, train_scratch, transfer_model
from training.finetune.hyperparameters import (
    IMAGES_SIGNATURE,
    SERVING_SIGNATURE,
    FinetuneError,
    log,
    metric_value,
    parse_hyperparameters,
)
from training.finetune.inputs import load_domain, load_pretrained, locate_pretrained
from training.finetune.recipes import search_recipes
from training.sagemaker import ContractError, TrainingEnv


def final_metrics(results: dict, primary_name: str, compared: bool) -> tuple[dict, list[str]]:
    """The job's metrics (names as in METRIC_DEFINITIONS) and the ``key=value`` pairs of the final log line.

    ``validation:*``/``test:*`` are the written model's (``primary_name``); with a baseline, ``scratch:*`` are
    the baseline's, ``transfer:*`` the transfer model's, and ``selected:scratch`` says which one was written.
    """
    primary = results[primary_name]
    metrics, final = {}, []

    def put(name: str, key: str, value: float) -> None:
        metrics[name] = value
        final.append(f"{key}={metric_value(value)}")

    if primary["train_loss"] is not None:  # the kept (best) epoch's, not the last one's
        put("train:loss", "train_loss", primary["train_loss"])
        put("train:accuracy", "train_accuracy", primary["train_accuracy"])
    splits = [("val", "validation")] + ([("test", "test")] if "test_accuracy" in primary else [])
    for split, metric in splits:
        put(f"{metric}:loss", f"{split}_loss", primary[f"{split}_loss"])
        put(f"{metric}:accuracy", f"{split}_accuracy", primary[f"{split}_accuracy"])
    if compared:
        s, t = results["scratch"], results["transfer"]
        for split, metric in splits:
            put(f"scratch:{metric}:loss", f"scratch_{split}_loss", s[f"{split}_loss"])
            put(f"scratch:{metric}:accuracy", f"scratch_{split}_accuracy", s[f"{split}_accuracy"])
            gain = t[f"{split}_accuracy"] - s[f"{split}_accuracy"]
            put(
                "transfer:gain" if split == "val" else "transfer:test_gain",
                "transfer_gain" if split == "val" else "transfer_test_gain",
                gain,
            )
        put("transfer:validation:accuracy", "transfer_val_accuracy", t["val_accuracy"])
        metrics["selected:scratch"] = float(primary_name == "scratch")
        final.append(f"selected_scratch={int(primary_name == 'scratch')}")
    return metrics, final


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _configure_tensorflow(hp) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if hp.threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(hp.threads)
            tf.config.threading.set_inter_op_parallelism_threads(hp.threads)
        except RuntimeError:  # TensorFlow already running in this process (an in-process caller)
            log(f"threads={hp.threads} ignored: TensorFlow is already initialised in this process")
    # Keras warns when the validation pass ends (its length is unknown because unreadable files are dropped).
    warnings.filterwarnings("ignore", message=".*ran out of data.*")
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")


def _load_inputs(env: TrainingEnv, hp, workdir: Path):
    """(pretrained model or None, image size, domain data), checked against each other."""
    pre = None
    pre_channel = env.channel("pretrained")
    if hp.init == "pretrained" or pre_channel.is_dir():
        pre = load_pretrained(locate_pretrained(pre_channel, workdir))
    image_size = tuple(pre.meta["image_size"]) if pre else (hp.image_size or (64, 64))
    if hp.image_size and tuple(hp.image_size) != tuple(image_size):
        raise FinetuneError(
            f"image size mismatch: hyperparameter image_size is {list(hp.image_size)} but the "
            f"pretrained model takes {list(image_size)}"
        )
    data = load_domain(env, hp)
    log(
        f"{len(data.class_names)} classes ({', '.join(data.class_names)}); {len(data.train)} train / "
        f"{len(data.val)} validation images; image size {list(image_size)}; init {hp.init}"
        + (f"; pretrained {pre.meta.get('arch', '?')} from {pre.path}" if pre else "")
        + (f"; {len(data.skipped)} unreadable file(s) skipped" if data.skipped else "")
    )
    if hp.compare_scratch and hp.init == "scratch":
        log("compare_scratch ignored: init is already scratch")
    return pre, image_size, data


def _train_runs(pre, data, hp, image_size, ds) -> tuple[dict[str, dict], dict[str, dict]]:
    """The runs the hyperparameters ask for: the kept transfer recipe (and every candidate of the search), its
    scratch baseline, or scratch alone. Returns (runs by name, transfer candidates by recipe)."""
    import keras

    runs: dict[str, dict] = {}
    if hp.init == "pretrained":
        runs["transfer"], candidates = search_recipes(pre, data, hp, ds)
        if hp.compare_scratch:
            keras.utils.set_random_seed(hp.seed)
            runs["scratch"] = train_scratch(runs["transfer"]["model"], data, hp, image_size, ds, "baseline")
        return runs, candidates
    template = transfer_model(pre, len(data.class_names), hp) if pre else None
    keras.utils.set_random_seed(hp.seed)
    runs["scratch"] = train_scratch(template, data, hp, image_size, ds, "primary")
    return runs, {}


def _written_model(results: dict, hp) -> tuple[str, dict | None]:
    """Which run's model the job writes (transfer, or its baseline under the baseline policy), and why."""
    if "transfer" not in results:
        return "scratch", None
    scratch = results.get("scratch", {}).get("val_accuracy")
    verdict = judge_baseline(results["transfer"]["val_accuracy"], scratch, hp.baseline_policy, hp.baseline_margin)
    if "scratch" in results:
        log(f"baseline: {verdict.reason}")
    choice = "scratch" if verdict.choice == "scratch" else "transfer"
    return choice, {
        "policy": hp.baseline_policy,
        "margin": hp.baseline_margin,
        "written": choice,
        "transfer_lost": verdict.transfer_lost,
        "reason": verdict.reason,
    }


def _evaluate_runs(runs: dict[str, dict], ds, class_names: list[str]) -> dict[str, dict]:
    """Each run's kept epoch, history and evaluation on the validation (and test) images."""
    results = {}
    for name, r in runs.items():
        tr = r["tracker"]
        results[name] = {
            "best_epoch": tr.best and tr.best["epoch"],
            "epochs_run": tr.epochs_done,
            "train_loss": tr.best and tr.best["train_loss"],
            "train_accuracy": tr.best and tr.best["train_accuracy"],
            "seconds": round(r["seconds"], 2),
            "history": tr.history,
            **{k: r[k] for k in ("bn_recalibration_batches", "unfrozen_layers", "recipe") if k in r},
        }
        for split, dataset in (("val", ds.val), ("test", ds.test)):
            if dataset is not None:
                ev = evaluate(r["model"], dataset, class_names)
                prefix = "" if split == "val" else "test_"
                results[name].update(
                    {
                        f"{split}_accuracy": ev["accuracy"],
                        f"{split}_loss": ev["loss"],
                        f"{split}_images": ev["images"],
                        f"{prefix}per_class_accuracy": ev["per_class_accuracy"],
                        f"{prefix}confusion": ev["confusion"],
                    }
                )
    return results


def _model_meta(pre, model, data, hp, image_size, primary: dict, written: str) -> dict:
    """meta.json of the fine-tuned model: what it takes, how it was made, from what."""
    import keras
    import tensorflow as tf

    return {
        "class_names": data.class_names,
        "image_size": list(image_size),
        "feature_layer": (pre.meta.get("feature_layer", "features") if pre else "features"),
        "blocks": list(pre.meta.get("blocks") or []) if pre else list(getattr(model, "blocks", []) or []),
        "arch": pre.meta.get("arch") if pre else hp.arch,
        "input": {"dtype": "uint8", "layout": "NHWC", "channels": 3, "range": [0, 255]},
        "init": "pretrained" if written == "transfer" else "scratch",
        "recipe": primary.get("recipe"),
        "val_accuracy": primary["val_accuracy"],
        "serving": {
            "version": hp.model_version,
            "signature": SERVING_SIGNATURE,
            "input": "image_bytes",
            "output": "probabilities",
            "images_signature": IMAGES_SIGNATURE,
        },
        "pretrained": (
            {k: pre.meta.get(k) for k in ("arch", "epoch", "val_accuracy", "manifest_sha256", "manifest_fingerprint")}
            if pre
            else None
        ),
        "hyperparameters": hp.model_dump(mode="json"),
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "created_at": utcnow(),
    }


def run(env: TrainingEnv, overrides: dict[str, str]) -> dict:
    hp = parse_hyperparameters({**env.raw_hyperparameters(), **overrides})
    _configure_tensorflow(hp)
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="finetune-"))
    try:
        pre, image_size, data = _load_inputs(env, hp, workdir)
        import keras

        keras.utils.set_random_seed(hp.seed)
        ds = datasets_for(data, image_size, hp, hp.seed)
        runs, candidates = _train_runs(pre, data, hp, image_size, ds)
        results = _evaluate_runs(runs, ds, data.class_names)
        search = _evaluate_runs(candidates, ds, data.class_names) if len(candidates) > 1 else {}
        primary_name, baseline = _written_model(results, hp)
        metrics, final = final_metrics(results, primary_name, hp.init == "pretrained" and "scratch" in results)
        model = runs[primary_name]["model"]
        meta = _model_meta(pre, model, data, hp, image_size, results[primary_name], primary_name)
        artifact = write_artifact(env.model_dir, model, data.class_names, image_size, meta, hp.model_version, data.val)
        report = {
            "metrics": metrics,
            "primary": primary_name,
            "recipe": runs["transfer"]["recipe"] if "transfer" in runs else None,
            "runs": results,
            "recipe_search": search,
            "baseline": baseline,
            "classes": data.class_names,
            "counts": data.counts,
            "image_size": list(image_size),
            "hyperparameters": hp.model_dump(mode="json"),
            "pretrained": meta["pretrained"],
            "artifact": artifact,
            "seconds": round(time.perf_counter() - started, 2),
            "finished_at": utcnow(),
        }
        env.output_data_dir.mkdir(parents=True, exist_ok=True)
        (env.output_data_dir / "metrics.json").write_text(json.dumps(report, indent=2))
        log(
            f"model written to {env.model_dir} (version {hp.model_version}); metrics in "
            f"{env.output_data_dir / 'metrics.json'}"
        )
        log("final: " + " ".join(final))
        return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def parse_args(argv=None) -> tuple[argparse.Namespace, dict[str, str]]:
    p = argparse.ArgumentParser(
        description="Fine-tune the pretrained model on the SageMaker training-container contract. Any other "
        "--name value pair overrides the hyperparameter of that name."
    )
    p.add_argument("--sm-root", default=None, help="SageMaker root directory (default: $SM_ROOT or /opt/ml)")
    args, rest = p.parse_known_args(argv)
    if rest and rest[0] == "train":  # `docker run IMAGE train`, as SageMaker starts a training image
        rest = rest[1:]
    overrides: dict[str, str] = {}
    i = 0
    while i < len(rest):
        tok = rest[i]
        if not tok.startswith("--") or len(tok) < 3:
            p.error(f"unexpected argument {tok!r}")
        key, eq, value = tok[2:].partition("=")
        if not eq:
            if i + 1 >= len(rest):
                p.error(f"{tok} needs a value")
            value = rest[i + 1]
            i += 1
        overrides[key.replace("-", "_")] = value
        i += 1
    return args, overrides


def main(argv=None) -> int:
    args, overrides = parse_args(argv)
    env = TrainingEnv.from_env(args.sm_root)
    env.clear_failure()
    # StopTrainingJob sends SIGTERM: stop now, as a failure SageMaker records as Stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run(env, overrides)
        return 0
    except (FinetuneError, ContractError) as err:
        reason = str(err)
    except SystemExit:
        raise
    except BaseException as err:  # noqa: BLE001 - any failure must leave its reason for DescribeTrainingJob
        traceback.print_exc()
        reason = f"{type(err).__name__}: {err}"
    log(f"error: {reason}")
    try:
        env.write_failure(reason)
    except OSError as err:
        log(f"could not write {env.failure_path}: {err}")
    return 1
