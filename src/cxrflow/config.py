"""Typed, frozen configuration resolved once per run from ``params.yaml``.

``params.yaml`` is the single source of configuration. The paper's hyper-parameters are the
top-level values; a *profile* (``demo``, ``smoke``) overrides a few keys, and explicit overrides
(``--set train.epochs=20``, ``dvc exp run -S``) come last. :func:`load_params` resolves all three
into one :class:`Params` (pydantic v2 models, frozen, unknown keys forbidden), which is then
passed whole to every step: the CLI, the DVC stages and every KFP component see the same values
and log the same :func:`params_hash`.

Errors name the dotted key (``params: train.batch_size: Input should be greater than or equal
to 1``). Integers and booleans are strict: ``12.0`` is no integer in ``params.yaml``. Kubeflow
Pipelines carries numbers as floats and cannot carry null, so :func:`params_from_kfp`, and only
it, reads integral floats as integers and ``""`` as null. Nothing here performs I/O at import.
"""

from __future__ import annotations

import hashlib
import json
import re
import types
import typing
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

DATASET_0_CLASSES: tuple[str, ...] = ("normal", "bacterial", "viral")
DATASET_1_CLASSES: tuple[str, ...] = ("normal", "bacterial", "covid")
ALL_LABELS: tuple[str, ...] = ("normal", "bacterial", "viral", "covid")
DATASETS: dict[str, tuple[str, ...]] = {
    "dataset_0": DATASET_0_CLASSES,
    "dataset_1": DATASET_1_CLASSES,
}
PAPER = "paper"
PROFILES: tuple[str, ...] = (PAPER, "demo", "smoke")
"""The profiles params.yaml ships with (``paper`` applies none)."""

MODEL_KEYS: tuple[str, ...] = ("model_0", "model_1", "model_2", "model_3")
"""The paper's four model keys (the default ``models:``). A run's keys: ``Params.model_keys``."""

DATA_STEPS: tuple[str, ...] = ("ingest", "validate", "split")
FINAL_STEPS: tuple[str, ...] = ("evaluate", "audit", "register")
STEPS: tuple[str, ...] = (*DATA_STEPS, *MODEL_KEYS, *FINAL_STEPS)
"""The steps of the default pipeline, in topological order (a run's: ``Params.steps``)."""

INIT_SCRATCH = "scratch"
INIT_IMAGENET = "imagenet"
_NAME = r"^[a-z][a-z0-9_]*$"
FULL_COMMIT = re.compile(r"[0-9a-f]{40}")
"""A full git commit sha (what ``data.version`` must be for ingest to be cacheable)."""
_RESERVED_MODEL_KEYS = frozenset({INIT_SCRATCH, INIT_IMAGENET, *DATA_STEPS, *FINAL_STEPS})


class ParamsError(ValueError):
    """An unknown key, a wrong type or an out-of-range value in params (names the dotted key)."""


def _fail(key: str, msg: str) -> ParamsError:
    return ParamsError(f"params: {key}: {msg}")


class _Section(BaseModel):
    """Base of every params section: frozen, unknown keys forbidden, KFP decoding on demand."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _decode_kfp(cls, value: Any, info: ValidationInfo) -> Any:
        if info.context and info.context.get("kfp") and info.field_name:
            return _kfp_decode(cls.model_fields[info.field_name].annotation, value)
        return value


def _kfp_decode(tp: Any, value: Any) -> Any:
    """Undo KFP's parameter encodings for a value of annotated type ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return _kfp_decode(args[0], value)
    if origin in (typing.Union, types.UnionType):
        if value == "" and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _kfp_decode(inner[0], value) if len(inner) == 1 else value
    if tp is int or (isinstance(tp, type) and issubclass(tp, int) and tp is not bool):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value
    if origin is dict and isinstance(value, Mapping):
        return {k: _kfp_decode(args[1], v) for k, v in value.items()}
    if origin is tuple and isinstance(value, list | tuple):
        return [_kfp_decode(args[0], v) for v in value]
    return value


PositiveInt = Annotated[StrictInt, Field(ge=1)]


