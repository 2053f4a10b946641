"""Scoring models on external sources, and reading those scores back (compare, report)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrflow.compare.rows import external_estimates
from cxrflow.config import EvaluateParams
from cxrflow.external import external_rows, external_sources, flat_external, score_external
from cxrflow.steps.evaluate import format_external

CLASSES = ["normal", "bacterial", "covid"]
EP = EvaluateParams(bootstrap_samples=200)


def _manifest() -> pd.DataFrame:
    rows = [
        ("a1", "kermany", "normal", "study"),
        ("a2", "cohen", "covid", "study"),
        ("b3", "site_b", "covid", "external"),
        ("b1", "site_b", "normal", "external"),
        ("b2", "site_b", "viral", "external"),
        ("c1", "site_c", "bacterial", "external"),
        ("k9", "cohen", "normal", "control"),
    ]
    return pd.DataFrame(
        [{"image_id": i, "source": s, "label": lab, "cohort": c, "patient_id": f"{s}:{i}"}
         for i, s, lab, c in rows]
    )  # fmt: skip


def test_external_rows_per_source_with_what_a_model_cannot_score() -> None:
    m = _manifest()
    assert external_sources(m) == ["site_b", "site_c"]
    assert external_sources(m.drop(columns=["cohort"])) == []
    b, c = external_rows(m, CLASSES)
    assert b.source == "site_b" and list(b.rows["image_id"]) == ["b1", "b3"]  # sorted by id
    assert b.skipped == {"viral": 1}  # counted, not hidden
    assert list(c.rows["label"]) == ["bacterial"] and c.skipped == {}


def _scores(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    proba = np.full((len(y), 3), 0.1)
    proba[np.arange(len(y)), pred] = 0.8
    return proba


def test_score_external_with_patient_intervals_and_the_covid_false_alarm_rate() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    pred = np.array([0, 2, 2, 0, 1, 1, 2, 1, 2, 2])  # 3 of 8 non-COVID called COVID-19
    groups = np.array([f"p{i // 2}" for i in range(10)])
    fig = score_external(_scores(y, pred), y, groups, CLASSES, EP)
    assert (fig["n"], fig["n_patients"]) == (10, 5)
    assert fig["accuracy"] == pytest.approx(0.7)
    assert fig["accuracy_ci"]["ci_low"] <= 0.7 <= fig["accuracy_ci"]["ci_high"]
    rate = fig["non_covid_called_covid"]
    assert rate["value"] == pytest.approx(3 / 8) and rate["n"] == 8
    assert rate["ci_low"] < rate["value"] < rate["ci_high"]
    assert fig["predictions"] == pred.tolist()
    assert score_external(np.zeros((0, 3)), np.array([]), [], CLASSES, EP) == {
        "n": 0,
        "n_patients": 0,
    }
    # a model without a COVID-19 class: the false-alarm rate is undefined, not 0
    two = score_external(
        _scores(y[:8] % 2, pred[:8] % 2)[:, :2], y[:8] % 2, groups[:8], ["a", "b"], EP
    )
    assert two["non_covid_called_covid"]["value"] is None


def test_external_figures_go_to_mlflow_and_come_back_in_compare() -> None:
    y = np.array([0, 1, 2, 2, 0, 1])
    fig = score_external(_scores(y, y), y, [f"p{i}" for i in range(6)], CLASSES, EP)
    flat = flat_external({"site_b_2": fig})
    assert flat["external_site_b_2_accuracy"] == 1.0
    assert flat["external_site_b_2_n"] == 6.0
    assert "external_site_b_2_f1_macro_ci_low" in flat
    back = external_estimates({**flat, "test_accuracy": 0.5})
    assert set(back) == {"site_b_2"}  # a source name with underscores and digits survives
    assert back["site_b_2"]["accuracy"].value == 1.0
    assert back["site_b_2"]["f1_macro"].has_interval
    assert back["site_b_2"]["n"].value == 6.0
    assert back["site_b_2"]["non_covid_called_covid"].value == 0.0


def test_the_evaluate_summary_shows_every_model_on_every_external_source() -> None:
    y = np.array([0, 1, 2, 2])
    fig = score_external(_scores(y, y), y, ["p1", "p2", "p3", "p3"], CLASSES, EP)
    results = {"model_1": {"external": {"site_b": {**fig, "skipped": {"viral": 2}}}}}
    text = format_external(results)
    assert "model_1" in text and "site_b" in text and "4 (3)" in text and "2 viral" in text
    assert format_external({"model_1": {}}) == ""
