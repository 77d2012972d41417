"""The one-command demo: localcloud + Airflow on this machine, the whole pipeline through the REST API.

    python scripts/demo.py up      # start everything, trigger general_pretraining, follow it to a live endpoint
    python scripts/demo.py down    # stop what `up` started (pidfiles in var/run)
    python scripts/demo.py status  # what is running, and where

Everything lives under ``var/`` in the project: the demo dataset, Airflow's home, localcloud's state, logs
(``var/log``) and pidfiles (``var/run``). ``up`` is idempotent: it reuses what is already running.

Secrets (the admin password, Airflow's JWT secret, localcloud's access key) are generated once per install and
kept in ``var/run/demo.json``; everything the demo writes is readable by this user only (umask 077), and no
secret is printed. Every service listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Everything the demo writes; TLPIPE_DEMO_DIR moves it (the end-to-end test runs in a temporary one).
VAR = Path(os.environ.get("TLPIPE_DEMO_DIR", ROOT / "var")).resolve()
RUN, LOGS = VAR / "run", VAR / "log"
STATE = RUN / "demo.json"
BIN = Path(sys.executable).parent
PRETRAIN_DAG, DEPLOY_DAG = "general_pretraining", "transfer_learning_deploy"
TERMINAL = {"success", "failed", "upstream_failed", "skipped", "removed"}


def say(msg: str, style: str = "") -> None:
    colors = {"ok": "32", "warn": "33", "err": "31", "head": "1"}
    code = colors.get(style)
    stamp = time.strftime("%H:%M:%S")
    print(f"\033[{code}m[{stamp}] {msg}\033[0m" if code and sys.stdout.isatty() else f"[{stamp}] {msg}", flush=True)


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def pid_of(name: str) -> int | None:
    f = RUN / f"{name}.pid"
    if f.exists():
        pid = int(f.read_text())
        if alive(pid):
            return pid
        f.unlink()
    return None


def start(name: str, argv: list[str], env: dict) -> int:
    """Start a service in its own process group, logging to var/log/<name>.log; the pidfile is its group."""
    LOGS.mkdir(parents=True, exist_ok=True)
    RUN.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"{name}.log", "ab")
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    (RUN / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def stop(name: str, grace: float = 30.0) -> None:
    pid = pid_of(name)
    if pid is None:
        return
    say(f"stopping {name} (pid {pid})")
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.3)
    if alive(pid):
        os.killpg(pid, signal.SIGKILL)
    (RUN / f"{name}.pid").unlink(missing_ok=True)


def wait_for(what: str, check, timeout: float, proc_name: str | None = None, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if proc_name and pid_of(proc_name) is None:
            raise SystemExit(f"{proc_name} exited while waiting for {what}; see {LOGS / (proc_name + '.log')}")
        time.sleep(interval)
    raise SystemExit(
        f"timed out after {timeout:.0f} s waiting for {what}"
        + (f"; see {LOGS / (proc_name + '.log')}" if proc_name else "")
    )


# -- configuration of the services ---------------------------------------------------------------------------
def write_private(path: Path, text: str) -> None:
    """Write a file only this user can read (0600), whatever the umask, replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def demo_state(args) -> dict:
    previous = json.loads(STATE.read_text()) if STATE.exists() else {}
    if previous and (pid_of("localcloud") or pid_of("airflow")):
        return previous
    state = {
        "localcloud_port": free_port(args.localcloud_port),
        "airflow_port": free_port(args.airflow_port),
        "password": previous.get("password") or secrets.token_urlsafe(12),
        "jwt_secret": secrets.token_hex(32),
        # localcloud accepts requests signed with this key only; generated once per install, like the password.
        "localcloud_access_key_id": previous.get("localcloud_access_key_id") or "LC" + secrets.token_hex(9).upper(),
        "localcloud_secret_access_key": previous.get("localcloud_secret_access_key") or secrets.token_urlsafe(30),
    }
    write_private(STATE, json.dumps(state, indent=2))
    return state