class SynthParams(_Section):
    """Phantom (synthetic) data generator settings."""

    patients_per_class: PositiveInt = 40
    images_per_patient_max: PositiveInt = 3
    min_side: Annotated[StrictInt, Field(ge=16)] = 180
    max_side: Annotated[StrictInt, Field(ge=16)] = 360
    covid_lateral_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    seed: StrictInt = 20200927
    control_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    """Cohen patients with a non-COVID finding (the audit's controls, and one excluded
    finding), per COVID-19 patient; at least 2."""
    source_shortcut: StrictBool = True
    """Tie anatomy to the source, as in the real data (Kermany children in PA view, Cohen
    adults in PA / AP / AP supine views with journal annotations). False: each patient's age
    group is a coin flip, every frontal view is drawn alike and no image is annotated, so
    nothing but the disease tells the classes apart."""
    planted_marker: StrictStr | None = None
    """A label whose images all get a bright square burned into the upper-right corner (outside
    the audit's lung-field mask): a planted shortcut for testing the audit. None: no marker."""

    @model_validator(mode="after")
    def _sides(self) -> SynthParams:
        if self.min_side > self.max_side:
            raise _fail("data.synth.min_side", "must be <= data.synth.max_side")
        if self.planted_marker is not None and self.planted_marker not in ALL_LABELS:
            raise _fail("data.synth.planted_marker", f"must be null or one of {list(ALL_LABELS)}")
        return self


class DataParams(_Section):
    """Where the raw data lives. No source configured means: generate phantom data.

    ``sources`` maps a source name (a registered :class:`cxrflow.data.sources.Source`, e.g.
    ``kermany``, ``cohen``) to its roots, in priority order for duplicate collapsing: e.g. the
    Cohen 2020-06-22 snapshot and the 2020-08 supplement are two roots of ``cohen``. With
    ``registry`` (a git URL or path of a DVC data registry) the roots are paths *inside* that
    repository, read at ``version`` (a tag or commit; null = HEAD) from its DVC remote.
    """

    sources: dict[str, tuple[StrictStr, ...]] = Field(default_factory=dict)
    registry: StrictStr | None = None
    version: StrictStr | None = None
    synth: SynthParams = Field(default_factory=SynthParams)

    @model_validator(mode="after")
    def _check(self) -> DataParams:
        for name, roots in self.sources.items():
            if not re.match(_NAME, name):
                raise _fail(f"data.sources.{name}", "a source name is lower_snake_case")
            if not roots:
                raise _fail(f"data.sources.{name}", "list at least one root (or remove the key)")
        if self.registry is not None and not self.sources:
            raise _fail("data.registry", "needs data.sources (paths inside the registry)")
        if self.version is not None and self.registry is None:
            raise _fail(
                "data.version",
                "pins a version of a data registry, but data.registry is not set "
                "(set data.registry to the DVC data registry's git URL or path)",
            )
        return self

    @property
    def source_paths(self) -> list[str]:
        """Every configured root, sources in their configured order."""
        return [root for roots in self.sources.values() for root in roots]

    @property
    def is_phantom(self) -> bool:
        """True when no source is configured (ingest generates phantom data)."""
        return not self.sources

    @property
    def is_pinned(self) -> bool:
        """True when this section alone fixes the data ingest reads, byte for byte.

        Pinned: a DVC data registry read at a full 40-hex commit sha (a commit cannot move;
        its ``.dvc`` files name content hashes), or phantom data (generated from
        ``data.synth``, seed included; the generator writes byte-identical files for the same
        settings, ``tests/unit/test_synthetic.py``). Not pinned: a registry at a tag, a branch
        or HEAD (they can move), and plain folders (unversioned). Only pinned data lets a
        pipeline reuse an earlier ingest (KFP caching).
        """
        if self.is_phantom:
            return True
        return (
            self.registry is not None
            and self.version is not None
            and FULL_COMMIT.fullmatch(self.version) is not None
        )


class CohenFilter(_Section):
    """Which rows of Cohen's ``metadata.csv`` count as COVID-19 frontal chest X-rays.

    Findings match case-insensitively; views and modalities are compared with spaces trimmed.
    """

    finding_contains: StrictStr = "COVID-19"
    modalities: tuple[StrictStr, ...] = ("X-ray",)
    views: tuple[StrictStr, ...] = ("PA", "AP", "AP Supine", "AP semi erect", "AP erect")


