"""``cxrflow model promote / rollback / history`` against a sqlite tracking store."""

from __future__ import annotations

import json

import pytest

from cxrflow import names
from cxrflow.cli.program import main

NAME = "cxrflow-test"


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """Versions 1-3 of a registered model: 1 and 3 passed the audit, 2 failed; v1 champion."""
    from mlflow.tracking import MlflowClient

    from cxrflow.promotion import move_alias

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("CXRFLOW_USER", "dr.who")
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the commands need none with --name
    client = MlflowClient(tracking_uri=uri)
    client.create_registered_model(NAME)
    (tmp_path / "model").mkdir()
    for verdict in ("true", "false", "true"):
        mv = client.create_model_version(NAME, (tmp_path / "model").as_uri())
        client.set_model_version_tag(NAME, mv.version, names.TAG_AUDIT_PASSED, verdict)
    move_alias(NAME, "champion", 1, action="register", reason="model_1: first champion")
    return client


def _run(capsys, *args):
    code = main(["model", *args, "--name", NAME])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_promote_rollback_history(registry, capsys) -> None:
    code, out, _ = _run(capsys, "promote", "3", "--reason", "better on the 2024 data")
    assert code == 0
    assert "@champion: version 1 -> version 3 (promote by dr.who" in out
    assert str(registry.get_model_version_by_alias(NAME, "champion").version) == "3"
    tags = registry.get_model_version(NAME, "3").tags
    assert tags[names.TAG_PROMOTION_REASON] == "better on the 2024 data"
    assert tags[names.TAG_PROMOTED_BY] == "dr.who"

    code, out, _ = _run(capsys, "rollback", "--reason", "false positives on ward 3")
    assert code == 0, out
    assert "version 3 -> version 1 (rollback by dr.who" in out
    assert str(registry.get_model_version_by_alias(NAME, "champion").version) == "1"

    code, out, err = _run(capsys, "rollback")
    assert code == 2
    assert err == (
        f"cxrflow: error: {NAME}@champion is version 1 and has no previous champion to roll "
        "back to\n"
    )

    code, out, _ = _run(capsys, "history", "--json")
    moves = json.loads(out)
    assert [(m["from_version"], m["to_version"], m["action"]) for m in moves] == [
        (None, 1, "register"),
        (1, 3, "promote"),
        (3, 1, "rollback"),
    ]
    assert {m["who"] for m in moves} == {"dr.who"}
    assert moves[2]["reason"] == "false positives on ward 3"
    code, out, _ = _run(capsys, "history")
    assert code == 0 and "false positives on ward 3" in out and "| when" in out


def test_a_failed_audit_needs_the_override_and_a_reason(registry, capsys) -> None:
    code, _, err = _run(capsys, "promote", "2", "--reason", "trust me")
    assert code == 2
    assert err.startswith("cxrflow: error: version 2 failed the shortcut audit")
    assert "--override-audit" in err and err.count("\n") == 1
    assert str(registry.get_model_version_by_alias(NAME, "champion").version) == "1"
    code, _, err = _run(capsys, "promote", "2", "--override-audit", "--reason", " ")
    assert (code, err) == (2, "cxrflow: error: a promotion needs a reason: --reason '...'\n")
    code, out, _ = _run(capsys, "promote", "2", "--override-audit", "--reason", "reviewed")
    assert code == 0 and "[audit overridden: failed]" in out
    tags = registry.get_model_version(NAME, "2").tags
    assert tags[names.TAG_AUDIT_OVERRIDE] == "promote by dr.who: reviewed"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("promote", "9", "--reason", "x"), f"{NAME} has no version 9"),
        (("promote", "1", "--reason", "x"), f"version 1 of {NAME} is already @champion"),
    ],
)
def test_bad_input_is_one_line(registry, capsys, args, message) -> None:
    code, _, err = _run(capsys, *args)
    assert (code, err) == (2, f"cxrflow: error: {message}\n")


def test_unknown_model_and_no_store(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'none.db'}")
    code, _, err = _run(capsys, "history")
    assert code == 2 and "no MLflow tracking store" in err and err.count("\n") == 1
    assert not (tmp_path / "none.db").exists()


