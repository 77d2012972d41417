"""Curate an ImageFolder tree into the general (pretraining) dataset and the held-out domain datasets.

    python -m training.curate --data-dir DIR --min-images 500 --domain-classes 5 --val-fraction 0.1 --out OUT

It walks the tree one class at a time (memory stays bounded by the largest class, not the tree), decides
validity by content (see ``training.imageio``), drops classes with fewer than ``--min-images`` valid images,
picks the domain classes from the dropped ones, and splits every kept and every domain class into train and
validation deterministically (by a hash of the file's path, so adding files never reshuffles the others).

Output, beside each other in OUT:
  manifest.json         metadata only (schema in the README)
  train.tsv.gz          kept classes, training split      lines: <path relative to the data root>\\t<class>
  val.tsv.gz            kept classes, validation split
  domain_train.tsv.gz   domain classes, training split
  domain_val.tsv.gz     domain classes, validation split
  skipped.tsv.gz        every skipped file                 lines: <path>\\t<reason>
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import operator
import os
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from training.contracts import LIST_FILES, read_list  # noqa: F401 - read_list re-exported for the CLI's users
from training.imageio import check_image

SCHEMA_VERSION = 1
MANIFEST_SKIPPED_LIMIT = 10_000  # the full list is always in skipped.tsv.gz


class CurationError(RuntimeError):
    """The tree cannot yield a dataset (empty, nothing reaches the threshold, bad domain classes)."""


@dataclass
class ClassScan:
    name: str
    files: list[tuple[str, int]] = field(default_factory=list)  # (relative path, size) of valid images
    formats: Counter = field(default_factory=Counter)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    # Filled by ``finish``: what the lists and the fingerprint need, as ready-made text.
    count: int = 0
    n_train: int = 0
    n_val: int = 0
    train_lines: str = ""  # "rel\tclass\n" per training file
    val_lines: str = ""
    fingerprint: bytes = b""  # "rel\0size\n" per valid file, in scan order
    finished: bool = False

    def finish(self, val_fraction: float) -> "ClassScan":
        """Split and format the class's files, and drop the per-file list.

        Runs where the scan ran (a worker process, for local trees), so the parent only writes ready text.
        """
        rels = [r for r, _ in self.files]
        self.fingerprint = "".join(f"{r}\0{size}\n" for r, size in self.files).encode()
        train, val = split_files(rels, val_fraction)
        suffix = f"\t{self.name}\n"
        self.count, self.n_train, self.n_val = len(rels), len(train), len(val)
        self.train_lines = suffix.join(train) + suffix if train else ""
        self.val_lines = suffix.join(val) + suffix if val else ""
        self.files = []
        self.finished = True
        return self


def _split_key(rel: str) -> str:
    return hashlib.sha1(rel.encode("utf-8")).hexdigest()


def split_files(rels: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic train/val split: the files with the smallest path hashes go to validation.

    Every class with two or more images gets at least one validation and one training image.
    """
    ordered = sorted(rels, key=_split_key)
    n_val = round(len(ordered) * val_fraction)
    if len(ordered) >= 2:
        n_val = min(max(n_val, 1), len(ordered) - 1)
    else:
        n_val = 0
    return sorted(ordered[n_val:]), sorted(ordered[:n_val])


def scan_and_finish(task: tuple[str, str, float]) -> ClassScan:
    root, name, val_fraction = task
    return scan_class((root, name)).finish(val_fraction)


