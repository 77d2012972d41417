"""Following the demo through Airflow's REST API: task states, pretraining epochs, SageMaker states, the summary
with copy-paste examples, and the background transfer-vs-scratch report."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from demo_services import DEPLOY_DAG, LOGS, PRETRAIN_DAG, STATE, VAR, aws_env, checkpoint_store, pid_of, say, start


# -- REST ------------------------------------------------------------------------------------------------------
class Api:
    def __init__(self, base: str, password: str):
        import httpx

        self.base = base
        self.http = httpx.Client(base_url=base, timeout=30)
        self.password = password
        self.token = None

    def login(self) -> None:
        r = self.http.post("/auth/token", json={"username": "admin", "password": self.password})
        r.raise_for_status()
        self.token = r.json()["access_token"]
        self.http.headers["Authorization"] = f"Bearer {self.token}"

    def get(self, path, **kw):
        r = self.http.get(f"/api/v2{path}", **kw)
        if r.status_code == 401:
            self.login()
            r = self.http.get(f"/api/v2{path}", **kw)
        r.raise_for_status()
        return r.json()

    def send(self, method, path, body):
        r = self.http.request(method, f"/api/v2{path}", json=body)
        if r.status_code == 401:
            self.login()
            r = self.http.request(method, f"/api/v2{path}", json=body)
        return r


def deploy_run_for(api: Api, pretrain_run_id: str):
    """The transfer_learning_deploy run created by the pretrained-model event of this pretraining run."""
    events = api.get("/assets/events", params={"source_dag_id": PRETRAIN_DAG, "source_run_id": pretrain_run_id})
    for event in events.get("asset_events", []):
        for run in event.get("created_dagruns", []):
            if run["dag_id"] == DEPLOY_DAG:
                return {"dag_run_id": run["run_id"]}
    return None


def follow(api: Api, dag_id: str, run_id: str, state: dict) -> dict:
    """Print each task's state changes, training epochs and SageMaker states until the run ends."""
    seen: dict[str, str] = {}
    shown_epochs: set[str] = set()
    sm_seen: dict[str, str] = {}
    while True:
        run = api.get(f"/dags/{dag_id}/dagRuns/{run_id}")
        tis = api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})["task_instances"]
        for ti in sorted(tis, key=lambda t: t.get("start_date") or "~"):
            key = ti["task_id"] + (f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else "")
            st = ti.get("state") or "none"
            if seen.get(key) != st and st not in ("none", "scheduled"):
                style = {"success": "ok", "failed": "err", "upstream_failed": "err", "skipped": ""}.get(st, "")
                say(f"{dag_id}: {key} -> {st}", style)
                seen[key] = st
        if dag_id == PRETRAIN_DAG:
            _show_epochs(api, dag_id, run_id, shown_epochs, state)
        else:
            _show_sagemaker(state, sm_seen)
        if run["state"] in ("success", "failed"):
            return run
        time.sleep(2)


def _xcom(api: Api, dag_id: str, run_id: str, task_id: str, key: str = "return_value"):
    try:
        return api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}")["value"]
    except Exception:  # noqa: BLE001 - not pushed yet
        return None


def _show_epochs(api: Api, dag_id: str, run_id: str, shown: set[str], state: dict) -> None:
    """Each committed epoch's metrics, read from the checkpoint store as the sensor reads them."""
    from training.contracts import CheckpointDir
    from training.store import Store, is_s3

    ckpt = _xcom(api, dag_id, run_id, "prepare", "checkpoint_uri")
    if not ckpt:
        return
    ckpt_dir = CheckpointDir(ckpt)
    store = Store(_client=checkpoint_store(state).client()) if is_s3(ckpt) else Store()
    try:
        names = store.list_dirs(ckpt_dir.path(ckpt_dir.EPOCHS))
        for name in (n for n in names if n.isdigit() and n not in shown):
            if not store.exists(ckpt_dir.committed_marker(int(name))):
                continue
            shown.add(name)
            e = store.read_json(ckpt_dir.path(ckpt_dir.EPOCHS, name, "metrics.json"))
            say(
                f"  pretrain epoch {e['epoch']}: loss {e['loss']:.3f} val_accuracy {e['val_accuracy']:.3f} "
                f"({e['images_per_second']:.0f} img/s)"
            )
    except Exception as err:  # noqa: BLE001 - progress display only; the DAG run is what counts
        say(f"  (checkpoint store not readable yet: {type(err).__name__})", "warn")


