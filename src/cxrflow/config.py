"""Typed, frozen configuration loaded from ``params.yaml``.

``params.yaml`` is the single source of configuration. The paper's hyper-parameters are the
top-level values; a *profile* (``demo``, ``smoke``) overrides a few keys. Loading validates every
key: an unknown key or an out-of-range value raises :class:`ParamsError` naming the dotted key.
Nothing here performs I/O at import time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

MODEL_KEYS: tuple[str, ...] = ("model_0", "model_1", "model_2", "model_3")
"""Model keys; identical in params, CLI, DVC stages, KFP tasks and MLflow tags."""

STEPS: tuple[str, ...] = ("ingest", "validate", "split", *MODEL_KEYS, "evaluate", "register")
"""The nine pipeline steps, in topological order."""

DATASET_0_CLASSES: tuple[str, ...] = ("normal", "bacterial", "viral")
DATASET_1_CLASSES: tuple[str, ...] = ("normal", "bacterial", "covid")
ALL_LABELS: tuple[str, ...] = ("normal", "bacterial", "viral", "covid")
DATASETS: dict[str, tuple[str, ...]] = {
    "dataset_0": DATASET_0_CLASSES,
    "dataset_1": DATASET_1_CLASSES,
}
PROFILES: tuple[str, ...] = ("paper", "demo", "smoke")


class ParamsError(ValueError):
    """Raised for an unknown key, a wrong type or an out-of-range value in params."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ParamsError(f"params: {key}: {msg}")


@dataclass(frozen=True)
class SynthParams:
    """Phantom (synthetic) data generator settings."""

    patients_per_class: int = 40
    images_per_patient_max: int = 3
    min_side: int = 180
    max_side: int = 360
    covid_lateral_fraction: float = 0.1
    seed: int = 20200927

    def __post_init__(self) -> None:
        _check(self.patients_per_class >= 1, "data.synth.patients_per_class", "must be >= 1")
        _check(self.images_per_patient_max >= 1, "data.synth.images_per_patient_max", ">= 1")
        _check(16 <= self.min_side <= self.max_side, "data.synth.min_side", "16 <= min <= max")
        _check(
            0.0 <= self.covid_lateral_fraction < 1.0,
            "data.synth.covid_lateral_fraction",
            "must be in [0, 1)",
        )


@dataclass(frozen=True)
class DataParams:
    """Where the raw data lives. No Kermany dir and no Cohen dir means: generate phantom data.

    ``cohen_dirs`` takes several roots (e.g. the 2020-06-22 snapshot and the 2020-08 supplement);
    duplicates across them are found and collapsed by ingest. With ``registry`` (a git URL or
    path of a DVC data registry) the dirs are paths *inside* that repository and ingest reads
    them at ``version`` (a git tag or commit; null = the registry's HEAD) from its DVC remote.
    """

    kermany_dir: str | None = None
    cohen_dirs: tuple[str, ...] = ()
    registry: str | None = None
    version: str | None = None
    synth: SynthParams = field(default_factory=SynthParams)

    def __post_init__(self) -> None:
        if self.registry is not None:
            _check(
                self.kermany_dir is not None or bool(self.cohen_dirs),
                "data.registry",
                "needs data.kermany_dir and/or data.cohen_dirs (paths inside the registry)",
            )
        if self.version is not None:
            _check(self.registry is not None, "data.version", "needs data.registry")

    @property
    def source_paths(self) -> list[str]:
        """The configured source roots: the Kermany dir (if any), then the Cohen dirs."""
        return [p for p in (self.kermany_dir, *self.cohen_dirs) if p]


@dataclass(frozen=True)
class CohenFilter:
    """Which rows of Cohen's ``metadata.csv`` count as COVID-19 frontal chest X-rays."""

    finding_contains: str = "COVID-19"
    modalities: tuple[str, ...] = ("X-ray",)
    views: tuple[str, ...] = ("PA", "AP", "AP Supine", "AP semi erect", "AP erect")


@dataclass(frozen=True)
class IngestParams:
    """Ingest: decoding limits, duplicate detection, parallelism."""

    cohen: CohenFilter = field(default_factory=CohenFilter)
    min_side: int = 32
    max_pixels: int = 40_000_000
    phash_distance: int = 4
    workers: int = 0
    chunk_size: int = 256

    def __post_init__(self) -> None:
        _check(self.min_side >= 1, "ingest.min_side", "must be >= 1")
        _check(self.max_pixels >= 1024, "ingest.max_pixels", "must be >= 1024")
        _check(0 <= self.phash_distance <= 32, "ingest.phash_distance", "must be in [0, 32]")
        _check(self.workers >= 0, "ingest.workers", "must be >= 0 (0 = one per core)")
        _check(self.chunk_size >= 1, "ingest.chunk_size", "must be >= 1")


