"""The one-command demo: localcloud + Airflow on this machine, the whole pipeline through the REST API.

    python scripts/demo.py up      # start everything, trigger general_pretraining, follow it to a live endpoint
    python scripts/demo.py down    # stop what `up` started (pidfiles in var/run)
    python scripts/demo.py status  # each component, where it listens, whether it answers
    python scripts/demo.py shell   # a shell with the demo's Airflow environment (`airflow tasks test ...`)

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
import signal
import subprocess
import sys
import time

from demo_follow import Api, deploy_run_for, follow, report_destination, start_report, summary
from demo_services import (
    AIRFLOW_COMPONENTS,
    BIN,
    CHECKPOINT_BUCKET,
    DEPLOY_DAG,
    PRETRAIN_DAG,
    ROOT,
    SERVICES,
    STATE,
    VAR,
    airflow_env,
    aws_env,
    checkpoint_store,
    demo_state,
    localcloud_env,
    pid_of,
    postgres,
    say,
    start,
    stop,
    wait_for,
)


# -- the demo --------------------------------------------------------------------------------------------------
def _dataset(env: dict) -> None:
    say("1/6 demo dataset", "head")
    raw = VAR / "data" / "raw"
    if not (raw.parent / "raw.synth.json").exists():
        subprocess.run([sys.executable, "-m", "training.synth_data", "--out", str(raw)], cwd=ROOT, env=env, check=True)
    else:
        say(f"reusing {raw}")


def _localcloud(state: dict, env: dict) -> None:
    say("3/6 localcloud (S3, CloudWatch Logs, SageMaker on loopback)", "head")
    lc_url = f"http://127.0.0.1:{state['localcloud_port']}"
    if pid_of("localcloud") is None:
        argv = [sys.executable, "-m", "localcloud", "--port", str(state["localcloud_port"])]
        start("localcloud", [*argv, "--data-dir", str(VAR / "localcloud")], localcloud_env(state, env))

    def lc_ready():
        import httpx

        return httpx.get(f"{lc_url}/_localcloud/health", timeout=2).status_code == 200

    wait_for("localcloud", lc_ready, 120, "localcloud")
    say(f"localcloud at {lc_url}", "ok")


def _stores(state: dict, env: dict) -> None:
    """PostgreSQL (Airflow's metadata database) and SeaweedFS (the on-prem S3-compatible checkpoint store)."""
    say("2/6 PostgreSQL and the S3-compatible checkpoint store (SeaweedFS)", "head")
    pg = postgres(state)
    if pid_of("postgres") is None:
        if pg.initialise():
            say(f"initialised a PostgreSQL cluster in {pg.data_dir}")
        start("postgres", pg.argv(), env, **pg.popen_kwargs())
    wait_for("PostgreSQL", pg.ready, 60, "postgres", interval=0.5)
    pg.ensure_airflow_database(state["airflow_db_password"])
    say(f"PostgreSQL {pg.server_version()} at 127.0.0.1:{pg.port}", "ok")
    store = checkpoint_store(state)
    if pid_of("seaweedfs") is None:
        store.initialise()
        start("seaweedfs", store.argv(), env)
    wait_for("the checkpoint store's S3 API", store.ready, 120, "seaweedfs", interval=0.5)
    store.ensure_bucket(CHECKPOINT_BUCKET)
    say(f"checkpoint store at {store.endpoint_url} (bucket {CHECKPOINT_BUCKET})", "ok")


def _airflow(state: dict) -> Api:
    say("4/6 Airflow on PostgreSQL: api-server, scheduler, dag-processor, triggerer (LocalExecutor)", "head")
    af_url = f"http://127.0.0.1:{state['airflow_port']}"
    env = airflow_env(state)
    if not any(pid_of(f"airflow-{c}") for c in AIRFLOW_COMPONENTS):
        migrate = subprocess.run(
            [str(BIN / "airflow"), "db", "migrate"], cwd=ROOT, env=env, capture_output=True, text=True
        )
        if migrate.returncode:
            raise SystemExit(f"airflow db migrate failed:\n{(migrate.stdout + migrate.stderr)[-3000:]}")
    for component in AIRFLOW_COMPONENTS:
        if pid_of(f"airflow-{component}") is None:
            start(f"airflow-{component}", [str(BIN / "airflow"), component], env)
    api = Api(af_url, state["password"])
    wait_for("the Airflow API", lambda: api.login() or True, 300, "airflow-api-server", interval=2)
    say(f"Airflow UI at {af_url}  (user admin, password in {STATE})", "ok")
    r = api.send("POST", "/pools", {"name": "gpu", "slots": 1, "description": "GPU training"})
    if r.status_code not in (200, 201, 409):
        r.raise_for_status()
    for dag_id in (PRETRAIN_DAG, DEPLOY_DAG):
        wait_for(
            f"DAG {dag_id} to be parsed",
            lambda d=dag_id: api.get(f"/dags/{d}"),
            300,
            "airflow-dag-processor",
            interval=2,
        )
        api.send("PATCH", f"/dags/{dag_id}", {"is_paused": False}).raise_for_status()
    for e in api.get("/importErrors").get("import_errors", []):
        say(f"DAG import error in {e.get('filename')}: {e.get('stack_trace', '')[-500:]}", "err")
    return api


def _pipeline(api: Api, args, state: dict, t_start: float) -> int | None:
    """The pipeline through the REST API: 0 or 1 when the demo is over, None when a new endpoint is live."""
    say("5/6 trigger general_pretraining through the REST API", "head")
    conf = json.loads(args.conf) if args.conf else {}
    r = api.send("POST", f"/dags/{PRETRAIN_DAG}/dagRuns", {"logical_date": None, "conf": conf})
    if r.status_code >= 400:
        say(f"trigger refused ({r.status_code}): {r.text}", "err")
        return 1
    run = r.json()
    say(f"run {run['dag_run_id']} queued", "ok")

    say("6/6 follow the pipeline (Ctrl-C stops following; the services keep running until `make demo-down`)", "head")
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
        lambda: deploy_run_for(api, run["dag_run_id"]),
        300,
        "airflow-scheduler",
        interval=2,
    )
    dep = follow(api, DEPLOY_DAG, deploy_run["dag_run_id"], state)
    if dep["state"] == "success" and not args.no_report:
        start_report(api, run["dag_run_id"], state, report_destination(api, dep["dag_run_id"]))
    summary(api, state, pre, dep, time.monotonic() - t_start)
    return None if dep["state"] == "success" else 1


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
    _dataset(env)
    _stores(state, env)
    _localcloud(state, env)
    api = _airflow(state)
    rc = _pipeline(api, args, state, t_start)
    if rc is not None:
        return rc
    if args.no_wait:
        return 0
    say("services keep running; press Ctrl-C to stop them (or run `make demo-down` from another shell)")
    try:
        while all(pid_of(name) for name in SERVICES):
            time.sleep(2)
    except KeyboardInterrupt:
        down(args)
    return 0


