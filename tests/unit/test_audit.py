"""The shortcut audit: its pieces on made-up numbers, and on models trained on phantoms.

The slow tests train the paper's small CNN on two phantoms (32 px, a few seconds an epoch):
one with a planted shortcut (a white square in the corner of every COVID-19 image), which the
audit must flag, and one with no shortcut at all (``source_shortcut=False``: age group, view
and annotations independent of the source), which it must pass. Both are seeded end to end
(phantom, split, ``train.set_seed``, the audit's bootstrap and probe folds).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cxrflow.audit import (
    audit_verdict,
    lung_mask,
    mask_images,
    plot_mask,
    rate_with_ci,
    source_probe,
    stratified_auc,
)
from cxrflow.config import AuditParams

PARAMS = AuditParams()

# ------------------------------------------------------------------------------ the mask


@pytest.mark.parametrize(
    ("size", "fraction", "side", "start"),
    [(10, 0.5, 5, 2), (224, 0.7, 157, 33), (32, 0.7, 22, 5), (7, 0.01, 1, 3), (5, 0.99, 5, 0)],
)
def test_lung_mask_is_a_centred_box(size: int, fraction: float, side: int, start: int) -> None:
    mask = lung_mask(size, fraction)
    assert mask.shape == (size, size) and mask.dtype == bool
    rows, cols = np.nonzero(mask)
    assert mask.sum() == side * side
    assert (rows.min(), cols.min(), rows.max(), cols.max()) == (
        start,
        start,
        start + side - 1,
        start + side - 1,
    )
    assert np.array_equal(mask, mask.T) and np.array_equal(mask, mask[::-1, ::-1]) == (
        (size - side) % 2 == 0
    )


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_lung_mask_rejects_a_fraction_outside_0_1(fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        lung_mask(32, fraction)


def test_mask_images_fills_the_box_with_each_images_mean_grey() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(3, 20, 20, 1), dtype=np.uint8)
    out = mask_images(x, 0.5)
    mask = lung_mask(20, 0.5)
    assert out.dtype == np.uint8 and out.shape == x.shape
    for img, orig in zip(out, x, strict=True):
        assert set(np.unique(img[..., 0][mask])) == {round(orig.mean())}
        assert np.array_equal(img[..., 0][~mask], orig[..., 0][~mask])
    assert not np.array_equal(out, x) and x.max() > 0  # the input is left alone
    assert mask_images(x[..., 0], 0.5).shape == (3, 20, 20)
    with pytest.raises(ValueError, match="shape"):
        mask_images(np.zeros((2, 20, 10), np.uint8), 0.5)


def test_plot_mask_writes_a_png(tmp_path: Path) -> None:
    img = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))[..., None]
    path = plot_mask(img, 0.7, tmp_path / "report" / "mask.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 100


# ----------------------------------------------------------------------------- statistics


def test_stratified_auc_compares_within_strata_only() -> None:
    scores = np.array([0.9, 0.8, 0.2, 0.1, 0.7, 0.6, 0.4, 0.3])
    positive = np.array([1, 0, 1, 0, 1, 1, 0, 0], dtype=bool)
    strata = np.array(["a", "a", "b", "b", "c", "c", "c", "c"])
    # within each stratum every positive is above every negative; pooled it is not
    assert stratified_auc(scores, positive, strata) == 1.0
    assert stratified_auc(scores, positive) == pytest.approx(11 / 16)
    assert stratified_auc(np.ones(4), np.array([1, 0, 1, 0], bool)) == 0.5  # ties count half
    assert stratified_auc(scores[:2], positive[:2], np.array(["a", "b"])) is None


def test_rate_ci_resamples_patients_not_images() -> None:
    rng = np.random.default_rng(0)
    hits = np.array([1] * 10 + [0] * 10, dtype=bool)
    by_image = rate_with_ci(hits, [f"p{i}" for i in range(20)], 2000, rng)
    by_patient = rate_with_ci(hits, ["a"] * 10 + ["b"] * 10, 2000, rng)  # two patients
    assert by_image["value"] == by_patient["value"] == 0.5
    assert 0.25 < by_image["ci_low"] < 0.5 < by_image["ci_high"] < 0.75
    assert (by_patient["ci_low"], by_patient["ci_high"]) == (0.0, 1.0)
    assert rate_with_ci(np.zeros(0, bool), [], 10, rng)["value"] is None


def test_source_probe_sees_a_source_direction_only_where_there_is_one() -> None:
    rng = np.random.default_rng(1)
    n = 120
    sources = np.array(["kermany"] * 80 + ["cohen"] * 40)
    labels = np.array(["normal", "bacterial"] * 60)
    groups = [f"{s}:{i // 2}" for i, s in enumerate(sources)]
    label_axis = (labels == "bacterial")[:, None] * np.eye(8)[0] * 3.0
    clean = rng.normal(size=(n, 8)) + label_axis
    leaky = clean + (sources == "cohen")[:, None] * np.eye(8)[1] * 4.0
    kw: dict[str, Any] = {"sources": sources, "labels": labels, "groups": groups, "seed": 0}
    low = source_probe(clean, n_boot=200, rng=rng, **kw)
    high = source_probe(leaky, n_boot=200, rng=rng, **kw)
    assert low["status"] == high["status"] == "ok"
    assert low["labels"] == ["bacterial", "normal"]
    assert low["n_by_source"] == {"cohen": 40, "kermany": 80} and low["n_smallest_source"] == 40
    assert low["auc"]["value"] < 0.7 < 0.95 < high["auc"]["value"]
    assert high["auc"]["ci_low"] <= high["auc"]["value"] <= high["auc"]["ci_high"]
    # a label from one source only (covid) is left out of the label-matched probe
    only = source_probe(
        leaky, sources=sources, labels=np.where(sources == "cohen", "covid", labels),
        groups=groups, seed=0, n_boot=50, rng=rng,
    )  # fmt: skip
    assert only["status"] == "inconclusive" and only["labels"] == []
    assert only["auc_pooled"] is not None and only["auc_pooled"] > 0.95  # source == label


# ------------------------------------------------------------------------------ verdict


def est(value: float | None, lo: float | None = None, hi: float | None = None) -> dict:
    return {"value": value, "ci_low": lo, "ci_high": hi}


def result(
    *,
    rate: float | None = 0.1,
    n: int = 20,
    status: str = "ok",
    auc: float | None = 0.6,
    smallest: int = 20,
    masked: float | None = 0.4,
) -> dict[str, Any]:
    return {
        "controls": {
            "status": status,
            "n": n,
            "covid_rate": est(rate, 0.0, 0.3),
            "basis_labels": ["bacterial", "normal"],
        },
        "source_probe": {
            "auc": est(auc, 0.5, 0.7),
            "n_smallest_source": smallest,
            "labels": ["bacterial", "normal"],
        },
        "ablation": {
            "chance": 1 / 3,
            "mask_fraction": 0.7,
            "masked": {"balanced_accuracy": est(masked, 0.3, 0.5)},
            "unmasked": {"balanced_accuracy": est(0.9)},
        },
    }


@pytest.mark.parametrize(
    ("kw", "passed", "outcomes"),
    [
        ({}, True, ("pass", "pass", "pass")),
        ({"rate": 0.9375}, False, ("FAIL", "pass", "pass")),
        ({"rate": 0.25}, True, ("pass", "pass", "pass")),  # at the threshold: within
        ({"auc": 0.97}, False, ("pass", "FAIL", "pass")),
        ({"masked": 0.49}, False, ("pass", "pass", "FAIL")),
        ({"masked": 0.48}, True, ("pass", "pass", "pass")),  # chance + 0.15 = 0.4833
        ({"rate": 0.9, "n": 4}, True, ("inconclusive", "pass", "pass")),
        ({"rate": None, "n": 0}, True, ("inconclusive", "pass", "pass")),
        ({"auc": 0.99, "smallest": 4}, True, ("pass", "inconclusive", "pass")),
        ({"auc": None}, True, ("pass", "inconclusive", "pass")),
        ({"status": "not_applicable", "rate": None}, True, ("not applicable", "pass", "pass")),
        ({"masked": None}, True, ("pass", "pass", "inconclusive")),
        ({"rate": 0.9, "auc": 0.99, "masked": 0.9}, False, ("FAIL", "FAIL", "FAIL")),
    ],
)
def test_audit_verdict_decision_table(
    kw: dict[str, Any], passed: bool, outcomes: tuple[str, str, str]
) -> None:
    ok, reasons = audit_verdict(result(**kw), PARAMS)
    assert ok is passed
    assert [r.split(":")[0] for r in reasons] == ["controls", "source_probe", "ablation"]
    assert tuple(r.split(": ")[1] for r in reasons) == outcomes


def test_reasons_name_value_ci_and_threshold() -> None:
    _, reasons = audit_verdict(result(rate=0.9375, auc=0.97, masked=0.6), PARAMS)
    controls, probe, ablation = reasons
    assert "93.8% of 20" in controls and "95% CI 0.0%-30.0%" in controls
    assert "max_control_covid_rate 25.0%" in controls
    assert "AUC 0.970" in probe and "95% CI 0.500-0.700" in probe and "0.900" in probe
    assert "60.0%" in ablation and "95% CI 30.0%-50.0%" in ablation and "48.3%" in ablation
    strict = AuditParams(min_controls=50, max_control_covid_rate=0.95)
    ok, again = audit_verdict(result(rate=0.9375, auc=0.5, masked=0.3), strict)
    assert ok and again[0].startswith("controls: inconclusive: 20 control images")
    assert again[1].startswith("source_probe: inconclusive")


# ---------------------------------------------------------------- audit_model, untrained


@pytest.mark.slow  # TensorFlow import and two small models: ~10-30 s on a shared CPU
def test_audit_model_returns_json_with_every_test() -> None:
    """An untrained model on random images: the result's shape, not its verdict."""
    from cxrflow.audit import audit_model
    from cxrflow.models import build_model

    rng = np.random.default_rng(0)
    model = build_model("small_cnn", 32, 3)
    x = rng.integers(0, 256, size=(24, 32, 32, 1), dtype=np.uint8)
    y = np.repeat([0, 1, 2], 8)
    findings = ["Streptococcus"] * 4 + ["No Finding"] * 3 + ["SARS"] * 3
    out = audit_model(
        model,
        x_test=x,
        y_test=y,
        groups_test=[f"p{i // 2}" for i in range(24)],
        sources_test=["cohen" if i == 2 else "kermany" for i in y],
        x_controls=x[:10],
        findings_controls=findings,
        groups_controls=[f"c{i // 2}" for i in range(10)],
        labels_controls=["bacterial"] * 4 + ["normal"] * 3 + ["viral"] * 3,
        sources_controls=["cohen"] * 10,
        classes=("normal", "bacterial", "covid"),
        params=PARAMS,
        seed=3,
        n_boot=50,
    )
    assert json.loads(json.dumps(out)) == out
    assert set(out) >= {"controls", "source_probe", "ablation", "passed", "reasons"}
    c = out["controls"]
    assert (c["n"], c["n_all"], c["basis_labels"]) == (7, 10, ["bacterial", "normal"])
    assert set(c["by_finding"]) == {"Streptococcus", "No Finding", "SARS"}
    assert c["by_finding"]["SARS"]["label"] == "viral"
    assert out["source_probe"]["labels"] == ["bacterial", "normal"]
    assert out["source_probe"]["n_by_source"] == {"cohen": 7, "kermany": 16}
    assert out["ablation"]["chance"] == pytest.approx(1 / 3, abs=1e-4)
    assert out["passed"] == audit_verdict(out, PARAMS)[0] and len(out["reasons"]) == 3
    # a Dataset_0 model has no covid class: the control test does not apply
    d0 = audit_model(
        build_model("small_cnn", 32, 3),
        x_test=x, y_test=y, groups_test=[f"p{i}" for i in range(24)],
        sources_test=["kermany"] * 24, x_controls=x[:10], findings_controls=findings,
        groups_controls=[f"c{i}" for i in range(10)], classes=("normal", "bacterial", "viral"),
        params=PARAMS, seed=3, n_boot=50,
    )  # fmt: skip
    assert d0["controls"]["status"] == "not_applicable"
    assert d0["reasons"][0] == "controls: not applicable: the model has no covid class"


