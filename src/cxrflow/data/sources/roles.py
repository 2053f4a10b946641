"""What a configured source is for, and the source objects a run's ``data`` section names.

A source's *role* (``data.source_settings.<name>.role``, :data:`cxrflow.config.SOURCE_ROLES`)
decides which cohort its images join, so that ingest's quarantine and duplicate rules apply
to every source alike and only the cohort differs:

- ``train``: the source's own cohorts (``study``; Cohen's adult non-COVID films ``control``);
- ``external``: every image joins the ``external`` cohort: never in a dataset, never split,
  scored by evaluate separately (another hospital's images). A film that duplicates a
  training image is collapsed into the training copy (ingest keeps study rows first), so an
  external score never counts an image a model may have trained on;
- ``control``: every non-COVID image joins the audit's ``control`` set; a COVID-19 image of a
  control source is excluded with a reason (controls are non-COVID by definition).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cxrflow.data.sources import (
    CONTROL,
    EXTERNAL,
    Candidate,
    Excluded,
    ReadFile,
    Record,
    Rejected,
    Source,
    get_source,
    register_source,
)

if TYPE_CHECKING:
    from cxrflow.config import DataParams, IngestParams, SourceSettings

COVID_IN_CONTROL = "covid_in_control_source"
"""Excluded reason of a COVID-19 image in a source with role ``control``."""


def apply_role(record: Record, role: str) -> Record:
    """``record`` as a source of ``role`` yields it (see the module doc)."""
    if role == "train" or not isinstance(record, Candidate | Rejected):
        return record
    if role == EXTERNAL:
        return dataclasses.replace(record, cohort=EXTERNAL)
    if isinstance(record, Rejected):
        return dataclasses.replace(record, cohort=CONTROL)
    if record.label == "covid":
        return Excluded(
            record.source,
            record.original_path,
            COVID_IN_CONTROL,
            "label covid in a source with role control (controls are non-COVID X-rays)",
            record.label,
            True,
        )
    return dataclasses.replace(record, cohort=CONTROL, finding=record.finding or record.label)


@dataclasses.dataclass(frozen=True)
class RoledSource:
    """A source read as its role says (:func:`apply_role` on every record it discovers)."""

    inner: Source
    role: str

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def population(self) -> str:
        return self.inner.population

    @property
    def labels(self) -> tuple[str, ...]:
        return self.inner.labels

    @property
    def datasets(self) -> Mapping[str, tuple[str, ...]]:
        return {} if self.role != "train" else self.inner.datasets

    def discover(self, root: str | Path, params: IngestParams) -> Iterator[Record]:
        for record in self.inner.discover(root, params):
            yield apply_role(record, self.role)

    def count_labels(
        self, files: Sequence[str], read_file: ReadFile, params: IngestParams
    ) -> dict[str, int]:
        return self.inner.count_labels(files, read_file, params)


def build_source(name: str, settings: SourceSettings) -> Source:
    """The source object that reads ``data.sources.<name>`` as ``settings`` say.

    A ``csv`` source is registered under ``name`` (replacing an earlier one of that name), so
    that the split and the data-version listing find it like a built-in source.

    Raises:
        ValueError: A kind that is neither ``csv`` nor the name of a registered source, or a
            built-in kind under another name.
    """
    from cxrflow.config import CSV_KIND

    kind = settings.kind or name
    source: Source
    if kind == CSV_KIND:
        from cxrflow.data.sources.csv_source import CsvSource

        source = register_source(
            CsvSource(name, settings.labels, settings.population), replace=True
        )
    else:
        source = get_source(kind)
        if kind != name:
            raise ValueError(
                f"data.source_settings.{name}.kind: {kind!r} reads only data.sources.{kind} "
                f"(a source of another name needs kind csv, or a registered source of its own)"
            )
    return source if settings.role == "train" else RoledSource(source, settings.role)


def configure_sources(data: DataParams) -> dict[str, Source]:
    """Every source ``data`` names, as the object that reads it (:func:`build_source`); for a
    phantom with an external site, that site (``csv``, role ``external``) too.

    Every step calls it first, so that a ``csv`` source is registered in the step's process.
    """
    return {name: build_source(name, data.settings_of(name)) for name in data.source_names}
