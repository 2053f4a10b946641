"""How the compiled pipeline runs on Kubernetes: resource quantities (parsed without the
kubernetes client), requests and limits per kind of step, retry policies, timeouts and the
checkpoint volume, gathered in :class:`ClusterParams` (the ``cluster`` section of params.yaml).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, StrictInt, StrictStr, field_validator, model_validator

from cxrflow.config.base import _Section

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


Seconds = Annotated[StrictInt, Field(ge=60, le=604_800)]
"""A task timeout: at least a minute, at most a week."""


class ClusterTimeouts(_Section):
    """The longest one pod of a task may run, per kind of step, in seconds (the pod's
    ``activeDeadlineSeconds``): a hung step (a stalled S3 read, a deadlocked data loader) fails
    instead of holding its node, and its GPU, until someone looks. Each retry is a new pod with
    a new deadline; ``retry.*.backoff_max_seconds`` bounds the attempts together."""

    data: Seconds = 7_200
    """ingest, validate, split: decoding and hashing every image of the paper's data."""
    train: Seconds = 172_800
    """The model steps: the paper's longest fine-tuning, with room (the longest timeout)."""
    evaluate: Seconds = 14_400
    """evaluate, audit: inference over the test splits, bootstrap, Grad-CAM."""
    record: Seconds = 3_600
    """register, finalize: MLflow bookkeeping."""

    @model_validator(mode="after")
    def _train_longest(self) -> ClusterTimeouts:
        # a model step does everything a data or evaluate step does and trains on top of it
        for kind in ("data", "evaluate", "record"):
            if getattr(self, kind) > self.train:
                raise ValueError(f"{kind} ({getattr(self, kind)} s) exceeds train ({self.train} s)")
        return self


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
    """How the compiled pipeline runs on Kubernetes: retries, resources, timeouts, the checkpoint
    volume.

    Compiled into the pipeline (``cxrflow pipeline compile``), like the images: a submit-time
    override does not change them. ``kfp.local``, the CLI and DVC ignore this section.
    """

    retry: ClusterRetries = Field(default_factory=ClusterRetries)
    resources: ClusterResources = Field(default_factory=ClusterResources)
    timeouts: ClusterTimeouts = Field(default_factory=ClusterTimeouts)
    checkpoints: CheckpointVolume = Field(default_factory=CheckpointVolume)
