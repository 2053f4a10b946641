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
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from cxrflow.config import IngestParams
from cxrflow.data.images import ImageInfo, ImageRejected, inspect_image
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
from cxrflow.data.neardup import (
    NEAR_DUPLICATE_MAX_RMSE,
    NEAR_DUPLICATE_RULE,
    REVIEW_MAX_RMSE,
    find_duplicates,
    hamming_hex,
)
from cxrflow.data.sources import (
    STUDY,
    Candidate,
    Excluded,
    Record,
    Rejected,
    Source,
    Unreferenced,
    get_source,
)
from cxrflow.jsonio import write_json_atomic

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("discovered", "after_filter", "after_quarantine", "after_dedupe")
CONFLICT_REASON = "duplicate_label_conflict"
REVIEW_MAX_LISTED = 200

SourceRoots: TypeAlias = (
    Sequence[tuple[str | Source, str | Path]] | Mapping[str, Sequence[str | Path]]
)
"""Ordered ``(source, root)`` pairs (a source by registered name or as an object), or the
``data.sources`` mapping ``{name: [root, ...]}``."""

_STORED_NAME = re.compile(r"^[0-9a-f]{64}\.[a-z0-9]+$")

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


@dataclass
class IngestReport:
    """What ingest did, with counts that add up exactly (also ``ingest_report.json``).

    ``considered == kept + quarantined + excluded_by_filter + duplicates_collapsed``.

    Attributes:
        out_dir: The dataset directory written.
        origin: ``real`` or ``phantom``.
        sources: ``{source name: [root, ...]}``, the roots read, in the order given.
        considered: Inputs the sources yielded (Kermany files, Cohen metadata rows, ...).
        kept: Rows of ``manifest.csv``.
        quarantined: Rows of ``quarantine.csv``.
        excluded_by_filter: Inputs outside a source's filter (rows of ``excluded.csv``).
        duplicates_collapsed: Rows of ``duplicates.csv``.
        considered_by_source: ``{source: n}``.
        stages: ``{stage: {source: {label: n}}}`` for :data:`STAGES`; control inputs are
            counted under ``control:<label>`` (e.g. ``control:bacterial``).
        patients: ``{stage: {source: {label: distinct patient ids}}}`` for the last two stages
            (the same keys).
        quarantine_reasons: ``{reason: n}``.
        quarantine_by_source: ``{source: {reason: n}}``.
        excluded_reasons: ``{source: {reason: n}}``.
        excluded_file_present: ``{source: {reason: n}}``, the excluded rows whose file exists.
        duplicates: Dropped ``exact`` and ``near`` members, duplicate ``groups``,
            ``cross_source`` drops, ``conflict_groups``, the largest 64-bit distance between a
            kept and a dropped member, the confirmed ``near_pairs`` and their largest thumbnail
            RMSE (``max_pair_rmse``).
        conversions: ``{"<original_mode> -> <stored_mode>": n}`` for re-encoded images.
        unreferenced: Files in a source root that no metadata row references (Cohen
            ``images/``); not considered.
        unreferenced_paths: Their ``original_path`` (sorted).
        manifest_hash: :func:`cxrflow.data.manifest.manifest_hash` of the manifest.
        near_duplicate_review: Phash-close pairs *not* collapsed because their thumbnail RMSE
            is just above the threshold (up to ``REVIEW_MAX_RMSE``): crops and annotated copies
            of one film live there, next to distinct look-alikes. For a person to check; at most
            ``REVIEW_MAX_LISTED`` listed, closest first.
        near_duplicate_review_count: How many such pairs there are.
        patient_links: Pairs of patient ids linked by a duplicate group or a review pair: maybe
            one person filed under two ids; the split keeps them in one split.
        images_copied: Whether images were stored under ``images/``; when false the manifest's
            ``path`` column names where they would be.
        workers: Worker processes used (1 = in-process).
        near_duplicate_rule: The near-duplicate rule, in words.
        params: The ingest params (plain dict).
        elapsed_s: Wall-clock seconds of the whole run.
        inspect_s: Seconds spent inspecting images.
        images_per_s: Inspected images per second of ``elapsed_s``.
        controls_by_finding: ``{source: {finding: n}}``: the control rows of the manifest by
            their raw finding.
    """

    out_dir: str
    origin: str
    sources: dict[str, list[str]]
    considered: int
    kept: int
    quarantined: int
    excluded_by_filter: int
    duplicates_collapsed: int
    considered_by_source: dict[str, int]
    stages: dict[str, dict[str, dict[str, int]]]
    patients: dict[str, dict[str, dict[str, int]]]
    quarantine_reasons: dict[str, int]
    quarantine_by_source: dict[str, dict[str, int]]
    excluded_reasons: dict[str, dict[str, int]]
    excluded_file_present: dict[str, dict[str, int]]
    duplicates: dict[str, float]
    conversions: dict[str, int]
    unreferenced: int
    unreferenced_paths: list[str]
    manifest_hash: str
    near_duplicate_review: list[dict[str, Any]]
    near_duplicate_review_count: int
    patient_links: list[list[str]]
    images_copied: bool
    workers: int
    near_duplicate_rule: str
    params: dict[str, Any]
    elapsed_s: float = 0.0
    inspect_s: float = 0.0
    images_per_s: float = 0.0
    controls_by_finding: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


