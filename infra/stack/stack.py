"""A local MLflow server stack on 127.0.0.1: PostgreSQL, an S3 server (moto) and ``mlflow server``.

    .venv/bin/python infra/stack/stack.py up       # `make stack`: start, wait until healthy
    eval "$(.venv/bin/python infra/stack/stack.py env)"   # point clients at it
    .venv/bin/python infra/stack/stack.py status   # what runs, where
    .venv/bin/python infra/stack/stack.py down     # `make stack-down`; --purge deletes the state

What runs (every listener bound to 127.0.0.1 only):

- PostgreSQL (the Debian package's binaries; installed with apt-get when missing and run as
  root), a cluster of its own in ``<state>/postgres/data`` with two databases owned by the role
  ``mlflow``: ``mlflow`` (runs, metrics, params, tags, registered models, aliases) and
  ``mlflow_auth`` (basic-auth users and permissions). As root it runs as the ``postgres``
  system user, since PostgreSQL refuses to run as root.
- moto in server mode, the S3 protocol in memory, with the bucket ``cxrflow-mlflow``. Its
  objects live as long as the process: ``down`` loses the artifacts while PostgreSQL keeps the
  runs that point at them.
- ``mlflow server --app-name basic-auth`` over PostgreSQL, serving artifacts from
  ``s3://cxrflow-mlflow/`` (proxied: clients upload through the server and need no S3 rights).
  The server's boto3 retries S3 errors (``AWS_RETRY_MODE=standard``, ``AWS_MAX_ATTEMPTS=10``).

The admin password comes from ``CXRFLOW_MLFLOW_ADMIN_PASSWORD`` (12 characters or more); when
that is unset, ``up`` generates one and keeps it in ``<state>/mlflow-admin-password`` (mode
0600). The database and Flask secrets are generated into ``<state>/secrets.json`` (0600).
Nothing secret is printed: the ``export`` lines read the file or the variable.

The state folder is ``.stack/`` in the repository unless ``--state-dir`` or
``CXRFLOW_STACK_DIR`` says otherwise; ports default to 15432 (PostgreSQL), 15001 (S3) and 15000
(MLflow), or ``--pg-port``/``--s3-port``/``--mlflow-port``, or ``CXRFLOW_STACK_PG_PORT``,
``CXRFLOW_STACK_S3_PORT``, ``CXRFLOW_STACK_MLFLOW_PORT``. ``up`` records them in
``<state>/stack.json`` with each process id and start time, so that ``status``, ``env`` and
``down`` need no flags and ``down`` signals only processes this stack started.

Tests import this file and drive :class:`Stack` with their own state folder and free ports.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
DEFAULT_STATE_DIR = ROOT / ".stack"
DEFAULT_PORTS = {"pg_port": 15432, "s3_port": 15001, "mlflow_port": 15000}
PORT_VARS = {
    "pg_port": "CXRFLOW_STACK_PG_PORT",
    "s3_port": "CXRFLOW_STACK_S3_PORT",
    "mlflow_port": "CXRFLOW_STACK_MLFLOW_PORT",
}
STATE_DIR_VAR = "CXRFLOW_STACK_DIR"
ADMIN_PW_VAR = "CXRFLOW_MLFLOW_ADMIN_PASSWORD"
PG_BINDIR_VAR = "CXRFLOW_PG_BINDIR"
ADMIN_PW_FILE = "mlflow-admin-password"
SECRETS_FILE = "secrets.json"
STATE_FILE = "stack.json"
BUCKET = "cxrflow-mlflow"
ADMIN_USER = "admin"
DB_ROLE = "mlflow"
DB_NAME = "mlflow"
AUTH_DB_NAME = "mlflow_auth"
PG_SUPERUSER = "postgres"
PG_SYSTEM_USER = "postgres"
# moto accepts any key pair; these name the local server, they protect nothing
S3_KEY_ID = "cxrflow-local"
S3_KEY = "cxrflow-local"
S3_REGION = "us-east-1"
SERVICES = ("postgres", "s3", "mlflow")  # start order; stopped in reverse


class StackError(RuntimeError):
    """Something the stack cannot do; ``str()`` is one line that says what to do."""


@dataclasses.dataclass(frozen=True)
class StackConfig:
    """Where the stack keeps its state and which loopback ports it listens on.

    Attributes:
        state_dir: data, logs, secrets and ``stack.json``.
        pg_port: PostgreSQL.
        s3_port: the moto S3 server.
        mlflow_port: ``mlflow server`` (UI and REST API).
        workers: uvicorn workers of ``mlflow server``.
        mlflow_s3_endpoint: the S3 endpoint the MLflow server uses; default the moto server
            (tests put a fault-injecting proxy here).
        pg_settings: extra ``-c name=value`` settings for PostgreSQL (tests turn fsync off).
    """

    state_dir: Path = DEFAULT_STATE_DIR
    pg_port: int = DEFAULT_PORTS["pg_port"]
    s3_port: int = DEFAULT_PORTS["s3_port"]
    mlflow_port: int = DEFAULT_PORTS["mlflow_port"]
    workers: int = 2
    mlflow_s3_endpoint: str | None = None
    pg_settings: tuple[str, ...] = ()

    @property
    def s3_endpoint(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["state_dir"] = str(self.state_dir)
        data["pg_settings"] = list(self.pg_settings)
        return data


# --------------------------------------------------------------------------------------------
# processes: started in their own session, recorded by pid and start time, never by name


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name, or None if there is no such pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    fields = _proc_stat(pid)
    return None if fields is None else int(fields[19])  # field 22: starttime


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child (else a zombie would look alive)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _proc_stat(int(entry.name))
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


@dataclasses.dataclass(frozen=True)
class Proc:
    """A process this stack started, as the leader of its own session and process group."""

    pid: int
    start: int | None

    def alive(self) -> bool:
        """The leader runs, and is the process we started (not a reused pid)."""
        _reap(self.pid)
        fields = _proc_stat(self.pid)
        return fields is not None and fields[0] != "Z" and _start_time(self.pid) == self.start

    def group(self) -> list[int]:
        """Its process group's live members (the leader's workers and children)."""
        _reap(self.pid)
        if not self.alive() and _start_time(self.pid) not in (None, self.start):
            return []  # the pid was reused by a process that is not ours
        return group_members(self.pid)

    def stop(self, sig: signal.Signals, timeout: float, *, whole_group: bool = True) -> None:
        """Send ``sig`` (to the group, or the leader only), wait, then SIGKILL the group."""
        if not self.group():
            return
        try:
            if whole_group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.group():
                return
            time.sleep(0.2)
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while self.group() and time.monotonic() < deadline:
            time.sleep(0.2)


def _spawn(
    args: list[str],
    log: Path,
    env: Mapping[str, str],
    cwd: Path,
    user: pwd.struct_passwd | None = None,
) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        extra: dict[str, Any] = {}
        if user is not None:
            extra = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        proc = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,  # its own process group: stopped as a whole, by id
            **extra,
        )
    return Proc(proc.pid, _start_time(proc.pid))


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def port_free(port: int) -> bool:
    """Nothing listens on ``127.0.0.1:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _http_status(url: str, headers: Mapping[str, str] | None = None, timeout: float = 3) -> int:
    req = urllib.request.Request(url, headers=dict(headers or {}))
    # no proxy: the stack is on loopback whatever HTTP_PROXY says
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def basic_auth_header(user: str, secret: str) -> dict[str, str]:
    """The ``Authorization`` header of HTTP basic authentication."""
    import base64

    encoded = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


