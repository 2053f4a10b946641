"""The stack: PostgreSQL, then moto S3, then ``mlflow server``, each started, checked, stopped.

:class:`Stack` puts the other modules together for one state folder: ``postgres.py`` makes the
cluster, ``processes.py`` starts the servers, waits for them and records them, and
``provision.py`` fills them (role and databases, bucket, auth config) and says how to reach them.
"""

from __future__ import annotations

import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from .config import (
    ADMIN_PW_FILE,
    ADMIN_PW_VAR,
    ADMIN_USER,
    DB_NAME,
    HOST,
    PG_SUPERUSER,
    SERVICES,
    STATE_FILE,
    StackConfig,
    StackError,
)
from .postgres import Cluster, ensure_postgres, pg_user
from .processes import Proc, ProcessTable, http_status, need_port, spawn, wait_ready
from .provision import (
    Credentials,
    basic_auth_header,
    clean_env,
    client_env_items,
    create_bucket,
    create_role_and_databases,
    mlflow_server_env,
    pg_connect,
    s3_client,
)

# how each server shuts down: signal, seconds before SIGKILL, sent to the whole group or not
_STOPS = {
    # SIGINT to the postmaster alone: "fast" shutdown (rolls back sessions, checkpoints)
    "postgres": (signal.SIGINT, 60, False),
    "s3": (signal.SIGTERM, 15, True),
    "mlflow": (signal.SIGTERM, 30, True),  # the server and its uvicorn workers
}


