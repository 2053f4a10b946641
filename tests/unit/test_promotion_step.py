"""The register step's side of the paired comparison: the champion predicts this run's test
images (only when its classes and dataset match), and the final table shows the comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrflow import names
from cxrflow.artifacts import ModelEvaluation
from cxrflow.config import load_params
from cxrflow.steps import evaluate as evaluate_step
from cxrflow.steps.evaluate import TestSplit as Split
from cxrflow.steps.register import compare_with_champion, format_promotion

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["covid", "normal", "pneumonia"]
RNG = np.random.default_rng(3)
Y = RNG.integers(0, 3, 90)


class _Champion:
    """Right on 60 % of the images."""

    def predict(self, x, verbose=0):
        pred = np.where(np.arange(len(x)) % 5 < 3, Y, (Y + 1) % 3)
        return np.eye(3)[pred]


class _Tracking:
    def __init__(self) -> None:
        self.loaded: list[str] = []

    def load_model(self, uri):
        self.loaded.append(uri)
        return _Champion(), {"classes": CLASSES, "image_size": 32}


def _result(key, dataset="dataset_1", classes=CLASSES, right=0.95):
    pred = np.where(RNG.random(len(Y)) < right, Y, (Y + 1) % 3)
    return ModelEvaluation(
        dataset=dataset,
        accuracy=float(np.mean(pred == Y)),
        f1_macro=0.5,
        model_key=key,
        classes=classes,
        predictions=pred.tolist(),
    )


def test_the_champion_is_compared_on_the_same_images(monkeypatch) -> None:
    params = load_params(ROOT / "params.yaml", "smoke", ["evaluate.bootstrap_samples=200"])
    asked = []

    def split(dataset_dir, splits_dir, dataset, classes, size):
        asked.append((dataset, size))
        return Split(np.zeros((len(Y), 1)), Y, np.arange(len(Y)) // 2, None, None)

    monkeypatch.setattr(evaluate_step, "load_test_split", split)
    tracking = _Tracking()
    current = {"version": 4, "tags": {names.TAG_DATASET: "dataset_1"}}
    results = {
        "model_1": _result("model_1"),
        "model_2": _result("model_2", classes=["a", "b", "c"]),
        "model_3": _result("model_3", dataset="dataset_2"),
    }
    champion = compare_with_champion(params, current, results, "d", "s", tracking)
    assert tracking.loaded == [f"models:/{params.register.model_name}/4"]
    assert asked == [("dataset_1", 32)]
    c = champion.comparisons["model_1"]
    assert c.champion_version == 4 and c.n_test == len(Y) and 0 < c.ci_low < c.difference
    assert c.p_value is not None and c.p_value < 0.01
    assert set(champion.comparisons) == {"model_1"}
    assert "classes" in champion.not_comparable["model_2"]
    assert "trained on dataset_1, model_3 on dataset_2" in champion.not_comparable["model_3"]


def test_the_final_table_shows_the_comparison() -> None:
    text = format_promotion(
        {
            "model_key": "model_1",
            "model_name": "m",
            "alias": "champion",
            "version": 5,
            "reason": "model_1 beats the champion",
            "metric": "f1_macro",
            "comparison": {
                "metric": "f1_macro",
                "champion_version": 4,
                "difference": 0.1234,
                "ci_low": 0.05,
                "ci_high": 0.2,
                "p_value": 0.0012,
                "confidence": 0.95,
                "n_test": 90,
            },
        }
    )
    assert "| f1_macro difference (candidate - champion) | +0.1234" in text
    assert "[+0.0500, +0.2000]" in text and "| McNemar p" in text and "0.0012" in text
