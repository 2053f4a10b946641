"""How the stack (``infra/stack/cxrstack/postgres.py``) finds or installs PostgreSQL, without installing anything.

The stack tests themselves (``test_stack.py``) need PostgreSQL and install it when they can;
these check, with ``apt-get`` and the system stubbed out, the two other paths: the Debian
package installed as root, and one clear line when that cannot be done.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from stack_support import load_stack


@pytest.fixture
def stack_module() -> Any:
    """The stack's PostgreSQL module, where the functions under test look their helpers up."""
    return load_stack().postgres


def _no_postgres(monkeypatch: pytest.MonkeyPatch, module: Any, *, root: bool, apt: bool) -> None:
    monkeypatch.setattr(module, "find_pg_bindir", lambda: None)
    monkeypatch.setattr(module.os, "geteuid", lambda: 0 if root else 1000)
    monkeypatch.setattr(
        module.shutil,
        "which",
        lambda name: "/usr/bin/apt-get" if apt and name == "apt-get" else None,
    )

    def no_subprocess(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"nothing may run here: {args}")

    monkeypatch.setattr(module.subprocess, "run", no_subprocess)


@pytest.mark.parametrize(("root", "apt"), [(False, True), (True, False)], ids=["user", "no-apt"])
def test_missing_postgres_that_cannot_be_installed_is_one_clear_line(
    stack_module: Any, monkeypatch: pytest.MonkeyPatch, root: bool, apt: bool
) -> None:
    _no_postgres(monkeypatch, stack_module, root=root, apt=apt)
    with pytest.raises(stack_module.StackError) as err:
        stack_module.ensure_postgres()
    message = str(err.value)
    assert "\n" not in message
    assert "install the `postgresql` package" in message
    assert stack_module.PG_BINDIR_VAR in message


def test_missing_postgres_is_installed_with_apt_as_root(
    stack_module: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_postgres(monkeypatch, stack_module, root=True, apt=True)
    calls: list[tuple[list[str], dict[str, str]]] = []

    def fake_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append((cmd, kwargs["env"]))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    # first look: nothing; after apt-get: the Debian layout
    looks = iter([None, Path("/usr/lib/postgresql/15/bin")])
    monkeypatch.setattr(stack_module, "find_pg_bindir", lambda: next(looks))
    monkeypatch.setattr(stack_module.subprocess, "run", fake_run)
    assert stack_module.ensure_postgres() == Path("/usr/lib/postgresql/15/bin")
    assert [c[1:] for c, _ in calls] == [
        ["update", "-qq"],
        ["install", "-y", "-qq", "--no-install-recommends", "postgresql"],
    ]
    assert all(env["DEBIAN_FRONTEND"] == "noninteractive" for _, env in calls)
    assert "installing the Debian package" in capsys.readouterr().out


def test_failed_apt_install_is_one_clear_line(
    stack_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_postgres(monkeypatch, stack_module, root=True, apt=True)

    def fake_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        err = "" if cmd[1] == "update" else "W: x\nE: Unable to locate package postgresql\n"
        return subprocess.CompletedProcess(cmd, 100 if err else 0, "", err)

    monkeypatch.setattr(stack_module.subprocess, "run", fake_run)
    with pytest.raises(stack_module.StackError) as err:
        stack_module.ensure_postgres()
    assert str(err.value) == (
        "installing PostgreSQL failed: `install -y -qq --no-install-recommends postgresql` "
        "said: E: Unable to locate package postgresql"
    )
