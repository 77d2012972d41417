"""training.report: transfer vs scratch at several training-set sizes, with plots and a summary."""

from __future__ import annotations

import json

import pytest

from training import report

PNG = b"\x89PNG\r\n\x1a\n"


def _run(size: int, seed: int, transfer: float, scratch: float) -> dict:
    history = [
        {"epoch": e, "phase": "head" if e < 3 else "finetune", "train_accuracy": 0.5, "val_accuracy": transfer}
        for e in (1, 2, 3)
    ]
    scratch_history = [{"epoch": e, "phase": "all", "train_accuracy": 0.5, "val_accuracy": scratch} for e in (1, 2, 3)]
    return {
        "images_per_class": size,
        "seed": seed,
        "test_images": 40,
        "transfer": {"accuracy": transfer, "history": history},
        "scratch": {"accuracy": scratch, "history": scratch_history},
        "gain": transfer - scratch,
    }


def test_summary_and_verdict(tmp_path):
    results = [_run(5, 0, 0.9, 0.4), _run(5, 1, 0.8, 0.5), _run(20, 0, 0.9, 0.8), _run(20, 1, 0.9, 0.78)]
    rows = report.aggregate(results)
    assert [r["images_per_class"] for r in rows] == [5, 20]
    assert rows[0]["transfer"]["mean"] == pytest.approx(0.85) and rows[0]["gain"]["mean"] == pytest.approx(0.4)
    context = {"classes": ["a", "b"], "test_images": 40, "seeds": [0, 1], "pretrained": "p"}
    verdict = report.write_report(tmp_path, results, context, min_gain=0.15, gain_at=20)
    assert verdict["gain"] == pytest.approx(0.11) and verdict["passed"] is False
    md = (tmp_path / "report.md").read_text()
    assert "| 20 | 0.900 | 0.790 | +11.0 | +10.0 .. +12.0 |" in md and "NOT met" in md
    assert "NOT met" in (tmp_path / "report.html").read_text()
    assert (tmp_path / "accuracy.png").read_bytes().startswith(PNG)
    assert (tmp_path / "learning_curves.png").read_bytes().startswith(PNG)
    assert report.write_report(tmp_path, results, context, min_gain=0.1, gain_at=20)["passed"] is True
    assert report.write_report(tmp_path, results, context, min_gain=0.1, gain_at=50)["passed"] is False


@pytest.mark.slow
def test_report_runs_real_jobs(world, tmp_path):
    out = tmp_path / "report"
    rc = report.main(
        [
            "--out",
            str(out),
            "--manifest",
            str(world["manifest"]),
            "--pretrained",
            str(world["pretrained"]),
            "--sizes",
            "2,4",
            "--seeds",
            "1",
            "--gain-at",
            "4",
            "--min-gain",
            "-1",
            "--hp",
            "epochs_head=2",
            "--hp",
            "epochs_finetune=1",
            "--hp",
            "batch_size=8",
        ]
    )
    assert rc == 0
    doc = json.loads((out / "results.json").read_text())
    assert [r["images_per_class"] for r in doc["summary"]] == [2, 4]
    assert doc["verdict"]["gain_at"] == 4 and doc["verdict"]["passed"] is True
    n_pool = sum(1 for p in world["train"].rglob("*") if p.is_file())
    n_test = sum(1 for p in world["validation"].rglob("*") if p.is_file())
    for run in doc["runs"]:
        job = out / "runs" / f"n{run['images_per_class']:03d}-seed0"
        assert run["train_images"] == run["images_per_class"] * len(world["classes"])
        # Selection on the rest of the pool, scores on the held-out list: disjoint from training and each other.
        assert run["val_images"] == n_pool - run["train_images"] and run["test_images"] == n_test
        train_files = {p.resolve() for p in (job / "input" / "data" / "train").rglob("*") if p.is_file()}
        val_files = {p.resolve() for p in (job / "input" / "data" / "validation").rglob("*") if p.is_file()}
        assert train_files and val_files and not train_files & val_files
        assert len(run["transfer"]["history"]) == 3 and len(run["scratch"]["history"]) == 3
        assert (job / "model" / "1" / "saved_model.pb").is_file()
        assert run["gain"] == pytest.approx(run["transfer"]["accuracy"] - run["scratch"]["accuracy"])
        assert run["transfer"]["accuracy"] == run["transfer"]["test_accuracy"]
    assert (out / "accuracy.png").read_bytes().startswith(PNG)
    assert "Quality bar" in (out / "report.md").read_text()