# ------------------------------------------------------------------------------- inspection


def _inspect_chunk(
    tasks: Sequence[tuple[int, str]], params: IngestParams, store_dir: str | None
) -> list[tuple[int, ImageInfo | None, str, str]]:
    """Worker: inspect a chunk of files; return ``(index, info, reason, detail)`` per file."""
    out: list[tuple[int, ImageInfo | None, str, str]] = []
    for idx, path in tasks:
        try:
            out.append((idx, inspect_image(path, params, store_dir=store_dir), "", ""))
        except ImageRejected as exc:
            out.append((idx, None, exc.reason, exc.detail))
        except OSError:  # writing to the dataset dir failed (disk full, ...): fail the run
            raise
        except Exception as exc:  # a decoder bug must not lose the file from the accounting
            out.append((idx, None, "corrupt", f"{type(exc).__name__}: {exc}"[:300]))
    return out


def _chunks(tasks: list[tuple[int, str]], size: int) -> Iterator[list[tuple[int, str]]]:
    for i in range(0, len(tasks), size):
        yield tasks[i : i + size]


def _resolve_workers(workers: int) -> int:
    return workers if workers > 0 else max(1, os.cpu_count() or 1)


def _inspect_all(
    tasks: list[tuple[int, str]],
    params: IngestParams,
    store_dir: str | None,
    n_workers: int,
) -> Iterator[tuple[int, ImageInfo | None, str, str]]:
    """Inspect ``tasks`` in ``n_workers`` processes, bounded in flight.

    Runs in-process when ``n_workers`` is 1 or everything fits in one chunk (a pool would only
    add start-up time). Yields results in completion order.
    """
    from tqdm import tqdm

    bar = tqdm(
        total=len(tasks),
        desc="ingest: inspect",
        unit="img",
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        mininterval=1.0,
    )
    try:
        if n_workers <= 1 or len(tasks) <= params.chunk_size:
            for chunk in _chunks(tasks, params.chunk_size):
                results = _inspect_chunk(chunk, params, store_dir)
                bar.update(len(results))
                yield from results
            return
        import multiprocessing as mp
        from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

        # forkserver: safe when the parent holds threads (fork could deadlock), cheaper than spawn
        methods = mp.get_all_start_methods()
        ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        max_in_flight = 2 * n_workers
        chunks = _chunks(tasks, params.chunk_size)
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
            pending: set[Future[list[tuple[int, ImageInfo | None, str, str]]]] = set()
            while True:
                while len(pending) < max_in_flight:
                    nxt = next(chunks, None)
                    if nxt is None:
                        break
                    pending.add(pool.submit(_inspect_chunk, nxt, params, store_dir))
                if not pending:
                    break
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    results = fut.result()  # BrokenProcessPool propagates: the run fails loudly
                    bar.update(len(results))
                    yield from results
    finally:
        bar.close()