def scan_class(task: tuple[str, str]) -> ClassScan:
    """Check every file of one class folder (runs in a worker process).

    Depth first, in name order, hidden entries skipped, symlinks followed. Each directory is opened once and its
    files are opened relative to it (``dir_fd``), and the directory entries' types come from ``scandir`` with no
    stat, which together make the walk cost little next to the one read per file.
    """
    root, name = task
    scan = ClassScan(name)
    stack = [(os.path.join(root, name), f"{name}/")]  # relative paths start at the dataset root
    while stack:
        path, rel = stack.pop()
        try:
            dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            entries = sorted(os.scandir(dfd), key=_by_name)
            subdirs = []
            for e in entries:
                n = e.name
                if n.startswith("."):
                    continue
                if e.is_dir(follow_symlinks=True):
                    subdirs.append((os.path.join(path, n), f"{rel}{n}/"))
                elif e.is_file(follow_symlinks=True):
                    fmt, reason, size = check_image(n, dir_fd=dfd)
                    if fmt is None:
                        scan.skipped.append((rel + n, reason))
                    else:
                        scan.files.append((rel + n, size))
                        scan.formats[fmt] += 1
        except OSError:
            continue
        finally:
            os.close(dfd)
        stack.extend(reversed(subdirs))
    return scan


_by_name = operator.attrgetter("name")


def _s3_scans(uri: str, names: list[str], workers: int, endpoint_url: str | None = None):
    """ClassScans of an ``s3://`` tree: listing pages of several classes and the object checks run concurrently.

    Small objects are fetched whole in one GET; larger ones with two ranged GETs (head and tail).
    """
    from concurrent.futures import ThreadPoolExecutor

    from training.imageio import HEAD, TAIL, classify
    from training.store import Store, split_s3

    store = Store(endpoint_url)
    s3 = store.s3
    bucket, prefix = split_s3(uri.rstrip("/") + "/")

    def list_class(name):
        keys = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}{name}/"):
            keys += [
                (o["Key"], o["Size"])
                for o in page.get("Contents", [])
                if not o["Key"].endswith("/") and not o["Key"].rsplit("/", 1)[-1].startswith(".")
            ]
        return name, sorted(keys)

    def check(item):
        key, size = item
        try:
            if size <= 65536:
                data = s3.get_object(Bucket=bucket, Key=key)["Body"].read() if size else b""
                head, tail = data[:HEAD], data[-TAIL:]
            else:
                head = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{HEAD - 1}")["Body"].read()
                tail = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes=-{TAIL}")["Body"].read()
        except Exception as err:  # noqa: BLE001 - reported per object, never fatal
            return key, size, None, f"unreadable: {err}"
        return (key, size, *classify(head, tail, size))

    lookahead = 8  # classes listed ahead of the one being checked: bounded memory
    with ThreadPoolExecutor(max(4, workers)) as listers, ThreadPoolExecutor(max(16, workers * 8)) as checkers:
        pending = [listers.submit(list_class, n) for n in names[:lookahead]]
        nxt = lookahead
        while pending:
            name, keys = pending.pop(0).result()
            if nxt < len(names):
                pending.append(listers.submit(list_class, names[nxt]))
                nxt += 1
            scan = ClassScan(name)
            for key, size, fmt, reason in checkers.map(check, keys):
                rel = key[len(prefix) :]
                if fmt is None:
                    scan.skipped.append((rel, reason))
                else:
                    scan.files.append((rel, size))
                    scan.formats[fmt] += 1
            yield scan


def _s3_class_names(uri: str, endpoint_url: str | None = None) -> list[str]:
    from training.store import Store

    return [n for n in Store(endpoint_url).list_dirs(uri) if not n.startswith(".")]


def _scans(root: str, names: list[str], workers: int, val_fraction: float):
    """Finished ClassScans in class order; several processes check files when ``workers`` > 1."""
    tasks = [(root, n, val_fraction) for n in names]
    if workers <= 1 or len(names) < 2:
        yield from map(scan_and_finish, tasks)
        return
    import multiprocessing as mp

    with mp.get_context("fork").Pool(workers) as pool:
        # Ordered and lazy: results stream back one class at a time, so memory stays bounded.
        yield from pool.imap(scan_and_finish, tasks, chunksize=1)


def parse_domain_classes(value: str) -> int | list[str]:
    value = value.strip()
    if value.isdigit():
        return int(value)
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("--domain-classes takes a count or comma-separated class names")
    return names


