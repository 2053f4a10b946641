"""What every part of the stack agrees on: names, ports, files, and the one error it raises."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
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
AUTH_CONFIG_FILE = "basic_auth.ini"
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