# --------------------------------------------------------------------------------------------
# PostgreSQL binaries


def find_pg_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``postgres``: ``$CXRFLOW_PG_BINDIR``, PATH, Debian's."""
    env = os.environ.get(PG_BINDIR_VAR, "").strip()
    candidates = [Path(env)] if env else []
    for tool in ("pg_config", "initdb"):
        found = shutil.which(tool)
        if found is None:
            continue
        if tool == "pg_config":
            out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False)
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))
        else:
            candidates.append(Path(found).resolve().parent)

    def version(p: Path) -> int:
        return int(p.parent.name) if p.parent.name.isdigit() else 0

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    return None


def ensure_postgres(out: Any = None) -> Path:
    """PostgreSQL's bin folder, installing the Debian package first when it is missing.

    Raises:
        StackError: not installed, and it cannot be installed here (not root, or no apt-get,
            or apt-get failed).
    """
    bindir = find_pg_bindir()
    if bindir is not None:
        return bindir
    apt = shutil.which("apt-get")
    if os.geteuid() != 0 or apt is None:
        raise StackError(
            "PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin) "
            "and cannot be installed here (needs root and apt-get): install the `postgresql` "
            f"package, or set {PG_BINDIR_VAR} to its bin folder"
        )
    print(
        "stack: PostgreSQL not found; installing the Debian package (apt-get)",
        file=out or sys.stdout,
    )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        [apt, "update", "-qq"],
        [apt, "install", "-y", "-qq", "--no-install-recommends", "postgresql"],
    ):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise StackError(f"installing PostgreSQL failed: `{' '.join(cmd[1:])}` said: {last[0]}")
    bindir = find_pg_bindir()
    if bindir is None:
        raise StackError("apt-get installed `postgresql` but no initdb was found afterwards")
    return bindir


