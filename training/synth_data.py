"""Write a deterministic, long-tailed ImageFolder dataset whose classes share visual structure.

Every class is a pair (shape, texture): a coloured shape drawn over a textured background, at a random
position, scale, rotation and colour, with noise. Classes reuse the same shapes and textures in new pairs, so
a network that learned to see shapes and textures on the frequent classes can tell the rare ones apart from a
few examples — the transfer-learning setting in miniature. Class sizes fall off geometrically (long tail), so
curation drops the rare ones, and those become the domain classes.

    python -m training.synth_data --out data/raw --classes 16 --seed 0

With ``--defects`` (on by default) it also writes the files real collections contain: CMYK and grayscale
JPEGs, RGBA PNGs, a PNG named ``.jpg``, ``.JPEG`` in capitals (all valid), and zero-byte, truncated and
non-image files (all to be skipped).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond")
TEXTURES = ("plain", "hstripes", "vstripes", "checker", "dots", "diagonal")


def class_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` distinct (shape, texture) pairs; the most frequent classes cover every shape and texture."""
    # Latin-square order: the first len(SHAPES) classes use each shape and each texture exactly once.
    pairs = []
    for shift in range(len(TEXTURES)):
        for i, shape in enumerate(SHAPES):
            pairs.append((shape, TEXTURES[(i + shift) % len(TEXTURES)]))
    rng = random.Random(seed)
    head, tail = pairs[: len(SHAPES)], pairs[len(SHAPES) :]
    rng.shuffle(tail)
    ordered = head + tail
    if n > len(ordered):
        raise ValueError(f"--classes must be at most {len(ordered)} ({len(SHAPES)} shapes x {len(TEXTURES)} textures)")
    return ordered[:n]


def class_sizes(n: int, largest: int, smallest: int) -> list[int]:
    """Geometric long tail from ``largest`` down to ``smallest``."""
    if n == 1:
        return [largest]
    ratio = (smallest / largest) ** (1 / (n - 1))
    return [max(smallest, round(largest * ratio**i)) for i in range(n)]


def _color(rng: np.random.Generator, lo=40, hi=255) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(lo, hi, size=3))


