"""The model registry: logging and registering models, loading a model URI, and the alias and
tag operations behind ``cxrflow model promote | rollback | history`` (with a clear error when a
server refuses the environment's credentials)."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import suppress
from typing import Any

from cxrflow.tracking import session
from cxrflow.tracking.store import tracking_store_exists


def log_keras_model(model: Any, name: str, metadata: Mapping[str, Any]) -> str:
    """Log a Keras model in the active run as the served image classifier.

    The logged model is :class:`cxrflow.serving.ImageClassifier`, an MLflow pyfunc taking image
    files (base64 bytes or paths) and returning class names and probabilities, with the Keras
    model inside, its signature, an input example and requirements pinned to what this
    environment installs (``tensorflow-cpu``); the input example is a grey PNG, not a tensor of
    training images (no patient's picture goes into the model's files).

    Returns:
        The model URI (``models:/<model_id>``).
    """
    from cxrflow import serving

    return serving.log_keras_classifier(model, name, metadata)


def register_model(
    model_uri: str, name: str, alias: str, tags: Mapping[str, str], description: str = ""
) -> int:
    """Register ``model_uri`` under ``name`` and point ``alias`` at the new version."""
    from mlflow.tracking import MlflowClient

    import mlflow

    client = MlflowClient()
    with suppress(Exception):
        client.create_registered_model(
            name,
            description="COVID-19 / bacterial / normal chest X-ray classifier (cxrflow).",
        )
    mv = mlflow.register_model(model_uri, name, tags=dict(tags))
    if description:
        client.update_model_version(name, mv.version, description=description)
    client.set_registered_model_alias(name, alias, mv.version)
    return int(mv.version)


def alias_version(name: str, alias: str) -> dict[str, Any] | None:
    """The model version an alias points at (``{"version", "tags", "run_id"}``), or None."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        mv = MlflowClient(tracking_uri=session.tracking_uri()).get_model_version_by_alias(
            name, alias
        )
    except MlflowException:
        return None
    return {"version": int(mv.version), "tags": dict(mv.tags or {}), "run_id": mv.run_id}


class ModelNotFoundError(LookupError):
    """No model behind a model URI (nothing registered, unknown alias or run)."""


def load_model(model_uri: str, *, allow_onnx: bool = False) -> tuple[Any, dict[str, Any]]:
    """Load the model behind a model URI and its cxrflow metadata (classes, image size).

    A model logged by :mod:`cxrflow.serving` (the pyfunc image classifier) gives its backend:
    the Keras model, or with ``allow_onnx`` the :class:`cxrflow.export.OnnxClassifier` of an
    int8 export (``models:/<name>-int8@<alias>``); both have Keras' ``predict(x, verbose=0)``.
    A model logged with the Keras flavour (before the pyfunc) loads as Keras.

    Raises:
        ModelNotFoundError: Nothing is tracked yet, or the URI names no model; the message says
            what to do. No tracking database is created as a side effect.
        ValueError: The URI names an ONNX model and ``allow_onnx`` is False (a caller that needs
            the Keras model, such as ``cxrflow export``).
    """
    uri = session.tracking_uri()
    if model_uri.startswith(("models:/", "runs:/")) and not tracking_store_exists():
        raise ModelNotFoundError(
            f"no MLflow tracking store at {uri}: nothing has been trained here yet; run "
            "`make run` first, or set MLFLOW_TRACKING_URI to your tracking server"
        )
    from mlflow.exceptions import MlflowException

    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        info = mlflow.models.get_model_info(model_uri)
        meta = dict(info.metadata or {})
        if "keras" in (info.flavors or {}):
            return mlflow.keras.load_model(model_uri), meta
        if meta.get("backend") == "onnx" and not allow_onnx:
            raise ValueError(
                f"{model_uri}: an int8 ONNX model; this needs the Keras model it was exported "
                "from (the registered model without -int8)"
            )
        from cxrflow import serving

        model = serving.load_classifier(model_uri).model
    except MlflowException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(
            f"{model_uri}: no such model in {uri} ({first}); register one with `make run` "
            "or pass --model-uri"
        ) from None
    return model, meta


