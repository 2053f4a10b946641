"""Connecting to a Kubeflow Pipelines API: ``kfp.Client`` from ``--host`` / ``KFP_HOST`` (with
``KFP_TOKEN``) or a kubeconfig context through the API server's proxy, the namespace and
ServiceAccount resolved from arguments or the environment, and the client's HTTP errors
turned into one-line :class:`KfpApiError` errors.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import kfp
import kfp_server_api
import urllib3

HOST_ENV = "KFP_HOST"
NAMESPACE_ENV = "KFP_NAMESPACE"
TOKEN_ENV = "KFP_TOKEN"
SERVICE_ACCOUNT_ENV = "KFP_SERVICE_ACCOUNT"
KUBE_CONTEXT_ENV = "KFP_KUBE_CONTEXT"


# infra/k8s/pipeline-runs: reads exactly the ConfigMap and Secret the steps need
DEFAULT_SERVICE_ACCOUNT = "cxrflow-pipeline-runner"


# where kfp.Client itself reaches KFP through the API server (kfp.Client._KUBE_PROXY_PATH)
KUBE_PROXY_PATH = "api/v1/namespaces/kubeflow/services/ml-pipeline:http/proxy/"


P = ParamSpec("P")
R = TypeVar("R")


class KfpApiError(RuntimeError):
    """The KFP API refused a request or could not be reached (status and message, one line)."""


def _api_message(body: Any) -> str:
    """The ``message`` of a google.rpc.Status error body, else the body itself (shortened)."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    try:
        message = json.loads(text).get("message") or text
    except (ValueError, AttributeError):
        message = text
    return " ".join(str(message).split())[:300]


@contextmanager
def _api_errors() -> Iterator[None]:
    # urllib3 logs a warning per retry of a refused connection; the one error line says it
    pool_log = logging.getLogger("urllib3.connectionpool")
    level = pool_log.level
    if not pool_log.isEnabledFor(logging.DEBUG):
        pool_log.setLevel(logging.ERROR)
    try:
        yield
    except kfp_server_api.ApiException as exc:
        raise KfpApiError(
            f"KFP API answered {exc.status} {exc.reason}: {_api_message(exc.body)}"
        ) from exc
    except (urllib3.exceptions.HTTPError, TimeoutError) as exc:
        raise KfpApiError(f"cannot reach the KFP API: {exc}") from exc
    finally:
        pool_log.setLevel(level)


def _talks_to_kfp(func: Callable[P, R]) -> Callable[P, R]:
    """Turn the client's HTTP errors into one-line :class:`KfpApiError` errors."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with _api_errors():
            return func(*args, **kwargs)

    return wrapper


def resolve_namespace(namespace: str | None = None) -> str | None:
    """``namespace``, else ``$KFP_NAMESPACE``, else ``None`` (the client's default)."""
    return namespace or os.environ.get(NAMESPACE_ENV, "").strip() or None


def resolve_service_account(service_account: str | None = None) -> str | None:
    """The ServiceAccount runs execute as.

    ``service_account``, else ``$KFP_SERVICE_ACCOUNT``, else ``cxrflow-pipeline-runner`` (the
    one ``infra/k8s/pipeline-runs`` creates). An empty string (``--service-account ""``) names
    none, so KFP uses its own ``pipeline-runner``.
    """
    if service_account is None:
        service_account = os.environ.get(SERVICE_ACCOUNT_ENV, DEFAULT_SERVICE_ACCOUNT)
    return service_account.strip() or None


def _kube_endpoint(context: str) -> dict[str, Any]:
    """``kfp.Client`` arguments that reach KFP through the kubeconfig ``context``.

    The API server proxies the ``ml-pipeline`` service of namespace ``kubeflow`` (the path
    ``kfp.Client`` itself uses). Not ``kfp.Client(kube_context=...)`` for token users (OIDC,
    exec plugins, service-account tokens): the kubernetes client's token refresh hook resets
    the configuration's host before every request, so kfp's proxy path is lost and every call
    goes to the bare API server (kubeflow/pipelines#8313). Users with client certificates have
    no such hook, and ``kfp.Client`` has no certificate options, so they keep kfp's own path.

    Raises:
        ValueError: If there is no kubeconfig or no such context in it (``kfp.Client`` would
            only print "Failed to load kube config." and then talk to localhost).
    """
    from kubernetes import config as k8s_config

    try:
        contexts, _ = k8s_config.list_kube_config_contexts()
    except (k8s_config.ConfigException, OSError) as exc:
        raise ValueError(f"kube context {context!r}: no usable kubeconfig ({exc})") from exc
    names = [c["name"] for c in contexts or []]
    if context not in names:
        raise ValueError(
            f"kube context {context!r} is not in the kubeconfig (contexts: {', '.join(names)})"
        )
    k8s = kfp_server_api.Configuration()
    k8s_config.load_kube_config(client_configuration=k8s, context=context, persist_config=False)
    token = (k8s.get_api_key_with_prefix("authorization") or "").removeprefix("Bearer ").strip()
    if not token:
        return {"kube_context": context}
    return {
        "host": f"{k8s.host.rstrip('/')}/{KUBE_PROXY_PATH}",
        "existing_token": token,
        "ssl_ca_cert": k8s.ssl_ca_cert,
        "verify_ssl": k8s.verify_ssl,
    }


@_talks_to_kfp
def make_client(
    host: str | None = None, namespace: str | None = None, kube_context: str | None = None
) -> kfp.Client:
    """A ``kfp.Client`` for an API endpoint (with ``$KFP_TOKEN``) or a kubeconfig context.

    Arguments win over the environment: ``host``, else ``kube_context``, else ``$KFP_HOST``,
    else ``$KFP_KUBE_CONTEXT``. Through a kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``),
    the client reaches the ``ml-pipeline`` service of namespace ``kubeflow`` through the
    Kubernetes API server's proxy with the context's credentials; ``KFP_TOKEN`` is then not
    used.

    Args:
        host: KFP API endpoint, e.g. ``http://localhost:8080``.
        namespace: Kubernetes namespace of a multi-user deployment; ``None`` reads
            ``KFP_NAMESPACE`` and otherwise keeps the client's default.
        kube_context: A context of the kubeconfig.

    Returns:
        The connected client.

    Raises:
        ValueError: If no endpoint is given, both ``host`` and ``kube_context`` are, or the
            context is not in the kubeconfig.
    """
    if host and kube_context:
        raise ValueError("give --host or --kube-context, not both")
    if not host and not kube_context:
        host = os.environ.get(HOST_ENV, "").strip() or None
        kube_context = None if host else os.environ.get(KUBE_CONTEXT_ENV, "").strip() or None
    kwargs: dict[str, Any]
    if host:
        kwargs = {"host": host}
        token = os.environ.get(TOKEN_ENV, "").strip()
        if token:
            kwargs["existing_token"] = token
    elif kube_context:
        kwargs = _kube_endpoint(kube_context)
    else:
        raise ValueError(
            f"no Kubeflow Pipelines host: pass --host or set {HOST_ENV} "
            f"(or --kube-context / {KUBE_CONTEXT_ENV} to go through a kubeconfig)"
        )
    namespace = resolve_namespace(namespace)
    if namespace and "host" in kwargs:
        # Not with kfp's own kubeconfig path: it would build the proxy path from it. The
        # functions below pass the namespace with every call anyway.
        kwargs["namespace"] = namespace
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "This client only works", FutureWarning)
        return kfp.Client(**kwargs)