def down(_args=None) -> int:
    stop("report", grace=5)
    for name in reversed(SERVICES):
        # PostgreSQL and SeaweedFS shut down fast on SIGINT (SIGTERM makes PostgreSQL wait for its clients).
        # SeaweedFS has flushed and closed its stores within 2 s of SIGINT but lingers a while after.
        fast = {"postgres": 30.0, "seaweedfs": 10.0}
        stop(name, grace=fast.get(name, 30.0), sig=signal.SIGINT if name in fast else signal.SIGTERM)
    say("demo stopped", "ok")
    return 0


def status(_args=None) -> int:
    """Each component, where it listens, and whether it answers; the metadata database's version."""
    state = json.loads(STATE.read_text()) if STATE.exists() else {}
    where = {
        "postgres": f"postgresql://127.0.0.1:{state.get('postgres_port')}/airflow",
        "seaweedfs": f"http://127.0.0.1:{state.get('seaweedfs_ports', {}).get('s3.port')} (S3 API)",
        "localcloud": f"http://127.0.0.1:{state.get('localcloud_port')}",
        "airflow-api-server": f"http://127.0.0.1:{state.get('airflow_port')}",
    }
    probes = {
        "postgres": lambda: postgres(state).server_version(),
        "seaweedfs": lambda: checkpoint_store(state).ready(),
    }
    for name in SERVICES:
        pid = pid_of(name)
        line = f"{name:<22} {'running (pid %d)' % pid if pid else 'stopped'}"
        if pid and name in where:
            line += f"  {where[name]}"
        if pid and name in probes:
            try:
                answer = probes[name]()
                line += f"  answers ({'PostgreSQL ' + answer if isinstance(answer, str) else 'ok'})"
            except Exception as err:  # noqa: BLE001 - status reports, it does not fail
                line += f"  does not answer: {type(err).__name__}"
        say(line, "ok" if pid else "warn")
    if pid_of("airflow-api-server"):
        try:
            import httpx

            health = httpx.get(f"http://127.0.0.1:{state['airflow_port']}/api/v2/monitor/health", timeout=5).json()
            for part, info in health.items():
                say(f"airflow health: {part:<16} {info.get('status')}")
        except Exception as err:  # noqa: BLE001
            say(f"airflow health: no answer ({type(err).__name__})", "warn")
    return 0


