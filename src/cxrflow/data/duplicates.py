"""Ingest's dedupe stage: collapsing the duplicate groups
:func:`cxrflow.data.neardup.find_duplicates` finds among the inspected entries (which member
is kept, which are listed in ``duplicates.csv``, which label-conflicting groups are
quarantined), the look-alike pairs left for a person to review, and the patient ids linked by
a shared film.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cxrflow.data.ingest_entries import _CANDIDATE, _DUPLICATE, _KEPT, _QUARANTINED, _Entry
from cxrflow.data.neardup import (
    NEAR_DUPLICATE_MAX_RMSE,
    REVIEW_MAX_RMSE,
    find_duplicates,
    hamming_hex,
)
from cxrflow.data.sources import EXTERNAL, STUDY

CONFLICT_REASON = "duplicate_label_conflict"


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
        (
            "exact",
            "near",
            "groups",
            "cross_source",
            "conflict_groups",
            "max_near_distance",
            "external_seen_in_training",
        ),
        0,
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
        # study first, then controls, external last: a film both in training data and in an
        # external source is kept as training data and dropped from the external set
        members.sort(
            key=lambda e: (
                e.cohort != STUDY,
                e.cohort == EXTERNAL,
                rank[e.source],
                e.original_path,
            )
        )
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
            # an external film that is also a training film: not an external test of it
            stats["external_seen_in_training"] += int(
                e.cohort == EXTERNAL and keep.cohort != EXTERNAL
            )
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
