"""Airflow for tests, in-process: a temporary AIRFLOW_HOME with a SQLite metadata DB, connections from
environment variables, the GPU pool, and helpers to load the DAG folder, run ``dag.test()`` and call the REST API.

    from airflow_env import setup_airflow, set_connection, load_dagbag, run_dag, api_client   # tests/ is on sys.path

    env = setup_airflow()                                   # idempotent, once per process
    set_connection("aws_default", "aws", endpoint_url="http://127.0.0.1:5000")
    dag = load_dagbag().get_dag("general_pretraining")
    run = run_dag(dag, conf={...})                          # -> RunResult(state, tasks={task_id: state}, xcom())
    with api_client() as client: client.post("/api/v2/dags/…/dagRuns", json=…)

Airflow reads ``AIRFLOW__*`` variables whenever it looks a setting up, so pointing them at the temporary home
and reconfiguring the ORM works even when ``airflow`` was imported before.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DAGS_FOLDER = PROJECT_ROOT / "dags"
PLUGINS_FOLDER = PROJECT_ROOT / "plugins"
HOME_VAR = "TLPIPE_TEST_AIRFLOW_HOME"


@dataclass
class AirflowTestEnv:
    home: Path
    db_path: Path
    dags_folder: Path
    env: dict[str, str] = field(default_factory=dict)


_ENV: AirflowTestEnv | None = None


def airflow_environ(home: Path, dags_folder: Path = DAGS_FOLDER) -> dict[str, str]:
    db = home / "airflow.db"
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        # Spelled out: the default is derived from AIRFLOW_HOME when airflow is first imported.
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(
            [
                {
                    "name": "dags-folder",
                    "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                    "kwargs": {"path": str(dags_folder)},
                }
            ]
        ),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS_FOLDER),  # the one that ships
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__FERNET_KEY": "",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{db}",
        "AIRFLOW__DATABASE__LOAD_DEFAULT_CONNECTIONS": "False",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__API_AUTH__JWT_SECRET": "tlpipe-tests-only-secret-0123456789abcdef",
        "AIRFLOW__API_AUTH__JWT_ISSUER": "tlpipe-tests",
        "AIRFLOW__API__EXPOSE_CONFIG": "False",
    }


def setup_airflow(
    home: str | Path | None = None, dags_folder: str | Path = DAGS_FOLDER, pools: dict[str, int] | None = None
) -> AirflowTestEnv:
    """Point Airflow at a temporary home, create its metadata DB and the pools (first call only)."""
    global _ENV
    if _ENV is not None:
        # Another suite may have pointed Airflow elsewhere since: point it back.
        os.environ.update(_ENV.env)
        from airflow import settings

        if settings.SQL_ALCHEMY_CONN != _ENV.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]:
            settings.SQL_ALCHEMY_CONN = _ENV.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
            settings.reconfigure_orm()
        for name, slots in (pools or {}).items():
            ensure_pool(name, slots)
        return _ENV
    # Kept in the environment too, so a second import of this module (by another name) reuses the same home.
    home = Path(home or os.environ.get(HOME_VAR) or tempfile.mkdtemp(prefix="tlpipe-airflow-"))
    home.mkdir(parents=True, exist_ok=True)
    os.environ[HOME_VAR] = str(home)
    (home / "plugins").mkdir(exist_ok=True)
    environ = airflow_environ(home, Path(dags_folder))
    os.environ.update(environ)

    from airflow import settings
    from airflow.utils import db

    settings.SQL_ALCHEMY_CONN = environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    settings.reconfigure_orm()
    db.initdb()
    _ENV = AirflowTestEnv(home=home, db_path=home / "airflow.db", dags_folder=Path(dags_folder), env=environ)
    from plugins.tlpipe.config import get_config

    cfg = get_config()
    for name, slots in {cfg.airflow.gpu_pool: max(cfg.airflow.gpu_pool_slots, 1), **(pools or {})}.items():
        ensure_pool(name, slots)
    return _ENV


def set_connection(
    conn_id: str,
    conn_type: str,
    *,
    host: str | None = None,
    login: str | None = None,
    password: str | None = None,
    **extra,
) -> str:
    """Define a connection the way deployments do it: ``AIRFLOW_CONN_<ID>`` holding JSON."""
    conn = {"conn_type": conn_type, "extra": extra}
    if host:
        conn["host"] = host
    if login is not None:
        conn["login"] = login
    if password is not None:
        conn["password"] = password
    name = f"AIRFLOW_CONN_{conn_id.upper()}"
    os.environ[name] = json.dumps(conn)
    return name


def aws_connection(conn_id: str, endpoint_url: str, region: str = "us-east-1") -> str:
    return set_connection(
        conn_id, "aws", login="testing", password="testing", endpoint_url=endpoint_url, region_name=region
    )


def kubernetes_connection(server_url: str, conn_id: str = "kubernetes_default", namespace: str = "default") -> str:
    kube_config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server_url}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": namespace}}],
        "users": [{"name": "test", "user": {"token": "test"}}],
    }
    return set_connection(conn_id, "kubernetes", kube_config=kube_config, namespace=namespace)


def ensure_pool(name: str, slots: int) -> None:
    from airflow.models.pool import Pool

    Pool.create_or_update_pool(name=name, slots=slots, description=f"{name} (tests)", include_deferred=False)


def reset_config_cache() -> None:
    """Forget the cached pipeline configuration (after changing TLPIPE_* variables)."""
    from plugins.tlpipe import config

    config._cached.cache_clear()


def load_dagbag(dag_folder: str | Path = DAGS_FOLDER):
    from airflow.dag_processing.dagbag import DagBag

    reset_config_cache()
    return DagBag(dag_folder=str(dag_folder))


@dataclass
class RunResult:
    dag_id: str
    run_id: str
    state: str
    tasks: dict[str, str]

    def xcom(self, task_id: str, key: str = "return_value"):
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            row = session.scalars(
                select(XComModel).where(
                    XComModel.dag_id == self.dag_id,
                    XComModel.run_id == self.run_id,
                    XComModel.task_id == task_id,
                    XComModel.key == key,
                )
            ).first()
            return None if row is None else XComModel.deserialize_value(row)


def run_dag(dag, conf: dict | None = None) -> RunResult:
    """``dag.test()`` in this process; returns the run's state and every task's state."""
    dr = dag.test(run_conf=conf or {}, logical_date=None)
    from airflow.utils.session import create_session

    with create_session() as session:
        dr = session.merge(dr)
        tasks = {
            ti.task_id: str(ti.state.value if hasattr(ti.state, "value") else ti.state)
            for ti in dr.get_task_instances(session=session)
        }
        state = str(dr.state.value if hasattr(dr.state, "value") else dr.state)
        return RunResult(dag_id=dr.dag_id, run_id=dr.run_id, state=state, tasks=tasks)


def sync_dags_to_db(dag_folder: str | Path = DAGS_FOLDER) -> None:
    """Serialize the DAG folder into the metadata DB, as the DAG processor does."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.utils.session import create_session

    reset_config_cache()
    manager = DagBundlesManager()
    with create_session() as session:
        manager.sync_bundles_to_db(session=session)
    for bundle in manager.get_all_dag_bundles():
        if not bundle.is_initialized:
            bundle.initialize()
        bag = BundleDagBag(dag_folder=str(dag_folder), bundle_path=bundle.path, bundle_name=bundle.name)
        sync_bag_to_db(bag, bundle.name, bundle.version)


