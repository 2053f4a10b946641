"""The sections of params.yaml, one frozen pydantic model per step (data, ingest, validate,
split, train, models, evaluate, audit, register, tracking), and :class:`Params`, the whole
configuration of one run with its cross-section rules (model keys, transfer chains,
registry candidates).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import (
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cxrflow.config.base import PositiveInt, _fail, _Section
from cxrflow.config.cluster import ClusterParams
from cxrflow.config.constants import (
    _NAME,
    ALL_LABELS,
    DATASET_1_CLASSES,
    DATASETS,
    FULL_COMMIT,
    INIT_IMAGENET,
    INIT_SCRATCH,
    PAPER,
)


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
    external_site_patients: Annotated[StrictInt, Field(ge=0)] = 0
    """Patients per class (normal, bacterial, covid) of a phantom *external site*: another
    hospital's export (a CSV of labels over its own folder layout, PNG and DICOM, another
    scanner's look) ingested with role ``external``. 0: none."""

    @model_validator(mode="after")
    def _sides(self) -> SynthParams:
        if self.min_side > self.max_side:
            raise _fail("data.synth.min_side", "must be <= data.synth.max_side")
        if self.planted_marker is not None and self.planted_marker not in ALL_LABELS:
            raise _fail("data.synth.planted_marker", f"must be null or one of {list(ALL_LABELS)}")
        return self


SOURCE_ROLES: tuple[str, ...] = ("train", "external", "control")
"""What a source's images are for: ``train`` (datasets are built from them; the built-in
sources' own controls stay controls), ``external`` (never trained on, never split: every model
is scored on them separately) or ``control`` (they join the shortcut audit's control set)."""
CSV_KIND = "csv"
PHANTOM_SITE = "phantom_site"
"""The source name of the phantom's external site (``data.synth.external_site_patients``)."""


class SourceSettings(_Section):
    """How one configured source is read and what it is for (``data.source_settings.<name>``).

    ``kind`` is the registered source that reads the roots (null: the source named like the
    key, e.g. ``kermany``), or ``csv``: a generic labelled source, a CSV (``labels``, relative
    to each root; columns ``path``, ``label``, ``patient_id``, optional ``view``,
    ``age_group``) over image files in any folder layout (PNG, JPEG, DICOM), drawn from
    ``population``.
    """

    kind: StrictStr | None = None
    role: Literal["train", "external", "control"] = "train"
    labels: StrictStr = "labels.csv"
    population: Literal["adult", "pediatric"] = "adult"


class DataParams(_Section):
    """Where the raw data lives. No source configured means: generate phantom data.

    ``sources`` maps a source name (a registered :class:`cxrflow.data.sources.Source`, e.g.
    ``kermany``, ``cohen``) to its roots, in priority order for duplicate collapsing: e.g. the
    Cohen 2020-06-22 snapshot and the 2020-08 supplement are two roots of ``cohen``. With
    ``registry`` (a git URL or path of a DVC data registry) the roots are paths *inside* that
    repository, read at ``version`` (a tag or commit; null = HEAD) from its DVC remote.
    """

    sources: dict[str, tuple[StrictStr, ...]] = Field(default_factory=dict)
    source_settings: dict[str, SourceSettings] = Field(default_factory=dict)
    """Per source name in ``sources``: its kind and role (:class:`SourceSettings`); a source
    not listed is read by the source of its name, with role ``train``."""
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
        for name, settings in self.source_settings.items():
            if name not in self.sources:
                raise _fail(
                    f"data.source_settings.{name}",
                    f"names no source of data.sources ({sorted(self.sources) or 'none'})",
                )
            if settings.kind not in (None, CSV_KIND) and not re.match(_NAME, settings.kind):
                raise _fail(f"data.source_settings.{name}.kind", "a source kind or csv")
        if self.sources and all(self.role_of(n) != "train" for n in self.sources):
            raise _fail("data.sources", "no source has role train: nothing to train on")
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
    def source_names(self) -> list[str]:
        """Every source a run reads: ``sources``' names, and ``phantom_site`` for a phantom
        with an external site (``synth.external_site_patients``)."""
        site = self.is_phantom and self.synth.external_site_patients > 0
        return [*self.sources, *([PHANTOM_SITE] if site else [])]

    def settings_of(self, name: str) -> SourceSettings:
        """The settings of source ``name`` (the defaults when it has none; the phantom's
        external site is a ``csv`` source with role ``external``)."""
        if name == PHANTOM_SITE and name not in self.sources:
            return SourceSettings(kind=CSV_KIND, role="external")
        return self.source_settings.get(name) or SourceSettings()

    def role_of(self, name: str) -> str:
        """``train``, ``external`` or ``control``: what source ``name`` is for."""
        return self.settings_of(name).role

    @property
    def external_sources(self) -> list[str]:
        """The sources with role ``external``, the phantom's external site included."""
        return [n for n in self.source_names if self.role_of(n) == "external"]

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
    mixed_control_share: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    """Dataset_1_mixed: the share of the control patients (adult non-COVID, labelled normal or
    bacterial; grouped by patient, drawn per label) whose images join those classes; the rest
    stay audit controls."""
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


_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
"""A sha256 digest as ``sha256sum`` prints it (either case accepted, stored lower-case)."""


