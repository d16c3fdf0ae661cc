"""A real MLflow tracking server for the tests: `mlflow server` over HTTP on 127.0.0.1 with
proxied artifacts (`--serve-artifacts`) and its backend store on a throw-away PostgreSQL
cluster, as ray_cluster.yaml runs it on a cluster head; optionally with basic auth.

Every process started here runs in its own session and is stopped by its process group, also
when a test fails. The PostgreSQL cluster lives in a fresh folder under the system temp dir
(not pytest's, which is private to root) because the server runs as an unprivileged user when
the tests run as root: PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from testkit import stop_group

PG_ROOT = Path("/usr/lib/postgresql")
PG_USER = "mlflow"
ADMIN = ("admin", "admin-" + secrets.token_hex(8))  # the basic-auth app's first user
SKIP_HINT = "install Debian's postgresql (make test does it when run as root)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bindir() -> Path | None:
    """The newest PostgreSQL server binaries: Debian's versioned folders, else PATH."""
    def version(p: Path) -> int:
        return int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0

    found = sorted(PG_ROOT.glob("*/bin/postgres"), key=version, reverse=True)
    if found:
        return found[0].parent
    on_path = shutil.which("postgres")
    return Path(on_path).parent if on_path and shutil.which("initdb") else None


def _run_as() -> tuple[list[str], pwd.struct_passwd | None]:
    """The command prefix and account that PostgreSQL runs under: an unprivileged one when
    we are root (it refuses root), ourselves otherwise."""
    if os.geteuid() != 0:
        return [], None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            account = pwd.getpwnam(name)
            return ["runuser", "-u", name, "--"], account
    pytest.skip("running as root and no unprivileged account (postgres, nobody) for PostgreSQL")


@dataclass
class Postgres:
    """One throw-away PostgreSQL cluster on 127.0.0.1 with password login for `mlflow`."""

    bindir: Path
    root: Path
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_hex(12), repr=False)
    process: subprocess.Popen | None = None

    def init(self) -> None:
        prefix, account = _run_as()
        (self.root / "pw").write_text(self.password + "\n")
        if account is not None:
            for path in (self.root, self.root / "pw"):
                os.chown(path, account.pw_uid, account.pw_gid)
        subprocess.run(
            [*prefix, str(self.bindir / "initdb"), "-D", str(self.root / "data"), "-U", PG_USER,
             "--pwfile", str(self.root / "pw"), "--auth-host=scram-sha-256",
             "--auth-local=peer", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, text=True, cwd=self.root,
        )

    def start(self) -> None:
        prefix, _ = _run_as()
        log = open(self.root / "postgres.log", "a")
        with log:
            self.process = subprocess.Popen(
                [*prefix, str(self.bindir / "postgres"), "-D", str(self.root / "data"),
                 "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                 "-c", f"unix_socket_directories={self.root}", "-c", "fsync=off"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True,
            )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(self.dsn("postgres")).close()
                return
            except psycopg2.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("PostgreSQL did not start:\n" + self.log()) from None
                time.sleep(0.3)

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, signal.SIGINT)  # SIGINT: PostgreSQL's fast shutdown
            self.process = None

    def create_database(self, name: str) -> str:
        """Create database `name`; returns its SQLAlchemy URI for MLflow."""
        import psycopg2

        connection = psycopg2.connect(self.dsn("postgres"))
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        # The driver named: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3.
        return self.dsn(name).replace("postgresql://", "postgresql+psycopg2://", 1)

    def dsn(self, database: str) -> str:
        """A libpq connection URI (psycopg2.connect)."""
        return f"postgresql://{PG_USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def log(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@dataclass
class TrackingServer:
    """`mlflow server` on 127.0.0.1: backend store `backend_uri`, artifacts proxied into
    `artifacts`; with `auth`, MLflow's basic-auth app (users kept in `auth_uri`)."""

    backend_uri: str = field(repr=False)  # holds the database password
    artifacts: Path
    workdir: Path
    auth_uri: str | None = field(default=None, repr=False)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        # MLflow's job runner (GenAI jobs; ecgtune submits none) is ten more processes that
        # each import MLflow: ~10 s of CPU and seconds of start-up per server start.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        if self.auth_uri is not None:
            ini = self.workdir / "basic_auth.ini"
            # Without the credential cache every request pays a scrypt check (~75 ms of
            # server CPU here), and a search plus an ensemble send thousands of requests.
            # Only successful checks are cached, so refused credentials are checked each time.
            ini.write_text(
                "[mlflow]\ndefault_permission = READ\n"
                f"database_uri = {self.auth_uri}\n"
                f"admin_username = {ADMIN[0]}\nadmin_password = {ADMIN[1]}\n"
                "auth_cache_ttl_seconds = 600\n"
            )
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secrets.token_hex(16)
        return env

    def start(self, timeout: float = 120) -> None:
        # `python -m mlflow`: this interpreter's MLflow, whatever a copied venv's scripts say.
        command = [sys.executable, "-m", "mlflow", "server",
                   "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                   "--backend-store-uri", self.backend_uri,
                   "--serve-artifacts", "--artifacts-destination", self.artifacts.as_uri()]
        if self.auth_uri is not None:
            command += ["--app-name", "basic-auth"]
        with open(self.workdir / "server.log", "a") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            env=self._env(), cwd=self.workdir,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:  # /health answers without a login, also under basic auth
                urllib.request.urlopen(f"{self.url}/health", timeout=2).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mlflow server did not come up:\n{self.log()}") from None
                time.sleep(0.5)

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, wait=10)  # its state is all in PostgreSQL
            self.process = None

    def log(self) -> str:
        text = (self.workdir / "server.log").read_text(errors="replace")
        # Never echo the backend password into a test report.
        return re.sub(r"://([^:/@]+):[^@]+@", r"://\1:***@", text)[-4000:]


def run_ecgtune(args: list[str], env: dict[str, str], cwd: Path,
                timeout: float = 900) -> tuple[int, str]:
    """Run `ecgtune ARGS` in its own session; whatever it leaves running is killed."""
    process = subprocess.Popen([sys.executable, "-m", "ecgtune.ensembles.cli", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=env, cwd=cwd, start_new_session=True)
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        stop_group(process, wait=5)
    return process.returncode, out


@pytest.fixture(scope="session")
def ecgtune_cli() -> Callable[..., tuple[int, str]]:
    return run_ecgtune


@pytest.fixture(scope="session")
def tracking_admin() -> tuple[str, str]:
    """(username, password) of the basic-auth server's admin."""
    return ADMIN


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(f"PostgreSQL server binaries not found under {PG_ROOT} or on PATH; "
                    + SKIP_HINT)
    root = Path(tempfile.mkdtemp(prefix="ecgtune-pg-"))
    cluster = Postgres(bindir, root)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def auth_tracking_server(postgres, tmp_path_factory) -> Iterator[TrackingServer]:
    """A basic-auth MLflow server whose runs, registry and users all live in PostgreSQL."""
    work = tmp_path_factory.mktemp("mlflow-auth-server")
    server = TrackingServer(postgres.create_database("tracking_auth"), work / "artifacts", work,
                            auth_uri=postgres.create_database("tracking_users"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tracking_server(postgres, tmp_path_factory) -> Iterator[TrackingServer]:
    """An MLflow server without auth on its own PostgreSQL database."""
    work = tmp_path_factory.mktemp("mlflow-server")
    server = TrackingServer(postgres.create_database("tracking"), work / "artifacts", work)
    try:
        server.start()
        yield server
    finally:
        server.stop()