def aws_env(state: dict) -> dict:
    return {
        "AWS_ACCESS_KEY_ID": state["localcloud_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": state["localcloud_secret_access_key"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{state['localcloud_port']}",
    }


def localcloud_env(state: dict, env: dict) -> dict:
    return {
        **env,
        "LOCALCLOUD_ACCESS_KEY_ID": state["localcloud_access_key_id"],
        "LOCALCLOUD_SECRET_ACCESS_KEY": state["localcloud_secret_access_key"],
    }


def airflow_env(state: dict) -> dict:
    home = VAR / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    passwords = home / "passwords.json"
    write_private(passwords, json.dumps({"admin": state["password"]}))
    endpoint = f"http://127.0.0.1:{state['localcloud_port']}"
    # Only this demo's Airflow settings: nothing inherited from another Airflow set up in this shell.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_", "TLPIPE"))}
    env = {
        **inherited,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "TLPIPE_PROFILE": "local",
        "TLPIPE_HOME": str(ROOT),
        "TLPIPE__DATASET__URI": str(VAR / "data" / "raw"),
        "TLPIPE__DATASET__CURATED_ROOT": str(VAR / "curated"),
        "TLPIPE__CHECKPOINTS__ROOT": str(VAR / "checkpoints"),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        # The plugins folder that ships (as in the image and docker-compose.yaml): the tlpipe plugin loads from it.
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "4",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(state["airflow_port"]),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{state['airflow_port']}",
        "AIRFLOW__API_AUTH__JWT_SECRET": state["jwt_secret"],
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "600",
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
            {
                "conn_type": "aws",
                "login": state["localcloud_access_key_id"],
                "password": state["localcloud_secret_access_key"],
                "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
            }
        ),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "NO_COLOR": "1",
    }
    return env


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


# -- the demo --------------------------------------------------------------------------------------------------
def up(args) -> int:
    t_start = time.monotonic()
    os.umask(0o077)  # Airflow's database, logs, checkpoints: this user's only, on a shared host too
    VAR.mkdir(parents=True, exist_ok=True)
    VAR.chmod(0o700)
    state = demo_state(args)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))},
        **aws_env(state),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    py = sys.executable

    say("1/5 demo dataset", "head")
    raw = VAR / "data" / "raw"
    if not (raw.parent / "raw.synth.json").exists():
        subprocess.run([py, "-m", "training.synth_data", "--out", str(raw)], cwd=ROOT, env=env, check=True)
    else:
        say(f"reusing {raw}")

    say("2/5 localcloud (S3, CloudWatch Logs, SageMaker on loopback)", "head")
    lc_url = f"http://127.0.0.1:{state['localcloud_port']}"
    if pid_of("localcloud") is None:
        start(
            "localcloud",
            [py, "-m", "localcloud", "--port", str(state["localcloud_port"]), "--data-dir", str(VAR / "localcloud")],
            localcloud_env(state, env),
        )

    def lc_ready():
        import httpx

        return httpx.get(f"{lc_url}/_localcloud/health", timeout=2).status_code == 200

    wait_for("localcloud", lc_ready, 120, "localcloud")
    say(f"localcloud at {lc_url}", "ok")

    say("3/5 Airflow (standalone: api-server, scheduler, dag-processor, triggerer)", "head")
    af_url = f"http://127.0.0.1:{state['airflow_port']}"
    if pid_of("airflow") is None:
        start("airflow", [str(BIN / "airflow"), "standalone"], airflow_env(state))
    api = Api(af_url, state["password"])
    wait_for("the Airflow API", lambda: api.login() or True, 300, "airflow", interval=2)
    say(f"Airflow UI at {af_url}  (user admin, password in {STATE})", "ok")
    r = api.send("POST", "/pools", {"name": "gpu", "slots": 1, "description": "GPU training"})
    if r.status_code not in (200, 201, 409):
        r.raise_for_status()
    for dag_id in (PRETRAIN_DAG, DEPLOY_DAG):
        wait_for(f"DAG {dag_id} to be parsed", lambda d=dag_id: api.get(f"/dags/{d}"), 300, "airflow", interval=2)
        api.send("PATCH", f"/dags/{dag_id}", {"is_paused": False}).raise_for_status()
    errors = api.get("/importErrors").get("import_errors", [])
    for e in errors:
        say(f"DAG import error in {e.get('filename')}: {e.get('stack_trace', '')[-500:]}", "err")

    say("4/5 trigger general_pretraining through the REST API", "head")
    conf = json.loads(args.conf) if args.conf else {}
    r = api.send("POST", f"/dags/{PRETRAIN_DAG}/dagRuns", {"logical_date": None, "conf": conf})
    if r.status_code >= 400:
        say(f"trigger refused ({r.status_code}): {r.text}", "err")
        return 1
    run = r.json()
    say(f"run {run['dag_run_id']} queued", "ok")

    say("5/5 follow the pipeline (Ctrl-C stops following; the services keep running until `make demo-down`)", "head")
    pre = follow(api, PRETRAIN_DAG, run["dag_run_id"], state)
    if pre["state"] != "success":
        say(f"{PRETRAIN_DAG} ended {pre['state']}; task logs in the UI or under {VAR / 'airflow' / 'logs'}", "err")
        return 1
    skipped = api.get(f"/dags/{PRETRAIN_DAG}/dagRuns/{run['dag_run_id']}/taskInstances/skip_training")
    if skipped.get("state") == "success":
        say("the dataset and training parameters match the last exported model: nothing new to deploy", "warn")
        summary(api, state, pre, None, time.monotonic() - t_start)
        return 0
    deploy_run = wait_for(
        f"{DEPLOY_DAG} to be triggered by the pretrained-model Asset",
        lambda: _deploy_run_for(api, run["dag_run_id"]),
        300,
        "airflow",
        interval=2,
    )
    dep = follow(api, DEPLOY_DAG, deploy_run["dag_run_id"], state)
    if dep["state"] == "success" and not args.no_report:
        start_report(api, run["dag_run_id"])
    summary(api, state, pre, dep, time.monotonic() - t_start)
    if dep["state"] != "success":
        return 1
    if args.no_wait:
        return 0
    say("services keep running; press Ctrl-C to stop them (or run `make demo-down` from another shell)")
    try:
        while pid_of("airflow") and pid_of("localcloud"):
            time.sleep(2)
    except KeyboardInterrupt:
        down(args)
    return 0


