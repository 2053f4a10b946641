"""Data sources: the :class:`Source` protocol, the records a source yields, and a registry.

A *source* is one public dataset in its published layout (Kermany's folders, Cohen's
``metadata.csv`` + ``images/``). It owns every rule that is about that dataset: how to find its
files, how to label them, how to group them by patient, which rows to exclude, which population
it was drawn from and what it contributes to the paper's datasets. Ingest, validation, the split
and the data-version listing iterate over sources by name and never name a dataset themselves,
so adding a dataset is one new module that calls :func:`register_source` plus an entry in
``data.sources`` (see ``tests/unit/test_sources_extension.py`` for an RSNA-like example).

Discovery only looks at names, folders and metadata; it never decodes an image (that is
:func:`cxrflow.data.images.inspect_image`'s job, run in parallel by ingest). Every input a source
considers ends up as exactly one record:

- :class:`Candidate`: to be inspected (and then kept, quarantined or collapsed as a duplicate);
- :class:`Rejected`: quarantined from its name or metadata alone (unknown label, missing file,
  path escaping the source root);
- :class:`Excluded`: outside the source's configured filter (Cohen: not COVID-19, CT, lateral
  view). Exclusion is a decision, not a data error: ingest lists it in ``excluded.csv``.

A candidate belongs to a *cohort*: ``study`` (the paper's data: what the datasets are built
from) or ``control`` (kept apart for the shortcut audit, never trained on: Cohen's adult
non-COVID frontal X-rays, labelled ``bacterial``, ``normal`` or ``viral`` from their finding).
The split only ever selects study rows; :func:`count_records` counts study candidates only.

A source may also yield :class:`Unreferenced` for a file that no metadata row names; such a file
is reported but not *considered* (with no metadata there is no label).

``original_path`` is always the path relative to the *parent* of the source root, so it starts
with the root folder's name (``kermany/dataset/train/NORMAL/x.jpeg``,
``cohen-2020-06-22/images/y.jpg``) and tells several roots of one source apart. Patient ids are
``<source name>:<id>``: the grouping key of the patient-level split.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeAlias

if TYPE_CHECKING:
    from cxrflow.config import IngestParams

UNKNOWN_LABEL = "unknown"
"""Label recorded for an input whose label could not be derived (it is quarantined)."""
STUDY = "study"
"""Cohort of the paper's data: the rows the datasets are built from."""
CONTROL = "control"
"""Cohort of same-source control images: kept for the shortcut audit, never in a dataset."""
EXTERNAL = "external"
"""Cohort of an external source's images (``data.source_settings.<name>.role: external``):
never trained on, never split; every model is scored on them separately."""
COHORTS: tuple[str, ...] = (STUDY, CONTROL, EXTERNAL)
"""Values of the manifest's ``cohort`` column."""
POPULATIONS: tuple[str, ...] = ("pediatric", "adult")
"""Values of :attr:`Source.population`."""
AGE_GROUPS: tuple[str, ...] = ("pediatric", "adult", "unknown")
"""Values of the manifest's ``age_group`` column."""
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Candidate:
    """An input that passed the layout/metadata checks and now needs image inspection.

    Attributes:
        source: The source's name.
        path: Absolute path of the file to read.
        original_path: Path relative to the parent of the source root.
        label: ``normal``, ``bacterial``, ``viral`` or ``covid``.
        patient_id: ``<source>:<id>``.
        view: Radiographic view (``PA``, ``AP Supine``, ...); ``""`` when unknown.
        age_group: One of :data:`AGE_GROUPS`.
        source_split: The source's own split (Kermany ``train``/``test``/``val``), else ``""``.
        cohort: :data:`STUDY` or :data:`CONTROL` (see the module docstring).
        finding: The source's own finding, as written (Cohen's ``finding``), else ``""``.
    """

    source: str
    path: str
    original_path: str
    label: str
    patient_id: str
    view: str = ""
    age_group: str = "unknown"
    source_split: str = ""
    cohort: str = STUDY
    finding: str = ""


@dataclass(frozen=True)
class Rejected:
    """An input quarantined before inspection.

    Attributes:
        source: The source's name.
        original_path: Path relative to the parent of the source root (as written in the
            metadata for a metadata row, even when it escapes the root).
        reason: ``unknown_label``, ``unknown_label_folder``, ``path_escape``, ``missing_file``,
            ``missing_patient_id`` or ``duplicate_row`` (a CSV source).
        detail: One line for a person.
        label: The label the input would have had, or :data:`UNKNOWN_LABEL`.
        cohort: The cohort it would have joined (:data:`STUDY` or :data:`CONTROL`).
    """

    source: str
    original_path: str
    reason: str
    detail: str
    label: str = UNKNOWN_LABEL
    cohort: str = STUDY


@dataclass(frozen=True)
class Excluded:
    """An input outside the source's configured filter (listed in ``excluded.csv``).

    Attributes:
        source: The source's name.
        original_path: Path relative to the parent of the source root.
        reason: Why, e.g. ``not_covid_finding``, ``modality_not_xray``, ``view_not_frontal``.
        detail: The offending value, e.g. ``finding='SARS'``.
        label: The label the input would have had when only the other criteria failed, else a
            source-defined placeholder (Cohen: ``other``).
        file_present: Whether the referenced file exists inside the root (for reporting only).
    """

    source: str
    original_path: str
    reason: str
    detail: str
    label: str
    file_present: bool