class IngestParams(_Section):
    """Ingest: decoding limits, duplicate detection, parallelism."""

    cohen: CohenFilter = Field(default_factory=CohenFilter)
    min_side: PositiveInt = 32
    max_pixels: Annotated[StrictInt, Field(ge=1024)] = 40_000_000
    phash_distance: Annotated[StrictInt, Field(ge=0, le=32)] = 4
    workers: Annotated[StrictInt, Field(ge=0)] = 0
    chunk_size: PositiveInt = 256


class ValidateParams(_Section):
    """Great Expectations gate thresholds."""

    min_per_class: PositiveInt = 20
    min_side: PositiveInt = 32
    max_side: PositiveInt = 8192
    balance_tolerance: Annotated[float, Field(ge=0.0, le=1.0)] = 0.25

    @model_validator(mode="after")
    def _sides(self) -> ValidateParams:
        if self.min_side > self.max_side:
            raise _fail("validate.min_side", "must be <= validate.max_side")
        return self


class SplitParams(_Section):
    """Undersampling and patient-grouped train/val/test split (paper: 80/20 then 87.5/12.5)."""

    dataset_1_counts: dict[str, PositiveInt] = Field(
        default_factory=lambda: {"normal": 544, "bacterial": 500, "covid": 456}
    )
    dataset_0_max_per_class: PositiveInt | None = None
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.125
    seed: StrictInt = 42

    @field_validator("dataset_1_counts")
    @classmethod
    def _classes(cls, value: dict[str, int]) -> dict[str, int]:
        if set(value) != set(DATASET_1_CLASSES):
            raise _fail("split.dataset_1_counts", f"keys must be exactly {list(DATASET_1_CLASSES)}")
        return value


class TrainParams(_Section):
    """Training hyper-parameters shared by all models (paper section 4.1)."""

    image_size: Annotated[StrictInt, Field(ge=32, le=1024)] = 224
    batch_size: PositiveInt = 20
    epochs: PositiveInt = 500
    patience: PositiveInt = 10
    learning_rate: Annotated[float, Field(gt=0.0, lt=1.0)] = 1e-3
    beta_1: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    beta_2: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.999
    reduce_lr_factor: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    reduce_lr_patience: PositiveInt = 5
    fine_tune_learning_rate: Annotated[float, Field(gt=0.0, lt=1.0)] = 1e-4
    class_weights: StrictBool = False
    seed: StrictInt = 1234
    checkpoint_root: StrictStr | None = None
    """A durable directory (a PVC or bucket mount) for the per-epoch checkpoints, so a training
    step retried on another node resumes; null = inside the step's own output."""


class ModelSpec(_Section):
    """One model: which dataset, which architecture, how it starts.

    ``init`` is ``scratch`` (random), ``imagenet`` (weights from ``weights_path``) or the key of
    another model to transfer from (its trained weights; same architecture). What each
    architecture allows is its own rule (:mod:`cxrflow.models`).
    """

    dataset: StrictStr
    architecture: StrictStr
    init: StrictStr = INIT_SCRATCH
    unfreeze_last: Annotated[StrictInt, Field(ge=0)] | None = None
    weights_path: StrictStr | None = None
    allow_random_init: StrictBool = False
    """With ``init: imagenet`` and no ``weights_path``: train from random weights anyway (demo,
    smoke). Off by default, so a paper run never silently skips the ImageNet weights."""

    @property
    def init_kind(self) -> str:
        """``scratch``, ``imagenet`` or ``transfer`` (from another model's weights)."""
        from cxrflow.models import init_kind

        return init_kind(self.init)

    @property
    def base_model_key(self) -> str | None:
        """The model this one transfers from, or None."""
        return None if self.init_kind != "transfer" else self.init


def _paper_models() -> dict[str, ModelSpec]:
    return {
        "model_0": ModelSpec(dataset="dataset_0", architecture="small_cnn"),
        "model_1": ModelSpec(dataset="dataset_1", architecture="small_cnn"),
        "model_2": ModelSpec(dataset="dataset_1", architecture="small_cnn", init="model_0"),
        "model_3": ModelSpec(
            dataset="dataset_1", architecture="resnet50", init=INIT_IMAGENET, unfreeze_last=11
        ),
    }