# ---------------------------------------------------------------------------------- dedupe


def _dedupe(
    entries: list[_Entry], k: int, rank: Mapping[str, int]
) -> tuple[list[dict[str, Any]], dict[str, float], list[dict[str, Any]], list[tuple[str, str]]]:
    """Collapse duplicates among inspected entries (state ``_CANDIDATE`` with ``info``).

    Mutates entry states: kept -> ``_KEPT``, dropped -> ``_DUPLICATE``, conflicting groups ->
    ``_QUARANTINED``. Returns the ``duplicates.csv`` rows, summary counts, the phash-close
    pairs just above the confirmation threshold (for a person to review), and the patient-id
    pairs linked by a shared film. ``rank`` orders sources for the choice of the kept member.
    """
    live = [e for e in entries if e.state == _CANDIDATE and e.info is not None]
    infos = [e.info for e in live if e.info is not None]
    found = find_duplicates(
        [i.sha256 for i in infos], [i.phash for i in infos], [i.thumb for i in infos], k
    )

    def pid(i: int) -> str:
        cand = live[i].cand
        assert cand is not None
        return cand.patient_id

    review = []
    for a, b, d, r in found.close:
        # look-alikes just above the threshold that did not end up in one group anyway
        if (
            NEAR_DUPLICATE_MAX_RMSE < r <= REVIEW_MAX_RMSE
            and found.group_of[a] != found.group_of[b]
        ):
            ea, eb = live[a], live[b]
            review.append(
                {
                    "a": f"{ea.source}:{ea.original_path}",
                    "b": f"{eb.source}:{eb.original_path}",
                    "labels": f"{ea.label}/{eb.label}",
                    "patients": f"{pid(a)}/{pid(b)}",
                    "distance": d,
                    "rmse": round(r, 4),
                }
            )
    review.sort(key=lambda x: (x["rmse"], x["a"], x["b"]))
    # Patients linked by one film (a duplicate group, or a look-alike pair under review) may be
    # one person filed twice: the split keeps linked patients together (leakage-safe default).
    links: set[tuple[str, str]] = set()
    for a, b, _, r in found.close:
        if r <= REVIEW_MAX_RMSE and pid(a) != pid(b):
            links.add((min(pid(a), pid(b)), max(pid(a), pid(b))))

    rows: list[dict[str, Any]] = []
    stats: dict[str, float] = dict.fromkeys(
        ("exact", "near", "groups", "cross_source", "conflict_groups", "max_near_distance"), 0
    )
    stats["near_pairs"] = len(found.near)
    stats["max_pair_rmse"] = round(max((p[3] for p in found.near), default=0.0), 4)
    for group in found.groups:
        members = [live[i] for i in group]
        if len(members) == 1:
            members[0].state = _KEPT
            continue
        pids = sorted({pid(i) for i in group})
        links.update((min(pids[0], p), max(pids[0], p)) for p in pids[1:])
        members.sort(key=lambda e: (e.cohort != STUDY, rank[e.source], e.original_path))
        stats["groups"] += 1
        labels = {e.label for e in members}
        if len(labels) > 1:
            stats["conflict_groups"] += 1
            for e in members:
                others = [o for o in members if o.label != e.label]
                # name an identical file when there is one, else the first near duplicate
                o = next((x for x in others if _sha(x) == _sha(e)), others[0])
                same = _sha(e) == _sha(o)
                e.state = _QUARANTINED
                e.reason = CONFLICT_REASON
                e.detail = (
                    f"labelled {e.label} but {'identical to' if same else 'a near duplicate of'} "
                    f"{o.source}:{o.original_path} labelled {o.label}"
                    f" (group of {len(members)}: labels {sorted(labels)})"
                )
            continue
        keep = members[0]
        keep.state = _KEPT
        kinfo = keep.info
        assert kinfo is not None
        for e in members[1:]:
            assert e.info is not None
            e.state = _DUPLICATE
            exact = e.info.sha256 == kinfo.sha256
            dist = 0 if exact else hamming_hex(e.info.phash, kinfo.phash)
            stats["exact" if exact else "near"] += 1
            stats["cross_source"] += int(e.source != keep.source)
            if not exact:
                stats["max_near_distance"] = max(stats["max_near_distance"], dist)
            rows.append(
                {
                    "kind": "exact" if exact else "near",
                    "kept_image_id": kinfo.image_id,
                    "dropped_original_path": e.original_path,
                    "dropped_source": e.source,
                    "kept_original_path": keep.original_path,
                    "kept_source": keep.source,
                    "distance": dist,
                }
            )
    rows.sort(key=lambda r: (r["kept_image_id"], r["dropped_source"], r["dropped_original_path"]))
    return rows, stats, review, sorted(links)