def curate(
    data_dir: str | Path,
    out: str | Path,
    min_images: int = 500,
    domain_classes: int | list[str] = 0,
    val_fraction: float = 0.1,
    min_domain_images: int = 10,
    progress: bool = True,
    workers: int = 0,
    endpoint_url: str | None = None,
) -> dict:
    out = Path(out)
    remote = str(data_dir).startswith("s3://")
    if not 0 < val_fraction < 1:
        raise CurationError("--val-fraction must be between 0 and 1")
    if remote:
        data_dir = str(data_dir).rstrip("/")
        class_names = _s3_class_names(data_dir, endpoint_url)
    else:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise CurationError(f"data directory not found: {data_dir}")
        class_names = sorted(e.name for e in os.scandir(data_dir) if e.is_dir() and not e.name.startswith("."))
    if not class_names:
        raise CurationError(f"no class folders in {data_dir}: expected an ImageFolder tree (one folder per class)")

    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".curate-"))
    writers = {
        k: gzip.open(tmp / v, "wt", encoding="utf-8", compresslevel=5)
        for k, v in LIST_FILES.items()
        if k not in ("domain_train", "domain_val")
    }
    # Dropped classes are spooled to disk until the domain classes are chosen, so memory stays bounded.
    spools = {
        k: gzip.open(tmp / f"dropped-{k}.spool.gz", "wt", encoding="utf-8", compresslevel=1) for k in ("train", "val")
    }
    fingerprint = hashlib.sha256()
    kept, dropped = [], []
    skipped_sample: list[dict] = []
    reasons: Counter = Counter()
    formats: Counter = Counter()
    total_files = 0

    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(class_names), unit="class", desc="curate")
    try:
        # One checking process per core: the parent only merges results and writes the lists, which costs
        # little next to checking (on 2 cores, 2 workers scan about 1.7x as fast as 1).
        workers = workers or (os.cpu_count() or 1)
        scans = (
            _s3_scans(data_dir, class_names, workers, endpoint_url)
            if remote
            else _scans(str(data_dir), class_names, workers, val_fraction)
        )
        for scan in scans:
            name = scan.name
            for rel, reason in scan.skipped:
                writers["skipped"].write(f"{rel}\t{reason}\n")
                reasons[reason.split(":")[0]] += 1
                if len(skipped_sample) < MANIFEST_SKIPPED_LIMIT:
                    skipped_sample.append({"path": rel, "reason": reason})
            if not scan.finished:
                scan.finish(val_fraction)
            total_files += scan.count
            formats.update(scan.formats)
            fingerprint.update(scan.fingerprint)
            entry = {"name": name, "count": scan.count, "train": scan.n_train, "val": scan.n_val}
            if scan.count >= min_images:
                kept.append(entry)
                writers["train"].write(scan.train_lines)
                writers["val"].write(scan.val_lines)
            else:
                dropped.append(entry)
                spools["train"].write(scan.train_lines)
                spools["val"].write(scan.val_lines)
            if bar:
                bar.update(1)
                bar.set_postfix(kept=len(kept), dropped=len(dropped))
    finally:
        if bar:
            bar.close()
        for w in [*writers.values(), *spools.values()]:
            w.close()

    try:
        if total_files == 0:
            raise CurationError(f"no valid images under {data_dir} ({sum(reasons.values())} files skipped)")
        if not kept:
            largest = max(dropped, key=lambda c: c["count"])
            raise CurationError(
                f"no class reaches --min-images {min_images}: the largest is {largest['name']!r} "
                f"with {largest['count']} valid images"
            )
        domain = choose_domain_classes(dropped, kept, domain_classes, min_domain_images)
        domain_names = {c["name"] for c in domain}
        for split in ("train", "val"):
            with (
                gzip.open(tmp / f"dropped-{split}.spool.gz", "rt", encoding="utf-8") as src,
                gzip.open(tmp / LIST_FILES[f"domain_{split}"], "wt", encoding="utf-8") as dst,
            ):
                for line in src:
                    if line.rstrip("\n").rsplit("\t", 1)[-1] in domain_names:
                        dst.write(line)
            (tmp / f"dropped-{split}.spool.gz").unlink()

        params = {
            "min_images": min_images,
            "domain_classes": domain_classes,
            "val_fraction": val_fraction,
            "min_domain_images": min_domain_images,
        }
        fingerprint.update(json.dumps(params, sort_keys=True).encode())
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "data_root": data_dir if remote else str(data_dir.resolve()),
            "parameters": params,
            "fingerprint": fingerprint.hexdigest(),
            "classes": kept,
            "domain_classes": domain,
            "excluded_classes": [{"name": c["name"], "count": c["count"]} for c in dropped],
            "totals": {
                "valid_images": total_files,
                "kept_images": sum(c["count"] for c in kept),
                "domain_images": sum(c["count"] for c in domain),
                "skipped_files": sum(reasons.values()),
                "formats": dict(sorted(formats.items())),
                "skipped_by_reason": dict(sorted(reasons.items())),
            },
            "skipped_files": skipped_sample,
            "skipped_files_truncated": sum(reasons.values()) > len(skipped_sample),
            "files": LIST_FILES,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        # Publish: list files first, the manifest last, so a reader never sees a manifest without its lists.
        for name in [*LIST_FILES.values(), "manifest.json"]:
            os.replace(tmp / name, out / name)
    finally:
        for p in tmp.glob("*"):
            p.unlink()
        tmp.rmdir()
    return manifest