class EvaluateParams(_Section):
    """Evaluation: uncertainty (patient-level bootstrap), calibration, explanations, latency."""

    latency_samples: PositiveInt = 50
    latency_warmup: Annotated[StrictInt, Field(ge=0)] = 3
    latency_batch_size: PositiveInt = 32
    bootstrap_samples: Annotated[StrictInt, Field(ge=100)] = 1000
    confidence: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.95
    calibration_bins: Annotated[StrictInt, Field(ge=2, le=50)] = 10
    gradcam_per_class: Annotated[StrictInt, Field(ge=0)] = 2
    seed: StrictInt = 2020


class AuditParams(_Section):
    """The shortcut audit run on every candidate before promotion (thresholds are judgement
    calls, so they are params; each test reports its 95 % CI)."""

    enabled: StrictBool = True
    block_promotion: StrictBool = True
    max_control_covid_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.25
    """Share of adult non-COVID control X-rays (Cohen's own) a model may call COVID-19."""
    max_source_probe_auc: Annotated[float, Field(ge=0.5, le=1.0)] = 0.90
    """AUC of a probe predicting the data source from the model's features."""
    max_masked_accuracy_gain: Annotated[float, Field(ge=0.0, le=1.0)] = 0.15
    """Accuracy above chance allowed on test images with the lung field masked out."""
    mask_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.7
    """Side of the central (lung-field) box masked, as a fraction of the image side."""
    min_controls: PositiveInt = 5
    """Fewer control images than this: the control test is reported as inconclusive."""


REGISTER_METRICS: tuple[str, ...] = ("accuracy", "precision_macro", "recall_macro", "f1_macro")


class RegisterParams(_Section):
    """Model registry: which models compete, on which metric, under which name and alias."""

    model_name: StrictStr = "cxrflow-covid-cxr"
    alias: StrictStr = "champion"
    metric: Literal["accuracy", "precision_macro", "recall_macro", "f1_macro"] = "f1_macro"
    candidates: tuple[StrictStr, ...] = ("model_1", "model_2", "model_3")
    promotion_margin: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    """A candidate replaces the current champion only if its metric is higher by more than this."""
    challenger_alias: StrictStr = "challenger"

    @field_validator("alias", "challenger_alias")
    @classmethod
    def _no_stage(cls, value: str, info: ValidationInfo) -> str:
        if value.lower() in ("staging", "production", "archived", "none"):
            raise _fail(
                f"register.{info.field_name}", "stage names are deprecated in MLflow; use an alias"
            )
        return value

    @field_validator("candidates")
    @classmethod
    def _some(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise _fail("register.candidates", "must not be empty")
        return value


class TrackingParams(_Section):
    """MLflow experiment. The tracking URI comes from the environment, never from here."""

    experiment_name: StrictStr = "cxrflow"


# Kubernetes quantities (the kubernetes client parses them too, but takes 1.5 s to import, and
# params are loaded by every step): decimal and binary suffixes, and CPU millicores.
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|K|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_QUANTITY_SCALE: dict[str | None, float] = {
    None: 1,
    "m": 0.001,
    **{s: 1000**i for i, s in enumerate(("k", "M", "G", "T", "P", "E"), 1)},
    "K": 1000,
    **{s: 1024**i for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), 1)},
}


def parse_quantity(text: str) -> float:
    """A Kubernetes resource quantity (``"500m"``, ``"4"``, ``"16Gi"``) as a number."""
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(f"{text!r} is no Kubernetes quantity (e.g. 500m, 4, 16Gi)")
    return float(match.group(1)) * _QUANTITY_SCALE[match.group(2)]


