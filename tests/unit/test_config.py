"""params.yaml loads into frozen dataclasses; bad keys and values are named."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from cxrflow.config import (
    MODEL_KEYS,
    PROFILES,
    ParamsError,
    flatten_params,
    load_params,
    params_from_dict,
    params_from_sections,
    params_to_dict,
)

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params.yaml"


def test_paper_defaults_match_the_paper() -> None:
    p = load_params(PARAMS)
    assert p.profile == "paper"
    assert p.train.image_size == 224
    assert p.train.batch_size == 20
    assert p.train.epochs == 500
    assert p.train.patience == 10
    assert (p.train.learning_rate, p.train.beta_1, p.train.beta_2) == (1e-3, 0.9, 0.999)
    assert (p.train.reduce_lr_factor, p.train.reduce_lr_patience) == (0.1, 5)
    assert p.train.fine_tune_learning_rate == 1e-4
    assert p.models["model_3"].unfreeze_last == 11
    assert p.models["model_3"].architecture == "resnet50"
    assert p.models["model_2"].init == "model_0"
    assert dict(p.split.dataset_1_counts) == {"normal": 544, "bacterial": 500, "covid": 456}
    assert (p.split.test_fraction, p.split.val_fraction) == (0.2, 0.125)


def test_yaml_top_level_equals_dataclass_defaults() -> None:
    """The paper's values live in params.yaml and in the dataclass defaults alike."""
    raw = yaml.safe_load(PARAMS.read_text())
    raw.pop("profiles")
    assert params_to_dict(load_params(PARAMS)) == params_to_dict(params_from_dict({}))
    assert set(raw) | {"profile"} == set(params_to_dict(params_from_dict({})))


@pytest.mark.parametrize("profile", PROFILES)
def test_profiles_load_and_are_frozen(profile: str) -> None:
    p = load_params(PARAMS, profile)
    assert p.profile == profile
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.train.epochs = 3  # type: ignore[misc]
    assert tuple(sorted(p.models)) == MODEL_KEYS


def test_profiles_override_only_a_few_keys() -> None:
    paper = flatten_params(load_params(PARAMS))
    for profile in ("demo", "smoke"):
        other = flatten_params(load_params(PARAMS, profile))
        changed = {k for k in paper if paper[k] != other[k]} - {"profile"}
        assert changed, profile
        assert all(
            k.split(".")[0] in {"data", "split", "train", "validate", "evaluate"} for k in changed
        )
        assert len(changed) < 20


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"train": {"bogus": 1}}, "train.bogus"),
        ({"nonsense": {}}, "nonsense"),
        ({"train": {"batch_size": 0}}, "train.batch_size"),
        ({"train": {"image_size": 8}}, "train.image_size"),
        ({"train": {"epochs": "many"}}, "train.epochs"),
        ({"split": {"test_fraction": 1.5}}, "split.test_fraction"),
        ({"split": {"dataset_1_counts": {"normal": 1}}}, "split.dataset_1_counts"),
        ({"models": {"model_9": {}}}, "models.model_9"),
        ({"models": {"model_3": {"architecture": "vgg"}}}, "models.model_3.architecture"),
        ({"register": {"alias": "Production"}}, "register.alias"),
        ({"ingest": {"cohen": {"views": "PA"}}}, "ingest.cohen.views"),
    ],
)
def test_bad_params_name_the_key(raw: dict, key: str) -> None:
    with pytest.raises(ParamsError) as err:
        params_from_dict(raw)
    assert key in str(err.value)


def test_unknown_profile_is_an_error() -> None:
    with pytest.raises(ParamsError, match="profile"):
        load_params(PARAMS, "huge")


def test_sections_roundtrip_with_kfp_nulls() -> None:
    """KFP cannot carry null: "" stands for null and loads back as None."""
    from cxrflow.config import nulls_to_empty

    p = load_params(PARAMS, "smoke")
    plain = nulls_to_empty(params_to_dict(p))
    back = params_from_sections(plain)
    assert back == p
    assert back.models["model_3"].weights_path is None
    assert back.split.dataset_0_max_per_class == 14


def test_source_paths_kermany_first_then_cohen() -> None:
    data = params_from_dict(
        {"data": {"kermany_dir": "raw/k", "cohen_dirs": ["raw/c1", "raw/c2"]}}
    ).data
    assert data.source_paths == ["raw/k", "raw/c1", "raw/c2"]
    assert params_from_dict({}).data.source_paths == []


def test_data_version_label_totals_sum_sources() -> None:
    from cxrflow.data.versions import DataVersion

    v = DataVersion(
        "t",
        "c" * 40,
        ("t",),
        "",
        "",
        {},
        {"kermany": {"normal": 3, "viral": 1}, "cohen": {"covid": 2, "normal": 1}},
    )
    assert v.label_totals() == {"normal": 4, "bacterial": 0, "viral": 1, "covid": 2}


def test_kfp_encodings_are_accepted_only_from_kfp() -> None:
    """params.yaml is strict; KFP's float ints and "" nulls are read at the KFP boundary only."""
    with pytest.raises(ParamsError, match=r"train\.epochs"):
        params_from_dict({"train": {"epochs": 12.0}})
    with pytest.raises(ParamsError, match=r"split\.dataset_0_max_per_class"):
        params_from_dict({"split": {"dataset_0_max_per_class": ""}})
    p = params_from_sections({"train": {"epochs": 12.0}, "split": {"dataset_0_max_per_class": ""}})
    assert p.train.epochs == 12
    assert isinstance(p.train.epochs, int)
    assert p.split.dataset_0_max_per_class is None