def choose_domain_classes(
    dropped: list[dict], kept: list[dict], wanted: int | list[str], min_images: int
) -> list[dict]:
    """The domain classes: named ones must be among the dropped; a count takes the largest dropped classes."""
    by_name = {c["name"]: c for c in dropped}
    if isinstance(wanted, list):
        kept_names = {c["name"] for c in kept}
        chosen = []
        for name in wanted:
            if name in kept_names:
                raise CurationError(
                    f"domain class {name!r} has enough images to be pretrained on; "
                    f"a domain class must be one of the dropped classes"
                )
            if name not in by_name:
                raise CurationError(f"domain class {name!r} not found in the tree")
            chosen.append(by_name[name])
        return chosen
    if wanted == 0:
        return []
    eligible = sorted((c for c in dropped if c["count"] >= min_images), key=lambda c: (-c["count"], c["name"]))
    if len(eligible) < wanted:
        raise CurationError(
            f"asked for {wanted} domain classes but only {len(eligible)} dropped classes have "
            f"at least {min_images} images"
        )
    return sorted(eligible[:wanted], key=lambda c: c["name"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Curate an ImageFolder tree into general and domain datasets.")
    p.add_argument("--data-dir", required=True, help="an ImageFolder tree: local path or s3://bucket/prefix")
    p.add_argument("--out", required=True)
    p.add_argument("--min-images", type=int, default=500, help="drop classes with fewer valid images (default 500)")
    p.add_argument(
        "--domain-classes",
        type=parse_domain_classes,
        default=0,
        help="how many dropped classes to hold out as domain classes, or their names, comma-separated",
    )
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument(
        "--min-domain-images",
        type=int,
        default=10,
        help="a dropped class needs this many images to be picked as a domain class by count",
    )
    p.add_argument("--workers", type=int, default=0, help="processes checking files (default: one per core)")
    p.add_argument("--s3-endpoint-url", default=None, help="for an s3:// --data-dir on an S3-compatible store")
    args = p.parse_args(argv)
    try:
        m = curate(
            args.data_dir,
            args.out,
            args.min_images,
            args.domain_classes,
            args.val_fraction,
            args.min_domain_images,
            workers=args.workers,
            endpoint_url=args.s3_endpoint_url,
        )
    except CurationError as err:
        print(f"curate: error: {err}", file=sys.stderr)
        return 2
    t = m["totals"]
    print(
        f"curate: {len(m['classes'])} classes kept ({t['kept_images']} images), "
        f"{len(m['excluded_classes'])} dropped, {len(m['domain_classes'])} domain classes "
        f"({t['domain_images']} images), {t['skipped_files']} files skipped"
    )
    for s in m["skipped_files"][:20]:
        print(f"curate: skipped {s['path']}: {s['reason']}")
    print(f"curate: fingerprint {m['fingerprint']}; manifest {Path(args.out) / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
