"""The run's artifacts beside its lineage record: the pretraining TensorBoard logs copied from the on-prem
checkpoint store (SeaweedFS) to the S3 bucket (moto's server), and the transfer-vs-scratch report."""

from __future__ import annotations

import pytest

from plugins.tlpipe.config import S3Config
from plugins.tlpipe.deploy.artifacts import REPORT, TENSORBOARD, report_markdown, upload_run_artifacts
from plugins.tlpipe.pretraining.export import S3Exporter
from training.store import Store

RECORD = {
    "status": "deployed",
    "reason": "deploying the transfer model",
    "training_job": {"name": "tlpipe-ft-0123"},
    "dataset": {"fingerprint": "ab12", "domain_classes": ["a", "b"]},
    "metrics": {
        "training": {"validation:accuracy": 0.91, "scratch:validation:accuracy": 0.62, "transfer:gain": 0.29},
        "gate": {"reason": "0.91 >= 0.6", "model_kind": "transfer", "baseline": {"reason": "transfer holds"}},
    },
}


@pytest.fixture()
def exporter(s3_endpoint, request):
    exporter = S3Exporter(S3Config(bucket="tlpipe-artifacts", prefix=f"t/{request.node.name[:30]}", create_bucket=True))
    exporter.ensure_bucket()  # the export made it, earlier in the pipeline
    return exporter


@pytest.fixture()
def run_dir(onprem_store, request):
    onprem_store.ensure_bucket("artifacts-ckpt")
    s3 = onprem_store.client()
    run = f"s3://artifacts-ckpt/{request.node.name[:30]}"
    for key, body in (("logs/train/events.out.tfevents.1", b"ev1"), ("logs/validation/events.out.tfevents.1", b"ev2")):
        s3.put_object(Bucket="artifacts-ckpt", Key=f"{run.split('/', 3)[3]}/{key}", Body=body)
    return run


def test_tensorboard_logs_and_report_land_beside_the_lineage_record(exporter, onprem_store, run_dir):
    store = Store(_client=onprem_store.client())
    record = {**RECORD, "pretrained": {"checkpoint_uri": f"{run_dir}/best", "model_sha256": "5e1f" * 16}}
    key = exporter.cfg.key("lineage", "tlpipe-domain", "tlpipe-ft-0123")
    out = upload_run_artifacts(exporter, store, key, record)
    assert out == {
        "report_uri": exporter.uri(f"{key}/{REPORT}"),
        "tensorboard_uri": exporter.uri(f"{key}/{TENSORBOARD}/"),
    }
    listed = exporter.client.list_objects_v2(Bucket=exporter.bucket, Prefix=f"{key}/")["Contents"]
    assert sorted(o["Key"][len(key) + 1 :] for o in listed) == [
        REPORT,
        f"{TENSORBOARD}/train/events.out.tfevents.1",
        f"{TENSORBOARD}/validation/events.out.tfevents.1",
    ]
    body = exporter.client.get_object(Bucket=exporter.bucket, Key=f"{key}/{TENSORBOARD}/train/events.out.tfevents.1")
    assert body["Body"].read() == b"ev1"
    page = exporter.client.get_object(Bucket=exporter.bucket, Key=f"{key}/{REPORT}")["Body"].read().decode()
    assert "| same architecture from scratch, validation accuracy | 0.6200 |" in page and "transfer holds" in page


def test_a_run_without_logs_still_gets_its_report(exporter, onprem_store):
    record = {**RECORD, "pretrained": {"checkpoint_uri": "s3://artifacts-ckpt/nothing-here/best"}}
    key = exporter.cfg.key("lineage", "e", "j")
    onprem_store.ensure_bucket("artifacts-ckpt")
    out = upload_run_artifacts(exporter, Store(_client=onprem_store.client()), key, record)
    assert set(out) == {"report_uri"}
    record["pretrained"] = {"checkpoint_uri": "not a best directory"}
    assert set(upload_run_artifacts(exporter, Store(_client=onprem_store.client()), key, record)) == {"report_uri"}


def test_the_report_reads_the_lineage_record():
    page = report_markdown({**RECORD, "pretrained": {"model_sha256": "5e1f" * 16, "val_accuracy": 0.7}})
    assert page.startswith("# tlpipe-ft-0123: deployed")
    assert "| transfer minus scratch (validation) | 0.2900 |" in page and "`5e1f5e1f5e1f`" in page
