"""What every ``cxrflow`` command shares: the global options of this invocation and the
configuration resolved from them, and how results are printed.

Command modules (and the command groups that packages add through the ``cxrflow.cli`` entry
point group, such as ``pipelines.cli``) read the global options with :func:`current_settings`
instead of taking them again, so that ``--params``, ``--profile`` and ``--set`` mean the same
thing in every command.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cxrflow.config import Params


@dataclass
class Settings:
    """The global options, and the configuration resolved from them (once)."""

    params_path: Path = Path("params.yaml")
    profile: str | None = None
    overrides: list[str] = field(default_factory=list)
    verbose: bool = False
    debug: bool = False
    _params: Params | None = None

    def params(self, extra: list[str] | None = None) -> Params:
        """The resolved configuration.

        Args:
            extra: Overrides (``KEY=VALUE``) applied after the ``--set`` ones; the result is
                then resolved afresh and not cached.

        Returns:
            params.yaml resolved with ``--profile`` and ``--set`` (and ``extra``).
        """
        from cxrflow.config import load_params

        if extra:
            return load_params(self.params_path, self.profile, [*self.overrides, *extra])
        if self._params is None:
            self._params = load_params(self.params_path, self.profile, self.overrides)
        return self._params


_CURRENT: list[Settings] = []


def use_settings(settings: Settings) -> None:
    """Make ``settings`` those of this invocation (the root callback calls it, once per run)."""
    _CURRENT[:] = [settings]


def current_settings() -> Settings:
    """The :class:`Settings` of the running ``cxrflow`` invocation.

    Raises:
        RuntimeError: Called outside a ``cxrflow`` command.
    """
    if not _CURRENT:
        raise RuntimeError("current_settings() is only available inside a cxrflow command")
    return _CURRENT[0]


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON with sorted keys (what ``--json`` outputs look like)."""
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def given(**options: Any) -> dict[str, Any]:
    """The options the user set (None = not given, take the library's default)."""
    return {k: v for k, v in options.items() if v is not None}
