"""How ``cxrflow`` reports a failure: one ``cxrflow: error: ...`` line and an exit status.

A failure a user can cause (bad params, a missing path, invalid data, a step that failed) is
*expected* and gets one line and exit status 2; anything else is reported as unexpected (exit
status 1). Packages that add command groups declare their own expected errors with
:func:`add_user_errors`, by name, so that their (possibly heavy) modules are never imported just
to be able to recognise their exceptions.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

EXIT_USER_ERROR = 2
EXIT_FAILED = 1

_USER_ERROR_NAMES: list[str] = [
    "cxrflow.data.validate:DataValidationError",
    "cxrflow.data.versions:DataRegistryError",
    "cxrflow.tracking:ModelNotFoundError",
]


def add_user_errors(*names: str) -> None:
    """Declare exception types a user can cause, as ``"module:ClassName"``.

    A type counts once its module has been imported (an exception of a module never imported
    cannot have been raised), so declaring one costs no import.

    Args:
        *names: ``"package.module:ClassName"`` of each exception type.
    """
    for name in names:
        if name not in _USER_ERROR_NAMES:
            _USER_ERROR_NAMES.append(name)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types a user can cause (bad params, paths, data, a failed step...)."""
    from cxrflow.config import ParamsError

    known: list[type[BaseException]] = [ParamsError, FileNotFoundError, ValueError, LookupError]
    for name in _USER_ERROR_NAMES:
        module_name, _, attr = name.partition(":")
        module = sys.modules.get(module_name)
        found = getattr(module, attr, None) if module is not None else None
        if isinstance(found, type) and issubclass(found, BaseException):
            known.append(found)
    return tuple(known)


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (its type's name when it has none)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def misplaced_global_option(option: str, args: Sequence[str], takes_value: bool) -> str:
    """The hint for a global option given after the command, with the command line fixed.

    Args:
        option: The option as the user spelled it (``--set``, ``--set=x`` is found too).
        args: The command line (without the program name).
        takes_value: Whether the option takes a value (the next word, unless ``--opt=value``).

    Returns:
        ``"--set is a global option: put it before the command: cxrflow --set x=1 params show"``
    """
    words = list(args)
    moved: list[str] = []
    for i, word in enumerate(words):
        if word == option or word.startswith(option + "="):
            end = i + 2 if takes_value and word == option and i + 1 < len(words) else i + 1
            moved = words[i:end]
            del words[i:end]
            break
    fixed = shlex.join(["cxrflow", *moved, *words])
    return f"{option} is a global option: put it before the command: {fixed}"
