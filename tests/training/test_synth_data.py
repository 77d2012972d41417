import hashlib
import subprocess
import sys

from training.synth_data import SHAPES, TEXTURES, class_pairs, class_sizes, generate


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_deterministic(tmp_path):
    generate(tmp_path / "a", classes=4, largest=12, smallest=6, seed=3)
    generate(tmp_path / "b", classes=4, largest=12, smallest=6, seed=3)
    generate(tmp_path / "c", classes=4, largest=12, smallest=6, seed=4)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_long_tail_and_shared_structure():
    sizes = class_sizes(16, 300, 80)
    assert sizes[0] == 300 and sizes[-1] == 80 and sizes == sorted(sizes, reverse=True)
    pairs = class_pairs(16, seed=0)
    assert len(set(pairs)) == 16
    # The most frequent classes use every shape and every texture, so the pretrained features cover the
    # primitives the rare classes are made of.
    head = pairs[: len(SHAPES)]
    assert {s for s, _ in head} == set(SHAPES) and {t for _, t in head} == set(TEXTURES)


def test_cli(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.synth_data",
            "--out",
            str(tmp_path / "d"),
            "--classes",
            "3",
            "--largest",
            "5",
            "--smallest",
            "3",
            "--no-defects",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert sorted(len(list(d.iterdir())) for d in (tmp_path / "d").iterdir()) == [3, 4, 5]
