"""Real-image domains for measuring transfer, from images that ship inside packages (nothing is downloaded).

    python -m training.domains --out DIR [--domain digits|textures ...]

Each domain is written as two ImageFolder trees of PNG files, ``DIR/<domain>/pool/<class>/`` (training and
validation images are drawn from it) and ``DIR/<domain>/test/<class>/`` (held out; no choice is made on it),
plus ``DIR/<domain>/domain.json`` (source, license, counts). The project's generator made none of them:

  digits     scikit-learn's copy of the UCI "Optical Recognition of Handwritten Digits" test set: 1,797
             scanned 8x8 digits (16 grey levels) written by 43 people, 10 classes. 40% of each class is
             the test tree. License: CC BY 4.0 (UCI Machine Learning Repository).
  textures   six photographs shipped with scikit-image, cut into 32x32 patches that do not overlap: brick,
             grass, gravel (CC0 textures), immunohistochemistry (tissue under a microscope; no known
             copyright restrictions), hubble_deep_field (NASA, public domain) and retina (a fundus
             photograph, CC0). The pool's patches come from the top of each image, the test patches from
             the bottom, one patch row apart, so no test pixel is ever seen in training.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

DOMAINS = ("digits", "textures")
TEXTURE_SOURCES = {  # scikit-image loader -> (class name, crop (top, left, size) of the source image)
    "brick": ("brick", (0, 0, 512)),
    "grass": ("grass", (0, 0, 512)),
    "gravel": ("gravel", (0, 0, 512)),
    "immunohistochemistry": ("tissue", (0, 0, 512)),
    "hubble_deep_field": ("deep_field", (180, 244, 512)),
    "retina": ("retina", (450, 450, 512)),  # inside the fundus, away from the black border
}
PATCH = 32
POOL_ROWS, GAP_ROWS = 9, 1  # of the 16 patch rows of a 512-pixel crop: 9 for the pool, 1 gap, 6 for test


def _save(img: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, format="PNG")


MISSING = (
    "the real-image domains read the images scikit-learn and scikit-image ship: pip install scikit-learn "
    "scikit-image (requirements/dev.in; not part of the training image)"
)


def _digits(dest: Path, test_fraction: float = 0.4, seed: int = 0) -> dict:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise SystemExit(f"{MISSING}: {err}") from None

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    rng = np.random.default_rng(seed)
    counts = {"pool": {}, "test": {}}
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(bunch.target == label))
        n_test = int(round(len(idx) * test_fraction))
        for split, chosen in (("test", idx[:n_test]), ("pool", idx[n_test:])):
            for i in chosen:
                _save(images[i], dest / split / str(label) / f"digit_{i:04d}.png")
            counts[split][str(label)] = len(chosen)
    return {
        "source": "scikit-learn sklearn/datasets/data/digits.csv.gz (UCI Optical Recognition of Handwritten Digits)",
        "license": "CC BY 4.0",
        "image_size": [8, 8],
        "counts": counts,
    }


def _textures(dest: Path) -> dict:
    try:
        import skimage.data
    except ImportError as err:
        raise SystemExit(f"{MISSING}: {err}") from None

    counts = {"pool": {}, "test": {}}
    for loader, (name, (top, left, size)) in TEXTURE_SOURCES.items():
        img = getattr(skimage.data, loader)()[top : top + size, left : left + size]
        if img.shape[:2] != (size, size):
            raise ValueError(f"skimage.data.{loader}() is smaller than the {size}-pixel crop it is cut from")
        rows = size // PATCH
        for r in range(rows):
            split = "pool" if r < POOL_ROWS else ("test" if r >= POOL_ROWS + GAP_ROWS else None)
            if split is None:
                continue
            for c in range(size // PATCH):
                patch = img[r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH]
                _save(np.ascontiguousarray(patch), dest / split / name / f"{loader}_r{r:02d}c{c:02d}.png")
                counts[split][name] = counts[split].get(name, 0) + 1
    return {
        "source": "scikit-image skimage/data/ ({})".format(", ".join(TEXTURE_SOURCES)),
        "license": "CC0 / public domain / no known copyright restrictions (per skimage.data)",
        "image_size": [PATCH, PATCH],
        "counts": counts,
    }


def build_domain(name: str, out: Path) -> Path:
    """Write domain ``name`` under ``out/name`` (reused when its domain.json exists); returns that directory."""
    if name not in DOMAINS:
        raise ValueError(f"unknown domain {name!r}: expected one of {', '.join(DOMAINS)}")
    dest = Path(out) / name
    if (dest / "domain.json").is_file():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    info = _digits(dest) if name == "digits" else _textures(dest)
    (dest / "domain.json").write_text(json.dumps({"name": name, **info}, indent=1))
    return dest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write the real-image domains as ImageFolder trees (see the docstring).")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--domain", action="append", choices=DOMAINS, help="default: every domain")
    args = p.parse_args(argv)
    for name in args.domain or DOMAINS:
        dest = build_domain(name, args.out)
        info = json.loads((dest / "domain.json").read_text())
        print(f"{name}: {dest} pool {sum(info['counts']['pool'].values())} test {sum(info['counts']['test'].values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
