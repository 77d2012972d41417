"""Transfer learning vs training from scratch on the domain classes, at a few images per class.

    python -m training.report --out report/                      # builds the demo data and model first
    python -m training.report --out report/ --manifest M --pretrained C/best [--data-root R]
    python -m training.report --out report/ --sizes 5,20,50 --seeds 5 --hp epochs_head=20

For every training-set size N (images per class) and seed it runs one real fine-tuning job
(``training.finetune`` with ``compare_scratch=true``) in a SageMaker-layout directory under ``OUT/runs/``,
on the manifest's domain classes:

  train        N images per class drawn from ``domain_train`` (by the seed; smaller sets inside larger ones)
  validation   the rest of ``domain_train``: early stopping and the best epoch are chosen on it
  test         all of ``domain_val``, the same for every job; no choice is made on it, and every accuracy
               in the report is measured on it (choosing the best epoch on the images that are then
               reported flatters whichever model has the noisier learning curve, i.e. the scratch one)

Then it writes, in ``OUT``:

  report.md / report.html   the summary: test accuracy table (mean and per seed), gain, quality bar verdict
  accuracy.png              test accuracy against images per class, transfer vs scratch
  learning_curves.png       validation accuracy per epoch of every run (first seed)
  results.json              every figure behind the above

Without ``--manifest``/``--pretrained`` it first makes the demo inputs in ``OUT/demo`` (reused when present):
``training.synth_data`` defaults, ``training.curate --min-images 120 --domain-classes 4 --val-fraction 0.2``,
and ``horovodrun -np 2 python -m training.pretrain --epochs 20`` (one worker without horovodrun).

Quality bar: transfer must beat scratch by at least ``--min-gain`` (0.15) mean accuracy at ``--gain-at``
(20) images per class; the exit status is 1 when it does not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from training.contracts import CheckpointDir
from training.report_render import html_page, markdown, plot_accuracy, plot_curves

DEMO_CURATE = ["--min-images", "120", "--domain-classes", "4", "--val-fraction", "0.2"]
DEMO_PRETRAIN_EPOCHS = 20


def log(msg: str) -> None:
    print(f"[report] {msg}", flush=True)


# -- inputs -------------------------------------------------------------------------------------------------
def _run(cmd: list[str]) -> None:
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True)


def demo_inputs(workdir: Path, workers: int = 2) -> tuple[Path, Path]:
    """The demo dataset, its curation and a pretrained model (each step skipped when its output exists)."""
    py = sys.executable
    raw, curated, ckpt = workdir / "raw", workdir / "curated", workdir / "pretrain"
    if not (workdir / "raw.synth.json").is_file():
        _run([py, "-m", "training.synth_data", "--out", str(raw)])
    if not (curated / "manifest.json").is_file():
        _run([py, "-m", "training.curate", "--data-dir", str(raw), "--out", str(curated), *DEMO_CURATE])
    if not Path(CheckpointDir(str(ckpt)).complete).is_file():
        pretrain = [
            py,
            "-m",
            "training.pretrain",
            "--manifest",
            str(curated / "manifest.json"),
            "--checkpoint-dir",
            str(ckpt),
            "--epochs",
            str(DEMO_PRETRAIN_EPOCHS),
            "--threads",
            "1",
        ]
        horovodrun = shutil.which("horovodrun") or str(Path(py).with_name("horovodrun"))
        if workers > 1 and Path(horovodrun).exists():
            _run([horovodrun, "-np", str(workers), *pretrain])
        else:
            _run(pretrain[:-2])
    return curated / "manifest.json", Path(CheckpointDir(str(ckpt)).best_dir)


def domain_channels(manifest_path: Path, out: Path, data_root: str | None = None) -> dict[str, Path]:
    """ImageFolder trees of the manifest's domain lists (symbolic links to the images): train, validation."""
    from training.contracts import read_list

    manifest = json.loads(Path(manifest_path).read_text())
    root = Path(data_root or manifest["data_root"])
    channels = {}
    for split, channel in (("domain_train", "train"), ("domain_val", "validation")):
        dest = out / channel
        shutil.rmtree(dest, ignore_errors=True)
        for rel, cls in read_list(Path(manifest_path).parent / manifest["files"][split]):
            link = dest / cls / rel.replace("/", "__")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to((root / rel).resolve())
        channels[channel] = dest
    return channels


