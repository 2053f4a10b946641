"""Process supervision: start a server, wait until it is ready, record it, stop it.

Every server starts as the leader of its own session and process group, and is recorded in
``<state>/stack.json`` by pid and start time (never by name), so that a later ``stack.py down``
(another process) signals only what this stack started, and a reused pid is not taken for ours.

mirakuru was tried for this and left out: it kills what it started when the starting process
exits (an ``atexit`` hook and ``Executor.__del__``), which is what tests want but not
``make stack``, and it can stop only a process it holds as a ``Popen`` object, so ``down`` would
need the pid-based stop below anyway.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pwd
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .config import HOST, StackConfig, StackError


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


def spawn(
    args: list[str],
    log: Path,
    env: Mapping[str, str],
    cwd: Path,
    user: pwd.struct_passwd | None = None,
) -> Proc:
    """Start ``args`` detached (own session, stdin closed, output appended to ``log``).

    Args:
        args: the command line.
        log: file that receives stdout and stderr.
        env: the whole environment of the process (nothing is inherited).
        cwd: its working directory.
        user: the system user to run it as (needs root); None for ourselves.

    Returns:
        The started process, by pid and start time.
    """
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


def wait_ready(
    proc: Proc,
    log: Path,
    probe: Callable[[], str | None],
    *,
    name: str,
    timeout: float,
    interval: float,
    until: str = "answer",
) -> None:
    """Call ``probe`` until it returns None (ready); fail at once if the process exits.

    Args:
        proc: the process that should become ready.
        log: its log, quoted in the errors.
        probe: None when ready, else what it saw (for the timeout message); it raises
            :class:`StackError` itself when waiting longer cannot help.
        name: the server's name in messages.
        timeout: seconds before giving up.
        interval: seconds between probes.
        until: what the server did not do in time, for the message.

    Raises:
        StackError: the process exited, or was not ready in ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        if not proc.alive():
            raise StackError(f"{name} exited at start: {tail(log)} (log: {log})")
        seen = probe()
        if seen is None:
            return
        if time.monotonic() > deadline:
            raise StackError(f"{name} did not {until} in {timeout:.0f} s ({seen}; log: {log})")
        time.sleep(interval)


def tail(path: Path, lines: int = 5) -> str:
    """The last ``lines`` lines of a log, joined into one line ("" if unreadable)."""
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


def need_port(port: int, flag: str) -> None:
    """Raise a one-line :class:`StackError` naming ``flag`` unless ``port`` is free."""
    if not port_free(port):
        raise StackError(
            f"port {port} on {HOST} is in use (another stack? `stack.py status`); "
            f"choose another with {flag}"
        )


def http_status(url: str, headers: Mapping[str, str] | None = None, timeout: float = 3) -> int:
    """The HTTP status of a GET of ``url`` (an error status too); OSError if nothing answers."""
    req = urllib.request.Request(url, headers=dict(headers or {}))
    # no proxy: the stack is on loopback whatever HTTP_PROXY says
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


class ProcessTable:
    """``<state>/stack.json``: the config a stack was started with and its processes."""

    def __init__(self, path: Path, config: StackConfig) -> None:
        self.path = path
        self.config = config

    def read(self) -> dict[str, Any]:
        """The whole file; empty when there is none."""
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def recorded_config(self) -> dict[str, Any]:
        """The config of the last ``up`` (ports, workers), as JSON; empty when none."""
        return dict(self.read().get("config", {}))

    def procs(self) -> dict[str, Proc]:
        """The recorded processes, by service."""
        recorded = self.read().get("procs", {})
        return {name: Proc(int(p["pid"]), p.get("start")) for name, p in recorded.items()}

    def record(self, name: str, proc: Proc | None) -> None:
        """Record ``name``'s process (None: forget it), with the config in force."""
        data = self.read()
        data["config"] = self.config.to_json()
        procs = data.setdefault("procs", {})
        if proc is None:
            procs.pop(name, None)
        else:
            procs[name] = {"pid": proc.pid, "start": proc.start}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path)
