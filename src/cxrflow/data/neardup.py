"""Near-duplicate search: which images are the same radiograph, exactly or after re-encoding.

Exact duplicates share a SHA-256. Near duplicates are harder: chest radiographs resemble each
other globally, and the 64-bit phash (signs of the 8x8 lowest DCT frequencies) cannot tell them
apart: on the real Kermany sample (5840 images)
226 pairs lie within Hamming distance 4; 34 are byte-identical copies, the other 192 are
*different* radiographs, all of distinct patients (10 of them within distance 2). Used alone at
distance 4 the phash would drop 79 distinct images and quarantine 153 more in 29 false label
conflicts (one chained group of 45). So a phash match only nominates a pair; it is confirmed
when the z-normalised 32x32 thumbnails (mean 0, std 1: brightness and contrast invariant) differ
by an RMSE of at most :data:`NEAR_DUPLICATE_MAX_RMSE`::

    near duplicate  <=>  d64(phash) <= k  and  rmse(z-thumbnails) <= 0.20,  k = phash_distance

Measured: JPEG re-encoding (quality 30-90), halving, squashing to 224x224, +8% brightness and
+10% contrast move a real radiograph (Kermany, Cohen, phantom) by d64 <= 4 and rmse <= 0.11;
distinct radiographs within d64 <= 8 are at rmse >= 0.245 (Kermany; phantom >= 0.28). The
256-bit phash is *not* a safe confirmation: it moved 22 bits between a Cohen image and its
re-encoded copy in the 2020-08 supplement, and far more for smooth, low-detail images. Crops and
burned-in annotations defeat global hashes: Cohen holds the same film cropped or annotated under
two patient ids at rmse 0.21-0.25, overlapping the distinct-image tail, so those are not
collapsed (precision first: a collapsed pair must be the same picture); pairs up to
:data:`REVIEW_MAX_RMSE` are listed in the report's ``near_duplicate_review`` for a person.

Candidate pairs come from multi-index hashing, never from all pairs: within distance k two
64-bit hashes agree exactly on at least one of k + 1 bit bands (pigeonhole), so only pairs
sharing a band value are compared; the work grows with those collisions, not with n^2. Groups
(:func:`find_duplicates`) are connected components of the exact and confirmed near pairs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cxrflow.data.images import THUMB_SIDE
from cxrflow.data.unionfind import UnionFind

if TYPE_CHECKING:
    import numpy as np

NEAR_DUPLICATE_MAX_RMSE = 0.20
"""Near-duplicate confirmation: RMSE of z-normalised 32x32 thumbnails (in image std units)."""
REVIEW_MAX_RMSE = 0.30
"""Phash-close pairs with thumbnail RMSE in (NEAR_DUPLICATE_MAX_RMSE, this] are listed for review."""
NEAR_DUPLICATE_RULE = (
    f"d64(phash) <= k (k = ingest.phash_distance) and "
    f"rmse(z-normalised 32x32 thumbnails) <= {NEAR_DUPLICATE_MAX_RMSE}"
)


def _popcount(x: np.ndarray) -> np.ndarray:
    import numpy as np

    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    as_bytes = x.astype(np.uint64).view(np.uint8).reshape(*x.shape, 8)  # pragma: no cover
    return np.unpackbits(as_bytes, axis=-1).sum(axis=-1).astype(np.int64)  # pragma: no cover


def _band_codes(h64: np.ndarray, n_bands: int) -> list[np.ndarray]:
    """Split each 64-bit hash into ``n_bands`` contiguous bit bands; one int64 code per band."""
    import numpy as np

    edges = np.linspace(0, 64, n_bands + 1).round().astype(int)
    codes = []
    for a, b in itertools.pairwise(edges):
        width = int(b - a)
        mask = np.uint64((1 << width) - 1) if width < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
        codes.append(((h64 >> np.uint64(64 - b)) & mask).astype(np.int64))
    return codes


def _candidate_pairs(h64: np.ndarray, k: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Index pairs sharing one of ``k + 1`` bands of the 64-bit hash, batch by batch.

    Pigeonhole: hashes within Hamming distance ``k`` agree exactly on at least one of ``k + 1``
    disjoint bands. Sorting by band code puts such pairs in contiguous runs; the loop over the
    offset ``t`` only keeps positions whose run continues, so the total work is the number of
    colliding pairs, and each batch holds at most ``n`` pairs.
    """
    import numpy as np

    n = h64.shape[0]
    for code in _band_codes(h64, k + 1):
        order = np.argsort(code, kind="stable")
        skey = code[order]
        t = 1
        active = np.flatnonzero(skey[:-1] == skey[1:])
        while active.size:
            yield order[active], order[active + t]
            t += 1
            active = active[active + t < n]
            active = active[skey[active] == skey[active + t]]


