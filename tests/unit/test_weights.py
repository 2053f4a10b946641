"""Pretrained weights that reach the pod: ``weights_path`` as a local file, an S3 object (moto,
in process) or a file of the DVC data registry (a local remote), fetched into a temporary
folder and checked against ``weights_sha256`` before training decodes a single image; and the
rule by which a pipeline whose pods could not get their weights is refused."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cxrflow.config import ParamsError, load_params, params_from_dict
from cxrflow.weights import (
    WeightsError,
    fetched_weights,
    require_reachable_weights,
    unreachable_weights,
    weights_warning,
)

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params.yaml"
BUCKET = "cxrflow-weights"
KEY = "imagenet/resnet50_notop.h5"
URI = f"s3://{BUCKET}/{KEY}"
CONTENT = b"not really HDF5, but bytes with a digest" * 1000
DIGEST = hashlib.sha256(CONTENT).hexdigest()
OTHER = hashlib.sha256(b"another file").hexdigest()
REGISTRY_SOURCES = "data.sources={kermany: [raw/kermany]}"


def _params(*overrides: str, profile: str | None = None) -> Any:
    return load_params(PARAMS, profile, list(overrides))


def _model_3(weights_path: str, sha: str | None = DIGEST, *extra: str) -> list[str]:
    out = [f"models.model_3.weights_path={weights_path}", *extra]
    if sha is not None:
        out.append(f"models.model_3.weights_sha256={sha}")
    return out


def _fetch_error(p: Any, error: type[Exception] = WeightsError) -> str:
    """The one-line message fetching model_3's weights fails with (the block never runs)."""
    with pytest.raises(error) as err, fetched_weights(p.models["model_3"], p.data, "model_3"):
        raise AssertionError("the block ran without its weights checked")
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An in-process moto S3 holding the weights object; the library finds it by itself (no
    endpoint in the environment: moto answers for AWS's)."""
    from moto import mock_aws

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        from cxrflow.storage import make_s3_client

        client = make_s3_client()
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key=KEY, Body=CONTENT)
        yield client


# ------------------------------------------------------------------------------- params


def test_weights_fields_validate_and_name_the_key() -> None:
    spec = _params(*_model_3(URI, DIGEST.upper())).models["model_3"]
    assert (spec.weights_path, spec.weights_sha256) == (URI, DIGEST)  # stored lower-case
    dvc = _params(REGISTRY_SOURCES, "data.registry=/r", *_model_3("dvc://weights/w.h5"))
    assert dvc.models["model_3"].weights_path == "dvc://weights/w.h5"
    local = _params(*_model_3("weights/w.h5", None)).models["model_3"]
    assert local.weights_sha256 is None  # a local file may stay unpinned (as before)
    bad = [
        (_model_3(URI, None), "models.model_3", "set weights_sha256"),
        (_model_3("dvc://weights/w.h5", None), "models.model_3", "is remote"),
        (_model_3(URI, "abc"), "models.model_3.weights_sha256", "64 hex"),
        (_model_3(URI, "g" * 64), "models.model_3.weights_sha256", "64 hex"),
        (_model_3("s3://bucket-only"), "models.model_3.weights_path", "s3://<bucket>/<key>"),
        (_model_3("dvc://../outside.h5"), "models.model_3.weights_path", "dvc://<path"),
        (_model_3("https://x/w.h5"), "models.model_3.weights_path", "a local path, s3://"),
    ]
    for overrides, key, needle in bad:
        with pytest.raises(ParamsError) as err:
            _params(*overrides)
        assert key in str(err.value) and needle in str(err.value), str(err.value)


def test_the_paper_yaml_names_the_new_field() -> None:
    text = PARAMS.read_text()
    assert "weights_sha256: null" in text and "dvc://<path>" in text and "s3://" in text
    assert params_from_dict({}).models["model_3"].weights_sha256 is None


# -------------------------------------------------------------------------------- fetch


