"""The job's inputs: the pretrained model (directory or tarball) and the domain images of each channel."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from training.contracts import pretrained_dir
from training.finetune.hyperparameters import FinetuneError, Hyperparameters
from training.sagemaker import TrainingEnv, extract_tar


@dataclass
class Pretrained:
    path: Path
    meta: dict
    model: object  # keras.Model


def locate_pretrained(channel: Path, workdir: Path) -> Path:
    """The directory holding model.keras + meta.json: the channel itself, the epoch its best.json points to (a
    checkpoint directory as the channel), or inside a tarball in it."""
    if not channel.is_dir():
        raise FinetuneError(f"missing channel 'pretrained': {channel} does not exist")

    def find(root: Path) -> Path | None:
        for d in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
            if (d / "model.keras").is_file() and (d / "meta.json").is_file():
                return d
        return None

    d = pretrained_dir(channel)  # the model's directory itself, or a checkpoint directory's best epoch
    if (d / "model.keras").is_file() and (d / "meta.json").is_file():
        return d
    found = find(channel)
    if found:
        return found
    archives = sorted(p for p in channel.iterdir() if p.is_file() and p.name.endswith((".tar.gz", ".tgz", ".tar")))
    if not archives:
        raise FinetuneError(
            f"pretrained channel {channel} holds neither model.keras + meta.json "
            "(a pretraining epoch directory) nor a tar.gz of it"
        )
    for archive in archives:
        dest = workdir / "pretrained" / archive.name.split(".")[0]
        try:
            extract_tar(archive, dest)
        except Exception as err:  # noqa: BLE001 - tarfile raises several unrelated types
            raise FinetuneError(f"corrupt pretrained artifact {archive.name}: {type(err).__name__}: {err}") from None
        found = find(dest)
        if found:
            return found
    raise FinetuneError(f"pretrained archive(s) {', '.join(a.name for a in archives)} hold no model.keras + meta.json")


def load_pretrained(path: Path) -> Pretrained:
    import keras

    import training.model  # noqa: F401 - registers the learning-rate schedule the saved model refers to

    try:
        meta = json.loads((path / "meta.json").read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        size = meta["image_size"]
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
            raise ValueError(f"image_size must be [H, W], got {size!r}")
    except (ValueError, KeyError) as err:
        raise FinetuneError(f"corrupt pretrained artifact: meta.json unusable ({type(err).__name__}: {err})") from None
    try:
        model = keras.models.load_model(path / "model.keras", compile=False)
    except Exception as err:  # noqa: BLE001 - any load failure means the artifact is unusable
        raise FinetuneError(
            f"corrupt pretrained artifact: model.keras does not load ({type(err).__name__}: {err})"
        ) from None
    feature = meta.get("feature_layer", "features")
    try:
        model.get_layer(feature)
    except ValueError:
        raise FinetuneError(f"corrupt pretrained artifact: no layer {feature!r} (meta.json feature_layer)") from None
    in_shape = tuple(model.input_shape[1:3])
    if in_shape != tuple(size):
        raise FinetuneError(
            f"corrupt pretrained artifact: model input is {list(in_shape)} but meta.json image_size is {size}"
        )
    return Pretrained(path, meta, model)


@dataclass
class DomainData:
    class_names: list[str]
    train: object  # training.data.Split
    val: object
    test: object = None
    counts: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def _valid_files(split, check_image) -> tuple[list[str], list[int], list[str]]:
    paths, labels, skipped = [], [], []
    for p, y in zip(split.paths, split.labels):
        if check_image(p)[0]:  # (format, reason, ...): a format means a usable image
            paths.append(p)
            labels.append(y)
        else:
            skipped.append(p)
    return paths, labels, skipped


def per_class_subset(paths: list[str], labels: list[int], class_names: list[str], n: int, seed: int):
    """At most ``n`` items per class: ``(kept paths, kept labels, rest paths, rest labels)``.

    Each class is shuffled by a seed of its own, then cut: smaller subsets are contained in larger ones.
    """
    keep_p, keep_l, rest_p, rest_l = [], [], [], []
    for i, c in enumerate(class_names):
        mine = sorted(p for p, y in zip(paths, labels) if y == i)
        random.Random(f"{seed}:{c}").shuffle(mine)
        keep_p += sorted(mine[:n])
        keep_l += [i] * len(mine[:n])
        rest_p += sorted(mine[n:])
        rest_l += [i] * len(mine[n:])
    return keep_p, keep_l, rest_p, rest_l


def load_domain(env: TrainingEnv, hp: Hyperparameters) -> DomainData:
    from training.data import Split, image_folder_split
    from training.imageio import check_image

    dirs = {}
    for name in ("train", "validation", "test"):
        d = env.channel(name)
        if not d.is_dir():
            if name == "test":  # optional: a held-out set that model selection never sees
                continue
            raise FinetuneError(f"missing channel '{name}': {d} does not exist")
        dirs[name] = d
    classes = sorted(p.name for p in dirs["train"].iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise FinetuneError(f"train channel {dirs['train']} needs at least 2 class folders, found {len(classes)}")

    data = DomainData(classes, None, None)
    splits = {}
    for name, d in dirs.items():
        present = sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        unknown = sorted(set(present) - set(classes))
        if unknown:
            raise FinetuneError(f"{name} channel has classes the train channel lacks: {', '.join(unknown)}")
        paths, labels, skipped = _valid_files(image_folder_split(d, classes), check_image)
        data.skipped += skipped
        per_class = [labels.count(i) for i in range(len(classes))]
        empty = [c for c, n in zip(classes, per_class) if n == 0 and (name == "train" or c in present)]
        if empty:
            raise FinetuneError(f"empty class in the {name} channel (no valid images): {', '.join(empty)}")
        if not paths:
            raise FinetuneError(f"the {name} channel {d} holds no images")
        splits[name] = (paths, labels)
    tpaths, tlabels = splits["train"]
    if hp.images_per_class:
        tpaths, tlabels, _, _ = per_class_subset(tpaths, tlabels, classes, hp.images_per_class, hp.seed)
    data.train = Split(tpaths, tlabels, classes)
    data.val = Split(*splits["validation"], classes)
    data.test = Split(*splits["test"], classes) if "test" in splits else None
    data.counts = {
        name: {c: split.labels.count(i) for i, c in enumerate(classes)}
        for name, split in (("train", data.train), ("validation", data.val), ("test", data.test))
        if split
    }
    data.counts["skipped_files"] = len(data.skipped)
    return data
