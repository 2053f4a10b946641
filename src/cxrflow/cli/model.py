"""``cxrflow model``: people in the loop of the registry: promote, roll back, review.

Each command talks to the tracking server of the environment (``MLFLOW_TRACKING_URI``, with
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` or ``MLFLOW_TRACKING_TOKEN`` for a
server with authentication) and records who moved an alias (``$CXRFLOW_USER``, else
``$USER``). The logic is :mod:`cxrflow.promotion`; this module parses and prints.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cxrflow.cli.context import current_settings, print_json
from cxrflow.cli.errors import add_user_errors

app = typer.Typer(
    name="model",
    help="The registered model: promote a version, roll the champion back, show every move.",
    no_args_is_help=True,
)
add_user_errors("cxrflow.promotion:PromotionError", "cxrflow.tracking:RegistryAccessError")

NameOption = Annotated[
    str | None,
    typer.Option("--name", help="registered model (default: params register.model_name)"),
]
AliasOption = Annotated[
    str | None, typer.Option("--alias", help="the alias moved (default: params register.alias)")
]


def _names(name: str | None, alias: str | None) -> tuple[str, str]:
    """The registered model and alias: the options, else params (defaults without a file)."""
    if name and alias:
        return name, alias
    settings = current_settings()
    if settings.params_path.is_file():
        rp = settings.params().register
        return name or rp.model_name, alias or rp.alias
    from cxrflow.config.sections import RegisterParams

    defaults = RegisterParams()
    return name or defaults.model_name, alias or defaults.alias


def _show(move: object, int8: str, as_json: bool) -> None:
    """Print the move and what became of the int8 model's alias."""
    from dataclasses import asdict

    from cxrflow.promotion import AliasMove

    assert isinstance(move, AliasMove)
    if as_json:
        print_json({**asdict(move), "int8": int8 or None})
        return
    before = "nowhere" if move.from_version is None else f"version {move.from_version}"
    print(
        f"@{move.alias}: {before} -> version {move.to_version} ({move.action} by {move.who} at "
        f"{move.when}): {move.reason}"
    )
    if int8:
        print(int8)


@app.command()
def promote(
    version: Annotated[int, typer.Argument(help="the registered version to make champion")],
    reason: Annotated[str, typer.Option("--reason", help="why (recorded; required)")],
    override_audit: Annotated[
        bool,
        typer.Option(
            "--override-audit",
            help="promote a version that failed (or never had) the shortcut audit (recorded)",
        ),
    ] = False,
    name: NameOption = None,
    alias: AliasOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="the move as JSON")] = False,
) -> None:
    """Point the champion alias at VERSION, recorded with who, when and why; the int8 model's
    alias follows (to VERSION's int8 export, or removed when it has none)."""
    from cxrflow.promotion import follow_int8, promote_version

    model_name, champion = _names(name, alias)
    move = promote_version(model_name, champion, version, reason, override_audit=override_audit)
    _show(move, follow_int8(model_name, move), as_json)


@app.command()
def rollback(
    reason: Annotated[str, typer.Option("--reason", help="why (recorded)")] = "",
    name: NameOption = None,
    alias: AliasOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="the move as JSON")] = False,
) -> None:
    """Point the champion alias back at the previous champion (recorded); the int8 model's
    alias follows."""
    from cxrflow.promotion import follow_int8, rollback_champion

    model_name, champion = _names(name, alias)
    move = rollback_champion(model_name, champion, reason)
    _show(move, follow_int8(model_name, move), as_json)


@app.command()
def history(
    name: NameOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table")] = False,
) -> None:
    """Every alias move of the registered model: when, from which version to which, why, who."""
    from dataclasses import asdict

    from cxrflow.promotion import alias_history, format_history

    model_name, _ = _names(name, "-")
    moves = alias_history(model_name)
    if as_json:
        print_json([asdict(m) for m in moves])
    else:
        print(format_history(moves), end="")