class RegistryAccessError(PermissionError):
    """The tracking server refused the credentials of the environment (HTTP 401/403)."""


def _refused(exc: BaseException) -> RegistryAccessError | None:
    """A :class:`RegistryAccessError` for an authentication or permission failure, else None."""
    text = str(exc)
    code = str(getattr(exc, "error_code", ""))
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED") or any(
        f"error code {n}" in text for n in (401, 403)
    ):
        what = "not authenticated" if "401" in text or code == "UNAUTHENTICATED" else "forbidden"
        return RegistryAccessError(
            f"{session.tracking_uri()}: {what}: set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to an account with access to "
            "the model registry"
        )
    return None


def _absent_or_raise(exc: BaseException, absent: tuple[str, ...]) -> None:
    """Return when ``exc`` says the thing looked up does not exist (its error code is one of
    ``absent``); raise a :class:`RegistryAccessError` for refused credentials, else ``exc``."""
    if getattr(exc, "error_code", "") in absent:
        return
    refused = _refused(exc)
    if refused is not None:
        raise refused from None
    raise exc


def registered_model(name: str) -> dict[str, Any] | None:
    """A registered model (``{"name", "tags", "aliases"}``), or None when there is none.

    ``aliases`` maps each alias to its version. Reads the tracking URI of the environment
    (``MLFLOW_TRACKING_URI``, with ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` or a token for a
    server with authentication).
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        rm = MlflowClient(tracking_uri=session.tracking_uri()).get_registered_model(name)
    except MlflowException as exc:
        _absent_or_raise(exc, ("RESOURCE_DOES_NOT_EXIST",))
        return None
    return {
        "name": rm.name,
        "tags": dict(rm.tags or {}),
        "aliases": {str(k): int(v) for k, v in (rm.aliases or {}).items()},
    }


def model_version(name: str, version: int | str) -> dict[str, Any] | None:
    """One version of a registered model (``{"version", "tags", "run_id", "source"}``), or None."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        mv = MlflowClient(tracking_uri=session.tracking_uri()).get_model_version(name, str(version))
    except MlflowException as exc:
        _absent_or_raise(exc, ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"))
        return None
    return {
        "version": int(mv.version),
        "tags": dict(mv.tags or {}),
        "run_id": mv.run_id,
        "source": mv.source,
    }


def set_model_alias(name: str, alias: str, version: int | str) -> None:
    """Point ``alias`` of a registered model at ``version``."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=session.tracking_uri()).set_registered_model_alias(
        name, alias, str(version)
    )


def set_model_version_tags(name: str, version: int | str, tags: Mapping[str, Any]) -> None:
    """Set tags on one version of a registered model."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=session.tracking_uri())
    for k, v in tags.items():
        client.set_model_version_tag(name, str(version), k, str(v))


def set_registered_model_tag(name: str, key: str, value: str) -> None:
    """Set one tag on a registered model (the alias history is kept this way)."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=session.tracking_uri()).set_registered_model_tag(name, key, value)


def find_model_version(name: str, tag: str, value: str) -> int | None:
    """The newest version of registered model ``name`` whose tag ``tag`` is ``value``, or None
    (also when there is no such registered model)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=session.tracking_uri())
    try:
        found = client.search_model_versions(f"name = '{name}' and tags.`{tag}` = '{value}'")
    except MlflowException as exc:
        _absent_or_raise(exc, ("RESOURCE_DOES_NOT_EXIST",))  # no such registered model
        return None
    versions = [int(mv.version) for mv in found]
    return max(versions) if versions else None


def delete_model_alias(name: str, alias: str) -> None:
    """Remove ``alias`` from registered model ``name`` (nothing when it is not set)."""
    from mlflow.tracking import MlflowClient

    if alias_version(name, alias) is not None:
        MlflowClient(tracking_uri=session.tracking_uri()).delete_registered_model_alias(name, alias)
