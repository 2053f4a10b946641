"""Promotion that cannot be fooled: the unaudited override, the paired comparison with the
champion on the same images, and the rollback stack."""

from __future__ import annotations

import numpy as np
import pytest

from cxrflow.promotion import AliasMove, label_metric, paired_difference, previous_champion
from cxrflow.register import CHALLENGER, CHAMPION, Champion, ChampionComparison, decide_promotion
from cxrflow.stats import metric_summary

CANDS = ("model_1", "model_2")


def _decide(scores, audit, champion=None, margin=0.0, allow=False):
    return decide_promotion(
        scores,
        CANDS,
        audit,
        champion,
        metric="f1_macro",
        margin=margin,
        block_on_audit=True,
        allow_unaudited=allow,
    )


def test_unaudited_is_eligible_only_by_the_recorded_override() -> None:
    d = _decide({"model_1": 0.9}, {})
    assert (d.role, d.audit_override) == (CHALLENGER, False)
    assert d.reason.startswith("not audited")
    assert "register.allow_unaudited" in d.reason
    d = _decide({"model_1": 0.9}, {}, allow=True)
    assert (d.role, d.audit_override) == (CHAMPION, True)
    assert "eligible by override (register.allow_unaudited)" in d.reason


def test_an_audited_pass_beats_a_higher_unaudited_one() -> None:
    d = _decide({"model_1": 0.7, "model_2": 0.9}, {"model_1": True})
    assert (d.model_key, d.role) == ("model_1", CHAMPION)
    assert "model_2 scored higher but was not audited" in d.reason
    assert not d.audit_override


def test_mixed_failed_and_unaudited_say_both() -> None:
    d = _decide({"model_1": 0.7, "model_2": 0.9}, {"model_1": False})
    assert d.role == CHALLENGER
    assert "model_1 failed" in d.reason and "model_2 not audited" in d.reason


def _cmp(low, diff=0.05, high=0.1):
    return ChampionComparison(3, diff, low, high, 0.01, 0.95, 120)


@pytest.mark.parametrize(
    ("low", "margin", "role"),
    [
        (0.01, 0.0, CHAMPION),  # the whole interval above zero
        (-0.01, 0.0, CHALLENGER),  # a higher point estimate is not enough
        (0.01, 0.02, CHALLENGER),  # above zero, not above the margin
        (0.0, 0.0, CHALLENGER),  # a tie is not a win
    ],
)
def test_promotion_needs_the_lower_bound_above_the_margin(low, margin, role) -> None:
    champion = Champion(3, {"model_1": _cmp(low)})
    d = _decide({"model_1": 0.9}, {"model_1": True}, champion, margin)
    assert d.role == role, d.reason
    assert d.comparison == _cmp(low)
    assert "version 3" in d.reason and "McNemar p=0.01" in d.reason and "CI" in d.reason


def test_a_champion_that_cannot_be_compared_is_no_comparable_champion() -> None:
    champion = Champion(3, {}, {"model_1": "it was trained on dataset_2, model_1 on dataset_1"})
    d = _decide({"model_1": 0.5}, {"model_1": True}, champion)
    assert d.role == CHAMPION and d.comparison is None
    assert "no comparable champion (version 3: it was trained on dataset_2" in d.reason


def test_label_metric_matches_the_evaluation() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    proba = rng.dirichlet(np.ones(3), 200)
    groups = np.arange(200) // 2
    s = metric_summary(
        y, proba, ["a", "b", "c"], groups, n_boot=0, confidence=0.95, seed=0, bins=10
    )
    pred = proba.argmax(axis=1)
    for m in ("accuracy", "precision_macro", "recall_macro", "f1_macro"):
        assert label_metric(y, pred, 3, m) == pytest.approx(s[m]["value"], abs=1e-12), m
    with pytest.raises(ValueError, match="label metric"):
        label_metric(y, pred, 3, "roc_auc_macro")


def test_paired_difference_is_paired() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    groups = np.arange(300) // 3
    better = np.where(rng.random(300) < 0.9, y, (y + 1) % 3)
    worse = np.where(rng.random(300) < 0.6, y, (y + 1) % 3)
    kw = {"n_boot": 300, "confidence": 0.95, "seed": 2020}
    d = paired_difference(y, better, worse, groups, 3, "accuracy", **kw)
    assert d["difference"] == pytest.approx(np.mean(better == y) - np.mean(worse == y))
    assert 0 < d["ci_low"] < d["difference"] < d["ci_high"]
    same = paired_difference(y, better, better, groups, 3, "f1_macro", **kw)
    assert same["difference"] == same["ci_low"] == same["ci_high"] == 0.0
    assert d == paired_difference(y, better, worse, groups, 3, "accuracy", **kw)  # seeded
    with pytest.raises(ValueError, match="same images"):
        paired_difference(y, better[:-1], worse, groups, 3, "accuracy", **kw)


def _move(alias, to, action="promote", frm=None):
    return AliasMove("t", alias, frm, to, action, "", "me")


def test_rollback_walks_back_the_champions() -> None:
    moves = [
        _move("champion", 1, "register"),
        _move("challenger", 2, "register"),
        _move("champion", 3, "register", 1),
        _move("champion", 4, "promote", 3),
    ]
    assert previous_champion(moves, "champion", 4) == 3
    moves.append(_move("champion", 3, "rollback", 4))
    assert previous_champion(moves, "champion", 3) == 1
    moves.append(_move("champion", 1, "rollback", 3))
    assert previous_champion(moves, "champion", 1) is None
    assert previous_champion([], "champion", 5) is None
    # moved elsewhere by hand (outside cxrflow): back to the last recorded champion
    assert previous_champion(moves[:4], "champion", 9) == 4
