"""What a deploy run leaves beside its lineage record for the people who read it: the pretraining run's
TensorBoard logs (copied from the on-prem checkpoint store) and the run's transfer-vs-scratch report, under
``<prefix>/lineage/<endpoint>/<job>/``. The fine-tune task's "Run artifacts" link in the Airflow UI leads there.

    <prefix>/lineage/<endpoint>/<job>.json                   the lineage record
    <prefix>/lineage/<endpoint>/<job>/report.md              transfer vs scratch, the gate's verdict
    <prefix>/lineage/<endpoint>/<job>/tensorboard/pretrain/  the pretraining run's event files

Artifacts are a convenience: a store that cannot be read is logged, and never fails the run's record.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Mapping

from training.contracts import CheckpointDir

log = logging.getLogger(__name__)
REPORT = "report.md"
TENSORBOARD = "tensorboard/pretrain"
# The fine-tune's metrics the report shows, in this order (training.contracts.METRIC_DEFINITIONS names).
REPORT_METRICS = (
    ("validation:accuracy", "shipped model, validation accuracy"),
    ("transfer:validation:accuracy", "transfer learning, validation accuracy"),
    ("scratch:validation:accuracy", "same architecture from scratch, validation accuracy"),
    ("transfer:gain", "transfer minus scratch (validation)"),
    ("test:accuracy", "shipped model, test accuracy"),
    ("scratch:test:accuracy", "from scratch, test accuracy"),
    ("transfer:test_gain", "transfer minus scratch (test)"),
)


def report_markdown(record: Mapping[str, Any]) -> str:
    """The run's transfer-vs-scratch report, from its lineage record."""
    measured = record.get("metrics") or {}
    metrics, gate = measured.get("training") or {}, measured.get("gate") or {}
    pretrained = record.get("pretrained") or {}
    lines = [
        f"# {record.get('training_job', {}).get('name', 'fine-tune')}: {record.get('status')}",
        "",
        str(record.get("reason", "")),
        "",
        f"Pretrained model `{str(pretrained.get('model_sha256') or '')[:12]}` (validation accuracy "
        f"{pretrained.get('val_accuracy')}), dataset `{(record.get('dataset') or {}).get('fingerprint')}`, "
        f"domain classes: {', '.join((record.get('dataset') or {}).get('domain_classes') or [])}.",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    lines += [f"| {label} | {metrics[name]:.4f} |" for name, label in REPORT_METRICS if name in metrics]
    if gate:
        lines += ["", f"Gate: {gate.get('reason', '')} (shipped: {gate.get('model_kind', 'transfer')})"]
        if (gate.get("baseline") or {}).get("reason"):
            lines.append(f"Baseline: {gate['baseline']['reason']}")
    return "\n".join(lines) + "\n"


def upload_run_artifacts(exporter, checkpoint_store, key: str, record: Mapping[str, Any]) -> dict[str, str]:
    """Copy the pretraining TensorBoard logs and write the report under ``key``; their s3:// URIs."""
    from plugins.tlpipe.pretraining.export import UploadReport

    out: dict[str, str] = {}
    report = UploadReport()
    with tempfile.TemporaryDirectory(prefix="run-artifacts-") as tmp:
        page = Path(tmp, REPORT)
        page.write_text(report_markdown(record))
        exporter.put_file(page, f"{key}/{REPORT}", report, "text/markdown")
        out["report_uri"] = exporter.uri(f"{key}/{REPORT}")
        best = (record.get("pretrained") or {}).get("checkpoint_uri")
        try:
            logs = CheckpointDir.of_checkpoint(best).logs_dir
            local = checkpoint_store.download_dir(logs, Path(tmp, "logs"))
            files = sorted(p for p in local.rglob("*") if p.is_file())
            for path in files:
                exporter.put_file(path, f"{key}/{TENSORBOARD}/{path.relative_to(local).as_posix()}", report)
            if files:
                out["tensorboard_uri"] = exporter.uri(f"{key}/{TENSORBOARD}/")
            else:
                log.warning("no TensorBoard logs at %s", logs)
        except Exception as err:  # noqa: BLE001 - see the module docstring
            log.warning("no TensorBoard logs copied from %s: %s", best, err)
    log.info(
        "run artifacts under %s: %d uploaded, %d already there",
        exporter.uri(key),
        len(report.uploaded),
        len(report.skipped),
    )
    return out