def _pg_user() -> pwd.struct_passwd | None:
    """The system user PostgreSQL runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        raise StackError(
            "PostgreSQL refuses to run as root and there is no `postgres` system user to run "
            "it as: install the `postgresql` package or create the user (useradd --system "
            "postgres)"
        ) from None


def _check_reachable(path: Path, user: pwd.struct_passwd) -> None:
    """Every folder above ``path`` lets ``user`` through (PostgreSQL opens its data dir)."""
    groups = {user.pw_gid, *os.getgrouplist(user.pw_name, user.pw_gid)}
    for folder in [*reversed(path.parents)]:
        st = folder.stat()
        if st.st_uid == user.pw_uid:
            ok = st.st_mode & 0o100
        elif st.st_gid in groups:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            raise StackError(
                f"PostgreSQL runs as the `{user.pw_name}` user, which cannot enter {folder}: "
                "use a --state-dir it can reach (every folder above it needs o+x), or "
                f"chmod o+x {folder}"
            )


# --------------------------------------------------------------------------------------------
# the stack


class Stack:
    """Start, check and stop the three services of one state folder."""

    def __init__(self, config: StackConfig, out: Any = None) -> None:
        self.config = config
        self.state = config.state_dir.resolve()
        self.out = out

    # ---- files

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def pg_dir(self) -> Path:
        return self.state / "postgres"

    @property
    def pg_data(self) -> Path:
        return self.pg_dir / "data"

    def _say(self, line: str) -> None:
        print(line, file=self.out or sys.stdout, flush=True)

    def _read_state(self) -> dict[str, Any]:
        path = self.state / STATE_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    def _write_state(self, data: Mapping[str, Any]) -> None:
        path = self.state / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)

    def procs(self) -> dict[str, Proc]:
        """The processes recorded in ``stack.json``, by service."""
        recorded = self._read_state().get("procs", {})
        return {name: Proc(int(p["pid"]), p.get("start")) for name, p in recorded.items()}

    def _record(self, name: str, proc: Proc | None) -> None:
        data = self._read_state()
        data["config"] = self.config.to_json()
        procs = data.setdefault("procs", {})
        if proc is None:
            procs.pop(name, None)
        else:
            procs[name] = {"pid": proc.pid, "start": proc.start}
        self._write_state(data)

    def running(self, name: str) -> bool:
        proc = self.procs().get(name)
        return proc is not None and proc.alive()

    def _write_private(self, path: Path, text: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def _secrets(self) -> dict[str, str]:
        """Generated once per state folder: database passwords and the Flask CSRF key."""
        path = self.state / SECRETS_FILE
        if path.is_file():
            return dict(json.loads(path.read_text()))
        if self.pg_data.exists():
            raise StackError(
                f"{path} is missing but {self.pg_data} exists: the database passwords are lost; "
                "run `stack.py down --purge` to start afresh"
            )
        made = {name: secrets.token_hex(24) for name in ("pg_superuser", "pg_mlflow", "flask")}
        self._write_private(path, json.dumps(made, indent=2) + "\n")
        return made

    def admin_secret(self, create: bool = False) -> tuple[str, str]:
        """The MLflow admin password, and a shell expression that gives it (not the value).

        ``$CXRFLOW_MLFLOW_ADMIN_PASSWORD`` when set; else ``<state>/mlflow-admin-password``,
        which ``up`` (``create``) generates when it is missing.
        """
        value = os.environ.get(ADMIN_PW_VAR, "")
        if value:
            if len(value) < 12:
                raise StackError(f"{ADMIN_PW_VAR} is shorter than 12 characters: MLflow refuses it")
            return value, f'"${ADMIN_PW_VAR}"'
        path = self.state / ADMIN_PW_FILE
        if not path.is_file():
            if not create:
                raise StackError(
                    f"set {ADMIN_PW_VAR}: the stack in {self.state} was started with it "
                    f"(there is no {path})"
                )
            self._write_private(path, secrets.token_hex(16) + "\n")
        return path.read_text().strip(), f'"$(cat {shlex.quote(str(path))})"'

    def _db_uri(self, database: str, role: str = DB_ROLE, driver: str = "") -> str:
        """A ``postgresql://`` URI (libpq); ``driver="psycopg2"`` for SQLAlchemy.

        SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which is not installed.
        """
        key = "pg_mlflow" if role == DB_ROLE else "pg_superuser"
        userinfo = f"{role}:{urllib.parse.quote(self._secrets()[key], safe='')}"
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{userinfo}@{HOST}:{self.config.pg_port}/{database}"

    def backend_store_uri(self) -> str:
        """The SQLAlchemy URI of MLflow's tracking and registry database."""
        return self._db_uri(DB_NAME, driver="psycopg2")

    def sql_connect(self, database: str = DB_NAME) -> Any:
        """A psycopg2 connection to ``database`` as the ``mlflow`` role (autocommit)."""
        return _pg_connect(self._db_uri(database))

    def s3_client(self) -> Any:
        """A boto3 (botocore) S3 client of the moto server itself, never through a test proxy."""
        import botocore.session
        from botocore.config import Config

        session = botocore.session.get_session()
        session.set_credentials(S3_KEY_ID, S3_KEY)
        return session.create_client(
            "s3",
            endpoint_url=self.config.s3_endpoint,
            region_name=S3_REGION,
            config=Config(retries={"mode": "standard", "max_attempts": 3}),
        )

    def client_env(self) -> dict[str, str]:
        """The environment of an MLflow / S3 client of this stack (the password included)."""
        return dict(self._client_env_items(self.admin_secret()[0]))

    def export_lines(self) -> list[str]:
        """``export`` lines for a shell; the password as an expression, never its value."""
        return [f"export {k}={v}" for k, v in self._client_env_items(self.admin_secret()[1])]

    def _client_env_items(self, secret: str) -> list[tuple[str, str]]:
        return [
            ("MLFLOW_TRACKING_URI", self.config.mlflow_url),
            ("MLFLOW_TRACKING_USERNAME", ADMIN_USER),
            ("MLFLOW_TRACKING_PASSWORD", secret),
            ("AWS_ENDPOINT_URL", self.config.s3_endpoint),
            ("MLFLOW_S3_ENDPOINT_URL", self.config.s3_endpoint),
            ("AWS_ACCESS_KEY_ID", S3_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", S3_KEY),
            ("AWS_DEFAULT_REGION", S3_REGION),
        ]

    # ---- PostgreSQL

    def start_postgres(self) -> None:
        """Create the cluster on first use, start it, create the role and both databases."""
        if self.running("postgres"):
            return
        bindir = ensure_postgres(self.out)
        user = _pg_user()
        cfg = self.config
        self._need_port(cfg.pg_port, "--pg-port")
        su_secret = self._secrets()["pg_superuser"]
        if user is not None:
            self.state.chmod(0o711)  # PostgreSQL's user passes through; secrets stay 0600
            _check_reachable(self.pg_dir, user)
        self.pg_dir.mkdir(exist_ok=True)
        if user is not None:
            os.chown(self.pg_dir, user.pw_uid, user.pw_gid)
        self.pg_dir.chmod(0o700)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "LANG": "C"}
        if user is not None:
            env["HOME"] = user.pw_dir
        if not (self.pg_data / "PG_VERSION").is_file():
            pwfile = self.pg_dir / "superuser.pw"
            self._write_private(pwfile, su_secret + "\n")
            if user is not None:
                os.chown(pwfile, user.pw_uid, user.pw_gid)
            try:
                done = subprocess.run(
                    [
                        str(bindir / "initdb"),
                        "-D",
                        str(self.pg_data),
                        "-U",
                        PG_SUPERUSER,
                        f"--pwfile={pwfile}",
                        "--auth-host=scram-sha-256",
                        "--auth-local=scram-sha-256",
                        "-E",
                        "UTF8",
                        "--locale=C",
                    ],
                    capture_output=True,
                    text=True,
                    env=env,
                    cwd=self.pg_dir,
                    check=False,
                    **(
                        {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
                        if user
                        else {}
                    ),
                )
            finally:
                pwfile.unlink(missing_ok=True)
            (self.logs).mkdir(parents=True, exist_ok=True)
            (self.logs / "initdb.log").write_text(done.stdout + done.stderr)
            if done.returncode != 0:
                raise StackError(
                    f"initdb failed: {_tail(self.logs / 'initdb.log', 2)} "
                    f"(log: {self.logs / 'initdb.log'})"
                )
        settings = [
            f"port={cfg.pg_port}",
            f"listen_addresses={HOST}",
            "unix_socket_directories=",  # TCP on loopback only
            *cfg.pg_settings,
        ]
        args = [str(bindir / "postgres"), "-D", str(self.pg_data)]
        for setting in settings:
            args += ["-c", setting]
        log = self.logs / "postgres.log"
        proc = _spawn(args, log, env, self.pg_dir, user)
        self._record("postgres", proc)
        self._wait_postgres(proc, log)
        self._provision()

    def _wait_postgres(self, proc: Proc, log: Path, timeout: float = 60) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            if not proc.alive():
                raise StackError(f"PostgreSQL exited at start: {_tail(log)} (log: {log})")
            try:
                _pg_connect(self._db_uri("postgres", PG_SUPERUSER), timeout=3).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise StackError(
                        f"PostgreSQL did not accept connections in {timeout:.0f} s (log: {log})"
                    ) from None
                time.sleep(0.3)

    def _provision(self) -> None:
        from psycopg2 import sql

        conn = _pg_connect(self._db_uri("postgres", PG_SUPERUSER))
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DB_ROLE,))
                if cur.fetchone() is None:
                    cur.execute(
                        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                            sql.Identifier(DB_ROLE), sql.Literal(self._secrets()["pg_mlflow"])
                        )
                    )
                for db in (DB_NAME, AUTH_DB_NAME):
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                    if cur.fetchone() is None:
                        cur.execute(
                            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                                sql.Identifier(db), sql.Identifier(DB_ROLE)
                            )
                        )
        finally:
            conn.close()

    def stop_postgres(self) -> None:
        proc = self.procs().get("postgres")
        if proc is not None:
            # SIGINT to the postmaster: "fast" shutdown (rolls back sessions, checkpoints)
            proc.stop(signal.SIGINT, 60, whole_group=False)
            self._record("postgres", None)

    # ---- S3 (moto)

    def start_s3(self) -> None:
        """Start the moto S3 server and create the bucket."""
        if not self.running("s3"):
            self._need_port(self.config.s3_port, "--s3-port")
            env = _clean_env()
            args = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.config.s3_port)]
            log = self.logs / "s3.log"
            proc = _spawn(args, log, env, self.state)
            self._record("s3", proc)
            deadline = time.monotonic() + 60
            while True:
                if not proc.alive():
                    raise StackError(f"the moto S3 server exited at start: {_tail(log)}")
                try:
                    _http_status(f"{self.config.s3_endpoint}/moto-api/", timeout=1)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise StackError(
                            f"the moto S3 server did not answer in 60 s (log: {log})"
                        ) from None
                    time.sleep(0.2)
        client = self.s3_client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if BUCKET not in existing:
            client.create_bucket(Bucket=BUCKET)

    def stop_s3(self) -> None:
        proc = self.procs().get("s3")
        if proc is not None:
            proc.stop(signal.SIGTERM, 15)
            self._record("s3", None)

    # ---- MLflow

    def _mlflow_env(self) -> dict[str, str]:
        cfg = self.config
        s3 = cfg.mlflow_s3_endpoint or cfg.s3_endpoint
        auth_ini = self.state / "basic_auth.ini"
        self._write_private(
            auth_ini,
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = {self._db_uri(AUTH_DB_NAME, driver='psycopg2')}\n"
            f"admin_username = {ADMIN_USER}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # a checked password is remembered for a minute per worker: without it every
            # request pays a PBKDF2 hash (0.5 s against 0.01 s, measured), hundreds per run
            "auth_cache_ttl_seconds = 60\n",
        )
        env = _clean_env()
        env.update(
            [
                ("MLFLOW_BACKEND_STORE_URI", self.backend_store_uri()),  # not in argv (ps)
                ("MLFLOW_ARTIFACTS_DESTINATION", f"s3://{BUCKET}/"),
                ("MLFLOW_AUTH_CONFIG_PATH", str(auth_ini)),
                ("MLFLOW_AUTH_ADMIN_PASSWORD", self.admin_secret()[0]),
                ("MLFLOW_FLASK_SERVER_SECRET_KEY", self._secrets()["flask"]),
                # no server-side jobs (GenAI scorers): no huey runner process, no /dev/shm dir
                ("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"),
                ("MLFLOW_S3_ENDPOINT_URL", s3),
                ("AWS_ACCESS_KEY_ID", S3_KEY_ID),
                ("AWS_SECRET_ACCESS_KEY", S3_KEY),
                ("AWS_DEFAULT_REGION", S3_REGION),
                # S3 errors (503 SlowDown, 500) are retried inside the server before it
                # answers the client, which retries 5xx answers in turn
                ("AWS_RETRY_MODE", "standard"),
                ("AWS_MAX_ATTEMPTS", "10"),
                ("AWS_CONFIG_FILE", str(self.state / "aws-config")),  # absent: no profile
                ("AWS_SHARED_CREDENTIALS_FILE", str(self.state / "aws-credentials")),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ]
        )
        return env

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
        self._need_port(cfg.mlflow_port, "--mlflow-port")
        args = [
            self._mlflow_bin(),
            "server",
            "--host",
            HOST,
            "--port",
            str(cfg.mlflow_port),
            "--workers",
            str(cfg.workers),
            "--app-name",
            "basic-auth",
        ]
        log = self.logs / "mlflow.log"
        proc = _spawn(args, log, self._mlflow_env(), self.state)
        self._record("mlflow", proc)
        self.wait_mlflow(proc, log, timeout)

    def wait_mlflow(self, proc: Proc, log: Path, timeout: float) -> None:
        search = f"{self.config.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
        auth = basic_auth_header(ADMIN_USER, self.admin_secret()[0])
        deadline = time.monotonic() + timeout
        while True:
            if not proc.alive():
                raise StackError(f"mlflow server exited at start: {_tail(log)} (log: {log})")
            try:
                status = _http_status(search, auth)
            except OSError:
                status = 0
            if status == 200:
                return
            if status == 401:
                raise StackError(
                    f"the MLflow admin user in {self.state} was created with another password "
                    f"than {self.admin_secret()[1]}: give that one (in ${ADMIN_PW_VAR}, or unset "
                    f"it to use {self.state / ADMIN_PW_FILE}), or `stack.py down --purge` to "
                    "start afresh"
                )
            if time.monotonic() > deadline:
                raise StackError(
                    f"mlflow server did not answer in {timeout:.0f} s (last status {status}; "
                    f"log: {log})"
                )
            time.sleep(0.5)

    def stop_mlflow(self) -> None:
        proc = self.procs().get("mlflow")
        if proc is not None:
            proc.stop(signal.SIGTERM, 30)  # the server and its uvicorn workers
            self._record("mlflow", None)

    # ---- all of it

    def _need_port(self, port: int, flag: str) -> None:
        if not port_free(port):
            raise StackError(
                f"port {port} on {HOST} is in use (another stack? `stack.py status`); "
                f"choose another with {flag}"
            )

    def up(self) -> None:
        """Start what is not running; on failure stop what this call started."""
        self.state.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.admin_secret(create=True)  # a bad password fails before anything starts
        before = {name for name in SERVICES if self.running(name)}
        try:
            self.start_postgres()
            self.start_s3()
            self.start_mlflow()
        except BaseException:
            for name in reversed(SERVICES):
                if name not in before:
                    getattr(self, f"stop_{name}")()
            raise

    def down(self) -> None:
        """Stop MLflow, then S3, then PostgreSQL."""
        self.stop_mlflow()
        self.stop_s3()
        self.stop_postgres()

    def leftovers(self) -> dict[str, list[int]]:
        """Processes still alive in the recorded groups (empty after a clean ``down``)."""
        return {name: m for name, p in self.procs().items() if (m := p.group())}

    def report_lines(self) -> list[str]:
        cfg, rel = self.config, _shell_path
        return [
            f"{'PostgreSQL ' + _pg_version():<18}{HOST}:{cfg.pg_port:<8}databases {DB_NAME}, "
            f"{AUTH_DB_NAME} (role {DB_ROLE}); data in {rel(self.pg_data)}",
            f"{'S3 (moto)':<18}{cfg.s3_endpoint}  bucket {BUCKET}, in memory (gone after down)",
            f"{'MLflow ' + _mlflow_version():<18}{cfg.mlflow_url}  basic auth: user {ADMIN_USER}, "
            f"password {self.admin_secret()[1]}",
            f"{'':<18}backend: PostgreSQL; artifacts: s3://{BUCKET}/ (proxied by the server)",
            f"{'logs':<18}{rel(self.logs)}{os.sep}",
        ]