def test_an_s3_object_is_streamed_to_a_temporary_folder_and_checked(s3: Any) -> None:
    p = _params(*_model_3(URI))
    with fetched_weights(p.models["model_3"], p.data, "model_3") as weights:
        assert weights is not None
        assert weights.path.read_bytes() == CONTENT
        assert (weights.source, weights.sha256) == (URI, DIGEST)
        assert weights.path.parent.name.startswith("cxrflow-weights-")
        folder = weights.path.parent
    assert not folder.exists()  # removed with the block


def test_an_injected_client_is_used(s3: Any) -> None:
    calls: list[dict[str, Any]] = []

    class Recording:
        def get_object(self, **kw: Any) -> Any:
            calls.append(kw)
            return s3.get_object(**kw)

    p = _params(*_model_3(URI))
    with fetched_weights(p.models["model_3"], p.data, "model_3", s3_client=Recording()) as w:
        assert w is not None and w.sha256 == DIGEST
    assert calls == [{"Bucket": BUCKET, "Key": KEY}]


def test_a_wrong_digest_is_one_error_with_the_uri_and_both_digests(s3: Any) -> None:
    text = _fetch_error(_params(*_model_3(URI, OTHER)))
    assert URI in text and DIGEST in text and OTHER in text


@pytest.mark.parametrize("uri", [f"s3://{BUCKET}/nope.h5", "s3://no-such-bucket/w.h5"])
def test_a_missing_object_is_one_error_with_the_uri(s3: Any, uri: str) -> None:
    text = _fetch_error(_params(*_model_3(uri)))
    assert uri in text and "no such S3 object" in text and DIGEST in text


def test_a_local_file_is_read_in_place_and_checked_when_pinned(tmp_path: Path) -> None:
    f = tmp_path / "w.h5"
    f.write_bytes(CONTENT)
    for sha in (None, DIGEST):
        p = _params(*_model_3(str(f), sha))
        with fetched_weights(p.models["model_3"], p.data, "model_3") as w:
            assert w is not None and (w.path, w.sha256) == (f, DIGEST)  # no copy
    text = _fetch_error(_params(*_model_3(str(f), OTHER)))
    assert f"sha256 {DIGEST} is not models.model_3.weights_sha256 {OTHER}" in text
    text = _fetch_error(_params(*_model_3(str(tmp_path / "missing.h5"), None)))
    assert "missing.h5: no such file" in text


def test_models_without_weights_fetch_nothing() -> None:
    smoke = _params(profile="smoke")
    for key in ("model_0", "model_2", "model_3"):  # scratch, transfer, random init allowed
        with fetched_weights(smoke.models[key], smoke.data, key) as w:
            assert w is None
    assert "models.model_3.allow_random_init: true" in _fetch_error(_params(), ValueError)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DVC data registry with a weights file at tag ``weights-v1``, on a local remote."""
    from cxrflow.data.versions import init_registry, snapshot

    base = tmp_path_factory.mktemp("registry")
    repo = base / "registry"
    init_registry(repo, str(base / "remote"))
    (repo / "weights").mkdir()
    (repo / "weights" / "resnet50_notop.h5").write_bytes(CONTENT)
    snapshot(repo, ["weights"], "ImageNet weights", tag="weights-v1")
    return repo


def test_a_registry_file_is_read_at_the_data_version(registry: Path) -> None:
    uri = "dvc://weights/resnet50_notop.h5"
    p = _params(
        REGISTRY_SOURCES, f"data.registry={registry}", "data.version=weights-v1", *_model_3(uri)
    )
    with fetched_weights(p.models["model_3"], p.data, "model_3") as w:
        assert w is not None and w.path.read_bytes() == CONTENT and w.sha256 == DIGEST
        assert registry not in w.path.parents  # a copy, not the registry's working file
    missing = _params(
        REGISTRY_SOURCES, f"data.registry={registry}", *_model_3("dvc://weights/other.h5")
    )
    text = _fetch_error(missing)
    assert "dvc://weights/other.h5" in text and "weights-v1" not in text  # read at HEAD
    assert "data.registry, which is not set" in _fetch_error(_params(*_model_3(uri)))


def test_training_checks_the_weights_before_any_image_is_decoded(
    s3: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A wrong digest stops ``run_train`` before the split is read or an image decoded."""
    import cxrflow.data.split
    import cxrflow.datasets
    from cxrflow.steps.train import run_train

    def must_not_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("images were read before the weights were checked")

    monkeypatch.setattr(cxrflow.datasets, "write_split_cache", must_not_run)
    monkeypatch.setattr(cxrflow.data.split, "read_split_table", must_not_run)
    dataset = tmp_path / "dataset"
    (dataset / "images").mkdir(parents=True)
    (dataset / "images" / "x.png").write_bytes(b"not an image")
    p = _params(*_model_3(URI, OTHER), profile="smoke")
    with pytest.raises(WeightsError) as err:
        run_train(p, "model_3", dataset, tmp_path / "splits", tmp_path / "model")
    assert URI in str(err.value) and DIGEST in str(err.value) and OTHER in str(err.value)
    assert not (tmp_path / "model").exists()  # nothing written to the output


