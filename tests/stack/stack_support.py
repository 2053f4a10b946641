"""Helpers of the stack tests: the stack's package as a module, an S3 fault proxy, a handle.

A module of its own (not conftest.py) so that test files can import it by a unique name.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
STACK_PACKAGE = ROOT / "infra" / "stack" / "cxrstack"
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "content-length",
}


def load_stack() -> ModuleType:
    """The package ``infra/stack/cxrstack`` (what ``stack.py`` runs), loaded by path.

    It is not installed: it is registered in ``sys.modules`` under its own name, which is also
    how ``infra/stack/stack.py`` finds it when a test runs that file as a module.
    """
    if "cxrstack" in sys.modules:
        return sys.modules["cxrstack"]
    spec = importlib.util.spec_from_file_location(
        "cxrstack", STACK_PACKAGE / "__init__.py", submodule_search_locations=[str(STACK_PACKAGE)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cxrstack"] = module
    # no __pycache__ under infra/ from the tests (the package imports all its modules at once)
    saved, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["cxrstack"]
        raise
    finally:
        sys.dont_write_bytecode = saved
    return module


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_S3_ERRORS = (
    (503, "SlowDown", "Please reduce your request rate."),
    (500, "InternalError", "We encountered an internal error. Please try again."),
)


class FaultProxy:
    """An HTTP reverse proxy on 127.0.0.1 in front of an S3 server, with an error window.

    moto has no fault injection of its own, so this stands between the MLflow server and moto.
    :meth:`fail_next_for` arms a window that opens at the next request and lasts ``seconds``:
    every request in it is answered with S3's own error bodies, alternating 503 ``SlowDown``
    and 500 ``InternalError`` (both retried by boto3). Outside it, requests pass unchanged.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.lock = threading.Lock()
        self.forwarded = 0
        self.refused = 0
        self.refused_paths: list[str] = []
        self._armed: float | None = None
        self._window: tuple[float, float] | None = None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self) -> None:
                body = self._body()
                fault = proxy._fault(self.path)
                if fault is not None:
                    status, code, message = fault
                    payload = (
                        b""
                        if self.command == "HEAD"
                        else (
                            '<?xml version="1.0" encoding="UTF-8"?>\n'
                            f"<Error><Code>{code}</Code><Message>{message}</Message>"
                            "<RequestId>cxrflow-fault-proxy</RequestId></Error>"
                        ).encode()
                    )
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status, resp.reason)
                    for key, value in resp.getheaders():
                        if key.lower() not in HOP_BY_HOP:
                            self.send_header(key, value)
                    if self.command == "HEAD":
                        self.send_header("Content-Length", resp.getheader("Content-Length", "0"))
                    else:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def fail_next_for(self, seconds: float) -> None:
        """Answer errors for ``seconds`` from the next request on."""
        with self.lock:
            self._armed, self._window = seconds, None

    def window(self) -> tuple[float, float] | None:
        """``(start, end)`` on ``time.monotonic()`` of the error window once it opened."""
        with self.lock:
            return self._window

    def _fault(self, path: str) -> tuple[int, str, str] | None:
        now = time.monotonic()
        with self.lock:
            if self._armed is not None:
                self._window, self._armed = (now, now + self._armed), None
            if self._window is not None and now < self._window[1]:
                self.refused += 1
                self.refused_paths.append(path)
                return _S3_ERRORS[self.refused % 2]
            self.forwarded += 1
            return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class StackHandle:
    """What the tests use: the running stack, its fault proxy and its client environment."""

    def __init__(self, module: ModuleType, stack: Any, proxy: FaultProxy) -> None:
        self.module = module
        self.stack = stack
        self.proxy = proxy
        self.config = stack.config
        self.bucket = module.BUCKET

    def client_env(self) -> dict[str, str]:
        return dict(self.stack.client_env())

    def sql(self, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with contextlib.closing(self.stack.sql_connect()) as conn, conn.cursor() as cur:
            cur.execute(query, args)
            return list(cur.fetchall())

    def objects(self, prefix: str = "") -> dict[str, str]:
        """Every key of the bucket (read from moto directly) with its ETag."""
        client = self.stack.s3_client()
        found: dict[str, str] = {}
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            found.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
        return found