def api_client():
    """A FastAPI TestClient on the api-server app (simple auth manager, everyone admin), with a bearer token."""
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    client = TestClient(create_app(), base_url="http://localhost")
    token = _token(client)
    client.headers["Authorization"] = f"Bearer {token}"
    return client


def _token(client) -> str:
    # With simple_auth_manager_all_admins, GET /auth/token hands out an admin token without credentials.
    resp = client.get("/auth/token")
    if resp.status_code in (200, 201) and "access_token" in resp.json():
        return resp.json()["access_token"]
    raise RuntimeError(f"no API token from /auth/token: {resp.status_code} {resp.text[:200]}")


def assert_parses_clean(dag_file: Path, dag_id: str) -> None:
    """Parse ``dag_file`` in a fresh interpreter where any socket raises: no import error, the DAG is there,
    and neither TensorFlow, Keras nor Horovod was imported (DAG parsing must stay light and offline)."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import socket, sys
        from airflow.dag_processing.dagbag import DagBag

        class NoSocket(socket.socket):
            def __init__(self, *a, **k):
                raise RuntimeError("a socket was opened while parsing")

        def no_connection(*a, **k):
            raise RuntimeError("a connection was opened while parsing")

        socket.socket = NoSocket
        socket.create_connection = no_connection
        socket.getaddrinfo = no_connection
        bag = DagBag(dag_folder={str(dag_file)!r})
        assert bag.import_errors == {{}}, bag.import_errors
        assert {dag_id!r} in bag.dags
        heavy = [m for m in ("tensorflow", "keras", "horovod") if m in sys.modules]
        assert not heavy, heavy
        print("parsed-clean")
    """)
    out = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "parsed-clean" in out.stdout


def run_in_fresh_airflow(script: str, arg: str, home: Path, cwd: Path) -> dict:
    """Run ``python -c script arg`` in an Airflow of its own (home, SQLite, the shipping plugins folder, nothing
    of this process's Airflow or TLPIPE settings) and return the JSON its last output line holds."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TLPIPE"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        }
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, arg], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