@dataclass(frozen=True)
class ValidateParams:
    """Great Expectations gate thresholds."""

    min_per_class: int = 20
    min_side: int = 32
    max_side: int = 8192
    balance_tolerance: float = 0.25

    def __post_init__(self) -> None:
        _check(self.min_per_class >= 1, "validate.min_per_class", "must be >= 1")
        _check(1 <= self.min_side <= self.max_side, "validate.min_side", "1 <= min <= max")
        _check(
            0.0 <= self.balance_tolerance <= 1.0, "validate.balance_tolerance", "must be in [0, 1]"
        )


@dataclass(frozen=True)
class SplitParams:
    """Undersampling and patient-grouped train/val/test split (paper: 80/20 then 87.5/12.5)."""

    dataset_1_counts: Mapping[str, int] = field(
        default_factory=lambda: {"normal": 544, "bacterial": 500, "covid": 456}
    )
    dataset_0_max_per_class: int | None = None
    test_fraction: float = 0.2
    val_fraction: float = 0.125
    seed: int = 42

    def __post_init__(self) -> None:
        _check(
            set(self.dataset_1_counts) == set(DATASET_1_CLASSES),
            "split.dataset_1_counts",
            f"keys must be exactly {list(DATASET_1_CLASSES)}",
        )
        for k, v in self.dataset_1_counts.items():
            _check(v >= 1, f"split.dataset_1_counts.{k}", "must be >= 1")
        if self.dataset_0_max_per_class is not None:
            _check(self.dataset_0_max_per_class >= 1, "split.dataset_0_max_per_class", ">= 1")
        _check(0.0 < self.test_fraction < 1.0, "split.test_fraction", "must be in (0, 1)")
        _check(0.0 < self.val_fraction < 1.0, "split.val_fraction", "must be in (0, 1)")


