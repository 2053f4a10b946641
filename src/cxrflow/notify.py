"""Failure alerts: one JSON message to a chat webhook (Slack, Microsoft Teams) when a run fails.

The webhook URL comes from ``CXRFLOW_ALERT_WEBHOOK_URL`` (on a cluster: the optional key of the
Secret ``cxrflow-credentials``, given to the exit handler only). No URL, no post. A post that
fails (refused, timed out, answered with an error) logs one warning and is otherwise ignored:
an alert must never fail the run it reports on.

The message is one JSON object that both services accept: ``text`` (what a Slack incoming
webhook shows, and a Teams connector's simple card), the Office 365 ``MessageCard`` fields that
Teams renders as a titled card with facts, and the same facts under ``cxrflow`` for any other
receiver (a relay, an incident tool).
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

log = logging.getLogger(__name__)

WEBHOOK_ENV = "CXRFLOW_ALERT_WEBHOOK_URL"
TIMEOUT_SECONDS = 10.0


def mlflow_run_url(tracking_uri: str, experiment_id: str | None, run_id: str) -> str:
    """The MLflow UI page of a run, or ``""`` when the tracking URI is no web server.

    Args:
        tracking_uri: ``MLFLOW_TRACKING_URI`` (``http(s)://host:port[/prefix]``).
        experiment_id: The run's experiment; without it the UI's run-only route is used.
        run_id: The MLflow run id.
    """
    if not tracking_uri.startswith(("http://", "https://")) or not run_id:
        return ""
    base = tracking_uri.rstrip("/")
    if experiment_id:
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{base}/#/runs/{run_id}"


def failure_message(
    pipeline_run: str,
    failed_step: str,
    error: str,
    mlflow_url: str = "",
    profile: str = "",
    mlflow_run_id: str = "",
) -> dict[str, Any]:
    """The alert of a failed pipeline run, in a form Slack and Teams webhooks accept.

    Args:
        pipeline_run: The pipeline run id (KFP run, or a local id).
        failed_step: The step that failed (``unknown`` when none could be named).
        error: The error line (the last line of the step's error).
        mlflow_url: The MLflow page of the run's parent run, if any.
        profile: The params profile the run used.
        mlflow_run_id: The MLflow parent run (useful where the tracking store has no UI).
    """
    facts = {
        "pipeline_run": pipeline_run,
        "failed_step": failed_step or "unknown",
        "error": error,
        "mlflow_url": mlflow_url,
        "mlflow_run_id": mlflow_run_id,
        "profile": profile,
    }
    title = f"cxrflow run {pipeline_run} failed at step {facts['failed_step']}"
    lines = [
        title,
        f"Error: {error}" if error else "",
        f"MLflow: {mlflow_url}" if mlflow_url else "",
    ]
    text = "\n".join(line for line in lines if line)
    card_facts = [{"name": k.replace("_", " "), "value": v} for k, v in facts.items() if v]
    return {
        "text": text,
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "summary": title,
        "title": title,
        "themeColor": "D32F2F",
        "sections": [{"facts": card_facts}],
        "cxrflow": {"event": "pipeline_run_failed", **facts},
    }


def _redacted(url: str) -> str:
    """Scheme and host of a webhook URL: its path is the credential, never logged."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}"


def post_message(
    message: dict[str, Any], url: str | None = None, timeout: float = TIMEOUT_SECONDS
) -> bool:
    """Post ``message`` as JSON to the webhook; never raises.

    Args:
        message: The JSON object to send (see :func:`failure_message`).
        url: The webhook; default ``$CXRFLOW_ALERT_WEBHOOK_URL``. Empty: nothing is posted.
        timeout: Seconds for the connection and the answer.

    Returns:
        Whether the receiver accepted the message (a 2xx answer); False when there was no URL.
    """
    url = (url if url is not None else os.environ.get(WEBHOOK_ENV, "")).strip()
    if not url:
        return False
    try:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ValueError("not an http(s) URL")
        body = json.dumps(message).encode()
        request = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:  # scheme checked above
            response.read()
        return True
    except Exception as exc:  # an alert never fails the run
        reason = exc.code if isinstance(exc, urllib.error.HTTPError) else exc
        log.warning("failure alert not delivered to %s: %s", _redacted(url), reason)
        return False


def alert_failure(
    pipeline_run: str,
    failed_step: str,
    error: str,
    experiment_id: str | None = None,
    mlflow_run_id: str = "",
    profile: str = "",
) -> bool:
    """Post the alert of a failed run to ``$CXRFLOW_ALERT_WEBHOOK_URL``, if set; never raises.

    Args:
        pipeline_run: The pipeline run id.
        failed_step: The step that failed.
        error: Its error line.
        experiment_id: The MLflow experiment of the parent run (for the link).
        mlflow_run_id: The MLflow parent run (for the link).
        profile: The params profile.

    Returns:
        Whether a receiver accepted it.
    """
    if not os.environ.get(WEBHOOK_ENV, "").strip():
        return False
    try:
        url = mlflow_run_url(
            os.environ.get("MLFLOW_TRACKING_URI", ""), experiment_id, mlflow_run_id
        )
        message = failure_message(pipeline_run, failed_step, error, url, profile, mlflow_run_id)
    except Exception as exc:  # an alert never fails the run
        log.warning("failure alert not built: %s", exc)
        return False
    return post_message(message)
