"""Scanning one class folder: every file checked by its content (``training.imageio``), local trees in several
processes, ``s3://`` trees with concurrent listing and ranged GETs; each class ends as a ``ClassScan``."""

from __future__ import annotations

import hashlib
import operator
import os
from collections import Counter
from dataclasses import dataclass, field

from training.imageio import check_image


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


def unlistable_name(name: str) -> str | None:
    """Why a file or folder name cannot go into the tab-separated, UTF-8 file lists; None when it can."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not UTF-8"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "name contains a control character (tab, newline, ...)"
    return None


def printable(rel: str) -> str:
    """``rel`` as it can be reported: undecodable bytes as ``\\xNN``, control characters escaped."""
    text = rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if ord(c) >= 32 and ord(c) != 127 else repr(c)[1:-1] for c in text)


def scan_class(task: tuple[str, str]) -> ClassScan:
    """Check every file of one class folder (runs in a worker process).

    Depth first, in name order, hidden entries skipped, symlinks followed, but never into a directory already
    scanned (its device and inode seen: a symlink loop or a second link to the same folder), so no image is
    counted twice or lands in both splits. Names that are not UTF-8 or hold control characters are reported
    and skipped. Each directory is opened once and its files are opened relative to it (``dir_fd``), and the
    directory entries' types come from ``scandir`` with no stat, which together make the walk cost little next
    to the one read per file.
    """
    root, name = task
    scan = ClassScan(name)
    stack = [(os.path.join(root, name), f"{name}/")]  # relative paths start at the dataset root
    seen: set[tuple[int, int]] = set()
    while stack:
        path, rel = stack.pop()
        try:
            dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            st = os.fstat(dfd)
            if (st.st_dev, st.st_ino) in seen:
                scan.skipped.append((printable(rel), "directory already scanned (a symlink loop or a second link)"))
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(dfd), key=_by_name)
            subdirs = []
            for e in entries:
                n = e.name
                if n.startswith("."):
                    continue
                bad = unlistable_name(n)
                if bad:
                    scan.skipped.append((printable(rel + n), bad))
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


def s3_scans(uri: str, names: list[str], workers: int, endpoint_url: str | None = None):
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
        bad = unlistable_name(key)
        if bad:
            return key, size, None, bad
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
                    scan.skipped.append((printable(rel), reason))
                else:
                    scan.files.append((rel, size))
                    scan.formats[fmt] += 1
            yield scan


def s3_class_names(uri: str, endpoint_url: str | None = None) -> list[str]:
    from training.store import Store

    return [n for n in Store(endpoint_url).list_dirs(uri) if not n.startswith(".") and not unlistable_name(n)]


def scan_classes(root: str, names: list[str], workers: int, val_fraction: float):
    """Finished ClassScans in class order; several processes check files when ``workers`` > 1."""
    tasks = [(root, n, val_fraction) for n in names]
    if workers <= 1 or len(names) < 2:
        yield from map(scan_and_finish, tasks)
        return
    import multiprocessing as mp

    # forkserver, not fork: the caller may have threads (an Airflow task, boto3, TensorFlow), and a child forked
    # while one of them holds a lock waits for it for ever.
    with mp.get_context("forkserver").Pool(workers) as pool:
        # Ordered and lazy: results stream back one class at a time, so memory stays bounded.
        yield from pool.imap(scan_and_finish, tasks, chunksize=1)
