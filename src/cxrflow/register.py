"""Choosing and registering the champion model.

:func:`select_champion` and :func:`decide_promotion` are pure; the step only registers the
version and sets the alias (never the deprecated stages).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


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


CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class PromotionDecision:
    """What the register step does with this run's best candidate.

    Attributes:
        model_key: The candidate registered (the best one that may be promoted, else the best).
        role: ``champion`` (the champion alias moves to it) or ``challenger``.
        reason: One sentence, logged as a tag and shown in the final table.
        audit_passed: Whether ``model_key`` passed the shortcut audit (None: not audited).
        eligible: The candidates the audit allowed to be promoted.
    """

    model_key: str
    role: str
    reason: str
    audit_passed: bool | None
    eligible: tuple[str, ...]


# The champion's score is read back from its version's tag, written to 6 decimals: a candidate
# that equals it beyond that precision is a tie, not a win.
TIE_TOLERANCE = 5e-6


def decide_promotion(
    scores: Mapping[str, float],
    candidates: Sequence[str],
    audit_passed: Mapping[str, bool | None],
    current_champion: float | None,
    *,
    metric: str,
    margin: float,
    block_on_audit: bool,
) -> PromotionDecision:
    """Decide which candidate is registered and whether it becomes champion (a pure function).

    The candidates the audit allows (all of them when the audit does not block, or for a
    candidate that was not audited, ``None``) compete on ``metric``; the best is promoted to
    champion only if there is no champion yet or it beats the current champion's value by more
    than ``margin`` (and more than :data:`TIE_TOLERANCE`, the precision the champion's value is
    stored with). Otherwise the best candidate is registered as challenger, with the reason.

    Args:
        scores: ``model_key -> metric value`` on the test split.
        candidates: Model keys that may be registered, in tie-break order.
        audit_passed: ``model_key -> verdict`` of the shortcut audit.
        current_champion: The current champion's value of ``metric`` (None: no champion).
        metric: The metric's name (for the reason).
        margin: How much a candidate must beat the champion by.
        block_on_audit: Whether failing the audit rules a candidate out of promotion.

    Raises:
        ValueError: No candidate has a finite score.
    """
    best = select_champion({k: {metric: v} for k, v in scores.items()}, metric, candidates)
    eligible = tuple(
        k
        for k in candidates
        if k in scores
        and math.isfinite(float(scores[k]))
        and (not block_on_audit or audit_passed.get(k) is not False)
    )
    if not eligible:
        failed = ", ".join(k for k in candidates if audit_passed.get(k) is False)
        return PromotionDecision(
            best,
            CHALLENGER,
            f"no candidate passed the shortcut audit ({failed} failed); {best} is registered "
            "as challenger and the champion is unchanged",
            audit_passed.get(best),
            eligible,
        )
    pick = select_champion({k: {metric: scores[k]} for k in eligible}, metric, eligible)
    value = float(scores[pick])
    note = f" ({best} scored higher but failed the audit)" if pick != best else ""
    if current_champion is None:
        reason = f"{pick} is the first champion: {metric} {value:.4f}{note}"
        return PromotionDecision(pick, CHAMPION, reason, audit_passed.get(pick), eligible)
    if value - current_champion - margin > TIE_TOLERANCE:
        reason = (
            f"{pick} beats the champion's {metric} {current_champion:.4f} by "
            f"{value - current_champion:.4f} (> margin {margin:g}){note}"
        )
        return PromotionDecision(pick, CHAMPION, reason, audit_passed.get(pick), eligible)
    reason = (
        f"{pick}'s {metric} {value:.4f} does not beat the champion's {current_champion:.4f} "
        f"by more than {margin:g}{note}"
    )
    return PromotionDecision(pick, CHALLENGER, reason, audit_passed.get(pick), eligible)
