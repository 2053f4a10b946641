"""The files that pass between steps, as typed models with one reader and one writer each.

A step writes its output directory's file through ``Model.write(directory)`` and a later step
(or ``compare``, ``export``, ``predict``) reads it back through ``Model.read(directory)``, which
names the file and the problem when it is missing or malformed. Unknown keys are kept where a
file carries open-ended figures (an evaluation's per-class metrics, an audit's tests): the
fields below are what other code relies on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, RootModel, ValidationError

from cxrflow.jsonio import write_json_atomic


class ArtifactError(ValueError):
    """A step's input file is missing or is not what the step that writes it writes."""


class _FileMixin:
    """``read``/``write`` for a model stored as one JSON file in a step's output directory."""

    FILE: ClassVar[str]

    @classmethod
    def path(cls, directory: str | Path) -> Path:
        """Where the file lives in ``directory``."""
        return Path(directory) / cls.FILE

    @classmethod
    def read(cls, directory: str | Path) -> Self:
        """Read and validate the file in ``directory`` (an error names the file)."""
        path = cls.path(directory)
        if not path.is_file():
            raise ArtifactError(f"{path}: not found; is {directory} the right step output?")
        try:
            return cls.model_validate(json.loads(path.read_text()))  # type: ignore[attr-defined,no-any-return]
        except (json.JSONDecodeError, ValidationError) as exc:
            raise ArtifactError(f"{path}: not a valid {cls.__name__}: {exc}") from exc

    @classmethod
    def exists(cls, directory: str | Path | None) -> bool:
        """Whether ``directory`` holds the file."""
        return directory is not None and cls.path(directory).is_file()

    def write(self, directory: str | Path) -> Path:
        """Write the file atomically into ``directory``; returns its path."""
        path = self.path(directory)
        path.parent.mkdir(parents=True, exist_ok=True)
        # python mode + the JSON writer's str fallback: figures the library computes (numpy
        # scalars in an evaluation's extras) are written as they always were
        write_json_atomic(path, self.model_dump())  # type: ignore[attr-defined]
        return path


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Open(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")


class Provenance(_FileMixin, _Strict):
    """Where a dataset directory came from; travels with it to every later step."""

    FILE: ClassVar[str] = "provenance.json"

    data_version: str
    manifest_hash: str
    origin: str
    pipeline_run_id: str = ""
    profile: str = ""
    sources: dict[str, Any] = {}


class ModelInfo(_FileMixin, _Strict):
    """A trained model's description (``model_info.json`` beside ``model.keras``)."""

    FILE: ClassVar[str] = "model_info.json"

    model_key: str
    classes: list[str]
    image_size: int
    dataset: str
    run_id: str = ""
    """The model's MLflow run ("" for a model directory made outside a tracked run)."""
    model_uri: str = ""
    pipeline_run_id: str = ""
    pretrained: Any = None
    phases: list[Any] = []
    train_seconds: float = 0.0
    resumed_from_epoch: int | None = None


class ModelEvaluation(_Open):
    """One model's test-split figures (the rest of ``evaluate_model``'s keys stay as extras).

    Only what every evaluation since the first release carries is required, so that ``report``
    and ``compare`` still read older run outputs; the evaluate step writes every field.
    """

    dataset: str
    accuracy: float
    f1_macro: float
    model_key: str = ""
    run_id: str = ""
    model_uri: str = ""
    classes: list[str] = []
    n_test: int = 0
    confusion_matrix: list[list[int]] = []
    data_version: str = ""
    manifest_hash: str = ""
    params_hash: str = ""
    pipeline_run_id: str = ""
    plots: list[str] = []

    def figure(self, name: str) -> Any:
        """A metric by name (a declared field or one of the extras), None if absent."""
        return self.model_dump().get(name)


class Evaluation(_FileMixin, RootModel[dict[str, ModelEvaluation]]):
    """``metrics.json``: the evaluate step's results, model key -> figures."""

    FILE: ClassVar[str] = "metrics.json"
    model_config = ConfigDict(frozen=True)


class ModelAudit(_Open):
    """One candidate's shortcut-audit verdict (the tests' figures stay as extras)."""

    passed: bool
    reasons: list[str] = []
    figures: dict[str, float | None] = {}


class AuditReport(_FileMixin, RootModel[dict[str, ModelAudit]]):
    """``audit.json``: candidate -> verdict; empty when the audit is turned off."""

    FILE: ClassVar[str] = "audit.json"
    model_config = ConfigDict(frozen=True)


class Registration(_FileMixin, _Strict):
    """``registered.json``: what the register step registered, under which alias, and why."""

    FILE: ClassVar[str] = "registered.json"

    model_key: str
    role: str
    reason: str
    model_name: str
    alias: str
    version: int | str
    champion: str | None = None
    previous_champion_version: int | str | None = None
    metric: str = ""
    value: float | None = None
    model_uri: str = ""
    source_model_uri: str = ""
    audit_passed: bool | None = None
    eligible: list[str] = []
    candidates: dict[str, float] = {}
    audit: dict[str, dict[str, Any]] = {}
    run_id: str = ""
    dataset: str = ""
    comparison: dict[str, Any] = {}
    """The registered candidate against the champion on the same test images (empty: none)."""
