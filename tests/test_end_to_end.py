"""The whole product on one machine, in the production topology: `scripts/demo.py up` (what `make demo` runs)
starts PostgreSQL, the S3-compatible checkpoint store (SeaweedFS), localcloud and Airflow's four components,
triggers general_pretraining through the REST API, the pretrained-model Asset triggers
transfer_learning_deploy (its SageMaker waits deferred to the triggerer), and the test classifies held-out domain
images through the live endpoint."""

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _clean_env(var: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_", "TLPIPE"))}
    # Shorter than the demo's defaults, still a real pretraining and fine-tune.
    env.update({"TLPIPE_DEMO_DIR": str(var), "TLPIPE__TRAINING__EPOCHS": "6"})
    return env


@pytest.fixture()
def demo_dir():
    """A directory of its own, outside pytest's base temp: pytest resets that tree to 0700 whenever another
    session starts, which would shut out PostgreSQL's own user (as root) in the middle of the run."""
    path = Path(tempfile.mkdtemp(prefix="tlpipe-e2e-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.chaos
def test_raw_images_to_a_live_endpoint(demo_dir, chaos):
    import boto3

    chaos.fault(
        "security",
        "a whole demo run searched for its secrets (database, store, localcloud, Airflow passwords and keys)",
        "none in the task logs, the service logs, XComs, rendered templates, the lineage record or its artifacts",
    )
    crash = chaos.another("scheduler-and-triggerer").fault(
        "deploy",
        "the scheduler and the triggerer SIGKILLed (with their process groups) while the fine-tune's SageMaker "
        "wait is deferred, started again 10 s later",
        "the deferred wait is picked up again and the run finishes with the endpoint live",
    )
    var = demo_dir / "var"
    env = _clean_env(var)
    demo = [sys.executable, str(ROOT / "scripts" / "demo.py")]
    try:
        up = subprocess.Popen(
            [*demo, "up", "--no-wait", "--no-report", "--localcloud-port", "0", "--airflow-port", "0"]
            + ["--postgres-port", "0"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines, back_at = [], None
        for line in up.stdout:  # the SageMaker waits go through the triggerer: crash it and the scheduler then
            lines.append(line)
            if back_at is None and "transfer_learning_deploy: finetune -> deferred" in line:
                back_at = _crash_and_restart(demo, env, var, ("scheduler", "triggerer"), down_for=10)
        up.wait(1800)
        out = "".join(lines)
        assert up.returncode == 0, out[-6000:] + _tail(var / "log" / "airflow-scheduler.log")
        assert "general_pretraining success, transfer_learning_deploy success" in out
        assert "pretrain epoch 6:" in out
        assert "transfer_learning_deploy: finetune -> deferred" in out and back_at is not None
        crash.figure("components down (s)", 10.0)
        crash.figure("run finished after they were back (s)", time.monotonic() - back_at)

        state = json.loads((var / "run" / "demo.json").read_text())
        _check_demo_secrets_and_binds(var, state, out)
        _check_production_topology(var, state)
        url = f"http://127.0.0.1:{state['localcloud_port']}"
        kw = dict(
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id=state["localcloud_access_key_id"],
            aws_secret_access_key=state["localcloud_secret_access_key"],
        )
        sm, rt = boto3.client("sagemaker", **kw), boto3.client("sagemaker-runtime", **kw)
        endpoint = sm.describe_endpoint(EndpointName="tlpipe-domain")
        assert endpoint["EndpointStatus"] == "InService"
        job = sm.list_training_jobs()["TrainingJobSummaries"][0]
        assert job["TrainingJobStatus"] == "Completed"
        # Beside the lineage record: the pretraining TensorBoard logs (from the checkpoint store) and the report.
        s3 = boto3.client("s3", **kw)
        keys = [
            o["Key"] for o in s3.list_objects_v2(Bucket="tlpipe", Prefix="tlpipe/lineage/tlpipe-domain/")["Contents"]
        ]
        (record_key,) = [k for k in keys if k.endswith(".json")]
        record = json.loads(s3.get_object(Bucket="tlpipe", Key=record_key)["Body"].read())
        folder = record_key[: -len(".json")]
        assert record["artifacts"]["tensorboard_uri"] == f"s3://tlpipe/{folder}/tensorboard/pretrain/"
        assert f"{folder}/report.md" in keys and any(k.startswith(f"{folder}/tensorboard/pretrain/") for k in keys)
        for name, count in _check_nothing_records_a_secret(var, state, s3).items():
            chaos.figure(name, count)

        # Held-out domain validation images, straight from the raw tree, through the endpoint.
        (domain_val,) = (var / "curated").glob("*/domain_val.tsv.gz")
        with gzip.open(domain_val, "rt") as fh:
            pairs = [line.rstrip("\n").split("\t") for line in fh]
        classes = sorted({c for _, c in pairs})
        correct = 0
        for rel, label in pairs:
            body = (var / "data" / "raw" / rel).read_bytes()
            resp = rt.invoke_endpoint(EndpointName="tlpipe-domain", ContentType="application/x-image", Body=body)
            top = json.loads(resp["Body"].read())["predictions"][0][0]["label"]
            correct += top == label
        accuracy = correct / len(pairs)
        print(f"end-to-end: {accuracy:.3f} accuracy on {len(pairs)} held-out images of {len(classes)} classes")
        assert accuracy > 1 / len(classes)
    finally:
        subprocess.run([*demo, "down"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert not list((var / "run").glob("*.pid")), "demo-down left services running"


def _crash_and_restart(demo: list[str], env: dict, var: Path, components, down_for: float) -> float:
    """SIGKILL the components' process groups (a node lost under them), wait, start them again; when they are back."""
    for name in components:
        pid = int((var / "run" / f"airflow-{name}.pid").read_text())
        os.killpg(pid, signal.SIGKILL)
    time.sleep(down_for)
    r = subprocess.run([*demo, "restart", *components], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return time.monotonic()


def _check_demo_secrets_and_binds(var: Path, state: dict, out: str) -> None:
    """Secrets per install in files only this user reads, never printed; every service on loopback only."""
    import stat

    import psutil

    for path in (
        var / "run" / "demo.json",
        var / "airflow" / "passwords.json",
        var / "run" / "airflow-db-password",
        var / "seaweedfs" / "s3-identities.json",
        var / "postgres" / "postgresql.conf",
        var / "localcloud" / "ready.json",
    ):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path} is readable by others"
    # As root, PostgreSQL runs as its own system user, which may traverse var/ (not list it) to reach its data.
    assert stat.S_IMODE(var.stat().st_mode) == (0o701 if os.geteuid() == 0 else 0o700)
    logs = out + "".join(p.read_text(errors="replace") for p in (var / "log").glob("*.log"))
    for secret in (*[state[k] for k in SECRETS], state["store_secret_access_key"]):
        assert secret not in logs, "a demo secret was printed"
    with pytest.raises(Exception):  # localcloud refuses unsigned and wrongly signed requests
        import boto3

        boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{state['localcloud_port']}",
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        ).list_buckets()
    listening = {c.laddr.port: c.laddr.ip for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN}
    ports = [
        state["airflow_port"],
        state["localcloud_port"],
        state["postgres_port"],
        *state["seaweedfs_ports"].values(),
    ]
    for port in ports:
        assert listening.get(port) == "127.0.0.1", f"port {port} listens on {listening.get(port)}"


def _airflow_db(state: dict):
    """A connection to the demo's Airflow database (its PostgreSQL, the airflow role)."""
    import psycopg2

    return psycopg2.connect(
        host="127.0.0.1",
        port=state["postgres_port"],
        user="airflow",
        password=state["airflow_db_password"],
        dbname="airflow",
    )


SECRETS = ("password", "jwt_secret", "localcloud_secret_access_key", "postgres_password", "airflow_db_password")


def _check_nothing_records_a_secret(var: Path, state: dict, s3) -> dict[str, int]:
    """Every place a run leaves text behind, searched for every secret of the install."""

    secrets = [state[k] for k in (*SECRETS, "store_secret_access_key")]
    texts: dict[str, str] = {}
    for path in [*(var / "airflow" / "logs").rglob("*"), *(var / "log").glob("*.log")]:
        if path.is_file():
            texts[str(path)] = path.read_text(errors="replace")
    conn = _airflow_db(state)
    with conn, conn.cursor() as cur:
        for table, column in (("xcom", "value"), ("rendered_task_instance_fields", "rendered_fields")):
            cur.execute(f"select {column}::text from {table}")  # noqa: S608 - fixed names
            texts.update({f"{table} row {i}": row[0] or "" for i, row in enumerate(cur.fetchall())})
    conn.close()
    listed = s3.list_objects_v2(Bucket="tlpipe", Prefix="tlpipe/lineage/").get("Contents", [])
    for o in listed:
        if o["Key"].endswith((".json", ".md")) and o["Size"] < 2**20:
            texts[o["Key"]] = s3.get_object(Bucket="tlpipe", Key=o["Key"])["Body"].read().decode(errors="replace")
    found = [where for where, text in texts.items() if any(secret in text for secret in secrets)]
    assert found == [], f"a secret is recorded in {found[:5]}"
    assert any("xcom row" in k for k in texts) and any("/airflow/logs/" in k for k in texts)
    return {
        "log files searched": sum(1 for k in texts if k.startswith("/")),
        "database rows searched": sum(1 for k in texts if " row " in k),
        "lineage objects searched": sum(1 for k in texts if k.startswith("tlpipe/")),
        "secrets found": len(found),
    }


def _check_production_topology(var: Path, state: dict) -> None:
    """Airflow ran on the demo's PostgreSQL as four processes; the checkpoints are in the S3-compatible store."""
    import psutil

    from localcloud.onprem import SeaweedS3

    sys.path.insert(0, str(ROOT / "scripts"))
    from demo_services import AIRFLOW_COMPONENTS, CHECKPOINT_BUCKET

    for component in AIRFLOW_COMPONENTS:
        pid = int((var / "run" / f"airflow-{component}.pid").read_text())
        # Airflow retitles its processes ("airflow api_server -- host:..."); either spelling names the component.
        title = " ".join(psutil.Process(pid).cmdline()).replace("-", "_")
        assert f"airflow {component.replace('-', '_')}" in title, f"no airflow {component} process: {title}"
    conn = _airflow_db(state)
    with conn, conn.cursor() as cur:
        cur.execute("select dag_id, state from dag_run order by start_date")
        runs = cur.fetchall()
    conn.close()
    assert ("general_pretraining", "success") in runs and ("transfer_learning_deploy", "success") in runs
    ports, key, secret = state["seaweedfs_ports"], state["store_access_key_id"], state["store_secret_access_key"]
    s3 = SeaweedS3(var / "seaweedfs", ports, key, secret).client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=CHECKPOINT_BUCKET, Prefix="runs/").get("Contents", [])]
    assert any(k.endswith("/best.json") for k in keys) and any(k.endswith("/COMPLETE") for k in keys), keys[:20]
    assert not (var / "checkpoints").exists(), "checkpoints were written to a local directory"


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""
