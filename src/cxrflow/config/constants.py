"""The fixed vocabulary of cxrflow's configuration: labels, datasets, profiles, model keys and
init kinds (the step names are the step registry's, :mod:`cxrflow.steps.registry`).

These are the names params.yaml, the CLI, the DVC stages and the pipeline agree on; the
sections (:mod:`cxrflow.config.sections`) validate against them. Nothing here performs I/O.
"""

from __future__ import annotations

import re

DATASET_0_CLASSES: tuple[str, ...] = ("normal", "bacterial", "viral")
DATASET_1_CLASSES: tuple[str, ...] = ("normal", "bacterial", "covid")
ALL_LABELS: tuple[str, ...] = ("normal", "bacterial", "viral", "covid")
MIXED_DATASET = "dataset_1_mixed"
"""Dataset_1 plus a patient-grouped share of the adult non-COVID controls in its normal and
bacterial classes (``split.mixed_control_share``): does mixing adults in remove the shortcut?"""
DATASETS: dict[str, tuple[str, ...]] = {
    "dataset_0": DATASET_0_CLASSES,
    "dataset_1": DATASET_1_CLASSES,
    MIXED_DATASET: DATASET_1_CLASSES,
}
PAPER = "paper"
PROFILES: tuple[str, ...] = (PAPER, "sample", "demo", "smoke")
"""The profiles params.yaml ships with (``paper`` applies none)."""

MODEL_KEYS: tuple[str, ...] = ("model_0", "model_1", "model_2", "model_3")
"""The paper's four model keys (the default ``models:``). A run's keys: ``Params.model_keys``."""

INIT_SCRATCH = "scratch"
INIT_IMAGENET = "imagenet"
_NAME = r"^[a-z][a-z0-9_]*$"
FULL_COMMIT = re.compile(r"[0-9a-f]{40}")
"""A full git commit sha (what ``data.version`` must be for ingest to be cacheable)."""
