"""Warm starts for local steps: import the heavy libraries once, fork one process per step.

kfp.local's SubprocessRunner starts every step as ``python3 -m kfp.dsl.executor_main ...``, a
fresh interpreter that spends seconds importing TensorFlow, Keras and MLflow before the step
does anything (``bench/overhead.py``: about 37 s of a 533 s demo run went to process start-up
and imports). Here the local runner (:mod:`pipelines.local`) starts one *warm server* that
imports them once, and each step's ``python3`` becomes this file's *client*: a stdlib-only
interpreter (``-I -S``) that hands its arguments, environment, working directory and standard
streams to the server. The server forks a *waiter*; the waiter forks the *step*, which takes
over the client's streams, environment and working directory and runs the module as
``python -m`` would. The waiter sends the client the step's pid, then its exit status, and the
client exits with it. Signals the client receives (SIGTERM, SIGINT, SIGHUP) go to the step; if
the client goes away, the waiter terminates the step.

Whenever no server answers (not ready yet, disabled with ``CXRFLOW_WARM=0``, failed), the
client replaces itself with the real interpreter (``os.execv``): the same command, started
cold. A warm start never changes what runs, only where the imports happened; a step started
warm has ``CXRFLOW_WARM_STARTED=1`` in its environment (recorded in its timing report), and
the rest of its environment is the client's, the runner's channel
(``CXRFLOW_RUNNER_CHANNEL``, :mod:`cxrflow.logs`) included.

The client gets into kfp.local's command by patching a private kfp function,
``kfp.local.subprocess_task_handler.replace_python_executable`` (:data:`KFP_PATCH_POINT`).
:func:`started` checks it first: where kfp no longer has it, or its parameters changed, the
run starts every step cold, with one warning, rather than fail.

Fork safety: the server only imports (no TensorFlow op, no MLflow call). It refuses to serve
(steps then start cold) if a Python thread runs after the imports; native worker pools that
numpy's OpenBLAS and pyarrow's jemalloc start at import are fine, as for multiprocessing's
``fork`` start method, since those libraries reset them in their own fork handlers.

This file is both the server (``python -m pipelines.warm --serve SOCKET``, started in the
steps' working directory, so that its ``sys.path`` is theirs; a step elsewhere starts cold) and
the client (``python -I -S pipelines/warm.py`` and what would follow ``python3``); the client
imports nothing beyond the stdlib.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NoReturn

SOCKET_ENV = "CXRFLOW_WARM_SOCKET"
"""The server's Unix socket, for the clients (set by :func:`started` for the run)."""
DISABLE_ENV = "CXRFLOW_WARM"
"""``0`` turns warm starts off: every step starts a fresh interpreter, as kfp.local does."""
STARTED_ENV = "CXRFLOW_WARM_STARTED"
"""Set to ``1`` in a step's environment when it was forked from the warm server."""

KFP_PATCH_POINT = ("kfp.local.subprocess_task_handler", "replace_python_executable")
"""The private kfp function :func:`started` wraps: (module, attribute)."""
KFP_PATCH_PARAMETERS = ("full_command", "new_executable")
"""Its parameters as the wrapper expects them (as of kfp 2.17)."""

RUNNER_PRELOAD: tuple[str, ...] = ("kfp.dsl.executor_main",)
"""What every step's process runs first (KFP's executor), before the steps' own imports."""


def preload_modules() -> tuple[str, ...]:
    """The modules a warm server imports once, in order: KFP's executor, then what the step
    registry says the steps import (:func:`cxrflow.steps.registry.preload_modules`).

    Returns:
        Module names; one that fails to import is skipped by :func:`serve`.
    """
    from cxrflow.steps.registry import preload_modules as step_modules

    return (*RUNNER_PRELOAD, *step_modules())


_GO = b"F"  # the byte that carries the client's three standard streams


# ------------------------------------------------------------------------------------ client


