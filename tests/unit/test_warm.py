"""Warm starts (``pipelines/warm.py``): a step forked from a server behaves as a fresh ``python -m``.

Real processes throughout: a server started as the local runner starts it (preloading a small
module list instead of TensorFlow, to be quick), the stdlib client as kfp.local's command runs
it, and a step module that reports what it saw. The same step run cold is the reference.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

WARM = Path(__file__).resolve().parents[2] / "pipelines" / "warm.py"
SERVE = [sys.executable, "-m", "pipelines.warm", "--serve"]  # as pipelines.warm.started does

STEP = textwrap.dedent(
    """
    import json, os, signal, sys, time
    import marker_mod

    def on_term(signum, frame):
        open(os.environ["TERM_FILE"], "w").write("term")
        sys.exit(7)

    signal.signal(signal.SIGTERM, on_term)
    print(json.dumps({
        "argv": sys.argv[1:],
        "cwd": os.getcwd(),
        "var": os.environ.get("STEP_VAR"),
        "warm": os.environ.get("CXRFLOW_WARM_STARTED"),
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "imports": marker_mod.IMPORTS,
        "name": __name__,
    }), flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    if "--sleep" in sys.argv:
        open(os.environ["PID_FILE"], "w").write(str(os.getpid()))
        time.sleep(60)
    sys.exit(int(sys.argv[1]))
    """
)

MARKER = textwrap.dedent(
    """
    import os
    IMPORTS = int(os.environ.get("MARKER_BASE", "0")) + 1
    with open(os.environ["MARKER_LOG"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    """
)

THREADED = (
    "import threading, time\nthreading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "run").mkdir()  # the steps' (and the server's) working directory
    (tmp_path / "step_mod.py").write_text(STEP)
    (tmp_path / "marker_mod.py").write_text(MARKER)
    (tmp_path / "threaded_mod.py").write_text(THREADED)
    return tmp_path


def _env(workdir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXRFLOW_WARM")}
    return {
        **env,
        "PYTHONPATH": str(workdir),
        "MARKER_LOG": str(workdir / "imports.log"),
        "TERM_FILE": str(workdir / "term"),
        "PID_FILE": str(workdir / "pid"),
        "STEP_VAR": "from the client",
        **extra,
    }


@pytest.fixture
def server(workdir: Path) -> Iterator[str]:
    sock = str(workdir / "s")
    env = _env(
        workdir, CXRFLOW_WARM_PRELOAD="json,marker_mod", CXRFLOW_WARM_PARENT=str(os.getpid())
    )
    env["STEP_VAR"] = "from the server"  # the step must see the client's, not this
    proc = subprocess.Popen(
        [*SERVE, sock],
        cwd=workdir / "run",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    status = json.loads(proc.stdout.readline())
    assert status["serving"] is True, status
    assert status["preloaded"] == ["json", "marker_mod"] and status["threads"] == 1
    yield sock
    proc.terminate()
    proc.wait(10)


def _client(
    workdir: Path, *args: str, sock: str | None, cwd: Path | None = None, **kw: object
) -> subprocess.Popen[str]:
    env = _env(workdir, **({"CXRFLOW_WARM_SOCKET": sock} if sock else {}))
    return subprocess.Popen(
        [sys.executable, "-I", "-S", str(WARM), "-m", "step_mod", *args],
        cwd=cwd or workdir / "run",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,  # type: ignore[call-overload]
    )


def _run(
    workdir: Path, *args: str, sock: str | None, cwd: Path | None = None
) -> tuple[int, dict[str, object], str]:
    proc = _client(workdir, *args, sock=sock, cwd=cwd)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, json.loads(out.splitlines()[0]), err


def test_a_warm_step_sees_what_a_cold_one_sees(workdir: Path, server: str) -> None:
    cold_rc, cold, cold_err = _run(workdir, "3", "b c", sock=None)
    warm_rc, warm, warm_err = _run(workdir, "3", "b c", sock=server)
    assert cold_rc == warm_rc == 3
    assert cold["warm"] is None and warm["warm"] == "1"
    for key in ("argv", "cwd", "var", "name", "imports"):
        assert warm[key] == cold[key], key
    assert warm["var"] == "from the client" and warm["argv"] == ["3", "b c"]
    assert warm["cwd"] == str(workdir / "run") and warm["name"] == "__main__"
    assert "to stderr" in warm_err and "to stderr" in cold_err
    # a second warm step reuses the server's import: the module ran once there, once cold
    _run(workdir, "0", sock=server)
    importers = (workdir / "imports.log").read_text().split()
    assert len(importers) == 2  # the server's import and the cold step's, none per warm step
    assert str(warm["pid"]) not in importers


def test_a_step_in_another_directory_starts_cold(workdir: Path, server: str) -> None:
    # ``python -m`` puts the working directory first on sys.path: the server's is not its
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    rc, seen, _ = _run(workdir, "4", sock=server, cwd=elsewhere)
    assert rc == 4 and seen["warm"] is None and seen["cwd"] == str(elsewhere)


def test_without_a_server_the_client_starts_cold(workdir: Path) -> None:
    rc, seen, _ = _run(workdir, "0", sock=str(workdir / "nobody-listens"))
    assert rc == 0 and seen["warm"] is None


def test_a_signal_to_the_client_reaches_the_step(workdir: Path, server: str) -> None:
    proc = _client(workdir, "0", "--sleep", sock=server)
    _wait_for(workdir / "pid")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert (workdir / "term").read_text() == "term"
    assert proc.returncode == 7  # the step's own exit status, passed on


def test_a_step_whose_client_is_killed_is_stopped(workdir: Path, server: str) -> None:
    proc = _client(workdir, "0", "--sleep", sock=server)
    pid = int(_wait_for(workdir / "pid"))
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 20
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)
    assert (workdir / "term").read_text() == "term"  # asked politely (SIGTERM) first


def test_a_server_with_threads_after_its_imports_refuses_to_serve(workdir: Path) -> None:
    sock = workdir / "s"
    env = _env(workdir, CXRFLOW_WARM_PRELOAD="threaded_mod", CXRFLOW_WARM_PARENT=str(os.getpid()))
    proc = subprocess.run(
        [*SERVE, str(sock)],
        cwd=workdir / "run",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    status = json.loads(proc.stdout.splitlines()[0])
    assert proc.returncode == 3 and status["serving"] is False and status["threads"] > 1
    assert not sock.exists()
    rc, seen, _ = _run(workdir, "0", sock=str(sock))  # the steps start cold instead
    assert rc == 0 and seen["warm"] is None


def test_the_server_leaves_when_its_runner_does(workdir: Path) -> None:
    env = _env(workdir, CXRFLOW_WARM_PRELOAD="json")
    runner = subprocess.Popen(  # a parent that starts the server and exits at once
        [
            sys.executable,
            "-c",
            "import subprocess, sys, os; "
            f"p = subprocess.Popen([sys.executable, '-m', 'pipelines.warm', '--serve', {str(workdir / 's')!r}], "
            "env={**os.environ, 'CXRFLOW_WARM_PARENT': str(os.getpid())}); "
            "print(p.pid, flush=True)",
        ],
        env={**env, "CXRFLOW_WARM_PARENT": ""},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert runner.stdout is not None
    pid = int(runner.stdout.readline())
    runner.wait(10)
    deadline = time.monotonic() + 20
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pid)


def _wait_for(path: Path, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
