"""Ingest: sources -> inspected, de-duplicated, content-addressed dataset directory.

:func:`ingest` runs four stages and accounts for every input at each one:

1. **discover**: each configured ``(source, root)`` pair is read by its registered
   :class:`~cxrflow.data.sources.Source` (:mod:`cxrflow.data.sources`): every input it yields
   is *considered*. Inputs outside a source's filter (Cohen: not a COVID-19 frontal X-ray) are
   *excluded* and listed in ``excluded.csv``, except the source's *controls* (Cohen's adult
   non-COVID frontal X-rays), which go on like study inputs but with ``cohort`` ``control``;
   inputs with no derivable label, a missing file or a path escaping the root are
   *quarantined*.
2. **inspect** (:func:`cxrflow.data.images.inspect_image`), in parallel processes, in chunks of
   ``params.chunk_size`` with at most two chunks per worker in flight, so memory stays flat at
   any size. Workers return small records and store kept images themselves. Unreadable, empty,
   truncated, corrupt, bomb-sized, tiny or oddly-moded files are quarantined.
3. **dedupe** (:func:`cxrflow.data.neardup.find_duplicates`): exact duplicates share a SHA-256;
   near duplicates are confirmed by two hashes (see :mod:`cxrflow.data.neardup`). A duplicate
   group whose labels disagree is quarantined entirely (``duplicate_label_conflict``); a
   same-label group keeps one member (a study input before a control, then the source
   configured first, then the lowest ``original_path``) and lists the others in
   ``duplicates.csv``.
4. **write**: ``quarantine.csv``, ``excluded.csv``, ``duplicates.csv``, ``manifest.csv`` (each
   written to a tmp file and renamed) and finally ``ingest_report.json``. The report is the
   completion marker: it and the manifest are removed when a run starts, so a crashed run never
   leaves a manifest next to a report that looks complete. Stored images no longer referenced
   are removed.

The invariant ``considered == kept + quarantined + excluded_by_filter + duplicates_collapsed``
is checked before anything is written; a violation raises. ``kept`` counts study and control
rows of the manifest alike; the per-stage counts key a control label as ``control:<label>``.

The stages live in sibling modules: :mod:`cxrflow.data.ingest_entries` (the bookkeeping),
:mod:`cxrflow.data.inspection`, :mod:`cxrflow.data.duplicates` and
:mod:`cxrflow.data.ingest_report`; this module discovers, runs them, checks the invariant and
writes the tables.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

from cxrflow.config import IngestParams
from cxrflow.data.duplicates import CONFLICT_REASON, _dedupe
from cxrflow.data.ingest_entries import (
    _CANDIDATE,
    _DUPLICATE,
    _EXCLUDED,
    _KEPT,
    _QUARANTINED,
    _count,
    _count_patients,
    _Entry,
    _entry,
    _nested_counter,
)
from cxrflow.data.ingest_report import REVIEW_MAX_LISTED, STAGES, IngestReport, summarize_report
from cxrflow.data.inspection import _inspect_all, _resolve_workers
from cxrflow.data.manifest import (
    DUPLICATE_COLUMNS,
    DUPLICATES_FILE,
    EXCLUDED_COLUMNS,
    EXCLUDED_FILE,
    IMAGES_DIR,
    INGEST_REPORT_FILE,
    MANIFEST_COLUMNS,
    MANIFEST_FILE,
    QUARANTINE_COLUMNS,
    QUARANTINE_FILE,
    manifest_hash,
    write_table,
)
from cxrflow.data.neardup import NEAR_DUPLICATE_RULE
from cxrflow.data.sources import CONTROL, Source, get_source
from cxrflow.jsonio import write_json_atomic

log = logging.getLogger(__name__)


SourceRoots: TypeAlias = (
    Sequence[tuple[str | Source, str | Path]] | Mapping[str, Sequence[str | Path]]
)
"""Ordered ``(source, root)`` pairs (a source by registered name or as an object), or the
``data.sources`` mapping ``{name: [root, ...]}``."""

_STORED_NAME = re.compile(r"^[0-9a-f]{64}\.[a-z0-9]+$")


def _manifest_row(e: _Entry, origin: str) -> dict[str, Any]:
    info, cand = e.info, e.cand
    assert info is not None and cand is not None
    return {
        "image_id": info.image_id,
        "path": info.rel_path,
        "label": cand.label,
        "source": cand.source,
        "origin": origin,
        "patient_id": cand.patient_id,
        "view": cand.view,
        "age_group": cand.age_group,
        "width": info.width,
        "height": info.height,
        "mode": info.mode,
        "original_mode": info.original_mode,
        "sha256": info.sha256,
        "phash": info.phash,
        "original_path": cand.original_path,
        "source_split": cand.source_split,
        "cohort": cand.cohort,
        "finding": cand.finding,
    }


def _prune_images(out: Path, keep: set[str]) -> int:
    """Remove stored images not in ``keep`` (relative paths) and stray tmp files."""
    images = out / IMAGES_DIR
    removed = 0
    if not images.is_dir():
        return 0
    for sub in images.iterdir():
        if not (sub.is_dir() and re.fullmatch(r"[0-9a-f]{2}", sub.name)):
            continue
        for f in sub.iterdir():
            rel = f"{IMAGES_DIR}/{sub.name}/{f.name}"
            stray_tmp = f.name.startswith(".") and f.name.endswith(".tmp")
            if f.is_file() and (stray_tmp or (_STORED_NAME.match(f.name) and rel not in keep)):
                f.unlink()
                removed += 1
        if not any(sub.iterdir()):
            sub.rmdir()
    return removed


def resolve_sources(sources: SourceRoots) -> list[tuple[Source, Path]]:
    """``(Source, root)`` pairs, in order, from names or source objects.

    Args:
        sources: See :data:`SourceRoots`.

    Raises:
        ValueError: A name no source is registered under (naming ``data.sources.<name>`` and
            the registered names).
    """
    pairs: Iterable[tuple[str | Source, str | Path]]
    if isinstance(sources, Mapping):
        pairs = [(name, root) for name, roots in sources.items() for root in roots]
    else:
        pairs = sources
    return [(get_source(src) if isinstance(src, str) else src, Path(root)) for src, root in pairs]


def ingest(
    out_dir: str | Path,
    params: IngestParams,
    sources: SourceRoots,
    *,
    origin: str = "real",
    copy_images: bool = True,
) -> IngestReport:
    """Build a dataset directory (see :mod:`cxrflow.data.manifest`) from source roots.

    Args:
        out_dir: The dataset directory to (re)write.
        params: Decoding limits, source filters, duplicate threshold, parallelism.
        sources: The roots to read, each with its source (see :data:`SourceRoots`), e.g.
            ``[("kermany", "data/kermany"), ("cohen", "data/cohen-a"), ("cohen", "data/cohen-b")]``
            or ``params.data.sources``. Duplicates within and across roots are collapsed; in a
            same-label duplicate group the member of the source listed first is kept. A source
            object, e.g. ``CohenSource(metadata_csv=...)``, reads a root its own way.
        origin: ``real`` or ``phantom``, copied to the manifest's ``origin`` column.
        copy_images: Store kept images under ``images/``. When false nothing is stored (a
            dry run: the manifest's ``path`` names where each image would be).

    Returns:
        The report (also written to ``ingest_report.json``).

    Raises:
        ValueError: No source given, an unknown source name, a metadata file missing a
            required column, or ``origin`` not ``real``/``phantom``.
        FileNotFoundError: A source root or metadata file that does not exist.
        RuntimeError: When the counts do not add up (a bug), or a worker process died.
    """
    import pandas as pd

    from cxrflow.config import params_to_dict

    t0 = time.perf_counter()
    roots = resolve_sources(sources)
    if not roots:
        raise ValueError("ingest: no source given (data.sources is empty)")
    if origin not in ("real", "phantom"):
        raise ValueError(f"ingest: origin must be 'real' or 'phantom', got {origin!r}")
    rank: dict[str, int] = {}
    for src, _ in roots:
        rank.setdefault(src.name, len(rank))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for marker in (INGEST_REPORT_FILE, MANIFEST_FILE):
        (out / marker).unlink(missing_ok=True)

    # 1. discover -----------------------------------------------------------------------------
    entries: list[_Entry] = []
    read: dict[str, list[str]] = {}
    unreferenced: list[str] = []
    for src, root in roots:
        read.setdefault(src.name, []).append(str(root))
        for rec in src.discover(root, params):
            if rec.source != src.name:
                raise RuntimeError(f"source {src.name}: {root}: a record names {rec.source!r}")
            entry = _entry(rec)
            if entry is None:
                unreferenced.append(rec.original_path)
            else:
                entries.append(entry)
    # a deterministic order independent of discovery order
    entries.sort(key=lambda e: (rank[e.source], e.original_path, e.reason))
    stage_counts = {"discovered": _count(entries)}
    stage_counts["after_filter"] = _count(e for e in entries if e.state != _EXCLUDED)
    log.info("ingest: %d inputs considered", len(entries))

    # 2. inspect ------------------------------------------------------------------------------
    tasks = [(i, e.cand.path) for i, e in enumerate(entries) if e.cand is not None]
    n_workers = _resolve_workers(params.workers)
    if len(tasks) <= params.chunk_size:
        n_workers = 1
    store = str(out) if copy_images else None
    t_inspect = time.perf_counter()
    for idx, info, reason, detail in _inspect_all(tasks, params, store, n_workers):
        e = entries[idx]
        if info is None:
            e.state, e.reason, e.detail = _QUARANTINED, reason, detail
        else:
            e.info = info
    inspect_s = time.perf_counter() - t_inspect
    stage_counts["after_quarantine"] = _count(e for e in entries if e.state == _CANDIDATE)
    patients = {"after_quarantine": _count_patients(e for e in entries if e.state == _CANDIDATE)}

    # 3. dedupe -------------------------------------------------------------------------------
    dup_rows, dup_stats, review, patient_links = _dedupe(entries, params.phash_distance, rank)
    kept = [e for e in entries if e.state == _KEPT]
    stage_counts["after_dedupe"] = _count(kept)
    patients["after_dedupe"] = _count_patients(kept)

    # accounting ------------------------------------------------------------------------------
    quarantined = [e for e in entries if e.state == _QUARANTINED]
    excluded = [e for e in entries if e.state == _EXCLUDED]
    n_dup = sum(e.state == _DUPLICATE for e in entries)
    if (
        any(e.state == _CANDIDATE for e in entries)
        or len(entries) != (len(kept) + len(quarantined) + len(excluded) + n_dup)
        or n_dup != len(dup_rows)
    ):
        raise RuntimeError(
            f"ingest: counts do not add up: considered {len(entries)} != kept {len(kept)} + "
            f"quarantined {len(quarantined)} + excluded {len(excluded)} + duplicates {n_dup}"
        )

    # 4. write --------------------------------------------------------------------------------
    manifest = pd.DataFrame(
        [_manifest_row(e, origin) for e in kept], columns=list(MANIFEST_COLUMNS)
    ).sort_values("image_id", kind="stable", ignore_index=True)
    if manifest["image_id"].duplicated().any():  # exact duplicates were collapsed: a bug
        raise RuntimeError("ingest: duplicate image_id in the manifest")
    quarantine = pd.DataFrame(
        [
            {
                "source": e.source,
                "original_path": e.original_path,
                "reason": e.reason,
                "detail": " ".join(e.detail.split()),
            }
            for e in quarantined
        ],
        columns=list(QUARANTINE_COLUMNS),
    ).sort_values(["source", "original_path", "reason"], kind="stable", ignore_index=True)
    write_table(quarantine, out / QUARANTINE_FILE, QUARANTINE_COLUMNS)
    excluded_table = pd.DataFrame(
        [
            {
                "source": e.source,
                "original_path": e.original_path,
                "label": e.label,
                "reason": e.reason,
                "detail": " ".join(e.detail.split()),
                "file_present": str(e.excluded_file_present).lower(),
            }
            for e in excluded
        ],
        columns=list(EXCLUDED_COLUMNS),
    ).sort_values(["source", "original_path", "reason"], kind="stable", ignore_index=True)
    write_table(excluded_table, out / EXCLUDED_FILE, EXCLUDED_COLUMNS)
    write_table(
        pd.DataFrame(dup_rows, columns=list(DUPLICATE_COLUMNS)),
        out / DUPLICATES_FILE,
        DUPLICATE_COLUMNS,
    )
    write_table(manifest, out / MANIFEST_FILE, MANIFEST_COLUMNS)
    if copy_images:
        removed = _prune_images(out, set(manifest["path"]))
        if removed:
            log.info("ingest: removed %d stored images not in the manifest", removed)

    conversions = Counter(
        f"{e.info.original_mode} -> {e.info.mode} ({e.info.conversion})"
        for e in kept
        if e.info is not None and e.info.stored_as == "converted"
    )
    elapsed = time.perf_counter() - t0
    report = IngestReport(
        out_dir=str(out),
        origin=origin,
        sources=read,
        considered=len(entries),
        kept=len(kept),
        quarantined=len(quarantined),
        excluded_by_filter=len(excluded),
        duplicates_collapsed=n_dup,
        considered_by_source=dict(sorted(Counter(e.source for e in entries).items())),
        stages=stage_counts,
        patients=patients,
        quarantine_reasons=dict(sorted(Counter(e.reason for e in quarantined).items())),
        quarantine_by_source=_nested_counter((e.source, e.reason) for e in quarantined),
        excluded_reasons=_nested_counter((e.source, e.reason) for e in excluded),
        excluded_file_present=_nested_counter(
            (e.source, e.reason) for e in excluded if e.excluded_file_present
        ),
        duplicates=dup_stats,
        conversions=dict(sorted(conversions.items())),
        unreferenced=len(unreferenced),
        unreferenced_paths=sorted(unreferenced),
        manifest_hash=manifest_hash(manifest),
        near_duplicate_review=review[:REVIEW_MAX_LISTED],
        near_duplicate_review_count=len(review),
        patient_links=[list(pair) for pair in patient_links],
        images_copied=copy_images,
        workers=n_workers,
        near_duplicate_rule=NEAR_DUPLICATE_RULE,
        params=params_to_dict(params),
        elapsed_s=round(elapsed, 3),
        inspect_s=round(inspect_s, 3),
        images_per_s=round(len(tasks) / elapsed, 1) if elapsed > 0 else 0.0,
        controls_by_finding=_nested_counter(
            (e.source, e.cand.finding) for e in kept if e.cand is not None and e.cohort == CONTROL
        ),
    )
    write_json_atomic(out / INGEST_REPORT_FILE, report.to_dict())
    log.info("ingest: %s", summarize_report(report).splitlines()[0])
    return report


__all__ = [
    "CONFLICT_REASON",
    "REVIEW_MAX_LISTED",
    "STAGES",
    "IngestReport",
    "SourceRoots",
    "ingest",
    "resolve_sources",
    "summarize_report",
]
