"""params.yaml resolves into frozen pydantic models; bad keys and values are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from cxrflow.config import (
    MODEL_KEYS,
    PROFILES,
    ParamsError,
    flatten_params,
    load_params,
    params_from_dict,
    params_from_kfp,
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
    assert raw["profile"] == "paper"
    assert params_to_dict(load_params(PARAMS)) == params_to_dict(params_from_dict({}))
    assert set(raw) == set(params_to_dict(params_from_dict({})))


@pytest.mark.parametrize("profile", PROFILES)
def test_profiles_load_and_are_frozen(profile: str) -> None:
    p = load_params(PARAMS, profile)
    assert p.profile == profile
    with pytest.raises(ValidationError, match="frozen"):
        p.train.epochs = 3  # type: ignore[misc]
    extra = {"sample": ("model_4", "model_5", "model_6")}.get(profile, ())
    assert tuple(sorted(p.models)) == (*MODEL_KEYS, *extra)


def test_the_sample_profile_adds_the_imagenet_free_resnet50_pair() -> None:
    """model_4: a ResNet-50 pretrained on Dataset_0; model_5: fine-tuned from it on Dataset_1
    exactly as model_3 is from ImageNet (the last 11 layers), and a promotion candidate."""
    p = load_params(PARAMS, "sample")
    m3, m4, m5 = (p.models[k] for k in ("model_3", "model_4", "model_5"))
    assert (m4.dataset, m4.architecture, m4.init) == ("dataset_0", "resnet50", "scratch")
    assert (m5.dataset, m5.architecture, m5.init) == ("dataset_1", "resnet50", "model_4")
    assert m5.unfreeze_last == m3.unfreeze_last == 11
    assert "model_5" in p.register.candidates and "model_4" not in p.register.candidates
    assert p.train.image_size == 96  # the reduced settings, not the paper's 224
    # the ResNet-50s' own epoch budgets; the small CNNs keep train.epochs
    assert (m3.epochs, m4.epochs, m5.epochs) == (20, 10, 20)
    assert p.models["model_1"].epochs is None


def test_the_sample_profile_trains_the_papers_recipe_on_the_mixed_variant() -> None:
    p = load_params(PARAMS, "sample")
    m6 = p.models["model_6"]
    assert (m6.dataset, m6.architecture, m6.init) == ("dataset_1_mixed", "small_cnn", "scratch")
    assert "model_6" in p.register.candidates
    assert p.split.mixed_control_share == 0.5


def test_a_model_names_a_known_dataset() -> None:
    with pytest.raises(ValueError, match=r"models\.model_9\.dataset.*dataset_1_mixed"):
        load_params(
            PARAMS,
            overrides=["models.model_9={dataset: dataset_2, architecture: small_cnn}"],
        )


def test_profiles_override_only_a_few_keys() -> None:
    paper = flatten_params(load_params(PARAMS))
    for profile in ("demo", "smoke"):
        other = flatten_params(load_params(PARAMS, profile))
        changed = {k for k in paper if paper[k] != other[k]} - {"profile"}
        assert changed, profile
        assert all(
            k.split(".")[0] in {"data", "split", "train", "validate", "evaluate", "export"}
            or k == "models.model_3.allow_random_init"
            for k in changed
        )
        assert len(changed) <= 22


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
        ({"models": {"model_9": {}}}, "models.model_9.dataset"),
        (
            {
                "models": {
                    "model_9": {"dataset": "dataset_1", "architecture": "small_cnn", "init": "x"}
                }
            },
            "models.model_9.init",
        ),
        ({"models": {"model_2": {"init": "model_3"}}}, "models.model_2.init"),
        (
            {"models": {"ingest": {"dataset": "dataset_1", "architecture": "small_cnn"}}},
            "models.ingest",
        ),
        ({"data": {"version": "v1"}}, "data.version"),
        ({"data": {"sources": {"Kermany": ["x"]}}}, "data.sources.Kermany"),
        ({"data": {"kermany_dir": "x"}}, "data.kermany_dir"),
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
    back = params_from_kfp(plain)
    assert back == p
    assert back.models["model_3"].weights_path is None
    assert back.split.dataset_0_max_per_class == 14


def test_source_paths_in_configured_order() -> None:
    data = params_from_dict(
        {"data": {"sources": {"kermany": ["raw/k"], "cohen": ["raw/c1", "raw/c2"]}}}
    ).data
    assert data.source_paths == ["raw/k", "raw/c1", "raw/c2"]
    assert not data.is_phantom
    assert params_from_dict({}).data.source_paths == []
    assert params_from_dict({}).data.is_phantom


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
    p = params_from_kfp({"train": {"epochs": 12.0}, "split": {"dataset_0_max_per_class": ""}})
    assert p.train.epochs == 12
    assert isinstance(p.train.epochs, int)
    assert p.split.dataset_0_max_per_class is None


def test_one_resolution_profile_then_overrides() -> None:
    """Profile from the file's `profile` key unless given; overrides last, validated alike."""
    raw = yaml.safe_load(PARAMS.read_text())
    assert params_from_dict({**raw, "profile": "smoke"}).train.image_size == 32
    assert params_from_dict({**raw, "profile": "smoke"}, "paper").train.image_size == 224
    p = load_params(PARAMS, "smoke", ["train.epochs=7", "register.metric=accuracy"])
    assert (p.train.epochs, p.train.image_size, p.register.metric) == (7, 32, "accuracy")
    with pytest.raises(ParamsError, match=r"train\.epochs"):
        load_params(PARAMS, "smoke", ["train.epochs=0"])
    with pytest.raises(ParamsError, match=r"train\.nope"):
        load_params(PARAMS, None, ["train.nope=1"])
    with pytest.raises(ParamsError, match="KEY=VALUE"):
        load_params(PARAMS, None, ["train.epochs"])


