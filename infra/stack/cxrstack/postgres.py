"""PostgreSQL on this machine: its binaries, the user it runs as, and the stack's cluster on disk.

The binaries are the Debian package's, installed with apt-get when missing (as root). As root,
PostgreSQL runs as the ``postgres`` system user, since it refuses to run as root. Roles and
databases inside the cluster are made by ``provision.py`` once the server answers.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .config import HOST, PG_BINDIR_VAR, PG_SUPERUSER, PG_SYSTEM_USER, StackError
from .processes import tail
from .provision import write_private


def find_pg_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``postgres``: ``$CXRFLOW_PG_BINDIR``, PATH, Debian's."""
    env = os.environ.get(PG_BINDIR_VAR, "").strip()
    candidates = [Path(env)] if env else []
    for tool in ("pg_config", "initdb"):
        found = shutil.which(tool)
        if found is None:
            continue
        if tool == "pg_config":
            out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False)
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))
        else:
            candidates.append(Path(found).resolve().parent)

    def version(p: Path) -> int:
        return int(p.parent.name) if p.parent.name.isdigit() else 0

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    return None


def ensure_postgres(out: Any = None) -> Path:
    """PostgreSQL's bin folder, installing the Debian package first when it is missing.

    Raises:
        StackError: not installed, and it cannot be installed here (not root, or no apt-get,
            or apt-get failed).
    """
    bindir = find_pg_bindir()
    if bindir is not None:
        return bindir
    apt = shutil.which("apt-get")
    if os.geteuid() != 0 or apt is None:
        raise StackError(
            "PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin) "
            "and cannot be installed here (needs root and apt-get): install the `postgresql` "
            f"package, or set {PG_BINDIR_VAR} to its bin folder"
        )
    print(
        "stack: PostgreSQL not found; installing the Debian package (apt-get)",
        file=out or sys.stdout,
    )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        [apt, "update", "-qq"],
        [apt, "install", "-y", "-qq", "--no-install-recommends", "postgresql"],
    ):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise StackError(f"installing PostgreSQL failed: `{' '.join(cmd[1:])}` said: {last[0]}")
    bindir = find_pg_bindir()
    if bindir is None:
        raise StackError("apt-get installed `postgresql` but no initdb was found afterwards")
    return bindir


def pg_version() -> str:
    """The installed server's version ("16.4"), or "?" when there is none."""
    bindir = find_pg_bindir()
    if bindir is None:
        return "?"
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=False
    )
    words = out.stdout.split()
    return words[2] if len(words) > 2 else "?"


def pg_user() -> pwd.struct_passwd | None:
    """The system user PostgreSQL runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        raise StackError(
            "PostgreSQL refuses to run as root and there is no `postgres` system user to run "
            "it as: install the `postgresql` package or create the user (useradd --system "
            "postgres)"
        ) from None


def _check_reachable(path: Path, user: pwd.struct_passwd) -> None:
    """Every folder above ``path`` lets ``user`` through (PostgreSQL opens its data dir)."""
    groups = {user.pw_gid, *os.getgrouplist(user.pw_name, user.pw_gid)}
    for folder in [*reversed(path.parents)]:
        st = folder.stat()
        if st.st_uid == user.pw_uid:
            ok = st.st_mode & 0o100
        elif st.st_gid in groups:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            raise StackError(
                f"PostgreSQL runs as the `{user.pw_name}` user, which cannot enter {folder}: "
                "use a --state-dir it can reach (every folder above it needs o+x), or "
                f"chmod o+x {folder}"
            )


class Cluster:
    """The stack's PostgreSQL cluster: ``<state>/postgres/data``, run by :func:`pg_user`.

    Args:
        bindir: PostgreSQL's bin folder (:func:`ensure_postgres`).
        state: the stack's state folder.
        user: the system user the server runs as; None for ourselves.
    """

    def __init__(self, bindir: Path, state: Path, user: pwd.struct_passwd | None) -> None:
        self.bindir = bindir
        self.state = state
        self.user = user
        self.dir = state / "postgres"
        self.data = self.dir / "data"

    def env(self) -> dict[str, str]:
        """The whole environment of initdb and the server (nothing else leaks in)."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "LANG": "C"}
        if self.user is not None:
            env["HOME"] = self.user.pw_dir
        return env

    def prepare(self) -> None:
        """Make ``<state>/postgres`` (0700), owned by the server's user, who can reach it."""
        if self.user is not None:
            self.state.chmod(0o711)  # PostgreSQL's user passes through; secrets stay 0600
            _check_reachable(self.dir, self.user)
        self.dir.mkdir(exist_ok=True)
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.dir.chmod(0o700)

    def init(self, superuser_secret: str, logs: Path) -> None:
        """Run initdb unless the cluster exists: scram passwords, superuser ``postgres``.

        Raises:
            StackError: initdb failed (its last lines and log are named).
        """
        if (self.data / "PG_VERSION").is_file():
            return
        user = self.user
        pwfile = self.dir / "superuser.pw"
        write_private(pwfile, superuser_secret + "\n")
        if user is not None:
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        try:
            done = subprocess.run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    PG_SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ],
                capture_output=True,
                text=True,
                env=self.env(),
                cwd=self.dir,
                check=False,
                **({"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}),
            )
        finally:
            pwfile.unlink(missing_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        (logs / "initdb.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise StackError(
                f"initdb failed: {tail(logs / 'initdb.log', 2)} (log: {logs / 'initdb.log'})"
            )

    def server_args(self, port: int, settings: tuple[str, ...] = ()) -> list[str]:
        """The postmaster's command line: TCP on loopback ``port`` only, plus ``settings``."""
        args = [str(self.bindir / "postgres"), "-D", str(self.data)]
        for setting in (
            f"port={port}",
            f"listen_addresses={HOST}",
            "unix_socket_directories=",  # TCP on loopback only
            *settings,
        ):
            args += ["-c", setting]
        return args
