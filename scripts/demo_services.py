"""The demo's services on this machine: where it keeps things, its secrets (0600, per install), the environment
of localcloud and Airflow, and starting, stopping and waiting for processes (pidfiles in var/run)."""

from __future__ import annotations

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
# What the demo runs, in start order; stopped in reverse. The Airflow components are separate processes, as in
# docker-compose.yaml and a Kubernetes deployment.
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
SERVICES = ("postgres", "seaweedfs", "localcloud", *(f"airflow-{c}" for c in AIRFLOW_COMPONENTS))
CHECKPOINT_BUCKET = "tlpipe-checkpoints"
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


def start(name: str, argv: list[str], env: dict, **popen) -> int:
    """Start a service in its own process group, logging to var/log/<name>.log; the pidfile is its group."""
    LOGS.mkdir(parents=True, exist_ok=True)
    RUN.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"{name}.log", "ab")
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        **popen,
    )
    (RUN / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def stop(name: str, grace: float = 30.0, sig: int = signal.SIGTERM) -> None:
    pid = pid_of(name)
    if pid is None:
        return
    say(f"stopping {name} (pid {pid})")
    try:
        os.killpg(pid, sig)
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
    if previous and any(pid_of(name) for name in SERVICES):
        return previous
    from localcloud.onprem import SEAWEED_PORTS, free_ports

    keep = ("postgres_password", "airflow_db_password", "store_access_key_id", "store_secret_access_key")
    state = {
        "localcloud_port": free_port(args.localcloud_port),
        "airflow_port": free_port(args.airflow_port),
        "postgres_port": free_port(args.postgres_port),
        "seaweedfs_ports": dict(zip(SEAWEED_PORTS, free_ports(len(SEAWEED_PORTS)))),
        # Per install, like the others: the database's superuser and Airflow's role, the checkpoint store's key.
        **{k: previous[k] for k in keep if previous.get(k)},
        "password": previous.get("password") or secrets.token_urlsafe(12),
        "jwt_secret": secrets.token_hex(32),
        # localcloud accepts requests signed with this key only; generated once per install, like the password.
        "localcloud_access_key_id": previous.get("localcloud_access_key_id") or "LC" + secrets.token_hex(9).upper(),
        "localcloud_secret_access_key": previous.get("localcloud_secret_access_key") or secrets.token_urlsafe(30),
    }
    state.setdefault("postgres_password", secrets.token_urlsafe(18))
    state.setdefault("airflow_db_password", secrets.token_urlsafe(18))
    state.setdefault("store_access_key_id", "ST" + secrets.token_hex(9).upper())
    state.setdefault("store_secret_access_key", secrets.token_urlsafe(30))
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
    """The environment every Airflow component of the demo runs with (and `demo.py env` prints)."""
    from localcloud.onprem import AIRFLOW_DATABASE, AIRFLOW_ROLE

    home = VAR / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    passwords = home / "passwords.json"
    write_private(passwords, json.dumps({"admin": state["password"]}))
    db_password = RUN / "airflow-db-password"
    write_private(db_password, state["airflow_db_password"])
    endpoint = f"http://127.0.0.1:{state['localcloud_port']}"
    api = f"http://127.0.0.1:{state['airflow_port']}"
    # Only this demo's Airflow settings: nothing inherited from another Airflow set up in this shell.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_", "TLPIPE", "POSTGRES"))}
    env = {
        **inherited,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "TLPIPE_PROFILE": "local",
        "TLPIPE_HOME": str(ROOT),
        "TLPIPE__DATASET__URI": str(VAR / "data" / "raw"),
        "TLPIPE__DATASET__CURATED_ROOT": str(VAR / "curated"),
        # Checkpoints go to the S3-compatible store through the checkpoint_store connection, as in production.
        "TLPIPE__CHECKPOINTS__ROOT": f"s3://{CHECKPOINT_BUCKET}/runs",
        "TLPIPE__CHECKPOINTS__CONN_ID": "checkpoint_store",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        # The plugins folder that ships (as in the image and docker-compose.yaml): the tlpipe plugin loads from it.
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "4",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(state["airflow_port"]),
        "AIRFLOW__API__BASE_URL": api,
        "AIRFLOW__API_AUTH__JWT_SECRET": state["jwt_secret"],
        # The metadata database is PostgreSQL; the URL is built by the image's own helper from a 0600 file, so
        # the password is in no process's environment.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD": f"{sys.executable} {ROOT / 'docker' / 'airflow' / 'db-url'}",
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": str(state["postgres_port"]),
        "POSTGRES_USER": AIRFLOW_ROLE,
        "POSTGRES_DB": AIRFLOW_DATABASE,
        "POSTGRES_PASSWORD_FILE": str(db_password),
        # The SageMaker waits go through the triggerer, as in production.
        "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "True",
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
        "AIRFLOW_CONN_CHECKPOINT_STORE": json.dumps(checkpoint_store(state).connection()),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "NO_COLOR": "1",
    }
    return env


def checkpoint_store(state: dict):
    from localcloud.onprem import SeaweedS3

    return SeaweedS3(
        VAR / "seaweedfs", state["seaweedfs_ports"], state["store_access_key_id"], state["store_secret_access_key"]
    )


def postgres(state: dict):
    from localcloud.onprem import Postgres

    return Postgres(VAR / "postgres", state["postgres_port"], state["postgres_password"])
