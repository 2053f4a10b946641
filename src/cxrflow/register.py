"""Choosing and registering the champion model.

:func:`select_champion` is pure; the step only sets the alias (never the deprecated stages).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def select_champion(
    results: Mapping[str, Mapping[str, float]], metric: str, candidates: Sequence[str]
) -> str:
    """The candidate with the highest ``metric``; ties go to the earlier candidate.

    Args:
        results: ``model_key -> {metric: value}``.
        metric: e.g. ``f1_macro``.
        candidates: Model keys allowed to become champion, in tie-break order.

    Raises:
        ValueError: no candidate has a finite value of ``metric``.
    """
    best: str | None = None
    best_value = -math.inf
    for key in candidates:
        value = results.get(key, {}).get(metric)
        if value is None or not math.isfinite(float(value)):
            continue
        if float(value) > best_value:
            best, best_value = key, float(value)
    if best is None:
        raise ValueError(
            f"no candidate among {list(candidates)} has a finite {metric!r}; "
            f"results for {sorted(results)}"
        )
    return best