def _cold(argv: Sequence[str]) -> NoReturn:
    """Become the real interpreter running ``argv`` (a cold start)."""
    os.execv(sys.executable, [sys.executable, *argv])


def client(argv: Sequence[str]) -> NoReturn:
    """Run ``python <argv>`` through the warm server, or cold when there is none."""
    path = os.environ.get(SOCKET_ENV)
    if not path or os.environ.get(DISABLE_ENV) == "0" or len(argv) < 2 or argv[0] != "-m":
        _cold(argv)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        request = {
            "module": argv[1],
            "args": list(argv[2:]),
            "cwd": os.getcwd(),
            "env": dict(os.environ),
        }
        payload = json.dumps(request).encode()
        socket.send_fds(sock, [_GO], [0, 1, 2])
        sock.sendall(len(payload).to_bytes(8, "big") + payload)
        replies = sock.makefile("rb")
        first = replies.readline().decode().split()
    except OSError:
        first = []
    if len(first) != 2 or first[0] != "pid":  # nothing started: start cold instead
        sock.close()
        _cold(argv)
    pid = int(first[1])

    def forward(signum: int, _frame: Any) -> None:
        with suppress(ProcessLookupError):
            os.kill(pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            last = replies.readline().decode().split()
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries reads itself
            continue
    if len(last) != 2 or last[0] != "exit":
        print(f"warm start: lost the step (pid {pid}) without its exit status", file=sys.stderr)
        os._exit(1)
    code = int(last[1])
    if code < 0:  # killed by a signal: die of the same one, as the step did
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        time.sleep(1)
    sys.stdout.flush()
    os._exit(code & 0xFF if code >= 0 else 1)


# ------------------------------------------------------------------------------------ server


def _native_threads() -> list[str]:
    """Names of this process's OS threads (Linux; empty elsewhere)."""
    names = []
    try:
        for tid in sorted(os.listdir("/proc/self/task"), key=int):
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
    except OSError:
        pass
    return names


def _read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    msg, fds, _flags, _addr = socket.recv_fds(conn, 1, 3)
    if msg != _GO or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError("not a warm-start request")
    reader = conn.makefile("rb")
    size = int.from_bytes(reader.read(8), "big")
    request = json.loads(reader.read(size))
    reader.close()
    return dict(request), list(fds)


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _become_step(request: dict[str, Any], fds: list[int]) -> NoReturn:
    """In the forked step: take over the client's streams, environment and cwd; run."""
    import atexit
    import runpy
    import traceback

    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ[STARTED_ENV] = "1"
        # the server and waiter ignore SIGINT (see serve); a step takes it as a cold one does
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for stream in (sys.stdout, sys.stderr):
            stream.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
        sys.argv = ["", *request["args"]]  # sys.path[0] is already this cwd (see serve)
        try:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc.code)
        except BaseException:
            traceback.print_exc()
            code = 1
        try:
            atexit._run_exitfuncs()  # MLflow, logging: what a normal exit would run
        except BaseException:
            traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with suppress(Exception):
                stream.flush()
        os._exit(code & 0xFF)