def shell(args) -> int:
    """A shell (or one command) with the demo's Airflow environment, so `airflow dags test`, `airflow tasks test`
    and the rest of the CLI work by hand against the running demo's database and connections."""
    if not STATE.exists():
        raise SystemExit("no demo on this machine yet: run `make demo` first")
    env = airflow_env(json.loads(STATE.read_text()))
    argv = ["bash", "-c", args.command] if args.command else [os.environ.get("SHELL", "/bin/bash"), "-i"]
    if not args.command:
        say(f"the demo's Airflow environment (AIRFLOW_HOME={env['AIRFLOW_HOME']}); `exit` leaves it")
    return subprocess.run(argv, cwd=ROOT, env={**env, "PS1": "(tlpipe-demo) \\w$ "}).returncode


def restart(args) -> int:
    """Restart Airflow components of the running demo (stopped first if they are alive), as ``up`` starts them:
    what an operator does after a crash, and what the fault suite does after killing them."""
    if not STATE.exists():
        raise SystemExit("no demo on this machine yet: run `make demo` first")
    env = airflow_env(json.loads(STATE.read_text()))
    for component in args.components:
        stop(f"airflow-{component}")
        start(f"airflow-{component}", [str(BIN / "airflow"), component], env)
        say(f"airflow-{component} started again", "ok")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up")
    u.add_argument("--conf", default=None, help="JSON conf for the general_pretraining run")
    u.add_argument("--localcloud-port", type=int, default=4566)
    u.add_argument("--airflow-port", type=int, default=8080)
    u.add_argument("--postgres-port", type=int, default=5432)
    u.add_argument("--no-wait", action="store_true", help="return once the endpoint is live (services keep running)")
    u.add_argument("--no-report", action="store_true", help="skip the background transfer-vs-scratch report")
    sub.add_parser("down")
    sub.add_parser("status")
    sh = sub.add_parser("shell", help="a shell with the demo's Airflow environment")
    sh.add_argument("-c", dest="command", default=None, help="run this command instead of an interactive shell")
    r = sub.add_parser("restart", help="restart Airflow components of the running demo")
    r.add_argument("components", nargs="+", choices=AIRFLOW_COMPONENTS)
    args = p.parse_args(argv)
    return {"up": up, "down": down, "status": status, "shell": shell, "restart": restart}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
