"""Provisioning: what the servers hold and what clients need, made once per state folder.

Secrets, the ``mlflow`` role and its two databases, the bucket, MLflow's basic-auth config, and
the environments of the servers and of their clients.

Nothing here starts or waits for a process (``processes.py``); ``services.py`` calls these
around the starts. Every secret file is written 0600 and no secret is ever printed: ``export``
lines read the file or the variable.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import urllib.parse
from pathlib import Path
from typing import Any

from .config import (
    ADMIN_PW_FILE,
    ADMIN_PW_VAR,
    ADMIN_USER,
    AUTH_CONFIG_FILE,
    AUTH_DB_NAME,
    BUCKET,
    DB_NAME,
    DB_ROLE,
    HOST,
    S3_KEY,
    S3_KEY_ID,
    S3_REGION,
    SECRETS_FILE,
    StackConfig,
    StackError,
)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only (0600 from the start)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


class Credentials:
    """The secrets of one state folder: database passwords, the Flask key, the admin password.

    Args:
        state: the state folder.
    """

    def __init__(self, state: Path) -> None:
        self.state = state

    def generated(self) -> dict[str, str]:
        """Generated once per state folder: database passwords and the Flask CSRF key.

        Raises:
            StackError: the file is gone while the cluster made with its passwords remains.
        """
        path = self.state / SECRETS_FILE
        if path.is_file():
            return dict(json.loads(path.read_text()))
        pg_data = self.state / "postgres" / "data"
        if pg_data.exists():
            raise StackError(
                f"{path} is missing but {pg_data} exists: the database passwords are lost; "
                "run `stack.py down --purge` to start afresh"
            )
        made = {name: secrets.token_hex(24) for name in ("pg_superuser", "pg_mlflow", "flask")}
        write_private(path, json.dumps(made, indent=2) + "\n")
        return made

    def admin(self, create: bool = False) -> tuple[str, str]:
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
            write_private(path, secrets.token_hex(16) + "\n")
        return path.read_text().strip(), f'"$(cat {shlex.quote(str(path))})"'

    def db_uri(self, port: int, database: str, role: str = DB_ROLE, driver: str = "") -> str:
        """A ``postgresql://`` URI (libpq) as ``role``; ``driver="psycopg2"`` for SQLAlchemy.

        SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which is not installed.
        """
        key = "pg_mlflow" if role == DB_ROLE else "pg_superuser"
        userinfo = f"{role}:{urllib.parse.quote(self.generated()[key], safe='')}"
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{userinfo}@{HOST}:{port}/{database}"


def pg_connect(uri: str, timeout: int = 5) -> Any:
    """A psycopg2 connection (autocommit) from a ``postgresql://`` URI."""
    import psycopg2

    conn = psycopg2.connect(uri, connect_timeout=timeout)
    conn.autocommit = True
    return conn


def create_role_and_databases(superuser_uri: str, role_secret: str) -> None:
    """Create the ``mlflow`` login role and its databases ``mlflow`` and ``mlflow_auth``.

    Args:
        superuser_uri: a URI of the ``postgres`` database as the superuser.
        role_secret: the role's password (used only when the role is created).
    """
    from psycopg2 import sql

    conn = pg_connect(superuser_uri)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DB_ROLE,))
            if cur.fetchone() is None:
                cur.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                        sql.Identifier(DB_ROLE), sql.Literal(role_secret)
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


def s3_client(endpoint: str) -> Any:
    """A boto3 (botocore) S3 client of ``endpoint`` with the stack's key pair."""
    import botocore.session
    from botocore.config import Config

    session = botocore.session.get_session()
    session.set_credentials(S3_KEY_ID, S3_KEY)
    return session.create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=S3_REGION,
        config=Config(retries={"mode": "standard", "max_attempts": 3}),
    )


def create_bucket(client: Any) -> None:
    """Create the artifact bucket unless it exists."""
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if BUCKET not in existing:
        client.create_bucket(Bucket=BUCKET)


def clean_env() -> dict[str, str]:
    """This environment without MLflow/AWS settings that would point a server elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env["NO_PROXY"] = env["no_proxy"] = f"{HOST},localhost"
    return env


def mlflow_server_env(config: StackConfig, state: Path, credentials: Credentials) -> dict[str, str]:
    """Write the basic-auth config (0600) and return the whole environment of ``mlflow server``.

    Secrets go in the environment, not in argv (``ps`` shows argv to every user).
    """
    auth_ini = state / AUTH_CONFIG_FILE
    auth_db = credentials.db_uri(config.pg_port, AUTH_DB_NAME, driver="psycopg2")
    write_private(
        auth_ini,
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {auth_db}\n"
        f"admin_username = {ADMIN_USER}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # a checked password is remembered for a minute per worker: without it every
        # request pays a PBKDF2 hash (0.5 s against 0.01 s, measured), hundreds per run
        "auth_cache_ttl_seconds = 60\n",
    )
    backend = credentials.db_uri(config.pg_port, DB_NAME, driver="psycopg2")
    env = clean_env()
    env.update(
        [
            ("MLFLOW_BACKEND_STORE_URI", backend),
            ("MLFLOW_ARTIFACTS_DESTINATION", f"s3://{BUCKET}/"),
            ("MLFLOW_AUTH_CONFIG_PATH", str(auth_ini)),
            ("MLFLOW_AUTH_ADMIN_PASSWORD", credentials.admin()[0]),
            ("MLFLOW_FLASK_SERVER_SECRET_KEY", credentials.generated()["flask"]),
            # no server-side jobs (GenAI scorers): no huey runner process, no /dev/shm dir
            ("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"),
            ("MLFLOW_S3_ENDPOINT_URL", config.mlflow_s3_endpoint or config.s3_endpoint),
            ("AWS_ACCESS_KEY_ID", S3_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", S3_KEY),
            ("AWS_DEFAULT_REGION", S3_REGION),
            # S3 errors (503 SlowDown, 500) are retried inside the server before it
            # answers the client, which retries 5xx answers in turn
            ("AWS_RETRY_MODE", "standard"),
            ("AWS_MAX_ATTEMPTS", "10"),
            ("AWS_CONFIG_FILE", str(state / "aws-config")),  # absent: no profile
            ("AWS_SHARED_CREDENTIALS_FILE", str(state / "aws-credentials")),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
    )
    return env


def client_env_items(config: StackConfig, secret: str) -> list[tuple[str, str]]:
    """The environment of an MLflow / S3 client of the stack, with ``secret`` as the password."""
    return [
        ("MLFLOW_TRACKING_URI", config.mlflow_url),
        ("MLFLOW_TRACKING_USERNAME", ADMIN_USER),
        ("MLFLOW_TRACKING_PASSWORD", secret),
        ("AWS_ENDPOINT_URL", config.s3_endpoint),
        ("MLFLOW_S3_ENDPOINT_URL", config.s3_endpoint),
        ("AWS_ACCESS_KEY_ID", S3_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", S3_KEY),
        ("AWS_DEFAULT_REGION", S3_REGION),
    ]


def basic_auth_header(user: str, secret: str) -> dict[str, str]:
    """The ``Authorization`` header of HTTP basic authentication."""
    import base64

    encoded = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}
