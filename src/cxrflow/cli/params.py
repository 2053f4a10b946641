"""``cxrflow params ...``: the resolved configuration (show, resolve) and its JSON Schema."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from cxrflow.cli.context import current_settings, print_json

app = typer.Typer(help="the resolved configuration and its schema", no_args_is_help=True)


class ParamsFormat(StrEnum):
    """How ``cxrflow params show`` prints the configuration."""

    json = "json"
    yaml = "yaml"


@app.command("show")
def params_show(
    fmt: Annotated[
        ParamsFormat, typer.Option("--format", help="json (with its hash) or yaml")
    ] = ParamsFormat.json,
) -> None:
    """Print the resolved configuration (params.yaml + profile + --set)."""
    from cxrflow.config import params_hash, params_to_dict, params_to_yaml

    params = current_settings().params()
    if fmt is ParamsFormat.yaml:
        print(params_to_yaml(params), end="")
    else:
        print_json({**params_to_dict(params), "_hash": params_hash(params)})


@app.command("schema")
def params_schema(
    output: Annotated[
        Path | None, typer.Option(help="write the JSON Schema here (default: stdout)")
    ] = None,
) -> None:
    """The JSON Schema of params.yaml, for editors (e.g. yaml-language-server)."""
    from cxrflow.config import params_json_schema

    text = json.dumps(params_json_schema(), indent=2, sort_keys=True) + "\n"
    if output is None:
        print(text, end="")
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        print(f"JSON Schema of params.yaml -> {output}")


@app.command("resolve")
def params_resolve(out: Annotated[Path, typer.Option(help="resolved params file")]) -> None:
    """Write the resolved configuration as a params file (what DVC stages read)."""
    from cxrflow.config import params_hash, params_to_yaml

    params = current_settings().params()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(params_to_yaml(params))
    print(f"params (profile {params.profile}, hash {params_hash(params)}) -> {out}")
