"""How a step is described once: :class:`StepSpec` and its artifacts (:class:`Port`).

A step module ends with its ``SPEC``; :mod:`cxrflow.steps.registry` lists the specs in
pipeline order. Everything that needs a list of steps reads it from there: the KFP DAG and
components (``pipelines/``, ``components/``), the DVC stages (``cxrflow params dvc``), the CLI's
step commands, the warm-start preload, finalize's list of steps, the cluster policy (kind,
retries, caching) and the drift tests.

Conventions that let the adapters call any step the same way: the step function takes
``params`` first (and the model key second for a per-model step), then one argument per
input and output port, named after the port, then ``pipeline_run_id``. Inputs name an output
of an earlier step, or one of :data:`MODELS` (every model, by key), :data:`CANDIDATES` (the
register candidates' models) and :data:`BASE_MODEL` (the model a transfer starts from).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from cxrflow.config import Params

Kind = Literal["data", "train", "evaluate", "record"]
"""A step's kind: the key of its requests and limits in ``params.cluster.resources``."""

MODELS = "models"
CANDIDATES = "candidates"
BASE_MODEL = "base_model"
MODEL_INPUTS = (MODELS, CANDIDATES)
"""Inputs that stand for one model artifact per key (KFP input name = model key)."""


@dataclass(frozen=True)
class Port:
    """An artifact a step writes (its output directory) or a KFP-only output.

    Args:
        name: The KFP input/output name and the step function's argument.
        artifact: The KFP artifact class (``Dataset``, ``Model``, ``Artifact``, ``HTML``,
            ``Metrics``, ``ClassificationMetrics``).
        path: Where DVC and the CLI keep it (``{key}``: the model key).
        cli: The CLI option that reads it as an input (default: the name, dashed).
        per_model: One output per model key (``<name>_<key>``), e.g. confusion matrices.
    """

    name: str
    artifact: str = "Artifact"
    path: str = ""
    cli: str = ""
    per_model: bool = False

    @property
    def option(self) -> str:
        """The CLI option, e.g. ``--audit``."""
        return "--" + (self.cli or self.name).replace("_", "-")


def never(params: Params) -> bool:
    """Cache policy: never reuse (the step depends on more than its inputs)."""
    return False


def always(params: Params) -> bool:
    """Cache policy: params and the input artifacts pin the output."""
    return True


@dataclass(frozen=True)
class StepSpec:
    """One pipeline step, described once.

    Args:
        name: The step's name (a per-model step's tasks are named by model key).
        run: The step function (see the module doc for its signature).
        kind: data, train, evaluate or record (resources; data steps get the run id from
            the environment, so that it stays out of KFP's cache key).
        reads: The params sections (dotted keys) the step reads; DVC's ``params:``.
        inputs: Names of earlier outputs, or :data:`MODELS` / :data:`CANDIDATES` /
            :data:`BASE_MODEL`.
        outputs: What the step writes (one directory each).
        ui_outputs: KFP-only outputs the component fills from the result (:attr:`publish`).
        cache: Whether KFP may reuse the task for a configuration.
        after: Steps that must succeed first without passing data (a gate).
        optional: Inputs the function can do without (CLI options that are not required).
        per_model: One task per model key (``params.model_keys``).
        io_retry: Retried on the cluster with ``cluster.retry.io`` (transient I/O).
        preload: Modules the warm-start server imports for this step.
        publish: ``publish(result, outputs)``: KFP UI metadata and metrics from the result
            (``outputs``: port name -> KFP artifact); called with ``result=None`` when the
            step failed, for what must be shown anyway.
        show: What the CLI prints from the result (default: JSON).
        exit_handler: Runs after every other step whatever happened (finalize).
        cli: Whether the CLI writes the step's command from this spec (``False``: a command
            of the same name is written by hand, for options beyond the step's).
        dvc: Whether the step is a DVC stage (finalize is not: DVC has no exit handler).
        dvc_outputs: The stage's ``outs``/``metrics``/``plots`` where they differ from its
            output directories (e.g. a report kept out of the DVC cache).
        dvc_deps: The stage's deps that params choose (data it reads outside the pipeline,
            e.g. ingest's source roots): ``dvc_deps(params_yaml)`` with params.yaml's top
            level as loaded, returning paths or DVC ``${...}`` interpolations of params.yaml.
    """

    name: str
    run: Callable[..., Any]
    kind: Kind
    reads: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    outputs: tuple[Port, ...] = ()
    ui_outputs: tuple[Port, ...] = ()
    cache: Callable[[Params], bool] = never
    after: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    per_model: bool = False
    io_retry: bool = False
    preload: tuple[str, ...] = ()
    publish: Callable[[Any, Mapping[str, Any]], None] | None = None
    show: Callable[[Any], str] | None = None
    exit_handler: bool = False
    cli: bool = True
    dvc: bool = True
    dvc_outputs: Mapping[str, Any] = field(default_factory=dict)
    dvc_deps: Callable[[Mapping[str, Any]], list[str]] | None = None

    @property
    def summary(self) -> str:
        """The first line of the step function's docstring (KFP UI, CLI help)."""
        doc = (self.run.__doc__ or self.name).strip().splitlines()[0]
        return doc

    @property
    def doc(self) -> str:
        """The step function's whole docstring."""
        return (self.run.__doc__ or self.name).strip()

    def output(self, name: str) -> Port:
        """The output port ``name``."""
        for port in (*self.outputs, *self.ui_outputs):
            if port.name == name:
                return port
        raise KeyError(f"step {self.name} has no output {name!r}")
