"""The ``cxrflow`` program: the Typer app, its global options, its command groups and
:func:`main`, which turns every failure into one ``cxrflow: error: ...`` line.

The commands of the core live in the sibling modules (:mod:`~cxrflow.cli.steps`,
:mod:`~cxrflow.cli.models`, :mod:`~cxrflow.cli.data`, :mod:`~cxrflow.cli.params`). Command groups
of other packages arrive through the ``cxrflow.cli`` entry point group (``pipelines`` declares
``pipeline = "pipelines.cli:pipeline_app"`` in pyproject.toml), so the core never imports an
adapter. :func:`main` mounts them once, when it runs, since reading installed metadata is I/O.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Annotated

import typer

from cxrflow.cli import data, model, models, params, steps
from cxrflow.cli.context import Settings, use_settings
from cxrflow.cli.errors import (
    EXIT_FAILED,
    EXIT_USER_ERROR,
    misplaced_global_option,
    one_line,
    user_errors,
)
from cxrflow.cli.tensorflow_log import LEVEL_ENV, quiet_tensorflow_import
from cxrflow.steps.registry import step_names

PLUGIN_GROUP = "cxrflow.cli"
"""Entry point group of the command groups other packages add (name -> a ``typer.Typer``)."""

app = typer.Typer(
    name="cxrflow",
    help=(
        "cxrflow: COVID-19 chest X-ray transfer learning (Katsamenis et al. 2020) as a "
        "Kubeflow / MLflow / DVC workflow. Steps: "
        + " -> ".join("model_0.." if s == "train" else s for s in step_names() if s != "finalize")
        + ". Every step takes the whole configuration resolved from params.yaml, --profile "
        "and --set."
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(steps.app)
app.add_typer(models.app)
app.add_typer(data.app, name="data")
app.add_typer(params.app, name="params")
app.add_typer(model.app, name="model")


def _version() -> str:
    try:
        return metadata.version("cxrflow")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _show_version(value: bool) -> None:
    if value:
        # The component image bakes its commit in (CXRFLOW_GIT_COMMIT); a tag alone can move.
        commit = os.environ.get("CXRFLOW_GIT_COMMIT", "").strip()
        known = commit and commit != "unknown"
        print(f"cxrflow {_version()}" + (f" ({commit})" if known else ""))
        raise typer.Exit()


@app.callback()
def main_options(
    params: Annotated[
        Path,
        typer.Option("--params", envvar="CXRFLOW_PARAMS", help="params file"),
    ] = Path("params.yaml"),
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile",
            envvar="CXRFLOW_PROFILE",
            help="params profile: paper, demo, smoke (default: the file's `profile`)",
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="override one param for this run (YAML value), e.g. --set train.epochs=20",
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="debug logging; stream every step's output")
    ] = False,
    debug: Annotated[
        bool,
        typer.Option("--debug", envvar="CXRFLOW_DEBUG", help="show tracebacks on errors"),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_show_version,
            is_eager=True,
            help="print the version and exit",
        ),
    ] = False,
) -> None:
    """Global options (before the command)."""
    from cxrflow.logs import setup_logging

    use_settings(
        Settings(
            params_path=params,
            profile=profile,
            overrides=list(set_ or []),
            verbose=verbose,
            debug=debug,
        )
    )
    setup_logging(verbose)


def mount_plugins(root: typer.Typer = app) -> list[str]:
    """Add the command groups installed packages declare in the ``cxrflow.cli`` entry point
    group (idempotent). A group that fails to load is left out with a warning on stderr, so
    that the rest of the program still works.

    Args:
        root: The app to add them to.

    Returns:
        The names of the groups mounted by this call.
    """
    added: list[str] = []
    mounted = {info.name for info in root.registered_groups}
    for ep in metadata.entry_points(group=PLUGIN_GROUP):
        if ep.name in mounted:
            continue
        try:
            group = ep.load()
        except Exception as exc:
            print(
                f"cxrflow: warning: commands {ep.name!r} ({ep.value}) not loaded: "
                f"{type(exc).__name__}: {one_line(exc)}",
                file=sys.stderr,
            )
            continue
        if not isinstance(group, typer.Typer):
            print(
                f"cxrflow: warning: commands {ep.name!r} ({ep.value}) not loaded: "
                "not a typer.Typer",
                file=sys.stderr,
            )
            continue
        root.add_typer(group, name=ep.name)
        mounted.add(ep.name)
        added.append(ep.name)
    return added


def _global_options() -> dict[str, bool]:
    """Every spelling of the root's options -> whether it takes a value (derived, not listed)."""
    from typer.main import get_command

    found: dict[str, bool] = {}
    for param in get_command(app).params:
        for name in (*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ())):
            found[name] = not getattr(param, "is_flag", False)
    for meta in ("--help", "-h", "--version", "--install-completion", "--show-completion"):
        found.pop(meta, None)
    return found


def _misplaced_option_hint(exc: BaseException, args: list[str]) -> str | None:
    """The hint for ``cxrflow params show --set x=1``: a global option after the command."""
    option = getattr(exc, "option_name", None)
    if not isinstance(option, str):
        return None
    options = _global_options()
    if option not in options:
        return None
    return misplaced_global_option(option, args, options[option])


def _debug_requested(args: list[str]) -> bool:
    env = os.environ.get("CXRFLOW_DEBUG", "").strip().lower()
    return "--debug" in args or env in {"1", "true", "yes", "on"}


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the command; a failure ends with one ``cxrflow: error:`` line.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, 2 for an error a user can cause, 1 for any other, 130 when
        interrupted.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(args)
    # before anything imports TensorFlow; a value the user set stays
    os.environ.setdefault(LEVEL_ENV, "2")
    mount_plugins()
    try:
        with quiet_tensorflow_import():
            result = app(args=args, prog_name="cxrflow", standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except (KeyboardInterrupt, typer.Abort):
        print("cxrflow: interrupted", file=sys.stderr)
        return 130
    except typer.TyperException as exc:  # usage errors: click's own message and usage line
        hint = _misplaced_option_hint(exc, args)
        if hint is not None:
            print(f"cxrflow: error: {hint}", file=sys.stderr)
            return EXIT_USER_ERROR
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        return int(getattr(exc, "exit_code", EXIT_USER_ERROR))
    except Exception as exc:
        if debug:
            raise
        if isinstance(exc, user_errors()):
            print(f"cxrflow: error: {one_line(exc)}", file=sys.stderr)
            return EXIT_USER_ERROR
        print(
            f"cxrflow: error: {type(exc).__name__}: {one_line(exc)} "
            "(unexpected; rerun with --debug for the traceback and please report it)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return int(result) if isinstance(result, int) else 0