@dataclass(frozen=True)
class Unreferenced:
    """A file in a source root that no metadata row references: reported, not considered.

    Attributes:
        source: The source's name.
        original_path: Path relative to the parent of the source root.
    """

    source: str
    original_path: str


Record: TypeAlias = Candidate | Rejected | Excluded | Unreferenced
ReadFile: TypeAlias = Callable[[str], bytes]
"""Reads a (small, metadata) file by its path relative to a source root."""


class Source(Protocol):
    """One public dataset: its layout, labelling, filtering, patient ids and population."""

    @property
    def name(self) -> str:
        """The manifest's ``source`` value, the patient-id prefix and the ``data.sources`` key."""
        ...

    @property
    def population(self) -> str:
        """Who the collection was drawn from: ``pediatric`` or ``adult``.

        Split confound detection cross-tabulates labels by it (a label that comes from one
        population only can be told apart by anatomy alone).
        """
        ...

    @property
    def labels(self) -> tuple[str, ...]:
        """The labels this source can give (always present in :meth:`count_labels`)."""
        ...

    @property
    def datasets(self) -> Mapping[str, tuple[str, ...]]:
        """Which of this source's labels each paper dataset (``dataset_0``, ...) takes."""
        ...

    def discover(self, root: str | Path, params: IngestParams) -> Iterator[Record]:
        """Every input under ``root`` as one record, in a deterministic order.

        Raises:
            FileNotFoundError: When ``root`` does not hold the source's layout.
            ValueError: When its metadata is unusable (naming the file and the problem).
        """
        ...

    def count_labels(
        self, files: Sequence[str], read_file: ReadFile, params: IngestParams
    ) -> dict[str, int]:
        """Label counts of a root from its file listing alone, by the rules of :meth:`discover`.

        Args:
            files: Every file under the root, as POSIX paths relative to it.
            read_file: Reads a metadata file named in ``files`` (no image is ever read).
            params: The ingest params (filters).

        Returns:
            ``{label: n}`` as :func:`count_records` gives for the records discovery would yield.
        """
        ...


def count_records(records: Iterable[Record], labels: Sequence[str]) -> dict[str, int]:
    """Label counts of discovery records: what the data-version listing shows.

    Args:
        records: Records of one source.
        labels: Labels always present in the result (0 when absent).

    Returns:
        Study candidates per label, plus :data:`UNKNOWN_LABEL` for inputs whose label could not
        be derived (rejected with that label). Control candidates (never training data),
        excluded inputs and rejected inputs with a label (e.g. a metadata row naming a missing
        file) are not counted.
    """
    counts = dict.fromkeys(labels, 0)
    for rec in records:
        if isinstance(rec, Candidate) and rec.cohort == STUDY:
            counts[rec.label] = counts.get(rec.label, 0) + 1
        elif isinstance(rec, Rejected) and rec.label == UNKNOWN_LABEL:
            counts[UNKNOWN_LABEL] = counts.get(UNKNOWN_LABEL, 0) + 1
    return counts


# ---------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Source] = {}


def register_source(source: Source, *, replace: bool = False) -> Source:
    """Make ``source`` available under ``source.name`` (to ingest, validation, split, listing).

    Args:
        source: The source.
        replace: Replace a source registered under the same name.

    Returns:
        ``source`` (so that a module can register at import time in one line).

    Raises:
        ValueError: A name that is not lowercase ``[a-z][a-z0-9_]*``, a population not in
            :data:`POPULATIONS`, or a name already taken (without ``replace``).
    """
    name = source.name
    if not _NAME.fullmatch(name):
        raise ValueError(f"source name {name!r}: must match {_NAME.pattern}")
    if source.population not in POPULATIONS:
        raise ValueError(f"source {name}: population must be one of {list(POPULATIONS)}")
    if name in _REGISTRY and _REGISTRY[name] is not source and not replace:
        raise ValueError(f"source {name!r} is already registered ({_REGISTRY[name]!r})")
    _REGISTRY[name] = source
    return source


def unregister_source(name: str) -> Source:
    """Remove a registered source and return it (for tests and plugins).

    Raises:
        ValueError: When no source of that name is registered.
    """
    source = get_source(name)
    del _REGISTRY[name]
    return source


def get_source(name: str) -> Source:
    """The source registered under ``name``.

    Raises:
        ValueError: Naming ``data.sources.<name>`` and the registered names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY) or "none"
        raise ValueError(
            f"data.sources.{name}: unknown source {name!r} (registered sources: {known})"
        ) from None


def registered_sources() -> tuple[Source, ...]:
    """Every registered source, in registration order (the built-ins first)."""
    return tuple(_REGISTRY.values())


# The built-in sources register themselves on import (after the names above exist).
from cxrflow.data.sources import cohen as _cohen  # noqa: E402
from cxrflow.data.sources import kermany as _kermany  # noqa: E402

register_source(_kermany.KermanySource())
register_source(_cohen.CohenSource())