def _check_quantity(value: Any, kind: str, pattern: str, example: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # YAML reads `cpu_limit: 4` as a number
    if not isinstance(value, str) or not re.match(pattern, value):
        raise ValueError(f"{kind} quantity: {example}, got {value!r}")
    return value


def _cpu_quantity(value: Any) -> str:
    return _check_quantity(
        value, "cpu", r"^([0-9]*\.)?[0-9]+m?$", "a number of cores or millicores, e.g. 4 or 500m"
    )


def _memory_quantity(value: Any) -> str:
    return _check_quantity(
        value, "memory", r"^[0-9]+([EPTGMK]i?)?$", "bytes with a unit, e.g. 16Gi or 512Mi"
    )


CpuQuantity = Annotated[str, BeforeValidator(_cpu_quantity)]
"""CPU as KFP accepts it: cores (``4``, ``0.5``) or millicores (``500m``)."""
MemoryQuantity = Annotated[str, BeforeValidator(_memory_quantity)]
"""Memory as KFP accepts it: bytes, or a number with E/P/T/G/M/K (binary with ``i``)."""


class ResourceParams(_Section):
    """CPU and memory a pipeline task requests (what the scheduler reserves) and may use."""

    cpu_request: CpuQuantity
    cpu_limit: CpuQuantity
    memory_request: MemoryQuantity
    memory_limit: MemoryQuantity

    @model_validator(mode="after")
    def _request_within_limit(self) -> ResourceParams:
        for kind in ("cpu", "memory"):
            request, limit = getattr(self, f"{kind}_request"), getattr(self, f"{kind}_limit")
            if parse_quantity(request) > parse_quantity(limit):
                raise ValueError(f"{kind}_request {request} exceeds {kind}_limit {limit}")
        return self


class RetryParams(_Section):
    """A KFP retry policy: how often a failed task starts again, and the waits in between
    (``backoff_seconds``, times ``backoff_factor`` after each retry)."""

    num_retries: Annotated[StrictInt, Field(ge=0, le=10)]
    backoff_seconds: Annotated[StrictInt, Field(ge=0)]
    backoff_factor: Annotated[float, Field(ge=1.0, le=10.0)] = 2.0
    backoff_max_seconds: Annotated[StrictInt, Field(ge=1)]
    """Argo counts this from the start of the *first* attempt: no retry starts later, so it
    must exceed the longest run of the task plus the waits."""

    @model_validator(mode="after")
    def _max(self) -> RetryParams:
        if self.backoff_max_seconds < self.backoff_seconds:
            raise ValueError("backoff_max_seconds must be >= backoff_seconds")
        return self


class ClusterRetries(_Section):
    """Retry policies: ``train`` for the model steps (a preempted GPU node; the retried pod
    resumes from the last epoch's checkpoint), ``io`` for the CPU steps whose failures are
    mostly transient MLflow / S3 / DVC-remote errors (ingest, evaluate, audit, register,
    finalize). The validate and split gates get none: their failure is a verdict on the data,
    which a retry only repeats."""

    train: RetryParams = Field(
        default_factory=lambda: RetryParams(
            num_retries=3, backoff_seconds=120, backoff_factor=2.0, backoff_max_seconds=172_800
        )
    )
    io: RetryParams = Field(
        default_factory=lambda: RetryParams(
            num_retries=2, backoff_seconds=30, backoff_factor=2.0, backoff_max_seconds=21_600
        )
    )


class ClusterResources(_Section):
    """Requests and limits per kind of step (the model steps also get one GPU)."""

    data: ResourceParams = Field(
        default_factory=lambda: ResourceParams(
            cpu_request="2", cpu_limit="4", memory_request="8Gi", memory_limit="16Gi"
        )
    )
    """ingest, validate, split (image decoding, hashing, Great Expectations)."""
    train: ResourceParams = Field(
        default_factory=lambda: ResourceParams(
            cpu_request="4", cpu_limit="8", memory_request="16Gi", memory_limit="32Gi"
        )
    )
    """The model steps: the training arrays are held in memory (Dataset_0 at 224 px: ~4 GB)."""
    evaluate: ResourceParams = Field(
        default_factory=lambda: ResourceParams(
            cpu_request="4", cpu_limit="8", memory_request="8Gi", memory_limit="16Gi"
        )
    )
    """evaluate, audit (CPU inference over the test splits, bootstrap, Grad-CAM)."""
    record: ResourceParams = Field(
        default_factory=lambda: ResourceParams(
            cpu_request="500m", cpu_limit="1", memory_request="1Gi", memory_limit="2Gi"
        )
    )
    """register, finalize (MLflow bookkeeping only)."""


class CheckpointVolume(_Section):
    """The PersistentVolumeClaim mounted on the model steps for their per-epoch checkpoints
    (``<mount_path>/<pipeline run id>/<model key>``), so that a retried pod on another node
    resumes. It must be ReadWriteMany when model steps run on several nodes at once."""

    pvc: StrictStr | None = "cxrflow-checkpoints"
    """None: no volume; a retried model step then starts over."""
    mount_path: StrictStr = "/mnt/checkpoints"

    @field_validator("mount_path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must be an absolute path")
        return value


class ClusterParams(_Section):
    """How the compiled pipeline runs on Kubernetes: retries, resources, the checkpoint volume.

    Compiled into the pipeline (``cxrflow pipeline compile``), like the images: a submit-time
    override does not change them. ``kfp.local``, the CLI and DVC ignore this section.
    """

    retry: ClusterRetries = Field(default_factory=ClusterRetries)
    resources: ClusterResources = Field(default_factory=ClusterResources)
    checkpoints: CheckpointVolume = Field(default_factory=CheckpointVolume)


# ``validate`` and ``register`` are step names, so they are section names too, though they
# shadow BaseModel.validate (deprecated) and ABCMeta.register: instance values win, and the
# class attributes are never used on params.
warnings.filterwarnings("ignore", message=r'Field name "(validate|register)" in "Params"')


class Params(_Section):
    """All of cxrflow's configuration for one run, one section per step, profile applied."""

    data: DataParams = Field(default_factory=DataParams)
    ingest: IngestParams = Field(default_factory=IngestParams)
    validate: ValidateParams = Field(default_factory=ValidateParams)  # type: ignore[assignment]
    split: SplitParams = Field(default_factory=SplitParams)
    train: TrainParams = Field(default_factory=TrainParams)
    models: dict[str, ModelSpec] = Field(default_factory=_paper_models)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    audit: AuditParams = Field(default_factory=AuditParams)
    register: RegisterParams = Field(default_factory=RegisterParams)  # type: ignore[assignment]
    tracking: TrackingParams = Field(default_factory=TrackingParams)
    cluster: ClusterParams = Field(default_factory=ClusterParams)
    profile: StrictStr = PAPER

    @model_validator(mode="after")
    def _models(self) -> Params:
        if not self.models:
            raise _fail("models", "define at least one model")
        for key, spec in self.models.items():
            _check_model(key, spec, self.models)
        self.model_keys  # noqa: B018 - raises on a transfer cycle
        for c in self.register.candidates:
            if c not in self.models:
                raise _fail(
                    "register.candidates", f"unknown model key {c!r}; models: {list(self.models)}"
                )
        return self

    @property
    def model_keys(self) -> tuple[str, ...]:
        """Model keys in training order: a transfer target after the model it starts from."""
        order: list[str] = []
        visiting: set[str] = set()

        def visit(key: str) -> None:
            if key in order:
                return
            if key in visiting:
                raise _fail(f"models.{key}.init", "transfer chain forms a cycle")
            visiting.add(key)
            base = self.models[key].base_model_key
            if base is not None:
                visit(base)
            visiting.discard(key)
            order.append(key)

        for key in sorted(self.models):
            visit(key)
        return tuple(order)

    @property
    def steps(self) -> tuple[str, ...]:
        """This run's steps in topological order: data steps, the models, evaluate, register."""
        return (*DATA_STEPS, *self.model_keys, *FINAL_STEPS)


def _check_model(key: str, spec: ModelSpec, models: Mapping[str, ModelSpec]) -> None:
    from cxrflow.models import ARCHITECTURES

    where = f"models.{key}"
    if not re.match(_NAME, key) or key in _RESERVED_MODEL_KEYS:
        raise _fail(
            where, f"a model key is lower_snake_case and not one of {sorted(_RESERVED_MODEL_KEYS)}"
        )
    if spec.dataset not in DATASETS:
        raise _fail(
            f"{where}.dataset", f"unknown dataset {spec.dataset!r}; known: {list(DATASETS)}"
        )
    arch = ARCHITECTURES.get(spec.architecture)
    if arch is None:
        raise _fail(
            f"{where}.architecture",
            f"unknown architecture {spec.architecture!r}; known: {sorted(ARCHITECTURES)}",
        )
    kind = spec.init_kind
    if kind == "transfer":
        base = models.get(spec.init)
        if base is None:
            raise _fail(
                f"{where}.init",
                f"{spec.init!r} is neither scratch, imagenet nor a model key ({list(models)})",
            )
        if base.architecture != spec.architecture:
            raise _fail(
                f"{where}.init",
                f"transfer from {spec.init} needs architecture {base.architecture}",
            )
    if not arch.supports_init(kind):
        raise _fail(
            f"{where}.init", f"architecture {spec.architecture} does not support {kind} init"
        )


# ---------------------------------------------------------------------------------------------
# Resolution: params.yaml + profile + overrides -> Params


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` merged into ``base``: mappings recursively, anything else replaced."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=20"`` -> ``("train.epochs", 20)``; the value is read as YAML.

    Raises:
        ParamsError: Not ``KEY=VALUE``, or a value YAML cannot read.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not all(re.match(r"^[A-Za-z0-9_]+$", p) for p in key.split(".")):
        raise ParamsError(f"params: override {text!r}: expected KEY=VALUE, e.g. train.epochs=20")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ParamsError(f"params: {key}: cannot read value {raw!r} as YAML ({exc})") from None
    return key, value


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    head, _, rest = key.partition(".")
    out = dict(raw)
    if rest:
        inner = out.get(head)
        if inner is not None and not isinstance(inner, Mapping):
            raise _fail(head, f"is not a section; cannot set {key}")
        out[head] = _set_dotted(dict(inner or {}), rest, value)
    else:
        out[head] = value
    return out


def _with_default_models(raw: dict[str, Any]) -> dict[str, Any]:
    """A partial entry for one of the paper's models (``models: {model_3: {weights_path: x}}``)
    completes that model's defaults; the other default models stay. Sections need no such help:
    their missing keys take the field defaults."""
    models = raw.get("models")
    if not isinstance(models, Mapping):
        return raw
    paper = {k: v.model_dump(mode="json") for k, v in _paper_models().items()}
    merged = dict(paper)
    for key, entry in models.items():
        merged[key] = deep_merge(paper.get(key, {}), entry) if isinstance(entry, Mapping) else entry
    return {**raw, "models": merged}


def params_from_dict(
    raw: Mapping[str, Any],
    profile: str | None = None,
    overrides: Iterable[str] = (),
    *,
    context: Mapping[str, Any] | None = None,
) -> Params:
    """Resolve a raw mapping (the content of ``params.yaml``) into :class:`Params`.

    Args:
        raw: The file's content, with an optional ``profiles`` section and ``profile`` key (the
            selected profile). A mapping without ``profiles`` is taken as already resolved: its
            ``profile`` is then only the label of how it was resolved.
        profile: Overrides the file's ``profile`` key (``paper`` applies no profile).
        overrides: ``KEY=VALUE`` strings applied last (see :func:`parse_override`).
        context: Validation context (``{"kfp": True}`` at the KFP boundary only).

    Raises:
        ParamsError: Unknown key, unknown profile or invalid value, naming the dotted key.
    """
    raw = dict(raw)
    resolved = "profiles" not in raw
    profiles = raw.pop("profiles", None) or {}
    if not isinstance(profiles, Mapping):
        raise _fail("profiles", "must be a mapping")
    chosen = profile if profile is not None else raw.get("profile", PAPER)
    if not isinstance(chosen, str):
        raise _fail("profile", f"must be a profile name, got {chosen!r}")
    if chosen != PAPER and not (resolved and profile is None):
        if chosen not in profiles:
            raise _fail("profile", f"unknown profile {chosen!r}; available: {[PAPER, *profiles]}")
        raw = deep_merge(raw, profiles[chosen])
    raw["profile"] = chosen
    for item in overrides:
        key, value = parse_override(item)
        raw = _set_dotted(raw, key, value)
    merged = _with_default_models(raw)
    try:
        return Params.model_validate(merged, context=dict(context or {}))
    except ValidationError as exc:
        raise ParamsError(_format_errors(exc)) from None


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, ParamsError):
            lines.append(str(cause))
            continue
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "value_error":  # a validator's own message says what it got
            msg = msg.removeprefix("Value error, ")
        elif "input" in err and err["type"] not in ("missing",):
            msg = f"{msg}, got {err['input']!r}"
        lines.append(f"params: {key}: {msg}")
    return "; ".join(dict.fromkeys(lines))


def read_params_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a params file (``ParamsError`` if missing or not a mapping)."""
    p = Path(path)
    if not p.is_file():
        raise ParamsError(
            f"params: file not found: {p} (run from the project root or pass --params)"
        )
    raw = yaml.safe_load(p.read_text()) or {}
    if not isinstance(raw, Mapping):
        raise _fail(str(p), "top level must be a mapping")
    return dict(raw)


def load_params(
    path: str | Path = "params.yaml", profile: str | None = None, overrides: Iterable[str] = ()
) -> Params:
    """Load ``params.yaml`` and resolve it: profile (argument, else the file's ``profile``), then
    ``overrides``. This is the one place configuration is resolved.
    """
    return params_from_dict(read_params_file(path), profile, overrides)


def params_from_kfp(value: Mapping[str, Any]) -> Params:
    """Params from a KFP pipeline parameter (the resolved configuration as a dict).

    KFP carries numbers as floats and cannot carry null, so here, and only here, an integral
    float reads as an integer and ``""`` as null where a field may be null.
    """
    raw = dict(value)
    raw.pop("profiles", None)
    return params_from_dict(raw, None, (), context={"kfp": True})


def params_to_dict(params: BaseModel) -> dict[str, Any]:
    """Plain, JSON-able nested dict (section names as in params.yaml)."""
    return params.model_dump(mode="json")


def nulls_to_empty(obj: Any) -> Any:
    """Replace ``None`` by ``""`` recursively (KFP parameter values cannot be null)."""
    if isinstance(obj, dict):
        return {k: nulls_to_empty(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [nulls_to_empty(v) for v in obj]
    return "" if obj is None else obj


def params_to_kfp(params: Params) -> dict[str, Any]:
    """The resolved configuration as a KFP parameter value (nulls as ``""``)."""
    return typing.cast(dict[str, Any], nulls_to_empty(params_to_dict(params)))


def params_to_yaml(params: Params) -> str:
    """The resolved configuration as YAML (no ``profiles``: loading it applies nothing)."""
    head = (
        f"# cxrflow resolved params (profile {params.profile}, hash {params_hash(params)}).\n"
        "# Generated from params.yaml; edit params.yaml, not this file.\n"
    )
    return head + yaml.safe_dump(params_to_dict(params), sort_keys=False)


def flatten_params(params: BaseModel | Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten to ``{"train.batch_size": "20", ...}`` for MLflow params."""
    plain = params_to_dict(params) if isinstance(params, BaseModel) else dict(params)
    out: dict[str, str] = {}

    def walk(node: Any, pre: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{pre}.{k}" if pre else k)
        else:
            out[pre] = json.dumps(node) if isinstance(node, list | dict) else str(node)

    walk(plain, prefix)
    return out


def params_hash(params: Params) -> str:
    """Stable short hash of the resolved configuration (tags, cache keys, file names)."""
    blob = json.dumps(params_to_dict(params), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def params_json_schema() -> dict[str, Any]:
    """JSON Schema of ``params.yaml`` (sections, plus ``profile`` and ``profiles``), for editors."""
    schema = Params.model_json_schema(mode="validation")
    props = schema.setdefault("properties", {})
    props["profiles"] = {
        "type": "object",
        "description": "Named partial overrides of the sections above (e.g. demo, smoke).",
        "additionalProperties": {"type": "object"},
    }
    props["profile"] = {
        "type": "string",
        "default": PAPER,
        "description": "The selected profile (paper applies none).",
    }
    schema["title"] = "cxrflow params.yaml"
    return schema


def check_model_key(params: Params, key: str) -> ModelSpec:
    """The spec of ``key`` or a ParamsError naming the known keys."""
    if key not in params.models:
        raise _fail(f"models.{key}", f"unknown model key; params define {list(params.model_keys)}")
    return params.models[key]