def test_the_start_point_records_a_remote_file_by_its_pinned_digest(tmp_path: Path) -> None:
    from cxrflow.steps.start import write_start_point

    info = write_start_point(_params(*_model_3(URI)), "imagenet", tmp_path)
    assert info["weights"] == {"model_3": {"path": URI, "sha256": DIGEST}}


# ---------------------------------------------------------------------- pods and their weights


def test_which_pipelines_a_pod_cannot_get_weights_for(tmp_path: Path) -> None:
    assert unreachable_weights(_params()) == ["models.model_3.weights_path is null"]
    assert unreachable_weights(_params(profile="smoke")) == []  # random init allowed
    assert unreachable_weights(_params(*_model_3(URI))) == []
    local = _params(*_model_3("weights/w.h5", None), profile="smoke")
    assert unreachable_weights(local) == [
        "models.model_3.weights_path weights/w.h5 is a file on this machine"
    ]  # allow_random_init does not help: a named file that is missing fails the pod
    assert unreachable_weights(_params(*_model_3("dvc://w.h5"))) == [
        "models.model_3.weights_path dvc://w.h5 needs data.registry"
    ]
    with_registry = _params(REGISTRY_SOURCES, "data.registry=/r", *_model_3("dvc://w.h5"))
    assert unreachable_weights(with_registry) == []
    fifth = "models.model_4={dataset: dataset_1, architecture: resnet50, init: imagenet}"
    assert len(unreachable_weights(_params(fifth))) == 2  # every model, in training order


def test_the_refusal_and_the_warning_are_one_line() -> None:
    with pytest.raises(ValueError) as err:
        require_reachable_weights(_params(), "submit")
    text = str(err.value)
    assert text.startswith("refusing to submit: ") and "\n" not in text
    assert "models.model_3.weights_path is null" in text and "s3://<bucket>/<key>" in text
    require_reachable_weights(_params(profile="smoke"), "submit")  # no error
    warning = weights_warning(_params())
    assert warning is not None and "\n" not in warning and "model_3" in warning
    assert weights_warning(_params(profile="demo")) is None


def test_train_model_loads_the_fetched_copy_and_reports_the_configured_source(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The builder gets the local copy; the spec (result, checkpoint fingerprint) keeps the URI."""
    import numpy as np

    from cxrflow.config import TrainParams
    from cxrflow.models.resnet50 import ResNet50
    from cxrflow.train import train_model

    seen: list[str | None] = []

    class Built(Exception):
        pass

    def build(self: Any, image_size: int, n: int, init: str, weights_path: str | None) -> Any:
        seen.append(weights_path)
        raise Built

    monkeypatch.setattr(ResNet50, "build", build)
    x = np.zeros((6, 32, 32, 1), np.uint8)
    y = (np.arange(6) % 3).astype(np.int32)
    spec = _params(*_model_3(URI)).models["model_3"]
    copy = tmp_path / "resnet50_notop.h5"
    with pytest.raises(Built):
        train_model(
            spec,
            TrainParams(image_size=32, batch_size=2, epochs=1),
            ("normal", "bacterial", "covid"),
            (x, y, x, y),
            verbose=0,
            weights_file=copy,
        )
    assert seen == [str(copy)]