def _sm_client(state: dict, service: str = "sagemaker"):
    import boto3

    return boto3.client(
        service,
        endpoint_url=f"http://127.0.0.1:{state['localcloud_port']}",
        region_name="us-east-1",
        aws_access_key_id=state["localcloud_access_key_id"],
        aws_secret_access_key=state["localcloud_secret_access_key"],
    )


def _show_sagemaker(state: dict, seen: dict) -> None:
    try:
        sm = _sm_client(state)
        for j in sm.list_training_jobs(SortBy="CreationTime", SortOrder="Descending", MaxResults=3)[
            "TrainingJobSummaries"
        ]:
            key = f"training job {j['TrainingJobName']}"
            if seen.get(key) != j["TrainingJobStatus"]:
                seen[key] = j["TrainingJobStatus"]
                say(f"  SageMaker {key}: {j['TrainingJobStatus']}")
        for e in sm.list_endpoints(MaxResults=5)["Endpoints"]:
            key = f"endpoint {e['EndpointName']}"
            if seen.get(key) != e["EndpointStatus"]:
                seen[key] = e["EndpointStatus"]
                say(f"  SageMaker {key}: {e['EndpointStatus']}")
    except Exception:  # noqa: BLE001 - localcloud busy; next poll
        pass


def summary(api: Api, state: dict, pre: dict, dep: dict, seconds: float) -> None:
    say("summary", "head")
    best = _xcom(api, PRETRAIN_DAG, pre["dag_run_id"], "wait_for_best_checkpoint") or {}
    if best:
        say(
            f"best checkpoint: epoch {best.get('epoch')} val_accuracy {best.get('val_accuracy', 0):.3f} "
            f"at {best.get('uri')}"
        )
    sm = _sm_client(state)
    jobs = sm.list_training_jobs(SortBy="CreationTime", SortOrder="Descending", MaxResults=1)["TrainingJobSummaries"]
    if jobs:
        job = sm.describe_training_job(TrainingJobName=jobs[0]["TrainingJobName"])
        metrics = {m["MetricName"]: m["Value"] for m in job.get("FinalMetricDataList", [])}
        say(
            f"fine-tune job {job['TrainingJobName']}: {job['TrainingJobStatus']}; "
            + ", ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items()))
        )
        if "scratch:validation:accuracy" in metrics:
            say(
                f"transfer vs scratch on all domain training images (same architecture, same budget; the "
                f"report compares at 5, 20 and 50 images per class): "
                f"{metrics.get('validation:accuracy', 0):.3f} vs {metrics['scratch:validation:accuracy']:.3f}"
            )
    endpoints = sm.list_endpoints()["Endpoints"]
    url = f"http://127.0.0.1:{state['localcloud_port']}"
    report = VAR / "report" / "report.md"
    for e in endpoints:
        name = e["EndpointName"]
        say(f"endpoint {name}: {e['EndpointStatus']}", "ok" if e["EndpointStatus"] == "InService" else "err")
        sample = _sample_image()
        ready = VAR / "localcloud" / "ready.json"
        print(f"""
  Classify an image through the endpoint with boto3 (localcloud's key is in {ready}, mode 0600):

    import boto3, json
    lc = json.load(open("{ready}"))
    rt = boto3.client("sagemaker-runtime", endpoint_url=lc["url"], region_name=lc["region"],
                      aws_access_key_id=lc["access_key_id"], aws_secret_access_key=lc["secret_access_key"])
    r = rt.invoke_endpoint(EndpointName="{name}", ContentType="application/x-image",
                           Body=open("{sample}", "rb").read())
    print(r["Body"].read().decode())

  or with curl, which signs the request itself:

    curl -s -X POST --aws-sigv4 aws:amz:us-east-1:sagemaker \\
      --user "$(python3 -c 'import json; d = json.load(open("{ready}")); print(d["access_key_id"] + ":" + d["secret_access_key"])')" \\
      -H 'Content-Type: application/x-image' --data-binary @{sample} {url}/endpoints/{name}/invocations
""")
    if report.exists():
        say(f"transfer-vs-scratch report: {report}")
    elif pid_of("report"):
        say(
            f"transfer-vs-scratch report (5/20/50 images per class): being written to {report} "
            f"(a few minutes; progress in {LOGS / 'report.log'})"
        )
    if dep is not None:
        lineage = _xcom(api, DEPLOY_DAG, dep["dag_run_id"], "record_lineage", "summary") or _xcom(
            api, DEPLOY_DAG, dep["dag_run_id"], "rollback", "summary"
        )
        if lineage:
            say(f"deploy: {lineage.get('status')}: {lineage.get('reason')}")
    ok = dep is None or dep["state"] == "success"
    say(
        f"Airflow UI: http://127.0.0.1:{state['airflow_port']} (admin; password in {STATE}); "
        f"pipeline wall time {seconds / 60:.1f} min; {PRETRAIN_DAG} {pre['state']}"
        + (f", {DEPLOY_DAG} {dep['state']}" if dep else ""),
        "ok" if ok else "err",
    )