def _link_tree(dest: Path, paths: list[str], labels: list[int], class_names: list[str]) -> None:
    for path, label in zip(paths, labels):
        link = dest / class_names[label] / Path(path).name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(path).resolve())


def job_root(
    runs_dir: Path,
    name: str,
    pool: Path,
    test: Path,
    pretrained: Path,
    size: int,
    seed: int,
    hyperparameters: dict[str, str],
) -> Path:
    """A SageMaker job directory: ``size`` training images per class drawn (by ``seed``) from ``pool``, the
    pool's other images as the validation channel (early stopping, best epoch) and ``test`` as the test
    channel, which no choice is made on: the report's figures come from it."""
    from training.data import image_folder_split
    from training.finetune import per_class_subset

    root = runs_dir / name
    shutil.rmtree(root, ignore_errors=True)
    data = root / "input" / "data"
    data.mkdir(parents=True)
    split = image_folder_split(pool)
    keep_p, keep_l, rest_p, rest_l = per_class_subset(split.paths, split.labels, split.class_names, size, seed)
    _link_tree(data / "train", keep_p, keep_l, split.class_names)
    if rest_p:
        _link_tree(data / "validation", rest_p, rest_l, split.class_names)
    else:  # every pool image is used for training: select on the test images (noted in the results)
        (data / "validation").symlink_to(Path(test).resolve(), target_is_directory=True)
    (data / "test").symlink_to(Path(test).resolve(), target_is_directory=True)
    (data / "pretrained").symlink_to(Path(pretrained).resolve(), target_is_directory=True)
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps({k: str(v) for k, v in hyperparameters.items()}, indent=1))
    (config / "inputdataconfig.json").write_text(
        json.dumps({c: {"TrainingInputMode": "File"} for c in ("train", "validation", "test", "pretrained")})
    )
    return root


