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
import os
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from training.contracts import LIST_FILES, read_list  # noqa: F401 - read_list re-exported for the CLI's users
from training.curate_scan import (  # noqa: F401 - ClassScan and split_files re-exported
    ClassScan,
    printable,
    s3_class_names,
    s3_scans,
    scan_classes,
    split_files,
    unlistable_name,
)

SCHEMA_VERSION = 1
MANIFEST_SKIPPED_LIMIT = 10_000  # the full list is always in skipped.tsv.gz


class CurationError(RuntimeError):
    """The tree cannot yield a dataset (empty, nothing reaches the threshold, bad domain classes)."""


def parse_domain_classes(value: str) -> int | list[str]:
    value = value.strip()
    if value.isdigit():
        return int(value)
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("--domain-classes takes a count or comma-separated class names")
    return names


def _class_names(data_dir, remote: bool, endpoint_url: str | None):
    """(the tree's root, its class folders), or a CurationError saying why there are none."""
    if remote:
        data_dir = str(data_dir).rstrip("/")
        class_names = s3_class_names(data_dir, endpoint_url)
    else:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise CurationError(f"data directory not found: {data_dir}")
        class_names = []
        for e in sorted(os.scandir(data_dir), key=lambda e: e.name):
            if e.is_dir() and not e.name.startswith("."):
                bad = unlistable_name(e.name)
                if bad:  # a class name goes into every list line: such a folder cannot be a class
                    print(f"curate: skipped class folder {printable(e.name)!r}: {bad}", flush=True)
                else:
                    class_names.append(e.name)
    if not class_names:
        raise CurationError(f"no class folders in {data_dir}: expected an ImageFolder tree (one folder per class)")
    return data_dir, class_names


@dataclass
class Tally:
    """What the scan of every class adds up to, and where each class's lines went."""

    min_images: int
    val_fraction: float
    kept: list[dict] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)
    skipped_sample: list[dict] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)
    total_files: int = 0
    fingerprint: object = field(default_factory=hashlib.sha256)

    def add(self, scan: ClassScan, writers: dict, spools: dict) -> None:
        for rel, reason in scan.skipped:
            writers["skipped"].write(f"{rel}\t{reason}\n")
            self.reasons[reason.split(":")[0]] += 1
            if len(self.skipped_sample) < MANIFEST_SKIPPED_LIMIT:
                self.skipped_sample.append({"path": rel, "reason": reason})
        if not scan.finished:
            scan.finish(self.val_fraction)
        self.total_files += scan.count
        self.formats.update(scan.formats)
        self.fingerprint.update(scan.fingerprint)
        entry = {"name": scan.name, "count": scan.count, "train": scan.n_train, "val": scan.n_val}
        # Dropped classes are spooled to disk until the domain classes are chosen, so memory stays bounded.
        target, lists = (self.kept, writers) if scan.count >= self.min_images else (self.dropped, spools)
        target.append(entry)
        lists["train"].write(scan.train_lines)
        lists["val"].write(scan.val_lines)


def _scan_into(
    tmp: Path,
    data_dir,
    class_names: list[str],
    tally: Tally,
    remote: bool,
    workers: int,
    endpoint_url: str | None,
    progress: bool,
) -> None:
    """Check every class (one process per core) and write the kept, skipped and spooled dropped lines."""
    writers = {
        k: gzip.open(tmp / v, "wt", encoding="utf-8", compresslevel=5)
        for k, v in LIST_FILES.items()
        if k not in ("domain_train", "domain_val")
    }
    spools = {
        k: gzip.open(tmp / f"dropped-{k}.spool.gz", "wt", encoding="utf-8", compresslevel=1) for k in ("train", "val")
    }
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(class_names), unit="class", desc="curate")
    try:
        # One checking process per core: the parent only merges results and writes the lists, which costs
        # little next to checking (on 2 cores, 2 workers scan about 1.7x as fast as 1).
        workers = workers or (os.cpu_count() or 1)
        scans = (
            s3_scans(data_dir, class_names, workers, endpoint_url)
            if remote
            else scan_classes(str(data_dir), class_names, workers, tally.val_fraction)
        )
        for scan in scans:
            tally.add(scan, writers, spools)
            if bar:
                bar.update(1)
                bar.set_postfix(kept=len(tally.kept), dropped=len(tally.dropped))
    finally:
        if bar:
            bar.close()
        for w in [*writers.values(), *spools.values()]:
            w.close()


def _write_domain_lists(tmp: Path, domain_names: set[str]) -> None:
    for split in ("train", "val"):
        with (
            gzip.open(tmp / f"dropped-{split}.spool.gz", "rt", encoding="utf-8") as src,
            gzip.open(tmp / LIST_FILES[f"domain_{split}"], "wt", encoding="utf-8") as dst,
        ):
            for line in src:
                if line.rstrip("\n").rsplit("\t", 1)[-1] in domain_names:
                    dst.write(line)
        (tmp / f"dropped-{split}.spool.gz").unlink()


def _manifest(data_dir, remote: bool, params: dict, tally: Tally, domain: list[dict]) -> dict:
    skipped = sum(tally.reasons.values())
    return {
        "schema_version": SCHEMA_VERSION,
        "data_root": data_dir if remote else str(data_dir.resolve()),
        "parameters": params,
        "fingerprint": tally.fingerprint.hexdigest(),
        "classes": tally.kept,
        "domain_classes": domain,
        "excluded_classes": [{"name": c["name"], "count": c["count"]} for c in tally.dropped],
        "totals": {
            "valid_images": tally.total_files,
            "kept_images": sum(c["count"] for c in tally.kept),
            "domain_images": sum(c["count"] for c in domain),
            "skipped_files": skipped,
            "formats": dict(sorted(tally.formats.items())),
            "skipped_by_reason": dict(sorted(tally.reasons.items())),
        },
        "skipped_files": tally.skipped_sample,
        "skipped_files_truncated": skipped > len(tally.skipped_sample),
        "files": LIST_FILES,
    }


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
    data_dir, class_names = _class_names(data_dir, remote, endpoint_url)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".curate-"))
    tally = Tally(min_images, val_fraction)
    try:
        _scan_into(tmp, data_dir, class_names, tally, remote, workers, endpoint_url, progress)
        if tally.total_files == 0:
            raise CurationError(f"no valid images under {data_dir} ({sum(tally.reasons.values())} files skipped)")
        if not tally.kept:
            largest = max(tally.dropped, key=lambda c: c["count"])
            raise CurationError(
                f"no class reaches --min-images {min_images}: the largest is {largest['name']!r} "
                f"with {largest['count']} valid images"
            )
        domain = choose_domain_classes(tally.dropped, tally.kept, domain_classes, min_domain_images)
        _write_domain_lists(tmp, {c["name"] for c in domain})
        params = {
            "min_images": min_images,
            "domain_classes": domain_classes,
            "val_fraction": val_fraction,
            "min_domain_images": min_domain_images,
        }
        tally.fingerprint.update(json.dumps(params, sort_keys=True).encode())
        manifest = _manifest(data_dir, remote, params, tally, domain)
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