@dataclass(frozen=True)
class TrainParams:
    """Training hyper-parameters shared by all four models (paper section 4.1)."""

    image_size: int = 224
    batch_size: int = 20
    epochs: int = 500
    patience: int = 10
    learning_rate: float = 1e-3
    beta_1: float = 0.9
    beta_2: float = 0.999
    reduce_lr_factor: float = 0.1
    reduce_lr_patience: int = 5
    fine_tune_learning_rate: float = 1e-4
    class_weights: bool = False
    seed: int = 1234

    def __post_init__(self) -> None:
        _check(32 <= self.image_size <= 1024, "train.image_size", "must be in [32, 1024]")
        _check(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _check(self.epochs >= 1, "train.epochs", "must be >= 1")
        _check(self.patience >= 1, "train.patience", "must be >= 1")
        _check(0 < self.learning_rate < 1, "train.learning_rate", "must be in (0, 1)")
        _check(0 < self.fine_tune_learning_rate < 1, "train.fine_tune_learning_rate", "(0, 1)")
        _check(0 <= self.beta_1 < 1, "train.beta_1", "must be in [0, 1)")
        _check(0 <= self.beta_2 < 1, "train.beta_2", "must be in [0, 1)")
        _check(0 < self.reduce_lr_factor < 1, "train.reduce_lr_factor", "must be in (0, 1)")
        _check(self.reduce_lr_patience >= 1, "train.reduce_lr_patience", "must be >= 1")


@dataclass(frozen=True)
class ModelSpec:
    """One of the paper's four models."""

    dataset: Literal["dataset_0", "dataset_1"]
    architecture: Literal["small_cnn", "resnet50"]
    init: Literal["scratch", "model_0", "imagenet"] = "scratch"
    unfreeze_last: int | None = None
    weights_path: str | None = None

    def __post_init__(self) -> None:
        if self.unfreeze_last is not None:
            _check(self.unfreeze_last >= 0, "models.*.unfreeze_last", "must be >= 0 or null (all)")


def _default_models() -> dict[str, ModelSpec]:
    return {
        "model_0": ModelSpec("dataset_0", "small_cnn", "scratch"),
        "model_1": ModelSpec("dataset_1", "small_cnn", "scratch"),
        "model_2": ModelSpec("dataset_1", "small_cnn", "model_0", None),
        "model_3": ModelSpec("dataset_1", "resnet50", "imagenet", 11),
    }


@dataclass(frozen=True)
class EvaluateParams:
    """Evaluation: latency measurement."""

    latency_samples: int = 50
    latency_warmup: int = 3

    def __post_init__(self) -> None:
        _check(self.latency_samples >= 1, "evaluate.latency_samples", "must be >= 1")
        _check(self.latency_warmup >= 0, "evaluate.latency_warmup", "must be >= 0")


@dataclass(frozen=True)
class RegisterParams:
    """Model registry: which models compete, on which metric, under which name and alias."""

    model_name: str = "cxrflow-covid-cxr"
    alias: str = "champion"
    metric: str = "f1_macro"
    candidates: tuple[str, ...] = ("model_1", "model_2", "model_3")

    def __post_init__(self) -> None:
        for c in self.candidates:
            _check(c in MODEL_KEYS, "register.candidates", f"unknown model key {c!r}")
        _check(bool(self.candidates), "register.candidates", "must not be empty")
        _check(
            self.metric in ("accuracy", "precision_macro", "recall_macro", "f1_macro"),
            "register.metric",
            "must be accuracy, precision_macro, recall_macro or f1_macro",
        )
        _check(
            self.alias.lower() not in ("staging", "production", "archived", "none"),
            "register.alias",
            "stage names are deprecated in MLflow; use an alias",
        )


@dataclass(frozen=True)
class TrackingParams:
    """MLflow experiment. The tracking URI comes from the environment, never from here."""

    experiment_name: str = "cxrflow"


@dataclass(frozen=True)
class Params:
    """All of cxrflow's configuration, one section per step."""

    data: DataParams = field(default_factory=DataParams)
    ingest: IngestParams = field(default_factory=IngestParams)
    validate: ValidateParams = field(default_factory=ValidateParams)
    split: SplitParams = field(default_factory=SplitParams)
    train: TrainParams = field(default_factory=TrainParams)
    models: Mapping[str, ModelSpec] = field(default_factory=_default_models)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    register: RegisterParams = field(default_factory=RegisterParams)
    tracking: TrackingParams = field(default_factory=TrackingParams)
    profile: str = "paper"

    def __post_init__(self) -> None:
        _check(
            tuple(sorted(self.models)) == MODEL_KEYS,
            "models",
            f"must define exactly {list(MODEL_KEYS)}",
        )
        for key in ("model_0",):
            _check(self.models[key].dataset == "dataset_0", f"models.{key}.dataset", "dataset_0")
        for key, spec in self.models.items():
            if spec.init == "model_0":
                _check(
                    spec.architecture == "small_cnn",
                    f"models.{key}.init",
                    "transfer from model_0 needs architecture small_cnn",
                )
            if spec.init == "imagenet":
                _check(
                    spec.architecture == "resnet50",
                    f"models.{key}.init",
                    "imagenet init needs architecture resnet50",
                )


# ---------------------------------------------------------------------------------------------
# Generic dict -> dataclass conversion with key-naming errors


def _convert(tp: Any, value: Any, key: str, kfp: bool = False) -> Any:
    """Check and convert ``value`` to ``tp``; ``kfp``: see :func:`params_from_sections`."""
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or (kfp and value == "" and type(None) in args):
            _check(type(None) in args, key, "must not be null")
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _convert(a, value, key, kfp)
            except ParamsError as exc:
                errors.append(str(exc))
        raise ParamsError(errors[0])
    if origin is Literal:
        _check(value in args, key, f"must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        _check(isinstance(value, Mapping), key, f"must be a mapping, got {type(value).__name__}")
        return _build(tp, value, key, kfp)
    if origin in (tuple,):
        _check(isinstance(value, list | tuple), key, "must be a list")
        return tuple(_convert(args[0], v, f"{key}[{i}]", kfp) for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        _check(isinstance(value, Mapping), key, "must be a mapping")
        vt = args[1] if args else Any
        return types.MappingProxyType(
            {str(k): _convert(vt, v, f"{key}.{k}", kfp) for k, v in value.items()}
        )
    if tp is bool:
        _check(isinstance(value, bool), key, f"must be true/false, got {value!r}")
        return value
    if tp is int:
        if kfp and isinstance(value, float) and value.is_integer():
            value = int(value)
        _check(
            isinstance(value, int) and not isinstance(value, bool),
            key,
            f"must be an integer, got {value!r}",
        )
        return value
    if tp is float:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        _check(
            isinstance(value, int | float) and not isinstance(value, bool),
            key,
            f"must be a number, got {value!r}",
        )
        return float(value)
    if tp is str:
        _check(isinstance(value, str), key, f"must be a string, got {value!r}")
        return value
    raise ParamsError(f"params: {key}: unsupported type {tp!r}")  # pragma: no cover


def _build(cls: type, data: Mapping[str, Any], prefix: str = "", kfp: bool = False) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            dotted = f"{prefix}.{k}" if prefix else str(k)
            raise ParamsError(f"params: {dotted}: unknown key (allowed: {sorted(names)})")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if cls is Params and f.name == "models":
            value = data[f.name]
            _check(isinstance(value, Mapping), dotted, "must be a mapping")
            defaults = _default_models()
            built = {}
            for mk, mv in value.items():
                _check(mk in MODEL_KEYS, f"models.{mk}", f"unknown model key; use {MODEL_KEYS}")
                merged = {**_to_plain(defaults[mk]), **(mv or {})}
                built[mk] = _build(ModelSpec, merged, f"models.{mk}", kfp)
            for mk in MODEL_KEYS:
                built.setdefault(mk, defaults[mk])
            kwargs[f.name] = types.MappingProxyType(built)
            continue
        kwargs[f.name] = _convert(tp, data[f.name], dotted, kfp)
    return cls(**kwargs)


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any], prefix: str = "") -> dict:
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(out[k], v, f"{prefix}{k}.")
        else:
            out[k] = v
    return out


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [_to_plain(v) for v in obj]
    return obj


def params_from_dict(raw: Mapping[str, Any], profile: str = "paper") -> Params:
    """Build :class:`Params` from a raw mapping (the content of ``params.yaml``).

    Args:
        raw: Mapping with optional ``profiles`` section.
        profile: ``paper`` (no override) or a profile name under ``profiles``.

    Returns:
        The frozen, validated params.

    Raises:
        ParamsError: Unknown key, unknown profile or invalid value, naming the dotted key.
    """
    raw = dict(raw)
    profiles = raw.pop("profiles", {}) or {}
    _check(isinstance(profiles, Mapping), "profiles", "must be a mapping")
    raw.pop("profile", None)
    if profile != "paper":
        _check(
            profile in profiles,
            "profile",
            f"unknown profile {profile!r}; available: {['paper', *profiles]}",
        )
        raw = _deep_merge(raw, profiles[profile])
    raw["profile"] = profile
    return _build(Params, raw)


def load_params(path: str | Path = "params.yaml", profile: str = "paper") -> Params:
    """Load and validate ``params.yaml`` (optionally applying a profile).

    Args:
        path: Path to the YAML file.
        profile: ``paper`` (defaults), ``demo`` or ``smoke``.
    """
    p = Path(path)
    if not p.is_file():
        raise ParamsError(f"params: file not found: {p}")
    raw = yaml.safe_load(p.read_text()) or {}
    _check(isinstance(raw, Mapping), str(p), "top level must be a mapping")
    return params_from_dict(raw, profile)


def nulls_to_empty(obj: Any) -> Any:
    """Replace ``None`` by ``""`` recursively (KFP parameter values cannot be null)."""
    if isinstance(obj, dict):
        return {k: nulls_to_empty(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [nulls_to_empty(v) for v in obj]
    return "" if obj is None else obj


def params_to_dict(params: Any) -> Any:
    """Plain (JSON-able) nested dict of a params dataclass."""
    return _to_plain(params)


def params_from_sections(sections: Mapping[str, Any]) -> Params:
    """Rebuild :class:`Params` from a mapping of section dicts (as passed to KFP steps).

    KFP parameters cannot hold null and carry every number as a float (protobuf ``Struct``), so
    here, and only here, ``""`` reads as null where a field may be null and an integral float
    as an int. ``params.yaml`` itself is read strictly.
    """
    return _build(Params, dict(sections), kfp=True)


def flatten_params(params: Any, prefix: str = "") -> dict[str, str]:
    """Flatten to ``{"train.batch_size": "20", ...}`` for MLflow params."""
    plain = _to_plain(params)
    out: dict[str, str] = {}

    def walk(node: Any, pre: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{pre}.{k}" if pre else k)
        else:
            out[pre] = json.dumps(node) if isinstance(node, list) else str(node)

    walk(plain, prefix)
    return out


def params_hash(params: Any) -> str:
    """Stable short hash of a params object (for tags and cache keys)."""
    blob = json.dumps(_to_plain(params), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
