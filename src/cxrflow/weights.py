"""Pretrained weights files: where one lives, fetching it for training, and whether a pod can.

``models.<key>.weights_path`` names the file one of three ways:

- a local path (``weights/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``), read in
  place: only a process on this machine (the CLI, DVC, ``pipeline run --local``) can read it;
- ``s3://<bucket>/<key>``: an S3 object, read through :mod:`cxrflow.storage` (endpoint and
  credentials from the environment, as every pod of the pipeline gets them);
- ``dvc://<path>``: a file tracked in the DVC data registry ``data.registry``, read at
  ``data.version`` (HEAD when null) with :func:`cxrflow.data.versions.materialize`, as ingest
  reads the images.

The last two are *remote*: a pod can fetch them, and ``models.<key>.weights_sha256`` must pin
their content. A training step calls :func:`fetched_weights` first, so that a missing object or
a file that is not the pinned one fails in seconds, before any image is decoded; a remote file
is streamed into a temporary folder (never the step's output) and removed afterwards.
:func:`unreachable_weights` is the rule by which ``pipeline submit`` and ``pipeline schedule
create`` refuse, and ``pipeline compile`` warns about, a pipeline whose pods could not get the
weights a model needs.
"""

from __future__ import annotations

import logging
import posixpath
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cxrflow.config import DataParams, ModelSpec, Params


log = logging.getLogger(__name__)

LOCAL, S3, DVC = "local", "s3", "dvc"
"""Where a weights file lives (:func:`weights_scheme`)."""

DVC_SCHEME = "dvc://"
S3_SCHEME = "s3://"
REMOTE_SCHEMES = (S3_SCHEME, DVC_SCHEME)

WEIGHTS_HINT = (
    "set weights_path to s3://<bucket>/<key> or dvc://<path in data.registry> with its "
    "weights_sha256, or allow_random_init: true to train without pretrained weights"
)
"""How to fix a weights file a pod cannot get (ends every refusal and warning)."""


class WeightsError(ValueError):
    """A weights file that is missing, cannot be fetched, or is not the pinned one."""


class UnreachableWeightsError(ValueError):
    """A pipeline for the cluster in which a model needs weights its pod cannot get."""


@dataclass(frozen=True)
class Weights:
    """A weights file ready to load.

    Attributes:
        source: ``weights_path`` as configured (the local path or the URI).
        path: The local file (the configured one, or a temporary copy of a remote one).
        sha256: The file's sha256 (checked against ``weights_sha256`` when that is set).
    """

    source: str
    path: Path
    sha256: str


def weights_scheme(weights_path: str) -> str:
    """:data:`LOCAL`, :data:`S3` or :data:`DVC`: where ``weights_path`` lives.

    Raises:
        ValueError: An ``s3://`` URI without bucket or key, a ``dvc://`` URI without a path
            inside the registry, or another URL scheme (``https://``, ``gs://``...).
    """
    if weights_path.startswith(S3_SCHEME):
        from cxrflow.storage import split_s3_uri

        split_s3_uri(weights_path)
        return S3
    if weights_path.startswith(DVC_SCHEME):
        _registry_path(weights_path)
        return DVC
    if "://" in weights_path:
        raise ValueError(
            f"{weights_path!r}: weights_path is a local path, s3://<bucket>/<key> or "
            "dvc://<path in data.registry>"
        )
    return LOCAL


def is_remote(weights_path: str | None) -> bool:
    """True for an ``s3://`` or ``dvc://`` weights path (one a pod can fetch)."""
    return bool(weights_path) and str(weights_path).startswith(REMOTE_SCHEMES)


def _registry_path(uri: str) -> str:
    """The path inside the registry of ``dvc://<path>`` (POSIX, relative, normalised)."""
    rel = uri[len(DVC_SCHEME) :]
    norm = posixpath.normpath(rel) if rel else ""
    if not rel or rel.startswith("/") or norm in (".", "..") or norm.startswith("../"):
        raise ValueError(f"{uri!r}: a registry file is dvc://<path inside data.registry>")
    return norm


@contextmanager
def fetched_weights(
    spec: ModelSpec,
    data: DataParams,
    model_key: str,
    *,
    s3_client: Any | None = None,
) -> Iterator[Weights | None]:
    """The model's pretrained weights file, fetched and checked, for the duration of the block.

    Only an ``imagenet`` model reads weights: for any other, and for an ``imagenet`` model
    without ``weights_path`` that allows random initialisation, this yields ``None``. A local
    file is used in place; a remote one is streamed into a temporary folder removed when the
    block ends. When ``weights_sha256`` is set (always, for a remote file) the file's digest
    must equal it.

    Args:
        spec: The model's spec (``init``, ``weights_path``, ``weights_sha256``,
            ``allow_random_init``).
        data: The ``data`` section (``registry`` and ``version`` for ``dvc://``).
        model_key: The model's key (for the messages).
        s3_client: A boto3 S3 client for ``s3://``; ``None`` =
            :func:`cxrflow.storage.make_s3_client`.

    Yields:
        The file to load, or ``None`` when the model loads no weights file.

    Raises:
        ValueError: ``imagenet`` without ``weights_path`` and without ``allow_random_init`` (the
            architecture's own message, :meth:`~cxrflow.models.Architecture.check_weights`).
        WeightsError: The file or object does not exist, cannot be fetched, or its sha256 is
            not ``weights_sha256``; one line naming the location and both digests.
    """
    from cxrflow.models import get_architecture

    get_architecture(spec.architecture).check_weights(
        spec.init, spec.weights_path, spec.allow_random_init, model_key
    )
    source = spec.weights_path
    if spec.init_kind != "imagenet" or not source:
        yield None
        return
    scheme = weights_scheme(source)
    if scheme == LOCAL:
        path = Path(source)
        if not path.is_file():
            raise WeightsError(
                f"models.{model_key}.weights_path {source}: no such file (expected sha256 "
                f"{spec.weights_sha256 or 'not pinned'})"
            )
        yield _checked(model_key, source, path, spec.weights_sha256)
        return
    with tempfile.TemporaryDirectory(prefix="cxrflow-weights-") as tmp:
        if scheme == S3:
            path = _fetch_s3(model_key, source, Path(tmp), spec.weights_sha256, s3_client)
        else:
            path = _fetch_dvc(model_key, source, Path(tmp), spec.weights_sha256, data)
        weights = _checked(model_key, source, path, spec.weights_sha256)
        log.info("%s: weights %s fetched, sha256 %s verified", model_key, source, weights.sha256)
        yield weights


