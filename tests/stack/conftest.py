"""The stack of ``make stack`` for tests: own state folder, free ports, a fault proxy for S3.

``infra/stack/cxrstack`` starts PostgreSQL, moto and ``mlflow server`` exactly as ``make stack``
does; only the state folder (a fresh one under /tmp that PostgreSQL's system user can enter),
the ports, one uvicorn worker, ``fsync=off`` and the S3 endpoint of the MLflow server differ.
The server reaches moto through ``FaultProxy``, which forwards every request until told to
answer errors for a while. The test's own boto3 client talks to moto directly.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from stack_support import FaultProxy, StackHandle, free_port, load_stack


@pytest.fixture(scope="module")
def stack_handle() -> Iterator[StackHandle]:
    """The stack, up for the module; down (every process checked gone) and deleted afterwards."""
    module = load_stack()
    try:
        module.ensure_postgres()
    except module.StackError as exc:
        pytest.skip(f"PostgreSQL cannot be installed here: {exc}")
    # not pytest's tmp_path: /tmp/pytest-of-root is 0700, which PostgreSQL's user cannot enter
    state = Path(tempfile.mkdtemp(prefix="cxrflow-stack-"))
    s3_port = free_port()
    proxy = FaultProxy(s3_port)
    config = module.StackConfig(
        state_dir=state,
        pg_port=free_port(),
        s3_port=s3_port,
        mlflow_port=free_port(),
        workers=1,
        mlflow_s3_endpoint=proxy.endpoint,
        pg_settings=("fsync=off", "synchronous_commit=off", "full_page_writes=off"),
    )
    stack = module.Stack(config, out=sys.stderr)
    try:
        stack.up()
        yield StackHandle(module, stack, proxy)
    finally:
        stack.down()
        left = stack.leftovers()
        proxy.close()
        shutil.rmtree(state, ignore_errors=True)
        assert not left, f"stack processes left running: {left}"
