"""Failure alerts (cxrflow.notify), against a real HTTP receiver on 127.0.0.1: the message a
failed run posts, and that no URL means no post and a failed post never fails finalize."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cxrflow import names, notify, steps, tracking
from cxrflow.config import Params, flatten_params, load_params

ROOT = Path(__file__).resolve().parents[2]


class Receiver:
    """A webhook double: records each POST's JSON body and answers with ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.messages: list[dict[str, Any]] = []
        self.content_types: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.messages.append(json.loads(body))
                receiver.content_types.append(self.headers.get("Content-Type", ""))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/XXXX"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture()
def failing_receiver() -> Iterator[Receiver]:
    with Receiver(status=500) as r:
        yield r


def _refused_url() -> str:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


# ----------------------------------------------------------------------- the message itself


def test_message_is_slack_text_and_a_teams_card_with_the_facts() -> None:
    url = notify.mlflow_run_url("http://mlflow.cxrflow.svc:5000/", "7", "abc123")
    assert url == "http://mlflow.cxrflow.svc:5000/#/experiments/7/runs/abc123"
    msg = notify.failure_message("run-42", "model_3", "ValueError: no weights", url, "paper", "abc")
    json.dumps(msg)  # one JSON object
    assert msg["text"].splitlines() == [
        "cxrflow run run-42 failed at step model_3",
        "Error: ValueError: no weights",
        f"MLflow: {url}",
    ]
    assert msg["@type"] == "MessageCard" and msg["@context"] == "https://schema.org/extensions"
    assert msg["summary"] == msg["title"] == "cxrflow run run-42 failed at step model_3"
    (section,) = msg["sections"]
    facts = {f["name"]: f["value"] for f in section["facts"]}
    assert facts["failed step"] == "model_3" and facts["mlflow url"] == url
    assert msg["cxrflow"] == {
        "event": "pipeline_run_failed",
        "pipeline_run": "run-42",
        "failed_step": "model_3",
        "error": "ValueError: no weights",
        "mlflow_url": url,
        "mlflow_run_id": "abc",
        "profile": "paper",
    }


def test_mlflow_link_only_for_a_web_tracking_server() -> None:
    assert notify.mlflow_run_url("https://mlflow.example.org", None, "r1") == (
        "https://mlflow.example.org/#/runs/r1"
    )
    assert notify.mlflow_run_url("sqlite:///mlruns.db", "1", "r1") == ""
    assert notify.mlflow_run_url("http://mlflow:5000", "1", "") == ""


# ----------------------------------------------------------------------- posting


def test_the_receiver_gets_the_message(receiver: Receiver) -> None:
    msg = notify.failure_message("run-1", "ingest", "boom")
    assert notify.post_message(msg, receiver.url) is True
    assert receiver.messages == [msg]
    assert receiver.content_types == ["application/json"]