def _wait_step(conn: socket.socket, request: dict[str, Any], fds: list[int]) -> NoReturn:
    """In the waiter: fork the step, report its pid and exit status to the client."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    pid = os.fork()
    if pid == 0:
        conn.close()
        _become_step(request, fds)
    for fd in fds:
        os.close(fd)
    code = 1
    try:
        conn.sendall(f"pid {pid}\n".encode())
        pidfd = os.pidfd_open(pid)
        while True:
            ready, _, _ = select.select([pidfd, conn], [], [])
            if pidfd in ready:
                break
            if not conn.recv(64):  # the client is gone: so must the step be
                os.kill(pid, signal.SIGTERM)
                conn.close()
                conn = None  # type: ignore[assignment]
                select.select([pidfd], [], [], 30)
                if os.waitpid(pid, os.WNOHANG) == (0, 0):
                    os.kill(pid, signal.SIGKILL)
                break
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if conn is not None:
            conn.sendall(f"exit {code}\n".encode())
    except OSError:
        pass
    finally:
        os._exit(0)


def serve(path: str, parent: int, modules: Sequence[str] | None = None) -> int:
    """Import ``modules``, then serve warm starts on ``path`` until ``parent`` exits.

    Args:
        path: the Unix socket to listen on.
        parent: the runner's pid; the server leaves once it is gone.
        modules: what to import first; default :func:`preload_modules`.

    Returns:
        The exit status: 0 after serving, 3 when it refused to (threads after the imports).
    """
    import importlib

    modules = preload_modules() if modules is None else tuple(modules)
    t0 = time.perf_counter()
    failed: dict[str, str] = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a missing optional library: steps import it cold
            failed[name] = f"{type(exc).__name__}: {exc}"
    import threading

    threads = threading.active_count()
    status = {
        "preloaded": [m for m in modules if m not in failed],
        "failed": failed,
        "seconds": round(time.perf_counter() - t0, 2),
        "threads": threads,
        # worker pools of native libraries (OpenBLAS, jemalloc) have their own fork handlers,
        # as multiprocessing's fork start method relies on; Python threads would not
        "native_threads": _native_threads(),
        "pid": os.getpid(),
        "cwd": os.getcwd(),
    }
    if threads > 1:
        why = f"Python threads after the imports: {[t.name for t in threading.enumerate()]}"
        print(json.dumps({**status, "serving": False, "why": why}))
        return 3
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # waiters are reaped by the kernel
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    server.settimeout(1.0)
    print(json.dumps({**status, "serving": True}), flush=True)
    sys.stderr.flush()
    while os.getppid() == parent:
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        conn.setblocking(True)
        try:
            request, fds = _read_request(conn)
        except (OSError, ValueError) as exc:
            print(f"warm: bad request: {exc}", flush=True)
            conn.close()
            continue
        if request.get("cwd") != status["cwd"]:
            # ``python -m`` puts the working directory first on sys.path; a step elsewhere
            # would see another path than a fresh interpreter: let it start cold
            print(f"warm: cold start for a step in {request.get('cwd')}", flush=True)
            conn.close()
            for fd in fds:
                os.close(fd)
            continue
        sys.stdout.flush()
        if os.fork() == 0:
            server.close()
            _wait_step(conn, request, fds)
        conn.close()
        for fd in fds:
            os.close(fd)
    return 0


# ------------------------------------------------------------------------ the runner's side


def status_of(log: Path) -> dict[str, Any] | None:
    """The status line in a server's log (libraries may print before it), or None."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith('{"preloaded"'):
            try:
                return dict(json.loads(line))
            except ValueError:
                return None
    return None


class WarmServer:
    """A started server: its process, socket and log."""

    def __init__(self, process: Any, folder: Path) -> None:
        self.process, self.folder = process, folder
        self.socket = str(folder / "s")
        self.log = folder / "server.log"

    def status(self) -> dict[str, Any] | None:
        """The server's status line (what it preloaded, whether it serves), once written."""
        return status_of(self.log)

    def keep_log(self, folder: Path) -> None:
        """Copy the server's log into ``folder`` as ``warm-server.log`` (if both exist)."""
        import shutil

        if folder.is_dir() and self.log.is_file():
            shutil.copyfile(self.log, folder / "warm-server.log")

    def stop(self) -> None:
        import shutil
        import subprocess

        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def kfp_patch_point() -> tuple[Any, str | None]:
    """kfp.local's private function that :func:`started` wraps, checked against what it expects.

    Returns:
        ``(module, None)`` when ``module.replace_python_executable`` is there with the expected
        parameters (:data:`KFP_PATCH_PARAMETERS`), else ``(None, why)``.
    """
    import importlib
    import inspect

    module_name, attr = KFP_PATCH_POINT
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        return None, f"{module_name} does not import ({exc})"
    function = getattr(module, attr, None)
    if not callable(function):
        return None, f"{module_name}.{attr} is gone"
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError) as exc:
        return None, f"{module_name}.{attr} has no readable signature ({exc})"
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = tuple(p.name for p in parameters)
    if names != KFP_PATCH_PARAMETERS or any(p.kind not in positional for p in parameters):
        return None, f"{module_name}.{attr}{inspect.signature(function)} changed"
    return module, None