class ModelSpec(_Section):
    """One model: which dataset, which architecture, how it starts.

    ``init`` is ``scratch`` (random), ``imagenet`` (weights from ``weights_path``) or the key of
    another model to transfer from (its trained weights; same architecture). What each
    architecture allows is its own rule (:mod:`cxrflow.models`).

    ``weights_path`` (read with ``init: imagenet`` only) is one of:

    - a local path, e.g. ``weights/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``
      (``dvc add`` it): read in place, so only runs on this machine can use it;
    - ``s3://<bucket>/<key>``: an S3 object (endpoint and credentials from the environment);
    - ``dvc://<path>``: a file tracked in the DVC data registry ``data.registry``, read at
      ``data.version``.

    The training step fetches a remote file into a temporary folder and checks it against
    ``weights_sha256`` before it decodes any image (:mod:`cxrflow.weights`); ``pipeline
    submit`` and ``pipeline schedule create`` refuse a null or local path, which no pod can
    read, unless ``allow_random_init`` (with a null path).
    """

    dataset: StrictStr
    architecture: StrictStr
    init: StrictStr = INIT_SCRATCH
    unfreeze_last: Annotated[StrictInt, Field(ge=0)] | None = None
    weights_path: StrictStr | None = None
    weights_sha256: StrictStr | None = None
    """The weights file's sha256 (64 hex digits, as ``sha256sum`` prints it): required when
    ``weights_path`` is remote, checked before training whenever set."""
    allow_random_init: StrictBool = False
    """With ``init: imagenet`` and no ``weights_path``: train from random weights anyway (demo,
    smoke). Off by default, so a paper run never silently skips the ImageNet weights."""
    epochs: PositiveInt | None = None
    """This model's cap on epochs per phase (null = ``train.epochs``): a time budget for an
    expensive model (a ResNet-50 from scratch) without shortening the others."""

    @field_validator("weights_path")
    @classmethod
    def _weights_location(cls, value: str | None) -> str | None:
        if value:
            from cxrflow.weights import weights_scheme

            weights_scheme(value)  # a malformed URI or another scheme is an error here
        return value

    @field_validator("weights_sha256")
    @classmethod
    def _sha256_hex(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256.fullmatch(value):
            raise ValueError(f"a sha256 is 64 hex digits (sha256sum <file>), got {value!r}")
        return None if value is None else value.lower()

    @model_validator(mode="after")
    def _remote_is_pinned(self) -> ModelSpec:
        from cxrflow.weights import is_remote

        if is_remote(self.weights_path) and self.weights_sha256 is None:
            raise ValueError(
                f"weights_path {self.weights_path} is remote: set weights_sha256 too (sha256sum "
                "of the file), so that a pod trains from exactly that file"
            )
        return self

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
    log_patient_images: Literal["auto", "always", "never"] = "auto"
    """Log pictures made from patients' images (Grad-CAM overlays, the audit's lung mask) to
    MLflow: ``auto`` = only for phantom data (the data's ``origin`` in its provenance), never
    for real patients; the files are written to the step's output either way."""


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
    """A candidate replaces the current champion only if the lower bound of the paired
    bootstrap interval of (candidate - champion) on the same test images is above this."""
    score_on: StrictStr = "test"
    """Where candidates are ranked and compared with the champion: ``test`` (this run's test
    split) or the name of a source with role ``external`` (another site's images: the champion
    predicts them too, and the paired comparison is made on them)."""
    challenger_alias: StrictStr = "challenger"
    allow_unaudited: StrictBool = False
    """The recorded override: a candidate that was not audited may be promoted (tagged)."""

    @property
    def ranked_by(self) -> str:
        """The promotion metric as the registry states it: ``f1_macro`` (the test split) or
        ``f1_macro on <source>`` (an external source, ``score_on``)."""
        return self.metric if self.score_on == "test" else f"{self.metric} on {self.score_on}"

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


class ExportParams(_Section):
    """The export step: the model this run registered, to ONNX fp32 and static int8."""

    enabled: StrictBool = True
    calibration_images: PositiveInt = 200
    """Training-split images the int8 activation ranges are calibrated on."""
    check_images: Annotated[StrictInt, Field(ge=0)] = 300
    """Validation images int8 is compared with fp32 on (0: no comparison)."""
    max_drop_points: float = 1.0
    """The step fails when int8 loses more accuracy (percentage points) than this."""


class TrackingParams(_Section):
    """MLflow experiment. The tracking URI comes from the environment, never from here."""

    experiment_name: StrictStr = "cxrflow"


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
    export: ExportParams = Field(default_factory=ExportParams)
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
        on = self.register.score_on
        if on != "test" and on not in self.data.external_sources:
            raise _fail(
                "register.score_on",
                f"{on!r} is neither test nor a source with role external "
                f"(external sources: {self.data.external_sources or 'none'})",
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
        """This run's steps in order, the model steps by key (the step registry's order)."""
        from cxrflow.steps.registry import pipeline_steps

        return pipeline_steps(self)


def _check_model(key: str, spec: ModelSpec, models: Mapping[str, ModelSpec]) -> None:
    from cxrflow.models import ARCHITECTURES
    from cxrflow.steps.registry import reserved_names

    where = f"models.{key}"
    reserved = {INIT_SCRATCH, INIT_IMAGENET, *reserved_names()}
    if not re.match(_NAME, key) or key in reserved:
        raise _fail(where, f"a model key is lower_snake_case and not one of {sorted(reserved)}")
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
