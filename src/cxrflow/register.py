"""Choosing and registering the champion model.

:func:`select_champion` and :func:`decide_promotion` are pure; the step only registers the
version and sets the alias (never the deprecated stages).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


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
NOT_AUDITED = "not audited"


@dataclass(frozen=True)
class ChampionComparison:
    """A candidate against the current champion on the same test images (paired, by patient).

    Attributes:
        champion_version: The champion's registered version.
        difference: Candidate minus champion on the promotion metric.
        ci_low: Lower bound of the paired patient-bootstrap interval of ``difference``.
        ci_high: Upper bound of that interval.
        p_value: McNemar's test of the two models' right/wrong answers (None: not computed).
        confidence: The interval's coverage, e.g. 0.95.
        n_test: Test images both models predicted.
    """

    champion_version: int | str
    difference: float
    ci_low: float
    ci_high: float
    p_value: float | None = None
    confidence: float = 0.95
    n_test: int = 0


@dataclass(frozen=True)
class Champion:
    """The current champion as the decision sees it: compared with each candidate, or not.

    Attributes:
        version: Its registered version.
        comparisons: ``model_key -> comparison`` on this run's test images.
        not_comparable: ``model_key -> why`` for a candidate it cannot be compared with (other
            classes or another dataset): such a candidate meets no comparable champion.
    """

    version: int | str
    comparisons: Mapping[str, ChampionComparison] = field(default_factory=dict)
    not_comparable: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PromotionDecision:
    """What the register step does with this run's best candidate.

    Attributes:
        model_key: The candidate registered (the best one that may be promoted, else the best).
        role: ``champion`` (the champion alias moves to it) or ``challenger``.
        reason: One sentence, logged as a tag and shown in the final table.
        audit_passed: Whether ``model_key`` passed the shortcut audit (None: not audited).
        eligible: The candidates the audit allowed to be promoted.
        comparison: ``model_key`` against the current champion (None: no comparable champion).
        audit_override: Whether ``model_key`` is eligible only through the recorded override
            (``register.allow_unaudited``).
    """

    model_key: str
    role: str
    reason: str
    audit_passed: bool | None
    eligible: tuple[str, ...]
    comparison: ChampionComparison | None = None
    audit_override: bool = False


# Paired differences are sums of floats: a candidate equal to the champion (the same model
# registered twice) must not win on rounding.
TIE_TOLERANCE = 5e-6


def _allowed(verdict: bool | None, block_on_audit: bool, allow_unaudited: bool) -> bool:
    if verdict is None:
        return allow_unaudited
    return verdict or not block_on_audit


def _no_eligible_reason(
    candidates: Sequence[str], scores: Mapping[str, float], audit_passed: Mapping[str, bool | None]
) -> str:
    failed = [k for k in candidates if k in scores and audit_passed.get(k) is False]
    unaudited = [k for k in candidates if k in scores and audit_passed.get(k) is None]
    parts = []
    if failed:
        parts.append(f"{', '.join(failed)} failed")
    if unaudited:
        parts.append(f"{', '.join(unaudited)} {NOT_AUDITED}")
    why = "; ".join(parts)
    if unaudited and not failed:
        head = f"{NOT_AUDITED}: no audit verdict for {', '.join(unaudited)}"
        hint = " (register.allow_unaudited: true makes an unaudited model eligible, recorded)"
        return head + hint
    return f"no candidate passed the shortcut audit ({why})"


def _interval(c: ChampionComparison, metric: str) -> str:
    p = "n/a" if c.p_value is None else f"{c.p_value:.3g}"
    return (
        f"{metric} difference {c.difference:+.4f} "
        f"[{100 * c.confidence:g}% CI {c.ci_low:+.4f}, {c.ci_high:+.4f}] against champion "
        f"version {c.champion_version} on the same {c.n_test} test images, McNemar p={p}"
    )


def decide_promotion(
    scores: Mapping[str, float],
    candidates: Sequence[str],
    audit_passed: Mapping[str, bool | None],
    champion: Champion | None,
    *,
    metric: str,
    margin: float,
    block_on_audit: bool,
    allow_unaudited: bool = False,
) -> PromotionDecision:
    """Decide which candidate is registered and whether it becomes champion (a pure function).

    Eligible candidates: those that passed the shortcut audit (or failed it, when the audit
    does not block), and those not audited only when ``allow_unaudited`` (the recorded
    override); a candidate without a verdict is otherwise "not audited" and at most challenger.
    The best eligible candidate on ``metric`` is promoted when there is no comparable champion,
    or when the lower bound of the paired bootstrap interval of (candidate - champion) on the
    same test images is above ``margin`` (by more than :data:`TIE_TOLERANCE`). Otherwise the
    best candidate is registered as challenger, with the reason.

    Args:
        scores: ``model_key -> metric value`` on the test split.
        candidates: Model keys that may be registered, in tie-break order.
        audit_passed: ``model_key -> verdict`` of the shortcut audit (None or absent: not
            audited).
        champion: The current champion and its comparisons (None: there is no champion).
        metric: The metric's name (for the reason).
        margin: How much the interval's lower bound must exceed.
        block_on_audit: Whether failing the audit rules a candidate out of promotion.
        allow_unaudited: The override that makes a candidate without a verdict eligible.

    Raises:
        ValueError: No candidate has a finite score.
    """
    best = select_champion({k: {metric: v} for k, v in scores.items()}, metric, candidates)
    eligible = tuple(
        k
        for k in candidates
        if k in scores
        and math.isfinite(float(scores[k]))
        and _allowed(audit_passed.get(k), block_on_audit, allow_unaudited)
    )
    if not eligible:
        return PromotionDecision(
            best,
            CHALLENGER,
            f"{_no_eligible_reason(candidates, scores, audit_passed)}; {best} is registered "
            "as challenger and the champion is unchanged",
            audit_passed.get(best),
            eligible,
        )
    pick = select_champion({k: {metric: scores[k]} for k in eligible}, metric, eligible)
    value = float(scores[pick])
    verdict = audit_passed.get(pick)
    override = verdict is None
    note = ""
    if pick != best:
        why = "failed the audit" if audit_passed.get(best) is False else f"was {NOT_AUDITED}"
        note = f" ({best} scored higher but {why})"
    if override:
        note += f"; {pick} was {NOT_AUDITED}: eligible by override (register.allow_unaudited)"

    def decided(role: str, reason: str, comparison: ChampionComparison | None = None) -> Any:
        return PromotionDecision(pick, role, reason, verdict, eligible, comparison, override)

    if champion is None:
        return decided(CHAMPION, f"{pick} is the first champion: {metric} {value:.4f}{note}")
    comparison = champion.comparisons.get(pick)
    if comparison is None:
        why = champion.not_comparable.get(pick, "it was not evaluated on this test split")
        return decided(
            CHAMPION,
            f"{pick} is champion: no comparable champion (version {champion.version}: {why}); "
            f"{metric} {value:.4f}{note}",
        )
    if comparison.ci_low - margin > TIE_TOLERANCE:
        reason = (
            f"{pick} beats the champion: {_interval(comparison, metric)}; the lower bound is "
            f"above the margin {margin:g}{note}"
        )
        return decided(CHAMPION, reason, comparison)
    reason = (
        f"{pick} does not beat the champion: {_interval(comparison, metric)}; the lower bound "
        f"is not above the margin {margin:g}{note}"
    )
    return decided(CHALLENGER, reason, comparison)
