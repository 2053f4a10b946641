"""Ingest's bookkeeping: one entry per considered input with the state it ended in (candidate,
excluded, quarantined, kept, duplicate), made from a source's record, and the per-source,
per-label counts over entries that the report's stages are built from.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from cxrflow.data.images import ImageInfo
from cxrflow.data.sources import STUDY, Candidate, Excluded, Record, Rejected, Unreferenced

# Entry states
_CANDIDATE, _EXCLUDED, _QUARANTINED, _KEPT, _DUPLICATE = range(5)


@dataclass(slots=True)
class _Entry:
    """One considered input and what became of it."""

    source: str
    original_path: str
    label: str
    state: int
    cohort: str = STUDY
    cand: Candidate | None = None
    reason: str = ""
    detail: str = ""
    info: ImageInfo | None = None
    excluded_file_present: bool = False


def _key(e: _Entry) -> str:
    """The stage-count key of an entry: its label, or ``<cohort>:<label>`` off the study."""
    return e.label if e.cohort == STUDY else f"{e.cohort}:{e.label}"


def _count(entries: Iterable[_Entry]) -> dict[str, dict[str, int]]:
    c: dict[str, Counter[str]] = defaultdict(Counter)
    for e in entries:
        c[e.source][_key(e)] += 1
    return {s: dict(sorted(v.items())) for s, v in sorted(c.items())}


def _count_patients(entries: Iterable[_Entry]) -> dict[str, dict[str, int]]:
    c: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for e in entries:
        if e.cand is not None:
            c[e.source][_key(e)].add(e.cand.patient_id)
    return {s: {k: len(v) for k, v in sorted(d.items())} for s, d in sorted(c.items())}


def _nested_counter(pairs: Iterable[tuple[str, str]]) -> dict[str, dict[str, int]]:
    c: dict[str, Counter[str]] = defaultdict(Counter)
    for a, b in pairs:
        c[a][b] += 1
    return {a: dict(sorted(v.items())) for a, v in sorted(c.items())}


def _entry(rec: Record) -> _Entry | None:
    """The entry of a considered record; ``None`` for an unreferenced file (not considered)."""
    if isinstance(rec, Unreferenced):
        return None
    if isinstance(rec, Candidate):
        return _Entry(rec.source, rec.original_path, rec.label, _CANDIDATE, rec.cohort, rec)
    # a rejected input is quarantined; an excluded one is listed in excluded.csv
    return _Entry(
        rec.source,
        rec.original_path,
        rec.label,
        _QUARANTINED if isinstance(rec, Rejected) else _EXCLUDED,
        rec.cohort if isinstance(rec, Rejected) else STUDY,
        reason=rec.reason,
        detail=rec.detail,
        excluded_file_present=isinstance(rec, Excluded) and rec.file_present,
    )
