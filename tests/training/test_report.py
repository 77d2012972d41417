"""training.report: transfer vs scratch at several training-set sizes, with plots and a summary."""

from __future__ import annotations

import json

import pytest

from training import report

PNG = b"\x89PNG\r\n\x1a\n"


def _run(size: int, seed: int, transfer: float, scratch: float, domain: str = "synthetic") -> dict:
    history = [
        {"epoch": e, "phase": "head" if e < 3 else "full", "train_accuracy": 0.5, "val_accuracy": transfer}
        for e in (1, 2, 3)
    ]
    scratch_history = [{"epoch": e, "phase": "all", "train_accuracy": 0.5, "val_accuracy": scratch} for e in (1, 2, 3)]
    probe = {"val_accuracy": 0.5, "test_accuracy": transfer / 2, "best_epoch": 2, "epochs_run": 3, "history": history}
    return {
        "domain": domain,
        "images_per_class": size,
        "seed": seed,
        "test_images": 40,
        "recipe": "full",
        "candidates": {"linear_probe": probe, "full": {**probe, "test_accuracy": transfer}},
        "linear_probe": transfer / 2,
        "transfer": {"accuracy": transfer, "history": history},
        "scratch": {"accuracy": scratch, "history": scratch_history},
        "gain": transfer - scratch,
        "seconds": 10.0,
    }


def _context(domain: str) -> dict:
    return {
        "domain": domain,
        "classes": ["a", "b"],
        "test_images": 40,
        "seeds": [0, 1],
        "pretrained": "p",
        "seconds": 40.0,
        "job_seconds": {"mean": 10.0, "min": 10.0, "max": 10.0, "all": [10.0]},
    }


def test_summary_and_verdicts_per_domain(tmp_path):
    synthetic = [_run(5, 0, 0.9, 0.4), _run(5, 1, 0.8, 0.5), _run(20, 0, 0.9, 0.8), _run(20, 1, 0.9, 0.78)]
    rows = report.aggregate(synthetic)
    assert [r["images_per_class"] for r in rows] == [5, 20]
    assert rows[0]["transfer"]["mean"] == pytest.approx(0.85) and rows[0]["gain"]["mean"] == pytest.approx(0.4)
    assert rows[0]["linear_probe"]["mean"] == pytest.approx(0.425) and rows[0]["recipes"] == ["full", "full"]
    # a real domain holds when transfer >= scratch at the smallest size and is within the margin at gain_at
    holds = [_run(5, 0, 0.80, 0.79, "digits"), _run(20, 0, 0.935, 0.94, "digits")]
    loses = [_run(5, 0, 0.80, 0.79, "textures"), _run(20, 0, 0.90, 0.94, "textures")]
    domains = {
        "synthetic": {"results": synthetic, "context": _context("synthetic")},
        "digits": {"results": holds, "context": _context("digits")},
        "textures": {"results": loses, "context": _context("textures")},
    }
    verdicts = report.write_report(tmp_path, domains, min_gain=0.15, gain_at=20)
    assert verdicts["synthetic"]["gain"] == pytest.approx(0.11) and verdicts["synthetic"]["passed"] is False
    assert verdicts["digits"]["passed"] is True and verdicts["digits"]["gain"] == pytest.approx(-0.005)
    assert verdicts["textures"]["passed"] is False and verdicts["textures"]["gain"] == pytest.approx(-0.04)
    md = (tmp_path / "report.md").read_text()
    assert "| 20 | 0.900 | 0.790 | +11.0 | +10.0 .. +12.0 | 0.450 | full, full |" in md
    assert md.count("NOT met") == 2 and "## digits" in md and "## textures" in md
    assert "NOT met" in (tmp_path / "report.html").read_text()
    for name in domains:
        assert (tmp_path / f"accuracy_{name}.png").read_bytes().startswith(PNG)
        assert (tmp_path / f"learning_curves_{name}.png").read_bytes().startswith(PNG)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert set(doc["domains"]) == set(domains) and doc["domains"]["digits"]["verdict"]["rule"] == "holds"
    assert report.write_report(tmp_path, domains, min_gain=0.1, gain_at=20)["synthetic"]["passed"] is True