def test_no_url_no_post(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(notify.WEBHOOK_ENV, raising=False)
    assert notify.post_message({"text": "x"}) is False
    assert notify.alert_failure("run-1", "ingest", "boom") is False
    monkeypatch.setenv(notify.WEBHOOK_ENV, "  ")
    assert notify.alert_failure("run-1", "ingest", "boom") is False
    assert receiver.messages == []


@pytest.mark.parametrize("where", ["status_500", "refused", "not_http"])
def test_a_failed_post_logs_one_warning_and_never_raises(
    where: str, failing_receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    url = {
        "status_500": failing_receiver.url,
        "refused": _refused_url(),
        "not_http": "file:///etc/passwd",
    }[where]
    with caplog.at_level(logging.WARNING, logger="cxrflow.notify"):
        assert notify.post_message({"text": "x"}, url, timeout=5) is False
    (record,) = [r for r in caplog.records if r.name == "cxrflow.notify"]
    assert "failure alert not delivered" in record.getMessage()
    assert "T000" not in record.getMessage()  # the webhook's path is its secret: never logged
    assert len(failing_receiver.messages) == (1 if where == "status_500" else 0)


# ----------------------------------------------------------------------- from finalize


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Params:
    """An empty sqlite tracking store; returns the smoke params."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("CXRFLOW_ARTIFACT_ROOT", (tmp_path / "mlartifacts").as_uri())
    monkeypatch.setattr(tracking.runs, "PARENT_SETTLE_SECONDS", 0.0)
    mlflow.set_tracking_uri(uri)
    return load_params(ROOT / "params.yaml", "smoke")


def test_a_failed_run_posts_one_message_from_finalize(
    store: Params, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(notify.WEBHOOK_ENV, receiver.url)
    error = "Traceback (most recent call last):\n  ...\nOSError: s3 unreachable"
    result = steps.run_finalize(store, "run-f", "FAILED", error)
    assert result["status"] == "FAILED"
    (msg,) = receiver.messages
    first = store.steps[0]
    assert msg["cxrflow"]["pipeline_run"] == "run-f"
    assert msg["cxrflow"]["failed_step"] == result["failed_step"] == first
    assert msg["cxrflow"]["error"] == "OSError: s3 unreachable"
    assert msg["cxrflow"]["mlflow_run_id"] == result["parent_run_id"]
    assert msg["cxrflow"]["mlflow_url"] == ""  # a sqlite store has no web page
    assert "run-f" in msg["text"] and first in msg["text"]


def test_finalize_builds_the_mlflow_link_from_the_tracking_uri(
    store: Params, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    monkeypatch.setenv(notify.WEBHOOK_ENV, receiver.url)
    uri = mlflow.get_tracking_uri()
    # what finalize's tracking calls use is already set; the link reads the environment
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.cxrflow.svc:5000")
    monkeypatch.setattr(tracking.session, "tracking_uri", lambda: uri)
    result = steps.run_finalize(store, "run-l", "FAILED", "boom")
    (msg,) = receiver.messages
    want = f"http://mlflow.cxrflow.svc:5000/#/runs/{result['parent_run_id']}"
    assert msg["cxrflow"]["mlflow_url"] == want
    assert f"MLflow: {want}" in msg["text"]


@pytest.mark.parametrize("where", ["status_500", "refused"])
def test_a_failed_post_does_not_fail_finalize(
    where: str, store: Params, failing_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = failing_receiver.url if where == "status_500" else _refused_url()
    monkeypatch.setenv(notify.WEBHOOK_ENV, url)
    result = steps.run_finalize(store, "run-x", "FAILED", "boom")
    assert result["status"] == "FAILED"
    assert tracking.run_tags(result["parent_run_id"])[names.TAG_FAILED_STEP] == store.steps[0]


def test_a_successful_run_posts_nothing(
    store: Params, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(notify.WEBHOOK_ENV, receiver.url)
    parent = tracking.get_or_create_parent_run(
        store.tracking.experiment_name, "run-ok", {}, flatten_params(store)
    )
    tracking.set_tags(parent, {names.step_done_tag(step): "true" for step in store.steps})
    result = steps.run_finalize(store, "run-ok", "SUCCEEDED")
    assert result["status"] == "FINISHED"
    assert receiver.messages == []


def test_a_stopped_run_posts_nothing(
    store: Params, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KILLED (Ctrl-C, a cancelled run) is someone's own decision: no alert."""
    monkeypatch.setenv(notify.WEBHOOK_ENV, receiver.url)
    result = steps.run_finalize(store, "run-k", "KILLED", "stopped by SIGINT")
    assert result["status"] == "KILLED"
    assert receiver.messages == []


def test_a_failed_run_is_alerted_even_when_mlflow_is_down(
    store: Params, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """finalize cannot end the parent run (tracking server gone): the alert still goes out,
    and finalize still fails (KFP shows the exit handler failed)."""
    monkeypatch.setenv(notify.WEBHOOK_ENV, receiver.url)

    def down(*_: object, **__: object) -> None:
        raise ConnectionError("http://mlflow:5000: connection refused")

    monkeypatch.setattr(tracking, "find_parent_run", down)
    with pytest.raises(ConnectionError, match="connection refused"):
        steps.run_finalize(store, "run-d", "FAILED", "OSError: s3 unreachable")
    (msg,) = receiver.messages
    assert msg["cxrflow"]["pipeline_run"] == "run-d"
    assert "OSError: s3 unreachable" in msg["cxrflow"]["error"]
    assert "connection refused" in msg["cxrflow"]["error"]
