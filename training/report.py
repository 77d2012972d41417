"""Transfer learning vs training from scratch on domains it has never seen, at a few images per class.

    python -m training.report --out report/                      # builds the demo data and model first
    python -m training.report --out report/ --manifest M --pretrained C [--data-root R]
    python -m training.report --out report/ --domains digits,textures --sizes 5,20,50 --seeds 3

Domains (``--domains``, default all three):

  synthetic   the curated manifest's domain classes (``training.synth_data`` shapes and textures that the
              pretraining never saw as classes): ``domain_train`` is the pool, ``domain_val`` the test set
  digits      real scanned handwritten digits shipped with scikit-learn (``training.domains``)
  textures    real photographs shipped with scikit-image, cut into patches (``training.domains``)

For every domain, training-set size N (images per class) and seed it runs one real fine-tuning job
(``training.finetune`` with ``compare_scratch=true``: the recipe search and its scratch baseline) in a
SageMaker-layout directory under ``OUT/runs/<domain>/``:

  train        N images per class drawn from the pool (by the seed; smaller sets inside larger ones)
  validation   at most ``--val-per-class`` other pool images per class: the recipe, early stopping and the
               best epoch are chosen on it
  test         the domain's test set, the same for every job; no choice is made on it, and every accuracy in
               the report is measured on it

Then it writes, in ``OUT``:

  report.md / report.html         per domain: test accuracy of the kept transfer recipe and of the scratch
                                  baseline (mean, range and per seed), the recipe each job kept, the backbone's
                                  linear-probe accuracy, and the verdict
  accuracy_<domain>.png           test accuracy against images per class, transfer vs scratch
  learning_curves_<domain>.png    validation accuracy per epoch of every recipe and the baseline (first seed)
  results.json                    every figure behind the above

Without ``--manifest``/``--pretrained`` it first makes the demo inputs in ``OUT/demo`` (reused when present):
``training.synth_data`` defaults, ``training.curate --min-images 120 --domain-classes 4 --val-fraction 0.2``,
and ``horovodrun -np 2 python -m training.pretrain --epochs 20`` (one worker without horovodrun).

Verdicts (the exit status is 1 when one fails): on ``synthetic``, transfer beats scratch by at least
``--min-gain`` (0.15) mean accuracy at ``--gain-at`` (20) images per class; on a real domain, transfer's mean
is at least scratch's at the smallest size and within ``--real-margin`` (0.01) of it at ``--gain-at``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from training.contracts import pretrained_dir
from training.report_inputs import demo_inputs, domain_trees, job_root
from training.report_render import html_page, markdown, plot_accuracy, plot_curves

REPORT_DOMAINS = ("synthetic", "digits", "textures")


def log(msg: str) -> None:
    print(f"[report] {msg}", flush=True)


# -- runs ---------------------------------------------------------------------------------------------------
def _run_job(root: str) -> dict:
    """One fine-tuning job in this process (a worker of the pool, or the report itself)."""
    import keras

    from training.finetune import run
    from training.sagemaker import TrainingEnv

    keras.backend.clear_session()
    t0 = time.perf_counter()
    report = run(TrainingEnv(Path(root)), {})
    report["_seconds"] = time.perf_counter() - t0
    return report


def _finished_job(root: Path, hyperparameters: dict[str, str]) -> dict | None:
    """The metrics.json of a job that already ran with these hyperparameters (a rerun of the report reuses it)."""
    metrics, config = root / "output" / "data" / "metrics.json", root / "input" / "config" / "hyperparameters.json"
    if not (metrics.is_file() and config.is_file()):
        return None
    if json.loads(config.read_text()) != {k: str(v) for k, v in hyperparameters.items()}:
        return None
    report = json.loads(metrics.read_text())
    report["_seconds"] = report.get("seconds", 0.0)
    return report


def run_jobs(
    pool: Path,
    test: Path,
    pretrained: Path,
    runs_dir: Path,
    sizes: list[int],
    seeds: list[int],
    extra: dict[str, str],
    val_per_class: int = 0,
    domain: str = "synthetic",
    parallel: int = 1,
) -> list[dict]:
    """Every (size, seed) job; ``parallel`` > 1 runs that many at once in worker processes, one thread each. A job
    that already finished with the same hyperparameters (an earlier run of the report) is read, not run again."""
    jobs, done = [], {}
    for size in sizes:
        for seed in seeds:
            name = f"n{size:03d}-seed{seed}"
            # policy prefer_transfer: the report measures the recipe the job chose, before any baseline swap
            hp = {"compare_scratch": "true", "baseline_policy": "prefer_transfer", "seed": str(seed), **extra}
            if parallel > 1:
                hp.setdefault("threads", "1")
            root = runs_dir / name
            finished = _finished_job(root, hp)
            if finished is not None:
                done[name] = finished
            else:
                root = job_root(runs_dir, name, pool, test, pretrained, size, seed, hp, val_per_class)
            jobs.append((size, seed, name, root))
    todo = [root for _, _, name, root in jobs if name not in done]
    log(f"{domain}: {len(todo)} fine-tuning job(s) to run, {parallel} at a time; {len(done)} reused")
    if parallel > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: a fork of a process that has started TensorFlow's threads can hang
        with ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("spawn")) as executor:
            ran = dict(zip(map(str, todo), executor.map(_run_job, map(str, todo))))
    else:
        ran = {str(root): _run_job(str(root)) for root in todo}
    results = []
    for size, seed, name, root in jobs:
        report = done.get(name) or ran[str(root)]
        r = _job_result(domain, size, seed, root, report, report.pop("_seconds"))
        results.append(r)
        log(
            f"{domain} {name}: test accuracy transfer[{r['recipe']}] {r['transfer']['accuracy']:.3f}  scratch "
            f"{r['scratch']['accuracy']:.3f}  gain {r['gain']:+.3f}  ({r['seconds']:.0f}s)"
        )
    return results


def _job_result(domain: str, size: int, seed: int, root: Path, report: dict, seconds: float) -> dict:
    t = report["runs"]
    candidates = {
        recipe: {k: c[k] for k in ("val_accuracy", "test_accuracy", "best_epoch", "epochs_run", "history")}
        for recipe, c in (report.get("recipe_search") or {}).items()
    }
    return {
        "domain": domain,
        "images_per_class": size,
        "seed": seed,
        "job": str(root),
        "train_images": sum(report["counts"]["train"].values()),
        "val_images": t["transfer"]["val_images"],
        "test_images": t["transfer"]["test_images"],
        "selected_on_test": (root / "input" / "data" / "validation").is_symlink(),
        "recipe": report.get("recipe"),
        "candidates": candidates,
        "linear_probe": (candidates.get("linear_probe") or {}).get("test_accuracy"),
        "transfer": _summary(t["transfer"]),
        "scratch": _summary(t["scratch"]),
        "gain": t["transfer"]["test_accuracy"] - t["scratch"]["test_accuracy"],
        "seconds": round(seconds, 1),
    }


def _summary(run: dict) -> dict:
    keys = ("test_accuracy", "test_loss", "val_accuracy", "val_loss", "best_epoch", "epochs_run", "seconds")
    return {"accuracy": run["test_accuracy"], **{k: run[k] for k in (*keys, "history", "test_per_class_accuracy")}}


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "all": values}


def aggregate(results: list[dict]) -> list[dict]:
    rows = []
    for size in sorted({r["images_per_class"] for r in results}):
        rs = [r for r in results if r["images_per_class"] == size]
        row = {"images_per_class": size, "seeds": len(rs), "recipes": [r.get("recipe") for r in rs]}
        for kind in ("transfer", "scratch"):
            row[kind] = _spread([r[kind]["accuracy"] for r in rs])
        row["gain"] = _spread([r["gain"] for r in rs])
        probes = [r["linear_probe"] for r in rs if r.get("linear_probe") is not None]
        row["linear_probe"] = _spread(probes) if probes else None
        rows.append(row)
    return rows


def judge(domain: str, rows: list[dict], min_gain: float, gain_at: int, real_margin: float) -> dict:
    """The domain's verdict: the synthetic quality bar, or transfer holding against scratch on a real domain."""
    at = {r["images_per_class"]: r for r in rows}
    gain = at[gain_at]["gain"]["mean"] if gain_at in at else float("nan")
    if domain == "synthetic":
        return {"rule": "gain", "gain_at": gain_at, "min_gain": min_gain, "gain": gain, "passed": gain >= min_gain}
    smallest = min(at) if at else None
    gain_small = at[smallest]["gain"]["mean"] if smallest is not None else float("nan")
    passed = gain_small >= 0 and gain >= -real_margin
    return {
        "rule": "holds",
        "smallest": smallest,
        "gain_smallest": gain_small,
        "gain_at": gain_at,
        "gain": gain,
        "margin": real_margin,
        "passed": bool(passed),
    }