def _thumb_rmse(thumbs: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """RMSE between z-normalised thumbnails (brightness and contrast invariant), batched."""
    import numpy as np

    out = np.empty(i.shape[0], dtype=np.float64)
    for a in range(0, i.shape[0], 4096):
        x = thumbs[i[a : a + 4096]].astype(np.float32)
        y = thumbs[j[a : a + 4096]].astype(np.float32)
        for arr in (x, y):
            arr -= arr.mean(axis=1, keepdims=True)
            arr /= np.maximum(arr.std(axis=1, keepdims=True), 1e-6)
        out[a : a + 4096] = np.sqrt(((x - y) ** 2).mean(axis=1))
    return out


def phash_close_pairs(
    phash64: Sequence[str], thumbs: np.ndarray, max_distance: int
) -> list[tuple[int, int, int, float]]:
    """All pairs ``(i, j, d64, rmse)``, ``i < j``, sorted, whose phashes differ in <= k bits.

    Candidates come from multi-index hashing, so the cost grows with the number of band
    collisions, not with n^2; ``rmse`` is the thumbnail distance used to confirm them.

    Args:
        phash64: 16-hex-digit hashes.
        thumbs: ``(n, THUMB_SIDE**2)`` uint8 thumbnails, same order.
        max_distance: ``k``, the 64-bit Hamming threshold.
    """
    import numpy as np

    n = len(phash64)
    if n < 2:
        return []
    h64 = np.array([int(h, 16) for h in phash64], dtype=np.uint64)
    close_i: list[np.ndarray] = []
    close_j: list[np.ndarray] = []
    for i, j in _candidate_pairs(h64, max_distance):
        ok = _popcount(h64[i] ^ h64[j]) <= max_distance
        if ok.any():
            close_i.append(np.minimum(i[ok], j[ok]))
            close_j.append(np.maximum(i[ok], j[ok]))
    if not close_i:
        return []
    # a pair can share several bands: keep it once
    pairs = np.unique(np.stack([np.concatenate(close_i), np.concatenate(close_j)], axis=1), axis=0)
    pi, pj = pairs[:, 0], pairs[:, 1]
    d64 = _popcount(h64[pi] ^ h64[pj])
    rmse = _thumb_rmse(thumbs, pi, pj)
    return [
        (int(a), int(b), int(d), float(r)) for a, b, d, r in zip(pi, pj, d64, rmse, strict=True)
    ]


def near_duplicate_pairs(
    phash64: Sequence[str],
    thumbs: np.ndarray,
    max_distance: int,
    max_rmse: float = NEAR_DUPLICATE_MAX_RMSE,
) -> list[tuple[int, int, int, float]]:
    """Near-duplicate pairs ``(i, j, d64, rmse)``, ``i < j``, sorted.

    A pair is a near duplicate when its 64-bit phashes differ in at most ``max_distance`` bits
    *and* its z-normalised 32x32 thumbnails differ by an RMSE of at most ``max_rmse`` (see the
    module docstring for why the phash alone is not enough).

    Args:
        phash64: 16-hex-digit hashes.
        thumbs: ``(n, THUMB_SIDE**2)`` uint8 thumbnails, same order.
        max_distance: ``k``, the 64-bit Hamming threshold.
        max_rmse: Thumbnail threshold, in standard deviations of the image.
    """
    return [p for p in phash_close_pairs(phash64, thumbs, max_distance) if p[3] <= max_rmse]


def hamming_hex(a: str, b: str) -> int:
    """Bits that differ between two hex-encoded hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


@dataclass(frozen=True)
class DuplicateSearch:
    """Result of :func:`find_duplicates`; indices refer to the inputs.

    Attributes:
        groups: Every group (singletons included), members ascending, groups ordered by their
            smallest member, which is also the group's representative.
        close: Phash-close pairs ``(i, j, d64, rmse)``, ``i < j``, sorted, between the first
            images of two distinct contents (see :func:`phash_close_pairs`).
        near: The pairs of ``close`` confirmed as near duplicates (``rmse <= max_rmse``).
        group_of: The representative of each input's group.
    """

    groups: list[list[int]]
    close: list[tuple[int, int, int, float]]
    near: list[tuple[int, int, int, float]]
    group_of: list[int]


def find_duplicates(
    sha256: Sequence[str],
    phash64: Sequence[str],
    thumbs: Sequence[bytes],
    max_distance: int,
    max_rmse: float = NEAR_DUPLICATE_MAX_RMSE,
) -> DuplicateSearch:
    """Group images that are the same radiograph: equal bytes, or near duplicates.

    Only the first image of each distinct SHA-256 enters the near-duplicate search (its copies
    join its group anyway).

    Args:
        sha256: Hex SHA-256 of each image's bytes.
        phash64: 16-hex-digit perceptual hash of each image.
        thumbs: ``THUMB_SIDE**2`` bytes of each image's grey thumbnail.
        max_distance: ``k``, the 64-bit Hamming threshold.
        max_rmse: Thumbnail threshold confirming a near duplicate.

    Returns:
        The groups and the pairs that made them.
    """
    import numpy as np

    n = len(sha256)
    uf: UnionFind[int] = UnionFind(range(n))
    first: dict[str, int] = {}
    for i, sha in enumerate(sha256):
        if sha in first:
            uf.union(first[sha], i)
        else:
            first[sha] = i
    reps = sorted(first.values())
    arr = np.zeros((len(reps), THUMB_SIDE * THUMB_SIDE), dtype=np.uint8)
    for row, i in enumerate(reps):
        arr[row] = np.frombuffer(thumbs[i], dtype=np.uint8)
    close = [
        (reps[a], reps[b], d, r)
        for a, b, d, r in phash_close_pairs([phash64[i] for i in reps], arr, max_distance)
    ]
    near = [p for p in close if p[3] <= max_rmse]
    for a, b, _, _ in near:
        uf.union(a, b)
    group_of = [uf.find(i) for i in range(n)]
    members: dict[int, list[int]] = {}
    for i, root in enumerate(group_of):
        members.setdefault(root, []).append(i)
    return DuplicateSearch(
        groups=[members[r] for r in sorted(members)], close=close, near=near, group_of=group_of
    )
