"""Warm starts (``pipelines/warm.py``): a step forked from a server behaves as a fresh ``python -m``.

Real processes throughout: a server started as the local runner starts it (preloading a small
module list instead of TensorFlow, to be quick), the stdlib client as kfp.local's command runs
it, and a step module that reports what it saw. The same step run cold is the reference.
"""

from __future__ import annotations

import inspect
import json
import logging
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

CHANNEL_STEP = textwrap.dedent(
    """
    import os, sys
    from cxrflow.logs import emit_summary, emit_timing

    print("step output", flush=True)
    emit_summary(sys.argv[1], "kept 3 rows")
    emit_timing({"step": sys.argv[1], "warm": os.environ.get("CXRFLOW_WARM_STARTED") == "1"})
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
    (tmp_path / "channel_step.py").write_text(CHANNEL_STEP)
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
    workdir: Path,
    *args: str,
    sock: str | None,
    cwd: Path | None = None,
    module: str = "step_mod",
    env: dict[str, str] | None = None,
    **kw: object,
) -> subprocess.Popen[str]:
    env = _env(workdir, **({"CXRFLOW_WARM_SOCKET": sock} if sock else {}), **(env or {}))
    return subprocess.Popen(
        [sys.executable, "-I", "-S", str(WARM), "-m", module, *args],
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


def test_warm_and_cold_steps_report_to_the_runners_channel_not_stdout(
    workdir: Path, server: str
) -> None:
    from cxrflow.logs import CHANNEL_ENV

    channel = workdir / "channel.jsonl"
    outputs = []
    for step, sock in (("cold", None), ("warm", server)):
        proc = _client(
            workdir, step, sock=sock, module="channel_step", env={CHANNEL_ENV: str(channel)}
        )
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outputs.append(out + err)
    assert all("step output" in o and "::cxrflow-" not in o for o in outputs)
    records = [json.loads(line) for line in channel.read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in records] == [
        ("summary", "cold"),
        ("timing", "cold"),
        ("summary", "warm"),
        ("timing", "warm"),
    ]
    assert [r["report"]["warm"] for r in records if r["kind"] == "timing"] == [False, True]


# ---------------------------------------------------------- the private kfp function it patches


def test_the_installed_kfp_has_the_function_the_warm_start_patches() -> None:
    from pipelines import warm

    handler, why = warm.kfp_patch_point()
    assert why is None and handler is not None
    assert callable(getattr(handler, warm.KFP_PATCH_POINT[1]))


def _changed_signature(full_command: list[str], new_executable: str, user_code: int) -> list[str]:
    return full_command


def _renamed_parameter(command: list[str], new_executable: str) -> list[str]:
    return command


@pytest.mark.parametrize("change", ["missing", _changed_signature, _renamed_parameter])
def test_a_changed_kfp_falls_back_to_cold_starts_with_one_warning(
    change: object, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from kfp.local import subprocess_task_handler as handler

    from pipelines import warm

    name = warm.KFP_PATCH_POINT[1]
    if change == "missing":
        monkeypatch.delattr(handler, name)
    else:
        monkeypatch.setattr(handler, name, change)
    monkeypatch.delenv(warm.DISABLE_ENV, raising=False)
    monkeypatch.delenv(warm.SOCKET_ENV, raising=False)
    before = getattr(handler, name, None)
    with caplog.at_level(logging.DEBUG), warm.started({"X": "1"}) as server:
        assert server is None  # no server: kfp.local starts every step cold
        assert getattr(handler, name, None) is before  # kfp left as it is
        assert warm.SOCKET_ENV not in os.environ
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "\n" not in message and "cold" in message and name in message
    if change != "missing":
        assert str(inspect.signature(change)) in message  # type: ignore[arg-type]


def test_serve_preloads_what_preload_modules_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cxrflow.steps.registry import STEPS
    from pipelines import warm

    preload = warm.preload_modules()
    assert preload[0] == "kfp.dsl.executor_main"
    # every step's declared heavy imports, read from the registry, not a second list
    assert {m for spec in STEPS for m in spec.preload} <= set(preload)
    assert {"tensorflow", "keras", "mlflow", "cxrflow.train"} <= set(preload)
    monkeypatch.setattr(warm, "preload_modules", lambda: ("json", "textwrap"))
    saved = signal.getsignal(signal.SIGCHLD)  # serve ignores SIGCHLD: not in pytest's process
    try:
        # parent -1 is nobody's: serve imports, reports, and returns without serving
        warm.serve(str(tmp_path / "s"), parent=-1)
    finally:
        signal.signal(signal.SIGCHLD, saved)
    status = json.loads(capsys.readouterr().out.splitlines()[0])
    assert status["preloaded"] == ["json", "textwrap"]


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