# ------------------------------------------------------------- trained on phantoms (slow)

IMAGE_SIZE = 32
"""32 px: the small CNN learns the phantom's lung signs in ~40 epochs of a few seconds."""


def _train_on_phantom(
    tmp: Path, *, source_shortcut: bool, marker: str | None, patients: int, epochs: int
) -> dict:
    """Phantom -> ingest -> split -> small CNN -> audit, seeded end to end."""
    import time

    from cxrflow.audit import audit_model, control_arrays
    from cxrflow.config import (
        DATASETS,
        IngestParams,
        ModelSpec,
        SplitParams,
        SynthParams,
        TrainParams,
    )
    from cxrflow.data.ingest import ingest
    from cxrflow.data.manifest import read_manifest
    from cxrflow.data.split import split_manifest
    from cxrflow.data.synthetic import generate_phantom
    from cxrflow.datasets import load_arrays
    from cxrflow.train import train_model

    t0 = time.perf_counter()
    synth = SynthParams(
        patients_per_class=patients,
        images_per_patient_max=2,
        min_side=64,
        max_side=80,
        control_fraction=0.3,
        source_shortcut=source_shortcut,
        planted_marker=marker,
        seed=1,
    )
    phantom = generate_phantom(tmp / "raw", synth)
    ingest(tmp / "ds", IngestParams(workers=1), phantom.sources, origin="phantom")
    manifest = read_manifest(tmp / "ds")
    every = {"normal": 10_000, "bacterial": 10_000, "covid": 10_000}
    split = SplitParams(dataset_1_counts=every, test_fraction=0.3, val_fraction=0.15, seed=3)
    table = split_manifest(manifest, split)[0]["dataset_1"]
    classes = DATASETS["dataset_1"]
    x_tr, y_tr, x_va, y_va, x_te, y_te = (
        a
        for s in ("train", "val", "test")
        for a in load_arrays(tmp / "ds", table, s, classes, IMAGE_SIZE)
    )
    train = TrainParams(
        image_size=IMAGE_SIZE,
        batch_size=32,
        epochs=epochs,
        patience=epochs,
        reduce_lr_patience=epochs,
        learning_rate=0.002,
        seed=1,
    )
    spec = ModelSpec(dataset="dataset_1", architecture="small_cnn")
    model = train_model(spec, train, classes, (x_tr, y_tr, x_va, y_va), verbose=0).model
    test = table[table["split"] == "test"]
    t1 = time.perf_counter()
    out = audit_model(
        model,
        x_test=x_te,
        y_test=y_te,
        groups_test=test["patient_id"].tolist(),
        sources_test=test["source"].tolist(),
        classes=classes,
        params=PARAMS,
        seed=7,
        n_boot=1000,
        **control_arrays(tmp / "ds", manifest, IMAGE_SIZE, split_table=table),
    )
    print(json.dumps(out["reasons"], indent=1))
    print(f"phantom+train {t1 - t0:.1f} s, audit {time.perf_counter() - t1:.1f} s")
    return out


