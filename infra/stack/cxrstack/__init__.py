"""The local MLflow stack of ``make stack``, as a library; ``infra/stack/stack.py`` is its CLI.

One job a module:

- ``config``: names, ports, files, :class:`StackConfig` and :class:`StackError`.
- ``processes``: supervision: start detached, wait until ready, stop a process group, and
  ``stack.json``, where processes are recorded by pid and start time.
- ``postgres``: PostgreSQL's binaries (apt-get when missing), its system user, initdb.
- ``provision``: secrets, the ``mlflow`` role and databases, the bucket, MLflow's auth config,
  the servers' and clients' environments.
- ``services``: :class:`Stack`, which starts, checks and stops the three in order.

Tests load this package by path (it is not installed) and drive :class:`Stack` with their own
state folder and free ports.
"""

from . import config, postgres, processes, provision, services
from .config import ADMIN_USER, BUCKET, StackConfig, StackError
from .postgres import ensure_postgres
from .processes import port_free
from .provision import basic_auth_header
from .services import Stack

__all__ = [
    "ADMIN_USER",
    "BUCKET",
    "Stack",
    "StackConfig",
    "StackError",
    "basic_auth_header",
    "config",
    "ensure_postgres",
    "port_free",
    "postgres",
    "processes",
    "provision",
    "services",
]