def _pg_connect(uri: str, timeout: int = 5) -> Any:
    """A psycopg2 connection (autocommit) from a ``postgresql://`` URI."""
    import psycopg2

    conn = psycopg2.connect(uri, connect_timeout=timeout)
    conn.autocommit = True
    return conn


def _clean_env() -> dict[str, str]:
    """This environment without MLflow/AWS settings that would point a server elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env["NO_PROXY"] = env["no_proxy"] = f"{HOST},localhost"
    return env


def _shell_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _pg_version() -> str:
    bindir = find_pg_bindir()
    if bindir is None:
        return "?"
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=False
    )
    words = out.stdout.split()
    return words[2] if len(words) > 2 else "?"


def _mlflow_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlflow")
    except PackageNotFoundError:
        return "?"


# --------------------------------------------------------------------------------------------
# command line


def _config(args: argparse.Namespace) -> StackConfig:
    """Flags, then environment variables, then the state folder's ``stack.json``, then defaults."""
    state_dir = Path(args.state_dir or os.environ.get(STATE_DIR_VAR) or DEFAULT_STATE_DIR)
    recorded = Stack(StackConfig(state_dir=state_dir))._read_state().get("config", {})
    values: dict[str, Any] = {"state_dir": state_dir}
    for key, default in DEFAULT_PORTS.items():
        flag = getattr(args, key, None)
        env = os.environ.get(PORT_VARS[key], "").strip()
        values[key] = int(flag or env or recorded.get(key) or default)
    workers = getattr(args, "workers", None)
    values["workers"] = int(workers or recorded.get("workers") or StackConfig.workers)
    return StackConfig(**values)


