"""Decide whether a file is a usable image by its content, cheaply.

Curation must scan millions of files, so it cannot decode each one. It reads the first and the last bytes:
the magic number says which format the file really is (a PNG saved as ``.jpg`` is a PNG), and the format's
end marker says whether the file was cut short. Colour mode (CMYK, grayscale, RGBA) does not matter here:
the training pipeline converts every image to RGB. Files that pass this check and still fail to decode in
training are skipped and counted there.
"""

from __future__ import annotations

import os

HEAD = 16
TAIL = 1024

# Formats TensorFlow's decode_image reads.
SUPPORTED = ("jpeg", "png", "gif", "bmp")


def sniff_format(head: bytes) -> str | None:
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def _complete(fmt: str, head: bytes, tail: bytes, size: int) -> bool:
    if fmt == "jpeg":
        # EOI marker; some encoders pad a few bytes after it.
        return b"\xff\xd9" in tail[-64:]
    if fmt == "png":
        return b"IEND" in tail[-32:]
    if fmt == "gif":
        return tail.rstrip(b"\x00").endswith(b";")
    if fmt == "bmp":
        declared = int.from_bytes(head[2:6], "little")
        return declared == 0 or declared <= size
    return True


CHUNK = 65536  # small images are read whole in one call: head and tail without a stat


def check_image(path: str | os.PathLike, dir_fd: int | None = None) -> tuple[str | None, str | None, int]:
    """Return ``(format, None, size)`` for a usable image, or ``(None, reason, size)`` for one to skip.

    ``dir_fd``: ``path`` is a name in that open directory (a one-component lookup instead of a full path walk).
    """
    try:
        fd = os.open(path, os.O_RDONLY, dir_fd=dir_fd)
    except OSError as err:
        return None, f"unreadable: {err.strerror}", 0
    try:
        data = os.pread(fd, CHUNK, 0)
        if len(data) < CHUNK:
            size, head, tail = len(data), data[:HEAD], data[-TAIL:]
        else:
            size = os.fstat(fd).st_size
            head, tail = data[:HEAD], os.pread(fd, TAIL, size - TAIL)
    except OSError as err:
        return None, f"unreadable: {err.strerror}", 0
    finally:
        os.close(fd)
    return (*classify(head, tail, size), size)


def classify(head: bytes, tail: bytes, size: int) -> tuple[str | None, str | None]:
    """``(format, None)`` or ``(None, reason)`` from a file's first and last bytes and its size."""
    if size == 0:
        return None, "empty file"
    fmt = sniff_format(head)
    if fmt is None:
        return None, "not an image (unknown signature)"
    if fmt not in SUPPORTED:
        return None, f"unsupported format: {fmt}"
    if not _complete(fmt, head, tail, size):
        return None, f"truncated {fmt}"
    return fmt, None
