"""Source roles: what a configured source is for (train, external, control), and where a
run's params name its sources."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from cxrflow.config import IngestParams, SourceSettings, load_params
from cxrflow.data.sources import (
    CONTROL,
    EXTERNAL,
    STUDY,
    Candidate,
    Excluded,
    Rejected,
    Unreferenced,
    get_source,
)
from cxrflow.data.sources.roles import COVID_IN_CONTROL, RoledSource, apply_role, build_source

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params.yaml"


def _cand(label: str, cohort: str = STUDY, finding: str = "") -> Candidate:
    return Candidate(
        "site", "/x/a.png", "site/a.png", label, "site:p1", cohort=cohort, finding=finding
    )


def test_train_keeps_every_record_as_the_source_made_it() -> None:
    for rec in (_cand("covid"), _cand("normal", CONTROL, "No Finding")):
        assert apply_role(rec, "train") is rec


def test_external_moves_every_candidate_and_rejection_to_the_external_cohort() -> None:
    assert apply_role(_cand("covid"), "external").cohort == EXTERNAL
    assert apply_role(_cand("normal", CONTROL, "x"), "external").cohort == EXTERNAL
    rejected = Rejected("site", "site/b.png", "missing_file", "gone", "covid")
    assert apply_role(rejected, "external").cohort == EXTERNAL
    unreferenced = Unreferenced("site", "site/c.png")
    assert apply_role(unreferenced, "external") is unreferenced


def test_control_keeps_non_covid_images_as_controls_and_excludes_covid_with_a_reason() -> None:
    rec = apply_role(_cand("bacterial"), "control")
    assert isinstance(rec, Candidate)
    assert (rec.cohort, rec.finding) == (CONTROL, "bacterial")  # a control names its finding
    kept_finding = apply_role(_cand("normal", finding="No Finding"), "control")
    assert isinstance(kept_finding, Candidate) and kept_finding.finding == "No Finding"
    covid = apply_role(_cand("covid"), "control")
    assert isinstance(covid, Excluded)
    assert covid.reason == COVID_IN_CONTROL and covid.original_path == "site/a.png"


class _Fake:
    name, population, labels = "fake", "adult", ("normal", "covid")
    datasets: ClassVar[dict[str, tuple[str, ...]]] = {"dataset_1": ("normal", "covid")}

    def discover(self, root: object, params: object) -> Iterator[Candidate]:
        yield _cand("normal")
        yield _cand("covid")

    def count_labels(self, files: object, read_file: object, params: object) -> dict[str, int]:
        return {"normal": 1, "covid": 1}


def test_a_roled_source_reads_its_roots_as_the_role_says() -> None:
    src = RoledSource(_Fake(), "external")
    assert (src.name, src.population, src.labels) == ("fake", "adult", ("normal", "covid"))
    assert src.datasets == {}  # an external source contributes to no dataset
    cohorts = [r.cohort for r in src.discover("/r", IngestParams())]  # type: ignore[union-attr]
    assert cohorts == [EXTERNAL, EXTERNAL]
    assert src.count_labels([], lambda p: b"", IngestParams()) == {"normal": 1, "covid": 1}
    assert RoledSource(_Fake(), "train").datasets == _Fake.datasets


@pytest.fixture
def unregister() -> Iterator[None]:
    """Leave the source registry as it was (a csv source registers itself)."""
    from cxrflow.data.sources import registered_sources, unregister_source

    before = {s.name for s in registered_sources()}
    yield
    for s in registered_sources():
        if s.name not in before:
            unregister_source(s.name)


def test_build_source_registers_a_csv_source_under_its_name(unregister: None) -> None:
    src = build_source("site_b", SourceSettings(kind="csv", role="external"))
    assert isinstance(src, RoledSource) and src.role == "external"
    assert get_source("site_b").name == "site_b"
    assert build_source("kermany", SourceSettings()) is get_source("kermany")
    with pytest.raises(ValueError, match=r"data.source_settings.kermany_b.kind"):
        build_source("kermany_b", SourceSettings(kind="kermany"))


SOURCES = "data.sources={kermany: [k], cohen: [c], site_b: [s]}"


def test_params_name_roles_and_check_them() -> None:
    p = load_params(
        PARAMS,
        overrides=[SOURCES, "data.source_settings={site_b: {kind: csv, role: external}}"],
    )
    assert p.data.role_of("site_b") == "external" and p.data.role_of("kermany") == "train"
    assert p.data.external_sources == ["site_b"]
    with pytest.raises(ValueError, match=r"data.source_settings.nih.*names no source"):
        load_params(PARAMS, overrides=[SOURCES, "data.source_settings={nih: {role: control}}"])
    with pytest.raises(ValueError, match=r"no source has role train"):
        load_params(
            PARAMS,
            overrides=[
                "data.sources={s: [x]}",
                "data.source_settings={s: {kind: csv, role: external}}",
            ],
        )


def test_promotion_can_score_on_an_external_source_only() -> None:
    site = "data.source_settings={site_b: {kind: csv, role: external}}"
    p = load_params(PARAMS, overrides=[SOURCES, site, "register.score_on=site_b"])
    assert p.register.score_on == "site_b"
    with pytest.raises(ValueError, match=r"register.score_on.*'kermany' is neither test"):
        load_params(PARAMS, overrides=[SOURCES, site, "register.score_on=kermany"])
    phantom = load_params(
        PARAMS,
        "smoke",
        ["data.synth.external_site_patients=3", "register.score_on=phantom_site"],
    )
    assert phantom.data.external_sources == ["phantom_site"]


def _noise_png(path: Path, seed: int) -> None:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # smooth blobs, so that perceptual hashes of different seeds are far apart
    small = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(small).resize((96, 96), Image.Resampling.BICUBIC).save(path)


def test_an_external_film_that_is_also_training_data_is_dropped_from_the_external_set(
    tmp_path: Path, unregister: None
) -> None:
    """The same image in two sources: the training copy is kept, the external copy is listed
    as a duplicate and counted, and the external site's own images join its cohort."""
    import pandas as pd

    from cxrflow.data.ingest import ingest

    kermany = tmp_path / "kermany"
    train = kermany / "dataset" / "train"
    for i in range(3):
        _noise_png(train / "NORMAL" / f"IM-000{i}-0001.jpeg", i)
    site = tmp_path / "site_b"
    (site / "a").mkdir(parents=True)
    (site / "a" / "copy.png").write_bytes((train / "NORMAL" / "IM-0000-0001.jpeg").read_bytes())
    _noise_png(site / "b" / "own.png", 10)
    _noise_png(site / "b" / "own2.png", 11)
    (site / "labels.csv").write_text(
        "path,label,patient_id\na/copy.png,normal,MRN-1\nb/own.png,covid,MRN-2\n"
        "b/own2.png,normal,MRN-3\n"
    )
    ext = build_source("site_b", SourceSettings(kind="csv", role="external"))
    report = ingest(
        tmp_path / "out", IngestParams(), [("kermany", kermany), (ext, site)], copy_images=False
    )
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv", dtype=str, keep_default_na=False)
    assert sorted(manifest.loc[manifest["cohort"] == EXTERNAL, "original_path"]) == [
        "site_b/b/own.png",
        "site_b/b/own2.png",
    ]
    assert (manifest.loc[manifest["source"] == "kermany", "cohort"] == STUDY).all()
    dups = pd.read_csv(tmp_path / "out" / "duplicates.csv", dtype=str)
    assert list(dups["dropped_source"]) == ["site_b"] and list(dups["kept_source"]) == ["kermany"]
    assert report.to_dict()["duplicates"]["external_seen_in_training"] == 1
    assert "MRN" not in (tmp_path / "out" / "manifest.csv").read_text()
