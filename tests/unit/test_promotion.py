"""The promotion decision table: audit, margin, first champion, ties."""

from __future__ import annotations

import math

import pytest

from cxrflow.register import CHALLENGER, CHAMPION, Champion, ChampionComparison, decide_promotion

CANDS = ("model_1", "model_2", "model_3")


def _champion(scores, value):
    """A champion scoring ``value``, compared with each candidate as a degenerate interval
    (lower bound = upper bound = the point difference): the table's margins and ties keep
    their meaning under the paired rule."""
    return Champion(
        7,
        {
            k: ChampionComparison(7, s - value, s - value, s - value, 0.5, 0.95, 100)
            for k, s in scores.items()
        },
    )


def _decide(scores, audit, champion, margin=0.0, block=True, allow_unaudited=False):
    return decide_promotion(
        scores,
        CANDS,
        audit,
        None if champion is None else _champion(scores, champion),
        metric="f1_macro",
        margin=margin,
        block_on_audit=block,
        allow_unaudited=allow_unaudited,
    )


@pytest.mark.parametrize(
    ("scores", "audit", "champion", "margin", "block", "key", "role", "words"),
    [
        # first champion: the best candidate that passed the audit
        (
            {"model_1": 0.8, "model_2": 0.9},
            {"model_1": True, "model_2": True},
            None,
            0.0,
            True,
            "model_2",
            CHAMPION,
            "first champion",
        ),
        # the best failed the audit: the runner-up that passed is promoted, and it says why
        (
            {"model_1": 0.8, "model_2": 0.9},
            {"model_1": True, "model_2": False},
            None,
            0.0,
            True,
            "model_1",
            CHAMPION,
            "model_2 scored higher but failed the audit",
        ),
        # nobody passed: the best is registered as challenger, champion unchanged
        (
            {"model_1": 0.8, "model_2": 0.9},
            {"model_1": False, "model_2": False},
            0.5,
            0.0,
            True,
            "model_2",
            CHALLENGER,
            "no candidate passed",
        ),
        (
            {"model_1": 0.8, "model_2": 0.9},
            {"model_1": False, "model_2": False},
            None,
            0.0,
            True,
            "model_2",
            CHALLENGER,
            "no candidate passed",
        ),
        # the audit does not block: the best is promoted although it failed
        (
            {"model_1": 0.8, "model_2": 0.9},
            {"model_1": True, "model_2": False},
            None,
            0.0,
            False,
            "model_2",
            CHAMPION,
            "first champion",
        ),
        # beats the champion by more than the margin
        ({"model_1": 0.80}, {"model_1": True}, 0.70, 0.05, True, "model_1", CHAMPION, "beats"),
        # beats it, but not by more than the margin
        (
            {"model_1": 0.74},
            {"model_1": True},
            0.70,
            0.05,
            True,
            "model_1",
            CHALLENGER,
            "does not beat",
        ),
        # equal is not better (margin 0)
        (
            {"model_1": 0.70},
            {"model_1": True},
            0.70,
            0.0,
            True,
            "model_1",
            CHALLENGER,
            "does not beat",
        ),
        # worse than the champion
        (
            {"model_1": 0.6, "model_3": 0.65},
            {"model_1": True, "model_3": True},
            0.7,
            0.0,
            True,
            "model_3",
            CHALLENGER,
            "does not beat",
        ),
        # equal to the champion's stored (6-decimal) value is a tie, not a win
        (
            {"model_1": 0.20512820512820512},
            {"model_1": True},
            0.205128,
            0.0,
            True,
            "model_1",
            CHALLENGER,
            "does not beat",
        ),
        # not audited (audit disabled): challenger, "not audited" (issue 16: was eligible)
        (
            {"model_1": 0.6},
            {"model_1": None},
            None,
            0.0,
            True,
            "model_1",
            CHALLENGER,
            "not audited",
        ),
        ({"model_1": 0.6}, {}, None, 0.0, False, "model_1", CHALLENGER, "not audited"),
        # a tie goes to the earlier candidate
        (
            {"model_1": 0.7, "model_2": 0.7},
            {"model_1": True, "model_2": True},
            None,
            0.0,
            True,
            "model_1",
            CHAMPION,
            "first champion",
        ),
        # NaN scores never win
        (
            {"model_1": math.nan, "model_2": 0.1},
            {"model_1": True, "model_2": True},
            None,
            0.0,
            True,
            "model_2",
            CHAMPION,
            "first champion",
        ),
    ],
)
def test_decision_table(scores, audit, champion, margin, block, key, role, words) -> None:
    d = _decide(scores, audit, champion, margin, block)
    assert (d.model_key, d.role) == (key, role), d.reason
    assert words in d.reason


def test_no_finite_candidate_is_an_error() -> None:
    with pytest.raises(ValueError, match="finite"):
        _decide({"model_1": math.nan}, {"model_1": True}, None)


def test_non_candidates_never_compete() -> None:
    d = _decide({"model_0": 0.99, "model_1": 0.5}, {"model_0": True, "model_1": True}, None)
    assert d.model_key == "model_1"
    assert d.eligible == ("model_1",)