def client_command() -> str:
    """What replaces ``python3`` in a step's command: this file as a stdlib-only client."""
    return f"{sys.executable} -I -S {Path(__file__).resolve()}"


@contextmanager
def started(env: Mapping[str, str] | None = None) -> Iterator[WarmServer | None]:
    """Start a warm server for kfp.local's steps for the duration of the block.

    Points kfp.local's SubprocessRunner at the client (it replaces ``python3`` in each step's
    command) and sets :data:`SOCKET_ENV`; both are undone on exit and the server stopped.
    Yields None when ``CXRFLOW_WARM=0``, where Unix sockets, ``fork`` or ``pidfd_open`` are
    missing, or when kfp's private function changed (:func:`kfp_patch_point`; one warning):
    every step then starts cold, as plain kfp.local does.

    Args:
        env: Variables the run sets for its steps, also set for the server (some libraries
            read their environment when imported).
    """
    import subprocess
    import tempfile

    usable = hasattr(socket, "AF_UNIX") and hasattr(os, "pidfd_open") and hasattr(os, "fork")
    if os.environ.get(DISABLE_ENV) == "0" or not usable:
        yield None
        return
    handler, why = kfp_patch_point()
    if handler is None:
        import logging

        logging.getLogger(__name__).warning(
            "warm starts off, every step starts cold: kfp changed: %s", why
        )
        yield None
        return
    _module_name, attr = KFP_PATCH_POINT
    folder = Path(tempfile.mkdtemp(prefix="cxrflow-warm-"))
    with (folder / "server.log").open("wb") as server_log:
        process = subprocess.Popen(
            # as ``python -m`` from this directory, like the steps: the same sys.path
            [sys.executable, "-m", "pipelines.warm", "--serve", str(folder / "s")],
            stdout=server_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {}), "CXRFLOW_WARM_PARENT": str(os.getpid())},
        )
    warm = WarmServer(process, folder)
    original = getattr(handler, attr)
    client_exe = client_command()

    def replace(full_command: list[str], new_executable: str) -> list[str]:
        exe = client_exe if new_executable == sys.executable else new_executable
        return list(original(full_command, exe))

    setattr(handler, attr, replace)
    previous = os.environ.get(SOCKET_ENV)
    os.environ[SOCKET_ENV] = warm.socket
    try:
        yield warm
    finally:
        setattr(handler, attr, original)
        if previous is None:
            os.environ.pop(SOCKET_ENV, None)
        else:
            os.environ[SOCKET_ENV] = previous
        warm.stop()


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--serve":
        parent = int(os.environ.get("CXRFLOW_WARM_PARENT") or os.getppid())
        if parent == 1:  # orphaned before it started: nobody to serve
            sys.exit(0)
        # Ctrl-C reaches the whole process group: the steps get it through their clients and
        # the runner stops this server itself (SIGTERM), so neither the server nor a waiter
        # (which must outlive its step to report its exit status) dies of it halfway; a step
        # takes SIGINT back (_become_step)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        preload = os.environ.get("CXRFLOW_WARM_PRELOAD")  # comma-separated; tests use their own
        modules = (
            tuple(m for m in preload.split(",") if m) if preload is not None else preload_modules()
        )
        sys.exit(serve(sys.argv[2], parent, modules))
    client(sys.argv[1:])