# -- output -------------------------------------------------------------------------------------------------
def write_report(out: Path, domains: dict[str, dict], min_gain: float, gain_at: int, real_margin: float = 0.01) -> dict:
    """``domains``: name -> {"results": [...], "context": {...}}. Returns name -> verdict."""
    doc, verdicts = {}, {}
    for name, d in domains.items():
        rows = aggregate(d["results"])
        verdicts[name] = judge(name, rows, min_gain, gain_at, real_margin)
        doc[name] = {"summary": rows, "verdict": verdicts[name], "context": d["context"], "runs": d["results"]}
    # The figures first, so nothing a page or a plot does can lose an hour of jobs.
    (out / "results.json").write_text(json.dumps({"domains": doc}, indent=2))
    (out / "report.md").write_text(markdown(doc))
    (out / "report.html").write_text(html_page(doc))
    for name, d in doc.items():
        plot_accuracy(d["summary"], out / f"accuracy_{name}.png", name)
        plot_curves(d["runs"], out / f"learning_curves_{name}.png", name)
    return verdicts


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Transfer vs scratch at a few images per class (see module docstring).")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--manifest", type=Path, help="curation manifest with domain_train/domain_val lists")
    p.add_argument(
        "--pretrained",
        type=Path,
        help="the pretrained model's directory (model.keras + meta.json), or a checkpoint directory (its best.json)",
    )
    p.add_argument("--data-root", default=None, help="where the images are, if not the manifest's data_root")
    p.add_argument("--domains", default=",".join(REPORT_DOMAINS), help="comma-separated: " + ", ".join(REPORT_DOMAINS))
    p.add_argument("--sizes", default="5,20,50", help="images per class, comma-separated")
    p.add_argument("--seeds", type=int, default=3, help="jobs per size, seeds 0..N-1")
    p.add_argument("--val-per-class", type=int, default=30, help="validation images per class (0: all the rest)")
    p.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE", help="extra fine-tuning hyperparameter")
    p.add_argument("--min-gain", type=float, default=0.15)
    p.add_argument("--gain-at", type=int, default=20)
    p.add_argument("--real-margin", type=float, default=0.01)
    p.add_argument("--parallel", type=int, default=1, help="fine-tuning jobs at once (processes, one thread each)")
    p.add_argument("--workers", type=int, default=2, help="Horovod workers for the demo pretraining")
    p.add_argument(
        "--upload-to",
        default=None,
        help="s3:// folder to copy the report's files to once written (e.g. beside the run's lineage record)",
    )
    return p.parse_args(argv)


