"""The step commands, written from the step registry: ``cxrflow ingest``, ``validate``,
``split``, ``train KEY``, ``evaluate``, ``audit``, ``register`` (what DVC stages call).

Each step's command takes one option per input (named after the artifact, e.g. ``--dataset``,
``--audit``; the models by ``--models-dir``), ``--out`` for what it writes and
``--pipeline-run-id``; it resolves the configuration once (``--params``, ``--profile``,
``--set``), passes it whole to the step function and prints the step's ``show`` of the result.
``start`` is DVC's alone (the start point a model stage depends on). ``export``'s command is
:func:`cxrflow.cli.models.export`: it also exports any model, not only a registered one.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping
from inspect import Parameter, Signature
from pathlib import Path
from typing import Annotated, Any

import typer

from cxrflow.cli.context import current_settings, print_json
from cxrflow.steps.registry import STEPS
from cxrflow.steps.spec import BASE_MODEL, CANDIDATES, MODELS, StepSpec

app = typer.Typer()


def _producer_option(name: str) -> tuple[str, str]:
    """The CLI option reading artifact ``name``, and the step that writes it."""
    for spec in STEPS:
        for port in spec.outputs:
            if port.name == name:
                return port.option, spec.name
    raise KeyError(f"no step writes {name!r}")


def _option(name: str, annotation: Any, default: Any = Parameter.empty) -> Parameter:
    return Parameter(name, Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


def _signature(spec: StepSpec) -> Signature:
    """The command's parameters: the model key, one option per input, --out, the run id."""
    params: list[Parameter] = []
    if spec.per_model:
        params.append(
            _option(
                "model_key",
                Annotated[str, typer.Argument(help="a key of params `models` (model_0 ...)")],
            )
        )
    for name in spec.inputs:
        if name in (MODELS, CANDIDATES, BASE_MODEL):
            if name == BASE_MODEL:
                params.append(
                    _option(
                        "base_model",
                        Annotated[
                            Path | None,
                            typer.Option(help="output directory of the model this one starts from"),
                        ],
                        None,
                    )
                )
            if name == MODELS:
                params.append(
                    _option(
                        "model",
                        Annotated[
                            list[str] | None,
                            typer.Option(
                                metavar="KEY=DIR", help="a model's output directory (repeat)"
                            ),
                        ],
                        None,
                    )
                )
            params.append(
                _option(
                    "models_dir",
                    Annotated[
                        Path | None,
                        typer.Option(help="directory holding <key>/ for each model it reads"),
                    ],
                    None,
                )
            )
            continue
        flag, producer = _producer_option(name)
        help_ = f"a `{producer}` output directory"
        if name in spec.optional:
            params.append(
                _option(name, Annotated[Path | None, typer.Option(flag, help=help_)], None)
            )
        else:
            params.append(_option(name, Annotated[Path, typer.Option(flag, help=help_)]))
    (out,) = spec.outputs
    params.append(
        _option("out", Annotated[Path, typer.Option(help=f"{out.name} directory to write")])
    )
    params.append(
        _option(
            "pipeline_run_id",
            Annotated[
                str | None,
                typer.Option(help="the pipeline run (default: the run that made the data)"),
            ],
            None,
        )
    )
    return Signature(params)


def _model_dirs(spec: StepSpec, params: Any, given: Mapping[str, Any]) -> dict[str, Path]:
    """The models a models input reads: <models-dir>/<key>, then each --model KEY=DIR."""
    keys = params.model_keys
    if CANDIDATES in spec.inputs:
        keys = tuple(k for k in params.register.candidates if k in params.models)
    dirs: dict[str, Path] = {}
    if given.get("models_dir") is not None:
        dirs = {k: given["models_dir"] / k for k in keys}
    for item in given.get("model") or []:
        key, _, path = item.partition("=")
        if key not in params.models or not path:
            raise ValueError(
                f"--model expects KEY=DIR with KEY in {list(params.model_keys)}, got {item!r}"
            )
        dirs[key] = Path(path)
    if not dirs:
        raise ValueError(
            "give --models-dir"
            + (" or at least one --model KEY=DIR" if MODELS in spec.inputs else "")
        )
    return dirs


def _arguments(spec: StepSpec, params: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    """The step function's keyword arguments from the command's options."""
    kwargs: dict[str, Any] = {}
    for name in spec.inputs:
        if name in (MODELS, CANDIDATES):
            kwargs[name] = _model_dirs(spec, params, given)
        elif name == BASE_MODEL:
            from cxrflow.config import check_model_key

            base = check_model_key(params, given["model_key"]).base_model_key
            path = given.get("base_model")
            if path is None and given.get("models_dir") is not None and base is not None:
                path = given["models_dir"] / base
            kwargs[name] = path
        else:
            kwargs[name] = given.get(name)
    (out,) = spec.outputs
    kwargs[out.name] = given["out"]
    if "verbose" in inspect.signature(spec.run).parameters:
        kwargs["verbose"] = 1 if sys.stderr.isatty() else 2
    return kwargs


def _command(spec: StepSpec) -> Callable[..., None]:
    def command(**given: Any) -> None:
        params = current_settings().params()
        args = (params, given["model_key"]) if spec.per_model else (params,)
        result = spec.run(
            *args, **_arguments(spec, params, given), pipeline_run_id=given["pipeline_run_id"]
        )
        if spec.show is not None:
            print(spec.show(result))
        else:
            print_json(result)

    command.__signature__ = _signature(spec)  # type: ignore[attr-defined]
    command.__name__ = spec.name
    reads = ", ".join(spec.reads).replace("{key}", "<model_key>")
    what = spec.summary.split(": ", 1)[-1]
    command.__doc__ = f"{what[:1].upper()}{what[1:]} Reads params: {reads}."
    return command


def step_commands() -> list[StepSpec]:
    """The steps that get a generated command (every step with a CLI of its own)."""
    return [s for s in STEPS if s.cli and not s.exit_handler]


for _spec in step_commands():
    app.command(_spec.name)(_command(_spec))


@app.command()
def start(
    kind: Annotated[str, typer.Argument(help="scratch or imagenet")],
    out: Annotated[Path, typer.Option(help="directory for START.json")],
) -> None:
    """Describe a starting point of training (the seed, or the ImageNet weights with their
    sha256): what DVC's model stages depend on besides the data. Reads params: train.seed,
    models."""
    from cxrflow.steps import write_start_point

    print_json(write_start_point(current_settings().params(), kind, out))