def _checked(model_key: str, source: str, path: Path, expected: str | None) -> Weights:
    """``path`` as :class:`Weights`, after checking its digest against ``expected``."""
    from cxrflow.data.manifest import file_sha256

    actual = file_sha256(path)
    if expected is not None and actual != expected.lower():
        raise WeightsError(
            f"models.{model_key}.weights_path {source}: sha256 {actual} is not "
            f"models.{model_key}.weights_sha256 {expected.lower()} (a different or damaged "
            "file: fix the file or the digest)"
        )
    return Weights(source=source, path=path, sha256=actual)


def _fetch_s3(model_key: str, uri: str, tmp: Path, expected: str | None, client: Any) -> Path:
    from cxrflow.storage import download_object, split_s3_uri

    dest = tmp / posixpath.basename(split_s3_uri(uri)[1])
    try:
        download_object(uri, dest, client=client)
    except FileNotFoundError as exc:
        raise WeightsError(
            f"models.{model_key}.weights_path {uri}: no such S3 object (expected sha256 "
            f"{expected}, got none)"
        ) from exc
    except Exception as exc:
        from cxrflow.storage import endpoint_url_from_env

        raise WeightsError(
            f"models.{model_key}.weights_path {uri}: download failed from endpoint "
            f"{endpoint_url_from_env() or 'AWS default'}: {type(exc).__name__}: {exc} "
            f"(expected sha256 {expected})"
        ) from exc
    return dest


def _fetch_dvc(model_key: str, uri: str, tmp: Path, expected: str | None, data: DataParams) -> Path:
    from cxrflow.data.versions import materialize

    rel = _registry_path(uri)
    where = f"models.{model_key}.weights_path {uri}"
    if data.registry is None:
        raise WeightsError(f"{where}: dvc:// reads data.registry, which is not set")
    try:
        targets, version = materialize(data.registry, data.version, [rel], tmp)
    except Exception as exc:  # DataRegistryError, UnknownRevisionError: one line either way
        raise WeightsError(
            f"{where} (registry {data.registry} at {data.version or 'HEAD'}): "
            f"{' '.join(str(exc).split())} (expected sha256 {expected}, got none)"
        ) from exc
    path = next(iter(targets.values()))
    if not path.is_file():
        raise WeightsError(f"{where}: a folder at {version.rev}, not a file")
    return path


def unreachable_weights(params: Params) -> list[str]:
    """The models whose pods could not get the weights they need, one line each.

    A model with ``init: imagenet`` needs a weights file unless it allows random
    initialisation and names none. A pod can get an ``s3://`` object, and a ``dvc://`` file
    when ``data.registry`` is set; it cannot get a null path or a local file (nothing puts it
    into the pod), whatever ``allow_random_init`` says: a named file that is missing fails the
    step.

    Args:
        params: The resolved configuration of the pipeline.

    Returns:
        ``["models.model_3.weights_path is null", ...]``, in model order; empty when every pod
        can get its weights.
    """
    problems: list[str] = []
    for key in params.model_keys:
        spec = params.models[key]
        path = spec.weights_path
        if spec.init_kind != "imagenet":
            continue
        if not path:
            if not spec.allow_random_init:
                problems.append(f"models.{key}.weights_path is null")
        elif weights_scheme(path) == LOCAL:
            problems.append(f"models.{key}.weights_path {path} is a file on this machine")
        elif weights_scheme(path) == DVC and params.data.registry is None:
            problems.append(f"models.{key}.weights_path {path} needs data.registry")
    return problems


def weights_warning(params: Params) -> str | None:
    """The one-line warning ``pipeline compile`` prints, or ``None`` when pods get every file."""
    problems = unreachable_weights(params)
    if not problems:
        return None
    return (
        f"this pipeline cannot train on a cluster ({'; '.join(problems)}): "
        f"submit and schedule create refuse it; {WEIGHTS_HINT}"
    )


def require_reachable_weights(params: Params, action: str) -> None:
    """Refuse ``action`` (``submit``, ``schedule create``) when a pod could not get its weights.

    Pure: called before any client is made, so a refusal costs no network call.

    Raises:
        UnreachableWeightsError: One line: the action refused, the models, the way out.
    """
    problems = unreachable_weights(params)
    if problems:
        raise UnreachableWeightsError(
            f"refusing to {action}: a pipeline pod cannot get the pretrained weights "
            f"({'; '.join(problems)}); {WEIGHTS_HINT}"
        )