def upload_report(out: Path, uri: str) -> list[str]:
    """The report's own files (report.md, results.json, the plots), not its job directories, to ``uri``."""
    from training.store import Store, is_s3, join

    if not is_s3(uri):
        raise SystemExit(f"--upload-to wants an s3:// URI, got {uri!r}")
    store, sent = Store(), []
    for path in sorted(p for p in out.iterdir() if p.is_file()):
        store.write_bytes(join(uri, path.name), path.read_bytes())
        sent.append(path.name)
    log(f"uploaded {', '.join(sent)} to {uri}")
    return sent


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if bool(args.manifest) != bool(args.pretrained):
        raise SystemExit("give both --manifest and --pretrained, or neither (then the demo inputs are built)")
    names = [d.strip() for d in args.domains.split(",") if d.strip()]
    unknown = sorted(set(names) - set(REPORT_DOMAINS))
    if unknown or not names:
        raise SystemExit(
            f"unknown domain(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(REPORT_DOMAINS)}"
        )
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
    pretrained = pretrained_dir(pretrained)
    meta_path = pretrained / "meta.json" if (pretrained / "meta.json").is_file() else None
    meta = json.loads(meta_path.read_text()) if meta_path else {}
    domains = {}
    for name in names:
        pool, test = domain_trees(name, out, manifest, args.data_root)
        t0 = time.perf_counter()
        results = run_jobs(
            pool, test, pretrained, out / "runs" / name, sizes, seeds, extra, args.val_per_class, name, args.parallel
        )
        context = {
            "domain": name,
            "classes": sorted(p.name for p in pool.iterdir() if p.is_dir()),
            "test_images": results[0]["test_images"],
            "seeds": seeds,
            "pretrained": str(pretrained),
            "pretrained_val_accuracy": meta.get("val_accuracy"),
            "pretrained_epoch": meta.get("epoch"),
            "manifest": str(manifest),
            "hyperparameters": extra,
            "seconds": round(time.perf_counter() - t0, 1),
            "job_seconds": _spread([r["seconds"] for r in results]),
        }
        domains[name] = {"results": results, "context": context}
    verdicts = write_report(out, domains, args.min_gain, args.gain_at, args.real_margin)
    for name, d in domains.items():
        for r in aggregate(d["results"]):
            log(
                f"{name} {r['images_per_class']:>3} images/class: transfer {r['transfer']['mean']:.3f}  "
                f"scratch {r['scratch']['mean']:.3f}  gain {100 * r['gain']['mean']:+.1f} points"
            )
        log(f"{name}: verdict {'met' if verdicts[name]['passed'] else 'NOT met'}")
    if args.upload_to:
        upload_report(out, args.upload_to)
    log(f"report in {out / 'report.md'}")
    return 0 if all(v["passed"] for v in verdicts.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
