"""docker-compose.yaml: valid for the Compose CLI, the Airflow 3 stack of the official file plus localcloud, the
project's folders mounted, and no secret in any container's environment."""

from __future__ import annotations

import json
import re
import subprocess
from urllib.parse import urlparse

import pytest

from tests.deploy_helpers import ROOT, Dockerfile, venv_tool

AIRFLOW_SERVICES = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|ACCESS_KEY|PRIVATE|SQL_ALCHEMY_CONN", re.I)


def compose(*args: str, env_file: str = "deploy/compose/env.example") -> subprocess.CompletedProcess:
    cmd = [str(venv_tool("docker-compose")), "-f", "docker-compose.yaml", "--env-file", env_file, *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def config() -> dict:
    proc = compose("config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_compose_config_validates():
    proc = compose("config", "-q")
    assert proc.returncode == 0, proc.stderr


def test_compose_cli_rejects_an_invalid_file(tmp_path):
    # The validation is real: an unknown service key fails it.
    bad = tmp_path / "docker-compose.yaml"
    bad.write_text("services:\n  a:\n    image: postgres:16\n    restart_policy: always\n")
    proc = subprocess.run(
        [str(venv_tool("docker-compose")), "-f", str(bad), "config", "-q"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0 and "restart_policy" in proc.stderr


def test_stack_has_the_airflow3_services_and_localcloud(config):
    services = config["services"]
    assert {"postgres", "airflow-init", "localcloud", *AIRFLOW_SERVICES} <= set(services)
    for name, command in AIRFLOW_SERVICES.items():
        svc = services[name]
        assert svc["command"] == [command]
        assert svc["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert svc["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "healthcheck" in svc
    api_url = urlparse(services["airflow-scheduler"]["environment"]["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert api_url.hostname == "airflow-apiserver" and api_url.path == "/execution/"
    assert services["airflow-apiserver"]["ports"][0]["target"] == api_url.port
    # Published ports listen on loopback unless the operator says otherwise.
    for svc in services.values():
        for port in svc.get("ports") or []:
            assert port["host_ip"] == "127.0.0.1", port
    init = " ".join(services["airflow-init"]["command"])
    assert "airflow db migrate" in init and "airflow pools set" in init and "gpu_pool" in init


def test_airflow_services_mount_dags_plugins_config_and_use_the_project_image(config):
    df = Dockerfile.load("docker/airflow.Dockerfile")
    baked = {i.args()[0].rstrip("/"): i.args()[-1].rstrip("/") for i in df.final.all("COPY")}
    for name in [*AIRFLOW_SERVICES, "airflow-init"]:
        svc = config["services"][name]
        assert svc["build"]["dockerfile"] == "docker/airflow.Dockerfile"
        binds = {v["source"]: v for v in svc["volumes"] if v["type"] == "bind"}
        for folder in ("dags", "plugins", "config"):
            mount = binds[str(ROOT / folder)]
            # Mounted where the image has its copy, read-only: the stack never writes into the repository.
            assert mount["target"] == baked[folder] and mount["read_only"] is True


def test_aws_default_points_at_localcloud(config):
    from airflow.models.connection import Connection

    services = config["services"]
    local = services["localcloud"]
    argv = local["command"]
    assert argv[:3] == ["python", "-m", "localcloud"]
    port = int(argv[argv.index("--port") + 1])
    assert argv[argv.index("--data-dir") + 1] == "/data"
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in local["volumes"])
    assert local["build"]["target"] in Dockerfile.load(local["build"]["dockerfile"]).stages
    for name in AIRFLOW_SERVICES:
        conn = Connection.from_json(services[name]["environment"]["AIRFLOW_CONN_AWS_DEFAULT"], conn_id="aws_default")
        endpoint = urlparse(conn.extra_dejson["endpoint_url"])
        assert conn.conn_type == "aws"
        assert (endpoint.hostname, endpoint.port) == ("localcloud", port)
        assert services[name]["depends_on"]["localcloud"]["condition"] == "service_healthy"


def test_no_secret_in_any_environment(config):
    declared = config["secrets"]
    for name, svc in config["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if key == "AIRFLOW_CONN_AWS_DEFAULT":
                # localcloud's own pair (a placeholder, not an AWS credential): what the localcloud service accepts.
                local = config["services"]["localcloud"]["environment"]
                conn = json.loads(value)
                assert (
                    (conn["login"], conn["password"])
                    == (local["LOCALCLOUD_ACCESS_KEY_ID"], local["LOCALCLOUD_SECRET_ACCESS_KEY"])
                    == ("test", "test")
                )
                continue
            if name == "localcloud" and key.startswith("LOCALCLOUD_"):
                continue  # checked with the connection above
            if SECRET_NAME.search(key):
                assert key.endswith(("_CMD", "_FILE")), f"{name}: {key} holds a secret in the environment"
                secret_file = value.split()[-1]
                assert secret_file.startswith("/run/secrets/") or value == "/opt/tlpipe/bin/db-url"
                if secret_file.startswith("/run/secrets/"):
                    assert secret_file.rsplit("/", 1)[1] in {s["source"] for s in svc["secrets"]}
    for name, secret in declared.items():
        assert set(secret) >= {"environment"}, f"secret {name} must come from .env, not from a file in the repo"


def test_env_example_leaves_every_secret_empty():
    values = dict(
        line.split("=", 1)
        for line in (ROOT / "deploy/compose/env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    proc = compose("config", "--format", "json")
    secrets = json.loads(proc.stdout)["secrets"]
    for secret in secrets.values():
        assert values[secret["environment"]] == "", f"{secret['environment']} has a value in the example"