@pytest.mark.slow
def test_audit_flags_a_planted_shortcut(tmp_path: Path) -> None:
    """A white corner square on every COVID-19 image: the model reads it through the mask."""
    out = _train_on_phantom(tmp_path, source_shortcut=False, marker="covid", patients=60, epochs=20)
    assert out["passed"] is False
    ab = out["ablation"]
    assert ab["masked"]["balanced_accuracy"]["ci_low"] > ab["chance"] + 0.15
    assert out["reasons"][2].startswith("ablation: FAIL")


@pytest.mark.slow
def test_audit_passes_a_model_without_a_shortcut(tmp_path: Path) -> None:
    """No source confound, no marker: the model must learn the lungs, and the audit pass."""
    # it takes ~400 training images and 40 epochs for the small CNN to learn the phantom's
    # lung signs well (balanced accuracy 0.7-0.9 over seeds); a half-trained model calls
    # adult bacterial controls COVID-19 by confusion, which the audit rightly fails
    out = _train_on_phantom(tmp_path, source_shortcut=False, marker=None, patients=150, epochs=40)
    assert out["ablation"]["unmasked"]["balanced_accuracy"]["value"] > 0.55  # it learnt
    assert out["passed"] is True, out["reasons"]
    assert out["controls"]["n"] >= PARAMS.min_controls
    assert all(r.split(": ")[1] == "pass" for r in out["reasons"])


@pytest.mark.slow
def test_audit_flags_the_source_shortcut_of_the_default_phantom(tmp_path: Path) -> None:
    """The phantom as shipped: children for Kermany, adults for Cohen, as in the real data. The
    model calls adult "No Finding" controls COVID-19 and its features give the source away."""
    out = _train_on_phantom(tmp_path, source_shortcut=True, marker=None, patients=60, epochs=30)
    assert out["passed"] is False
    failed = {r.split(":")[0] for r in out["reasons"] if r.split(": ")[1] == "FAIL"}
    assert failed >= {"controls", "source_probe"}, out["reasons"]
