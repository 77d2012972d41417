"""training.domains: the real-image domains are written from package data, split without leaks."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from training import domains


def _files(tree):
    return sorted(p for p in tree.rglob("*.png"))


def test_both_domains_are_real_images_split_into_disjoint_pool_and_test(tmp_path):
    for name in domains.DOMAINS:
        root = domains.build_domain(name, tmp_path)
        info = json.loads((root / "domain.json").read_text())
        pool, test = _files(root / "pool"), _files(root / "test")
        assert len(pool) == sum(info["counts"]["pool"].values()) and len(test) == sum(info["counts"]["test"].values())
        classes = sorted(p.name for p in (root / "pool").iterdir())
        assert classes == sorted(p.name for p in (root / "test").iterdir()) and len(classes) >= 6
        assert {p.name for p in pool}.isdisjoint({p.name for p in test})
        # no image is in both splits, not even as a copy under another name
        digest = {Image.open(p).tobytes() for p in pool}
        assert sum(Image.open(p).tobytes() in digest for p in test) <= len(test) // 50  # a few blank digits repeat
        assert info["license"] and info["source"]
    assert domains.build_domain("digits", tmp_path) == tmp_path / "digits"  # reused, not rewritten


def test_texture_test_patches_come_from_rows_the_pool_never_touches(tmp_path):
    root = domains.build_domain("textures", tmp_path)
    rows = lambda tree: {int(p.stem.split("_r")[1][:2]) for p in _files(tree)}  # noqa: E731
    pool_rows, test_rows = rows(root / "pool"), rows(root / "test")
    assert max(pool_rows) + domains.GAP_ROWS < min(test_rows)
    patch = np.asarray(Image.open(_files(root / "test" / "brick")[0]))
    assert patch.shape[:2] == (domains.PATCH, domains.PATCH) and patch.std() > 1  # a real texture, not a flat tile