def _cmd_up(stack: Stack) -> int:
    already = [name for name in SERVICES if stack.running(name)]
    recorded = stack._read_state().get("config", {})
    ours = stack.config.to_json()
    changed = [k for k in (*DEFAULT_PORTS, "workers") if recorded.get(k, ours[k]) != ours[k]]
    if already and changed:
        raise StackError(
            f"the stack in {stack.state} already runs ({', '.join(already)}) with another "
            f"{', '.join(changed)}: `stack.py down` first"
        )
    started = time.monotonic()
    stack.up()
    verb = "already running" if len(already) == len(SERVICES) else "up"
    stack._say(f"stack {verb} ({time.monotonic() - started:.0f}s), state in {stack.state}")
    for line in stack.report_lines():
        stack._say(f"  {line}")
    cli = ".venv/bin/python infra/stack/stack.py"
    if stack.state != DEFAULT_STATE_DIR:
        cli += f" --state-dir {shlex.quote(str(stack.state))}"
    stack._say(f'clients: eval "$({cli} env)", or:')
    for line in stack.export_lines():
        stack._say(f"  {line}")
    stack._say(f"stop: {'make stack-down' if stack.state == DEFAULT_STATE_DIR else cli + ' down'}")
    return 0


def _cmd_down(stack: Stack, purge: bool) -> int:
    had = [name for name in SERVICES if stack.running(name)]
    stack.down()
    left = stack.leftovers()
    if left:
        raise StackError(f"processes still alive after down: {left}")
    stack._say(
        f"stack down: stopped {', '.join(had) or 'nothing (not running)'}"
        + ("; S3 objects (moto, in memory) are gone, PostgreSQL data kept" if had else "")
    )
    if purge and stack.state.exists():
        shutil.rmtree(stack.state)
        stack._say(f"removed {stack.state}")
    return 0


