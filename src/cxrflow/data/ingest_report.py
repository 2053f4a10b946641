"""What ingest reports: :class:`IngestReport` (counts that add up exactly, written as
``ingest_report.json``) and :func:`summarize_report`, its short human-readable table.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

STAGES: tuple[str, ...] = ("discovered", "after_filter", "after_quarantine", "after_dedupe")


REVIEW_MAX_LISTED = 200


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
