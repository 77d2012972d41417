"""The report's inputs: the demo data and model, each domain's pool and test trees, one job's SageMaker layout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from training.contracts import CheckpointDir, pretrained_dir

DEMO_CURATE = ["--min-images", "120", "--domain-classes", "4", "--val-fraction", "0.2"]
DEMO_PRETRAIN_EPOCHS = 20


def log(msg: str) -> None:
    print(f"[report] {msg}", flush=True)


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
    return curated / "manifest.json", pretrained_dir(ckpt)


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
    val_per_class: int = 0,
) -> Path:
    """A SageMaker job directory: ``size`` training images per class drawn (by ``seed``) from ``pool``, at most
    ``val_per_class`` (0: all) of the pool's other images as the validation channel (recipe, early stopping,
    best epoch) and ``test`` as the test channel, which no choice is made on: the report's figures come from it."""
    from training.data import image_folder_split
    from training.finetune import per_class_subset

    root = runs_dir / name
    shutil.rmtree(root, ignore_errors=True)
    data = root / "input" / "data"
    data.mkdir(parents=True)
    split = image_folder_split(pool)
    keep_p, keep_l, rest_p, rest_l = per_class_subset(split.paths, split.labels, split.class_names, size, seed)
    if val_per_class:
        rest_p, rest_l = per_class_subset(rest_p, rest_l, split.class_names, val_per_class, seed + 1000)[:2]
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


def domain_trees(domain: str, out: Path, manifest: Path, data_root: str | None) -> tuple[Path, Path]:
    """(pool, test) ImageFolder trees of a domain."""
    if domain == "synthetic":
        channels = domain_channels(manifest, out / "channels", data_root)
        return channels["train"], channels["validation"]
    from training.domains import build_domain

    root = build_domain(domain, out / "domains")
    return root / "pool", root / "test"