def test_refused_credentials_are_a_user_error() -> None:
    from mlflow.exceptions import MlflowException

    from cxrflow import tracking

    exc = MlflowException(
        "API request to endpoint /api/2.0/mlflow/registered-models/get failed with error code "
        "401 != 200. Response body: 'You are not authenticated.'"
    )
    refused = tracking.registry._refused(exc)
    assert isinstance(refused, tracking.RegistryAccessError)
    assert "not authenticated: set MLFLOW_TRACKING_USERNAME" in str(refused)
    assert tracking.registry._refused(MlflowException("boom")) is None


def test_the_int8_alias_follows_the_champion(registry, capsys) -> None:
    """``<name>-int8@champion`` is always the export of ``<name>@champion``: it moves to the
    int8 version exported from the new champion, and is removed (with the command to export
    it) when that version has none, rather than serving another version's model."""
    from cxrflow.promotion import move_alias

    int8 = f"{NAME}-int8"
    registry.create_registered_model(int8)
    exported = {}
    for source in (1, 3):  # version 2 was never exported
        mv = registry.create_model_version(int8, registry.get_model_version(NAME, "1").source)
        registry.set_model_version_tag(
            int8, mv.version, names.TAG_EXPORT_SOURCE_MODEL, f"{NAME}/{source}"
        )
        exported[source] = int(mv.version)
    move_alias(int8, "champion", exported[1], action="register", reason="export of 1")

    code, out, _ = _run(capsys, "promote", "3", "--reason", "better")
    assert code == 0, out
    assert f"{int8}@champion: version {exported[1]} -> version {exported[3]}" in out
    assert int(registry.get_model_version_by_alias(int8, "champion").version) == exported[3]

    code, out, _ = _run(capsys, "promote", "2", "--reason", "ward test", "--override-audit")
    assert code == 0, out
    assert f"{int8}@champion removed (was version {exported[3]})" in out
    assert f"cxrflow export --model models:/{NAME}/2" in out
    assert "champion" not in registry.get_registered_model(int8).aliases

    code, out, _ = _run(capsys, "rollback", "--json")
    assert code == 0, out
    assert json.loads(out)["int8"].startswith(f"{int8}@champion: nowhere -> version {exported[3]}")
    assert int(registry.get_model_version_by_alias(int8, "champion").version) == exported[3]
    moves = [m["action"] for m in json.loads(_run(capsys, "history", "--json")[1])]
    assert moves == ["register", "promote", "promote", "rollback"]


def test_predict_warns_when_the_model_did_not_pass_the_audit(registry) -> None:
    from cxrflow.predict import audit_warning

    registry.set_model_version_tag(NAME, "2", names.TAG_AUDIT_REASONS, "controls called covid")
    registry.set_registered_model_alias(NAME, "challenger", "2")
    warning = audit_warning(f"models:/{NAME}@challenger")
    assert warning == (
        f"cxrflow: warning: models:/{NAME}@challenger is version 2, which failed the shortcut "
        "audit (controls called covid): its predictions may follow a shortcut rather than the "
        "disease"
    )
    assert "version 2, which failed" in (audit_warning(f"models:/{NAME}/2") or "")
    assert audit_warning(f"models:/{NAME}@champion") is None  # version 1 passed
    assert audit_warning("runs:/0123/model") is None
    assert audit_warning(f"models:/{NAME}@nobody") is None
    # an int8 export carries no verdict of its own: it has its source version's
    int8 = f"{NAME}-int8"
    registry.create_registered_model(int8)
    for source in (1, 2):
        mv = registry.create_model_version(int8, registry.get_model_version(NAME, "1").source)
        registry.set_model_version_tag(
            int8, mv.version, names.TAG_EXPORT_SOURCE_MODEL, f"{NAME}/{source}"
        )
    assert audit_warning(f"models:/{int8}/1") is None  # the export of version 1, which passed
    assert (audit_warning(f"models:/{int8}/2") or "").startswith(
        f"cxrflow: warning: models:/{int8}/2 is version 2 (the int8 export of {NAME}/2), which "
        "failed the shortcut audit"
    )