class Stack:
    """Start, check and stop the three services of one state folder.

    Args:
        config: state folder, ports and server settings.
        out: where progress lines go (default stdout).
    """

    def __init__(self, config: StackConfig, out: Any = None) -> None:
        self.config = config
        self.state = config.state_dir.resolve()
        self.out = out
        self.table = ProcessTable(self.state / STATE_FILE, config)
        self.credentials = Credentials(self.state)

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def pg_data(self) -> Path:
        return self.state / "postgres" / "data"

    def say(self, line: str) -> None:
        """Print one progress line to ``out``."""
        print(line, file=self.out or sys.stdout, flush=True)

    def procs(self) -> dict[str, Proc]:
        """The processes recorded in ``stack.json``, by service."""
        return self.table.procs()

    def running(self, name: str) -> bool:
        """Service ``name`` runs (its recorded process is alive and ours)."""
        proc = self.procs().get(name)
        return proc is not None and proc.alive()

    # ---- how clients reach it

    def backend_store_uri(self) -> str:
        """The SQLAlchemy URI of MLflow's tracking and registry database."""
        return self.credentials.db_uri(self.config.pg_port, DB_NAME, driver="psycopg2")

    def sql_connect(self, database: str = DB_NAME) -> Any:
        """A psycopg2 connection to ``database`` as the ``mlflow`` role (autocommit)."""
        return pg_connect(self.credentials.db_uri(self.config.pg_port, database))

    def s3_client(self) -> Any:
        """A boto3 (botocore) S3 client of the moto server itself, never through a test proxy."""
        return s3_client(self.config.s3_endpoint)

    def client_env(self) -> dict[str, str]:
        """The environment of an MLflow / S3 client of this stack (the password included)."""
        return dict(client_env_items(self.config, self.credentials.admin()[0]))

    def export_lines(self) -> list[str]:
        """``export`` lines for a shell; the password as an expression, never its value."""
        items = client_env_items(self.config, self.credentials.admin()[1])
        return [f"export {k}={v}" for k, v in items]

    # ---- the services

    def _spawn(self, name: str, args: list[str], env: dict[str, str], **kw: Any) -> Proc:
        proc = spawn(args, self.logs / f"{name}.log", env, **kw)
        self.table.record(name, proc)
        return proc

    def start_postgres(self) -> None:
        """Create the cluster on first use, start it, create the role and both databases."""
        if self.running("postgres"):
            return
        bindir = ensure_postgres(self.out)
        user = pg_user()
        need_port(self.config.pg_port, "--pg-port")
        cluster = Cluster(bindir, self.state, user)
        su_secret = self.credentials.generated()["pg_superuser"]
        cluster.prepare()
        cluster.init(su_secret, self.logs)
        args = cluster.server_args(self.config.pg_port, self.config.pg_settings)
        proc = self._spawn("postgres", args, cluster.env(), cwd=cluster.dir, user=user)
        su_uri = self.credentials.db_uri(self.config.pg_port, "postgres", PG_SUPERUSER)

        def probe() -> str | None:
            import psycopg2

            try:
                pg_connect(su_uri, timeout=3).close()
            except psycopg2.OperationalError as exc:
                return " ".join(str(exc).split())
            return None

        wait_ready(
            proc,
            self.logs / "postgres.log",
            probe,
            name="PostgreSQL",
            timeout=60,
            interval=0.3,
            until="accept connections",
        )
        create_role_and_databases(su_uri, self.credentials.generated()["pg_mlflow"])

    def start_s3(self) -> None:
        """Start the moto S3 server and create the bucket."""
        if not self.running("s3"):
            need_port(self.config.s3_port, "--s3-port")
            args = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.config.s3_port)]
            proc = self._spawn("s3", args, clean_env(), cwd=self.state)

            def probe() -> str | None:
                try:
                    http_status(f"{self.config.s3_endpoint}/moto-api/", timeout=1)
                except OSError as exc:
                    return str(exc)
                return None

            log = self.logs / "s3.log"
            wait_ready(proc, log, probe, name="the moto S3 server", timeout=60, interval=0.2)
        create_bucket(self.s3_client())

    def _mlflow_bin(self) -> str:
        beside = Path(sys.executable).parent / "mlflow"
        found = str(beside) if beside.is_file() else shutil.which("mlflow")
        if found is None:
            raise StackError("mlflow not found: run `make venv`")
        return found

    def start_mlflow(self, timeout: float = 240) -> None:
        """Start ``mlflow server`` (basic auth) and wait until it answers an authenticated call."""
        if self.running("mlflow"):
            return
        cfg = self.config
        need_port(cfg.mlflow_port, "--mlflow-port")
        args = [self._mlflow_bin(), "server", "--host", HOST, "--port", str(cfg.mlflow_port)]
        args += ["--workers", str(cfg.workers), "--app-name", "basic-auth"]
        env = mlflow_server_env(cfg, self.state, self.credentials)
        proc = self._spawn("mlflow", args, env, cwd=self.state)
        search = f"{cfg.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
        secret, secret_expr = self.credentials.admin()
        auth = basic_auth_header(ADMIN_USER, secret)

        def probe() -> str | None:
            try:
                status = http_status(search, auth)
            except OSError:
                status = 0
            if status == 401:
                raise StackError(
                    f"the MLflow admin user in {self.state} was created with another password "
                    f"than {secret_expr}: give that one (in ${ADMIN_PW_VAR}, or unset it to use "
                    f"{self.state / ADMIN_PW_FILE}), or `stack.py down --purge` to start afresh"
                )
            return None if status == 200 else f"last status {status}"

        log = self.logs / "mlflow.log"
        wait_ready(proc, log, probe, name="mlflow server", timeout=timeout, interval=0.5)

    def stop(self, name: str) -> None:
        """Stop service ``name`` (and its process group) if it was started here."""
        proc = self.procs().get(name)
        if proc is not None:
            sig, timeout, whole_group = _STOPS[name]
            proc.stop(sig, timeout, whole_group=whole_group)
            self.table.record(name, None)

    # ---- all of it

    def up(self) -> None:
        """Start what is not running; on failure stop what this call started."""
        self.state.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.credentials.admin(create=True)  # a bad password fails before anything starts
        before = {name for name in SERVICES if self.running(name)}
        try:
            self.start_postgres()
            self.start_s3()
            self.start_mlflow()
        except BaseException:
            for name in reversed(SERVICES):
                if name not in before:
                    self.stop(name)
            raise

    def down(self) -> None:
        """Stop MLflow, then S3, then PostgreSQL."""
        for name in reversed(SERVICES):
            self.stop(name)

    def leftovers(self) -> dict[str, list[int]]:
        """Processes still alive in the recorded groups (empty after a clean ``down``)."""
        return {name: m for name, p in self.procs().items() if (m := p.group())}