def _texture(draw: ImageDraw.ImageDraw, kind: str, size: int, rng: np.random.Generator) -> None:
    fg = _color(rng, 0, 160)
    step = int(rng.integers(5, 9))
    width = max(1, step // 2)
    if kind == "hstripes":
        for y in range(0, size, step):
            draw.rectangle([0, y, size, y + width - 1], fill=fg)
    elif kind == "vstripes":
        for x in range(0, size, step):
            draw.rectangle([x, 0, x + width - 1, size], fill=fg)
    elif kind == "checker":
        for y in range(0, size, step):
            for x in range(0, size, step):
                if (x // step + y // step) % 2 == 0:
                    draw.rectangle([x, y, x + step - 1, y + step - 1], fill=fg)
    elif kind == "dots":
        for y in range(step // 2, size, step):
            for x in range(step // 2, size, step):
                draw.ellipse([x - 1, y - 1, x + 1, y + 1], fill=fg)
    elif kind == "diagonal":
        for off in range(-size, size, step):
            draw.line([(off, 0), (off + size, size)], fill=fg, width=width)


def _shape(draw: ImageDraw.ImageDraw, kind: str, size: int, rng: np.random.Generator) -> None:
    color = _color(rng, 150, 256)
    r = size * float(rng.uniform(0.22, 0.36))
    cx = size / 2 + float(rng.uniform(-0.12, 0.12)) * size
    cy = size / 2 + float(rng.uniform(-0.12, 0.12)) * size
    angle = float(rng.uniform(0, 2 * math.pi))

    def poly(k, radius=r, phase=angle):
        return [
            (cx + radius * math.cos(phase + 2 * math.pi * j / k), cy + radius * math.sin(phase + 2 * math.pi * j / k))
            for j in range(k)
        ]

    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif kind == "ring":
        w = max(2, int(r * 0.35))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=color, width=w)
    elif kind == "square":
        draw.polygon(poly(4), fill=color)
    elif kind == "diamond":
        pts = poly(4)
        # Stretch one diagonal so it is not a rotated square.
        pts = [
            (cx + (x - cx) * (1.0 if j % 2 else 0.55), cy + (y - cy) * (1.0 if j % 2 else 0.55))
            for j, (x, y) in enumerate(pts)
        ]
        draw.polygon(pts, fill=color)
    elif kind == "triangle":
        draw.polygon(poly(3), fill=color)
    elif kind == "cross":
        w = max(2, int(r * 0.45))
        for a in (angle, angle + math.pi / 2):
            dx, dy = r * math.cos(a), r * math.sin(a)
            draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=color, width=w)


def render(shape: str, texture: str, size: int, rng: np.random.Generator) -> Image.Image:
    img = Image.new("RGB", (size, size), _color(rng, 90, 256))
    draw = ImageDraw.Draw(img)
    _texture(draw, texture, size, rng)
    _shape(draw, shape, size, rng)
    arr = np.asarray(img, dtype=np.int16) + rng.normal(0, 8, size=(size, size, 3)).astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _write_defects(out: Path, names: list[str], rng: np.random.Generator) -> dict[str, list[str]]:
    """Odd-but-valid files and broken files, spread over the first classes."""
    report = {"valid_odd": [], "broken": []}
    pairs = [tuple(n.split("-", 1)) for n in names]

    def img(i):
        return render(*pairs[i % len(pairs)], 64, rng)

    odd = [
        ("cmyk.jpg", lambda im: im.convert("CMYK"), "JPEG"),
        ("gray.jpg", lambda im: im.convert("L"), "JPEG"),
        ("rgba.png", lambda im: im.convert("RGBA"), "PNG"),
        ("png_named.jpg", lambda im: im, "PNG"),
        ("capital.JPEG", lambda im: im, "JPEG"),
    ]
    for i, (fname, conv, fmt) in enumerate(odd):
        path = out / names[i % len(names)] / f"odd_{fname}"
        conv(img(i)).save(path, fmt)
        report["valid_odd"].append(str(path.relative_to(out)))
    buf = io.BytesIO()
    img(0).save(buf, "JPEG")
    broken = {
        "empty.jpg": b"",
        "truncated.jpg": buf.getvalue()[: len(buf.getvalue()) // 2],
        "notes.jpg": b"this is not an image\n",
    }
    for i, (fname, data) in enumerate(broken.items()):
        path = out / names[i % len(names)] / f"bad_{fname}"
        path.write_bytes(data)
        report["broken"].append(str(path.relative_to(out)))
    return report


def generate(
    out: Path,
    classes: int = 16,
    seed: int = 0,
    largest: int = 300,
    smallest: int = 80,
    min_size: int = 56,
    max_size: int = 88,
    defects: bool = True,
) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = class_pairs(classes, seed)
    sizes = class_sizes(classes, largest, smallest)
    summary = {"classes": {}, "seed": seed}
    for idx, ((shape, texture), count) in enumerate(zip(pairs, sizes)):
        name = f"{shape}-{texture}"
        cdir = out / name
        cdir.mkdir(exist_ok=True)
        for j in range(count):
            rng = np.random.default_rng([seed, idx, j])
            size = int(rng.integers(min_size, max_size + 1))
            im = render(shape, texture, size, rng)
            # Mostly JPEG, some PNG, as in scraped collections.
            if j % 7 == 3:
                im.save(cdir / f"{j:05d}.png", "PNG")
            else:
                im.save(cdir / f"{j:05d}.jpg", "JPEG", quality=90)
        summary["classes"][name] = count
    if defects:
        summary["defects"] = _write_defects(out, list(summary["classes"]), np.random.default_rng([seed, 999]))
    (out.parent / f"{out.name}.synth.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--classes", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--largest", type=int, default=300, help="images in the most frequent class")
    p.add_argument("--smallest", type=int, default=80, help="images in the rarest class")
    p.add_argument("--min-size", type=int, default=56)
    p.add_argument("--max-size", type=int, default=88)
    p.add_argument("--no-defects", dest="defects", action="store_false")
    args = p.parse_args(argv)
    s = generate(
        args.out, args.classes, args.seed, args.largest, args.smallest, args.min_size, args.max_size, args.defects
    )
    total = sum(s["classes"].values())
    print(f"wrote {total} images in {len(s['classes'])} classes to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