def test_resolved_params_reload_identically() -> None:
    """A resolved file (no `profiles`) loads as is: its `profile` is a label."""
    from cxrflow.config import params_hash, params_to_yaml

    p = load_params(PARAMS, "demo", ["train.epochs=3"])
    again = params_from_dict(yaml.safe_load(params_to_yaml(p)))
    assert again == p
    assert params_hash(again) == params_hash(p)
    assert params_from_kfp(params_to_dict(p)) == p


def test_a_fifth_model_is_params_only() -> None:
    p = load_params(
        PARAMS,
        "smoke",
        ["models.model_4={dataset: dataset_1, architecture: small_cnn, init: model_1}"],
    )
    assert p.model_keys == (*MODEL_KEYS, "model_4")
    assert p.steps[-5:] == ("model_4", "evaluate", "audit", "register", "export")
    assert p.models["model_4"].base_model_key == "model_1"


def test_json_schema_covers_params_yaml() -> None:
    import jsonschema

    from cxrflow.config import params_json_schema

    schema = params_json_schema()
    jsonschema.validate(yaml.safe_load(PARAMS.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"train": {"epochs": 0}}, schema)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("cluster.resources.train.cpu_request=16", "cpu_request 16 exceeds cpu_limit 8"),
        ("cluster.resources.data.memory_limit=4Gi", "memory_request 8Gi exceeds memory_limit 4Gi"),
        ("cluster.resources.record.cpu_limit=one", "cluster.resources.record.cpu_limit: cpu"),
        ("cluster.resources.record.memory_limit=2GB", "memory quantity"),
        ("cluster.retry.io.backoff_max_seconds=10", "backoff_max_seconds must be >="),
        ("cluster.retry.train.num_retries=-1", "cluster.retry.train.num_retries"),
        ("cluster.checkpoints.mount_path=ckpt", "must be an absolute path"),
    ],
)
def test_cluster_settings_are_checked_where_they_are_loaded(override: str, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        load_params(PARAMS, None, [override])


def test_cluster_settings_accept_kubernetes_quantities() -> None:
    p = load_params(
        PARAMS, None, ["cluster.resources.train.cpu_limit=12", "cluster.checkpoints.pvc=null"]
    )
    assert p.cluster.resources.train.cpu_limit == "12"  # YAML's number, as KFP wants it
    assert p.cluster.checkpoints.pvc is None
    assert params_from_kfp(params_to_dict(p)) == p


@pytest.mark.parametrize(
    ("data", "pinned"),
    [
        ({}, True),  # phantom data from a fixed seed
        ({"registry": "r.git", "sources": {"kermany": ["raw/k"]}, "version": "a" * 40}, True),
        ({"registry": "r.git", "sources": {"kermany": ["raw/k"]}, "version": "A" * 40}, False),
        ({"registry": "r.git", "sources": {"kermany": ["raw/k"]}, "version": "a" * 12}, False),
        ({"registry": "r.git", "sources": {"kermany": ["raw/k"]}, "version": "data-v1"}, False),
        ({"registry": "r.git", "sources": {"kermany": ["raw/k"]}}, False),
        ({"sources": {"kermany": ["/data/k"]}}, False),
    ],
)
def test_data_is_pinned_only_by_a_full_commit_or_a_seed(data: dict, pinned: bool) -> None:
    assert params_from_dict({"data": data}).data.is_pinned is pinned
