"""The step registry is the one list of steps: everything that lists steps reads it.

Drift tests between the registry and the places that must agree with it (the CLI's commands,
finalize's list, the warm-start preload, the compiled DAG and dvc.yaml are checked in
tests/pipeline/test_compile.py), the step functions' conventions that the generic adapters
rely on, and the one vocabulary of MLflow names (no "cxrflow." literal outside names.py).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from typer.main import get_command

from cxrflow.config import load_params
from cxrflow.steps.registry import STEPS, data_steps, pipeline_steps, preload_modules
from cxrflow.steps.spec import BASE_MODEL, MODEL_INPUTS

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "cxrflow"


def test_every_step_but_the_exit_handler_is_a_cli_command() -> None:
    from cxrflow.cli import app

    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    for spec in STEPS:
        if not spec.exit_handler:
            assert spec.name in commands, spec.name


def test_params_steps_are_the_registry_order_with_models_expanded() -> None:
    params = load_params(ROOT / "params.yaml", "smoke", ["models.model_4={dataset: dataset_1, "
                         "architecture: small_cnn, init: model_1}"])  # fmt: skip
    steps = params.steps
    assert steps == pipeline_steps(params)
    assert steps[:3] == data_steps() == ("ingest", "validate", "split")
    assert steps[3 : 3 + len(params.model_keys)] == params.model_keys
    assert steps[-4:] == ("evaluate", "audit", "register", "export")
    assert "finalize" not in steps


def test_a_model_key_may_not_take_a_step_name() -> None:
    from cxrflow.config import ParamsError

    for name in ("export", "evaluate", "train", "finalize"):
        with pytest.raises(ParamsError, match="not one of"):
            load_params(
                ROOT / "params.yaml",
                "smoke",
                [f"models.{name}={{dataset: dataset_1, architecture: small_cnn, init: scratch}}"],
            )


@pytest.mark.parametrize("spec", STEPS, ids=lambda s: s.name)
def test_step_functions_take_their_ports_by_name(spec) -> None:
    """The adapters call every step the same way: params, (model key), ports, run id."""
    sig = inspect.signature(spec.run)
    names = list(sig.parameters)
    assert names[0] == "params"
    if spec.exit_handler:
        return
    if spec.per_model:
        assert names[1] == "model_key"
    for port in spec.inputs:
        assert port in sig.parameters, (spec.name, port)
    for out in spec.outputs:
        assert out.name in sig.parameters, (spec.name, out.name)
    assert "pipeline_run_id" in sig.parameters
    for name in spec.optional:
        assert sig.parameters[name].default is None, (spec.name, name)
    writers = {p.name for s in STEPS for p in s.outputs}
    for name in spec.inputs:
        assert name in writers or name in (*MODEL_INPUTS, BASE_MODEL), (spec.name, name)
    assert spec.reads, spec.name
    assert spec.summary.startswith(f"{spec.name}:"), spec.summary


def test_inputs_come_from_earlier_steps() -> None:
    written: set[str] = set()
    for spec in STEPS:
        for name in spec.inputs:
            if name not in (*MODEL_INPUTS, BASE_MODEL):
                assert name in written, f"{spec.name} reads {name} before any step writes it"
        for after in spec.after:
            assert after in [s.name for s in STEPS[: STEPS.index(spec)]]
        written |= {p.name for p in spec.outputs}


def test_the_warm_preload_is_read_from_the_registry() -> None:
    modules = preload_modules()
    for spec in STEPS:
        assert set(spec.preload) <= set(modules), spec.name
    assert len(modules) == len(set(modules))


def _module_reference(text: str) -> bool:
    """Whether ``cxrflow.x.y[:attr]`` names a module of src/ (or a function or class in one)."""
    dotted = re.split(r"[:\s(]", text, maxsplit=1)[0]
    parts = dotted.split(".")[1:]
    for cut in range(len(parts), 0, -1):
        base = SRC.joinpath(*parts[:cut])
        module = (
            base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        )
        if module.is_file():
            rest = parts[cut:]
            if not rest:
                return True
            source = module.read_text()
            return (
                len(rest) == 1 and re.search(rf"^(def|class) {rest[0]}\b", source, re.M) is not None
            )
    return parts == []


def test_mlflow_names_are_spelled_once_in_names_py() -> None:
    literal = re.compile(r"""[rbf]*(["'])(cxrflow\.[^"']*)\1""")
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "names.py" and path.parent == SRC:
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            for match in literal.finditer(line):
                if not _module_reference(match.group(2)):
                    offenders.append(f"{path.relative_to(ROOT)}:{lineno}: {match.group(2)}")
    assert offenders == []


def test_the_vocabulary_test_catches_a_tag_literal() -> None:
    assert not _module_reference("cxrflow.audit.passed")
    assert not _module_reference("cxrflow.metric.")
    assert _module_reference("cxrflow.data.validate:DataValidationError")
    assert _module_reference("cxrflow.steps")
    assert _module_reference("cxrflow.datasets.preprocess_image (8-bit grey)")