def test_unknown_domains_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown domain"):
        report.main(["--out", str(tmp_path), "--domains", "imagenet"])


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
            "--domains",
            "synthetic,textures",
            "--sizes",
            "2,4",
            "--seeds",
            "1",
            "--gain-at",
            "4",
            "--min-gain",
            "-1",
            "--val-per-class",
            "0",
            "--hp",
            "epochs_head=2",
            "--hp",
            "epochs_finetune=1",
            "--hp",
            "batch_size=8",
        ]
    )
    doc = json.loads((out / "results.json").read_text())["domains"]
    assert set(doc) == {"synthetic", "textures"}
    # the exit status is the verdicts' (a 1-epoch textures job may well lose to scratch)
    assert rc == (0 if all(d["verdict"]["passed"] for d in doc.values()) else 1)
    for name in doc:
        assert [r["images_per_class"] for r in doc[name]["summary"]] == [2, 4]
        assert doc[name]["verdict"]["gain_at"] == 4
        assert (out / f"accuracy_{name}.png").read_bytes().startswith(PNG)
    assert doc["synthetic"]["verdict"]["passed"] is True  # --min-gain -1
    n_pool = sum(1 for p in world["train"].rglob("*") if p.is_file())
    n_test = sum(1 for p in world["validation"].rglob("*") if p.is_file())
    for run in doc["synthetic"]["runs"]:
        job = out / "runs" / "synthetic" / f"n{run['images_per_class']:03d}-seed0"
        assert run["train_images"] == run["images_per_class"] * len(world["classes"])
        # Selection on the rest of the pool, scores on the held-out list: disjoint from training and each other.
        assert run["val_images"] == n_pool - run["train_images"] and run["test_images"] == n_test
        train_files = {p.resolve() for p in (job / "input" / "data" / "train").rglob("*") if p.is_file()}
        val_files = {p.resolve() for p in (job / "input" / "data" / "validation").rglob("*") if p.is_file()}
        assert train_files and val_files and not train_files & val_files
        # every recipe of the search ran and was scored; the kept one is the best on validation
        assert set(run["candidates"]) == {"linear_probe", "top_blocks", "full"}
        best = max(c["val_accuracy"] for c in run["candidates"].values())
        assert run["candidates"][run["recipe"]]["val_accuracy"] == best
        assert run["linear_probe"] == run["candidates"]["linear_probe"]["test_accuracy"]
        assert len(run["scratch"]["history"]) == 3
        assert (job / "model" / "1" / "saved_model.pb").is_file()
        assert run["gain"] == pytest.approx(run["transfer"]["accuracy"] - run["scratch"]["accuracy"])
        assert run["transfer"]["accuracy"] == run["transfer"]["test_accuracy"]
    assert "Verdict" in (out / "report.md").read_text()


def test_the_report_files_are_uploaded_without_the_job_directories(tmp_path, onprem_store, monkeypatch):
    from training import store as st
    from training.report import upload_report

    (tmp_path / "report.md").write_text("# report\n")
    (tmp_path / "transfer_vs_scratch.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "runs" / "digits").mkdir(parents=True)
    (tmp_path / "runs" / "digits" / "model.keras").write_bytes(b"big")
    onprem_store.ensure_bucket("report-upload")
    # The report's store is configured as the training jobs' are: endpoint and key from the environment.
    monkeypatch.setenv("TLPIPE_S3_ENDPOINT_URL", onprem_store.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", onprem_store.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", onprem_store.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    uri = "s3://report-upload/lineage/e/j/transfer-report"
    assert upload_report(tmp_path, uri) == ["report.md", "transfer_vs_scratch.png"]
    assert sorted(k for k, _ in st.Store().walk_files(uri)) == ["report.md", "transfer_vs_scratch.png"]
    with pytest.raises(SystemExit, match="s3://"):
        upload_report(tmp_path, "/tmp/elsewhere")