# -- runs ---------------------------------------------------------------------------------------------------
def run_jobs(
    pool: Path, test: Path, pretrained: Path, runs_dir: Path, sizes: list[int], seeds: list[int], extra: dict[str, str]
) -> list[dict]:
    import keras

    from training.finetune import run
    from training.sagemaker import TrainingEnv

    results = []
    for size in sizes:
        for seed in seeds:
            name = f"n{size:03d}-seed{seed}"
            hp = {"compare_scratch": "true", "seed": str(seed), **extra}
            root = job_root(runs_dir, name, pool, test, pretrained, size, seed, hp)
            log(f"fine-tuning job {name}: {hp}")
            t0 = time.perf_counter()
            keras.backend.clear_session()
            report = run(TrainingEnv(root), {})
            t = report["runs"]
            results.append(
                {
                    "images_per_class": size,
                    "seed": seed,
                    "job": str(root),
                    "train_images": sum(report["counts"]["train"].values()),
                    "val_images": t["transfer"]["val_images"],
                    "test_images": t["transfer"]["test_images"],
                    "selected_on_test": (root / "input" / "data" / "validation").is_symlink(),
                    "transfer": _summary(t["transfer"]),
                    "scratch": _summary(t["scratch"]),
                    "gain": t["transfer"]["test_accuracy"] - t["scratch"]["test_accuracy"],
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
            r = results[-1]
            log(
                f"{name}: test accuracy transfer {r['transfer']['accuracy']:.3f}  scratch "
                f"{r['scratch']['accuracy']:.3f}  gain {r['gain']:+.3f}  ({r['seconds']:.0f}s)"
            )
    return results


def _summary(run: dict) -> dict:
    return {
        "accuracy": run["test_accuracy"],
        **{
            k: run[k]
            for k in (
                "test_accuracy",
                "test_loss",
                "val_accuracy",
                "val_loss",
                "best_epoch",
                "epochs_run",
                "seconds",
                "history",
                "test_per_class_accuracy",
            )
        },
    }


def aggregate(results: list[dict]) -> list[dict]:
    rows = []
    for size in sorted({r["images_per_class"] for r in results}):
        rs = [r for r in results if r["images_per_class"] == size]
        row = {"images_per_class": size, "seeds": len(rs)}
        for kind in ("transfer", "scratch"):
            accs = [r[kind]["accuracy"] for r in rs]
            row[kind] = {"mean": statistics.fmean(accs), "min": min(accs), "max": max(accs), "all": accs}
        gains = [r["gain"] for r in rs]
        row["gain"] = {"mean": statistics.fmean(gains), "min": min(gains), "max": max(gains), "all": gains}
        rows.append(row)
    return rows


# -- output -------------------------------------------------------------------------------------------------
def write_report(out: Path, results: list[dict], context: dict, min_gain: float, gain_at: int) -> dict:
    rows = aggregate(results)
    at = [r for r in rows if r["images_per_class"] == gain_at]
    gain = at[0]["gain"]["mean"] if at else float("nan")
    verdict = {"gain_at": gain_at, "min_gain": min_gain, "gain": gain, "passed": bool(at) and gain >= min_gain}
    plot_accuracy(rows, out / "accuracy.png")
    plot_curves(results, out / "learning_curves.png")
    (out / "report.md").write_text(markdown(rows, verdict, context))
    (out / "report.html").write_text(html_page(rows, verdict, context))
    (out / "results.json").write_text(
        json.dumps({"summary": rows, "verdict": verdict, "context": context, "runs": results}, indent=2)
    )
    return verdict


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Transfer vs scratch at a few images per class (see module docstring).")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--manifest", type=Path, help="curation manifest with domain_train/domain_val lists")
    p.add_argument("--pretrained", type=Path, help="pretraining best/ directory (or its checkpoint directory)")
    p.add_argument("--data-root", default=None, help="where the images are, if not the manifest's data_root")
    p.add_argument("--sizes", default="5,20,50", help="images per class, comma-separated")
    p.add_argument("--seeds", type=int, default=5, help="jobs per size, seeds 0..N-1")
    p.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE", help="extra fine-tuning hyperparameter")
    p.add_argument("--min-gain", type=float, default=0.15)
    p.add_argument("--gain-at", type=int, default=20)
    p.add_argument("--workers", type=int, default=2, help="Horovod workers for the demo pretraining")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if bool(args.manifest) != bool(args.pretrained):
        raise SystemExit("give both --manifest and --pretrained, or neither (then the demo inputs are built)")
    if args.manifest:
        manifest, pretrained = args.manifest.resolve(), args.pretrained.resolve()
    else:
        manifest, pretrained = demo_inputs(out / "demo", args.workers)
    extra = {}
    for item in args.hp:
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"--hp wants NAME=VALUE, got {item!r}")
        extra[key.strip()] = value.strip()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    seeds = list(range(args.seeds))

    channels = domain_channels(manifest, out / "channels", args.data_root)
    t0 = time.perf_counter()
    results = run_jobs(channels["train"], channels["validation"], pretrained, out / "runs", sizes, seeds, extra)
    classes = sorted(p.name for p in channels["train"].iterdir() if p.is_dir())
    meta_path = next((p for p in (pretrained / "meta.json", pretrained / "best" / "meta.json") if p.is_file()), None)
    meta = json.loads(meta_path.read_text()) if meta_path else {}
    context = {
        "classes": classes,
        "test_images": results[0]["test_images"],
        "seeds": seeds,
        "pretrained": str(pretrained),
        "pretrained_val_accuracy": meta.get("val_accuracy"),
        "pretrained_epoch": meta.get("epoch"),
        "manifest": str(manifest),
        "hyperparameters": extra,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    verdict = write_report(out, results, context, args.min_gain, args.gain_at)
    for r in aggregate(results):
        log(
            f"{r['images_per_class']:>3} images/class: transfer {r['transfer']['mean']:.3f}  "
            f"scratch {r['scratch']['mean']:.3f}  gain {100 * r['gain']['mean']:+.1f} points"
        )
    log(
        f"quality bar at {args.gain_at}/class (gain >= {100 * args.min_gain:.0f} points): "
        f"{'met' if verdict['passed'] else 'NOT met'}; report in {out / 'report.md'}"
    )
    return 0 if verdict["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
