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

This file is the command line only; the stack itself is the package ``cxrstack/`` beside it
(see its ``__init__`` for which module does what).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cxrstack import Stack, StackConfig, StackError
from cxrstack.config import (
    ADMIN_USER,
    AUTH_DB_NAME,
    BUCKET,
    DB_NAME,
    DB_ROLE,
    DEFAULT_PORTS,
    DEFAULT_STATE_DIR,
    HOST,
    PORT_VARS,
    SERVICES,
    STATE_DIR_VAR,
    STATE_FILE,
)
from cxrstack.postgres import pg_version
from cxrstack.processes import ProcessTable, http_status


def _config(args: argparse.Namespace) -> StackConfig:
    """Flags, then environment variables, then the state folder's ``stack.json``, then defaults."""
    state_dir = Path(args.state_dir or os.environ.get(STATE_DIR_VAR) or DEFAULT_STATE_DIR)
    table = ProcessTable(state_dir.resolve() / STATE_FILE, StackConfig(state_dir=state_dir))
    recorded = table.recorded_config()
    values: dict[str, Any] = {"state_dir": state_dir}
    for key, default in DEFAULT_PORTS.items():
        flag = getattr(args, key, None)
        env = os.environ.get(PORT_VARS[key], "").strip()
        values[key] = int(flag or env or recorded.get(key) or default)
    workers = getattr(args, "workers", None)
    values["workers"] = int(workers or recorded.get("workers") or StackConfig.workers)
    return StackConfig(**values)


def _shell_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _mlflow_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlflow")
    except PackageNotFoundError:
        return "?"


def _report_lines(stack: Stack) -> list[str]:
    cfg, rel = stack.config, _shell_path
    return [
        f"{'PostgreSQL ' + pg_version():<18}{HOST}:{cfg.pg_port:<8}databases {DB_NAME}, "
        f"{AUTH_DB_NAME} (role {DB_ROLE}); data in {rel(stack.pg_data)}",
        f"{'S3 (moto)':<18}{cfg.s3_endpoint}  bucket {BUCKET}, in memory (gone after down)",
        f"{'MLflow ' + _mlflow_version():<18}{cfg.mlflow_url}  basic auth: user {ADMIN_USER}, "
        f"password {stack.credentials.admin()[1]}",
        f"{'':<18}backend: PostgreSQL; artifacts: s3://{BUCKET}/ (proxied by the server)",
        f"{'logs':<18}{rel(stack.logs)}{os.sep}",
    ]


def _cmd_up(stack: Stack) -> int:
    already = [name for name in SERVICES if stack.running(name)]
    recorded = stack.table.recorded_config()
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
    stack.say(f"stack {verb} ({time.monotonic() - started:.0f}s), state in {stack.state}")
    for line in _report_lines(stack):
        stack.say(f"  {line}")
    cli = ".venv/bin/python infra/stack/stack.py"
    if stack.state != DEFAULT_STATE_DIR:
        cli += f" --state-dir {shlex.quote(str(stack.state))}"
    stack.say(f'clients: eval "$({cli} env)", or:')
    for line in stack.export_lines():
        stack.say(f"  {line}")
    stack.say(f"stop: {'make stack-down' if stack.state == DEFAULT_STATE_DIR else cli + ' down'}")
    return 0


def _cmd_down(stack: Stack, purge: bool) -> int:
    had = [name for name in SERVICES if stack.running(name)]
    stack.down()
    left = stack.leftovers()
    if left:
        raise StackError(f"processes still alive after down: {left}")
    stack.say(
        f"stack down: stopped {', '.join(had) or 'nothing (not running)'}"
        + ("; S3 objects (moto, in memory) are gone, PostgreSQL data kept" if had else "")
    )
    if purge and stack.state.exists():
        shutil.rmtree(stack.state)
        stack.say(f"removed {stack.state}")
    return 0


def _cmd_status(stack: Stack) -> int:
    procs = stack.procs()
    where = {
        "postgres": f"{HOST}:{stack.config.pg_port}",
        "s3": stack.config.s3_endpoint,
        "mlflow": stack.config.mlflow_url,
    }
    up = 0
    for name in SERVICES:
        proc = procs.get(name)
        alive = proc is not None and proc.alive()
        up += alive
        pid = f"pid {proc.pid}" if alive and proc else "not running"
        stack.say(f"{name:<9}{where[name]:<28}{pid}")
    if up == len(SERVICES):
        stack.say(f"mlflow /health: {http_status(f'{stack.config.mlflow_url}/health')}")
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
        if not stack.table.path.is_file():
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