def report_destination(api: Api, deploy_run_id: str) -> str | None:
    """Beside the deploy run's lineage record: ``<job>/transfer-report/`` next to its ``report.md``."""
    summary = _xcom(api, DEPLOY_DAG, deploy_run_id, "record_lineage", "summary") or {}
    report = (summary.get("artifacts") or {}).get("report_uri")
    return report.rsplit("/", 1)[0] + "/transfer-report" if report else None


def _sample_image() -> Path:
    """A held-out domain image, for the copy-paste examples."""
    import gzip

    lists = sorted((VAR / "curated").glob("*/domain_val.tsv.gz"), key=lambda p: p.stat().st_mtime)
    if lists:
        with gzip.open(lists[-1], "rt") as fh:
            rel = fh.readline().split("\t")[0]
        return VAR / "data" / "raw" / rel
    return next((VAR / "data" / "raw").rglob("*.jpg"))


def start_report(api: Api, run_id: str, state: dict, upload_to: str | None = None) -> None:
    """Transfer vs scratch at 5, 20 and 50 images per class on this run's domain classes and the two real-image
    domains, with this run's pretrained model, in the background (18 fine-tuning jobs, two at a time: about an
    hour on 2 cores), into var/report/."""
    prepared = _xcom(api, PRETRAIN_DAG, run_id, "prepare", "manifest_path")
    ckpt = _xcom(api, PRETRAIN_DAG, run_id, "prepare", "checkpoint_uri")
    if not prepared or not ckpt or pid_of("report"):
        return
    from training.contracts import CheckpointDir, pretrained_dir
    from training.store import Store, is_s3

    pretrained = VAR / "report" / "pretrained" / run_id.replace(":", "_")
    if is_s3(ckpt) and not (pretrained / "meta.json").exists():
        # The checkpoint lives in the S3-compatible store; the report reads a local copy of the best epoch.
        store = Store(_client=checkpoint_store(state).client())
        store.download_dir(CheckpointDir(ckpt).best_checkpoint(store), pretrained)
    elif not is_s3(ckpt):
        pretrained = pretrained_dir(ckpt)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}
    # The plots go beside the deploy run's lineage record too (localcloud's S3, with its key).
    env.update(aws_env(state))
    upload = ["--upload-to", upload_to] if upload_to else []
    start(
        "report",
        [
            sys.executable,
            "-m",
            "training.report",
            "--out",
            str(VAR / "report"),
            "--manifest",
            str(prepared),
            "--pretrained",
            str(pretrained),
            "--seeds",
            "2",
            "--parallel",
            "2",
            *upload,
        ],
        {**env, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