def _cmd_status(stack: Stack) -> int:
    procs = stack.procs()
    up = 0
    for name in SERVICES:
        proc = procs.get(name)
        alive = proc is not None and proc.alive()
        up += alive
        where = {
            "postgres": f"{HOST}:{stack.config.pg_port}",
            "s3": stack.config.s3_endpoint,
            "mlflow": stack.config.mlflow_url,
        }[name]
        pid = f"pid {proc.pid}" if alive and proc else "not running"
        stack._say(f"{name:<9}{where:<28}{pid}")
    if up == len(SERVICES):
        status = _http_status(f"{stack.config.mlflow_url}/health")
        stack._say(f"mlflow /health: {status}")
    return 0 if up == len(SERVICES) else 3


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stack.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--state-dir", help=f"state folder (default .stack/ or ${STATE_DIR_VAR})")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start PostgreSQL, S3 (moto) and mlflow server; wait")
    for key, default in DEFAULT_PORTS.items():
        up.add_argument(f"--{key.replace('_', '-')}", type=int, dest=key, help=f"{default}")
    up.add_argument("--workers", type=int, help="uvicorn workers of mlflow server (2)")
    down = sub.add_parser("down", help="stop everything this state folder started")
    down.add_argument("--purge", action="store_true", help="also delete the state folder")
    sub.add_parser("status", help="what runs, where (exit 3 unless all three run)")
    sub.add_parser("env", help='export lines for clients: eval "$(stack.py env)"')
    args = parser.parse_args(list(argv) if argv is not None else None)
    stack = Stack(_config(args))
    try:
        if args.command == "up":
            return _cmd_up(stack)
        if args.command == "down":
            return _cmd_down(stack, args.purge)
        if args.command == "status":
            return _cmd_status(stack)
        if not (stack.state / STATE_FILE).is_file():
            raise StackError(f"no stack in {stack.state}: run `make stack` first")
        print("\n".join(stack.export_lines()))
        return 0
    except StackError as exc:
        print(f"stack: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stack: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