def _deploy_run_for(api: Api, pretrain_run_id: str):
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
            _show_epochs(api, dag_id, run_id, shown_epochs)
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


def _show_epochs(api: Api, dag_id: str, run_id: str, shown: set[str]) -> None:
    ckpt = _xcom(api, dag_id, run_id, "prepare", "checkpoint_uri")
    if not ckpt or str(ckpt).startswith("s3://"):
        return
    for m in sorted(Path(ckpt).glob("epochs/*/metrics.json")):
        if m.parent.name not in shown and (m.parent / "COMMITTED").exists():
            shown.add(m.parent.name)
            e = json.loads(m.read_text())
            say(
                f"  pretrain epoch {e['epoch']}: loss {e['loss']:.3f} val_accuracy {e['val_accuracy']:.3f} "
                f"({e['images_per_second']:.0f} img/s)"
            )


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


def _sample_image() -> Path:
    """A held-out domain image, for the copy-paste examples."""
    import gzip

    lists = sorted((VAR / "curated").glob("*/domain_val.tsv.gz"), key=lambda p: p.stat().st_mtime)
    if lists:
        with gzip.open(lists[-1], "rt") as fh:
            rel = fh.readline().split("\t")[0]
        return VAR / "data" / "raw" / rel
    return next((VAR / "data" / "raw").rglob("*.jpg"))


def start_report(api: Api, run_id: str) -> None:
    """Transfer vs scratch at 5, 20 and 50 images per class on this run's data and pretrained model, in the
    background (several fine-tuning jobs: minutes), into var/report/."""
    prepared = _xcom(api, PRETRAIN_DAG, run_id, "prepare", "manifest_path")
    ckpt = _xcom(api, PRETRAIN_DAG, run_id, "prepare", "checkpoint_uri")
    if not prepared or not ckpt or pid_of("report"):
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}
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
            str(Path(ckpt) / "best"),
            "--seeds",
            "2",
        ],
        {**env, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def down(_args=None) -> int:
    stop("report", grace=5)
    for name in ("airflow", "localcloud"):
        stop(name)
    say("demo stopped", "ok")
    return 0


def status(_args=None) -> int:
    state = json.loads(STATE.read_text()) if STATE.exists() else {}
    for name, port_key in (("localcloud", "localcloud_port"), ("airflow", "airflow_port")):
        pid = pid_of(name)
        where = f"http://127.0.0.1:{state.get(port_key)}" if pid else "-"
        say(f"{name}: {'running (pid %d)' % pid if pid else 'stopped'} {where}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up")
    u.add_argument("--conf", default=None, help="JSON conf for the general_pretraining run")
    u.add_argument("--localcloud-port", type=int, default=4566)
    u.add_argument("--airflow-port", type=int, default=8080)
    u.add_argument("--no-wait", action="store_true", help="return once the endpoint is live (services keep running)")
    u.add_argument("--no-report", action="store_true", help="skip the background transfer-vs-scratch report")
    sub.add_parser("down")
    sub.add_parser("status")
    args = p.parse_args(argv)
    return {"up": up, "down": down, "status": status}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