def _sha(e: _Entry) -> str:
    assert e.info is not None
    return e.info.sha256


# ------------------------------------------------------------------------------------ ingest


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
            (e.source, e.cand.finding) for e in kept if e.cand is not None and e.cohort != STUDY
        ),
    )
    write_json_atomic(out / INGEST_REPORT_FILE, report.to_dict())
    log.info("ingest: %s", summarize_report(report).splitlines()[0])
    return report


# --------------------------------------------------------------------------------- summary


def summarize_report(report: IngestReport | dict[str, Any]) -> str:
    """A short human-readable table of an ingest report (object or its dict)."""
    r = report.to_dict() if isinstance(report, IngestReport) else report
    lines = [
        f"considered {r['considered']} = kept {r['kept']} + quarantined {r['quarantined']} + "
        f"excluded {r['excluded_by_filter']} + duplicates {r['duplicates_collapsed']}"
        f"  ({r.get('images_per_s', 0)} img/s, {r.get('elapsed_s', 0)} s)",
    ]
    stages = r["stages"]
    keys = sorted({(s, lab) for st in stages.values() for s, d in st.items() for lab in d})
    head = f"{'source':8} {'label':17}" + "".join(f"{s:>17}" for s in STAGES)
    lines += [head, "-" * len(head)]
    for s, lab in keys:
        cells = "".join(f"{stages.get(st, {}).get(s, {}).get(lab, 0):>17}" for st in STAGES)
        lines.append(f"{s:8} {lab:17}{cells}")
    for src, findings in (r.get("controls_by_finding") or {}).items():
        kept = ", ".join(f"{k} {v}" for k, v in findings.items())
        lines.append(f"controls kept ({src}, never in a dataset): {kept}")
    if r["quarantine_reasons"]:
        reasons = ", ".join(f"{k} {v}" for k, v in r["quarantine_reasons"].items())
        lines.append(f"quarantined: {reasons}")
    excl: Counter[str] = Counter()
    for d in r["excluded_reasons"].values():
        excl.update(d)
    if excl:
        lines.append("excluded: " + ", ".join(f"{k} {v}" for k, v in sorted(excl.items())))
    d = r["duplicates"]
    lines.append(
        f"duplicates: exact {d.get('exact', 0)}, near {d.get('near', 0)} in {d.get('groups', 0)}"
        f" groups ({d.get('conflict_groups', 0)} label conflicts); "
        f"{r.get('near_duplicate_review_count', 0)} look-alike pairs to review; "
        f"unreferenced {r['unreferenced']}"
    )
    lines.append(f"manifest_hash {r['manifest_hash']}")
    return "\n".join(lines)
