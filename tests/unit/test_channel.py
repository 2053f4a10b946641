"""The runner's channel (``cxrflow.logs``): steps report to the runner only, never on stdout.

A step's summary, progress and timing go as JSON lines to the file named by
``CXRFLOW_RUNNER_CHANNEL``; without it a summary is one human log line and nothing is marked.
The local runner's console (``pipelines/progress.py``) reads the channel into each step's
record and log.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cxrflow import logs
from pipelines.progress import ChannelReader, RunConsole

MARKERS = ("::cxrflow-",)


def _start(console: RunConsole, task: str) -> None:
    console.write(f"12:00:00.000 - INFO - Executing task \x1b[96m'{task}'\x1b[0m\n")


def _end(console: RunConsole, task: str, status: str = "SUCCESS") -> None:
    console.write(f"12:00:01.000 - INFO - Task '{task}' finished with status {status}\n")


def test_without_a_channel_a_summary_is_one_log_line_and_nothing_is_printed(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.delenv(logs.CHANNEL_ENV, raising=False)
    root = logging.getLogger()  # an earlier test's setup_logging would print the log line
    monkeypatch.setattr(
        root, "handlers", [h for h in root.handlers if not getattr(h, "_cxrflow", False)]
    )
    with caplog.at_level(logging.DEBUG, logger="cxrflow.logs"):
        logs.emit_summary("ingest", "kept 30 images")
        logs.emit_progress("model_0", "epoch 1/2 loss=1.0")
        logs.emit_timing({"step": "ingest", "seconds": 1.0})
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == ["ingest: kept 30 images"]
    assert not any(m in r.getMessage() for r in caplog.records for m in MARKERS)
    assert not any("seconds" in r.getMessage() for r in caplog.records)  # timing: nowhere


def test_with_a_channel_every_report_is_one_record_there_and_nothing_is_printed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = tmp_path / "channel.jsonl"
    monkeypatch.setenv(logs.CHANNEL_ENV, str(channel))
    report = {"step": "ingest", "seconds": 1.5, "phases": {"data": 1.0}}
    with caplog.at_level(logging.DEBUG, logger="cxrflow.logs"):
        logs.emit_summary("ingest", "kept 30 images")
        logs.emit_progress("model_0", "epoch 1/2")
        logs.emit_timing(report)
    assert capsys.readouterr() == ("", "")
    assert caplog.records == []
    records = [json.loads(line) for line in channel.read_text().splitlines()]
    assert records == [
        {"kind": "summary", "step": "ingest", "text": "kept 30 images"},
        {"kind": "progress", "step": "model_0", "text": "epoch 1/2"},
        {"kind": "timing", "step": "ingest", "report": report},
    ]


def test_an_unwritable_channel_warns_once_and_the_step_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(logs.CHANNEL_ENV, str(tmp_path / "missing" / "channel.jsonl"))
    with caplog.at_level(logging.INFO, logger="cxrflow.logs"):
        logs.emit_timing({"step": "split"})
        logs.emit_timing({"step": "split"})
        logs.emit_summary("split", "3 splits")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "channel" in warnings[0].getMessage()
    # the summary still reaches a person, through the log
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        "split: 3 splits"
    ]


def test_a_step_run_by_hand_prints_no_marker(tmp_path: Path) -> None:
    # what ``cxrflow <step>`` does at its end, in a fresh process with logging set up
    code = textwrap.dedent(
        """
        from cxrflow import logs
        logs.setup_logging()
        logs.emit_progress("model_0", "epoch 1/2")
        logs.emit_summary("ingest", "kept 30 images")
        logs.emit_timing({"step": "ingest", "seconds": 1.0})
        """
    )
    env = {k: v for k, v in os.environ.items() if k != logs.CHANNEL_ENV}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert "::cxrflow-" not in proc.stderr
    assert "ingest: kept 30 images" in proc.stderr


def test_parallel_writers_append_whole_lines(tmp_path: Path) -> None:
    channel = tmp_path / "channel.jsonl"
    code = textwrap.dedent(
        """
        import sys
        from cxrflow import logs
        for i in range(300):
            logs.emit_timing({"step": sys.argv[1], "i": i, "pad": "x" * 900})
        """
    )
    env = {**os.environ, logs.CHANNEL_ENV: str(channel)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, f"model_{n}"], env=env) for n in range(4)
    ]
    assert [p.wait(120) for p in procs] == [0] * 4
    records = [json.loads(line) for line in channel.read_text().splitlines()]
    assert len(records) == 4 * 300
    for n in range(4):
        mine = [r["report"]["i"] for r in records if r["step"] == f"model_{n}"]
        assert mine == list(range(300))  # each writer's records whole and in its order


def test_the_reader_returns_complete_records_once_and_skips_garbled_ones(tmp_path: Path) -> None:
    channel = tmp_path / "channel.jsonl"
    reader = ChannelReader(channel)
    assert reader.read() == []  # no channel file until the first record
    with channel.open("ab") as f:
        f.write(b'{"kind": "summary", "step": "a", "text": "1"}\nnot json\n[1]\n{"kind": "sum')
    assert reader.read() == [{"kind": "summary", "step": "a", "text": "1"}]
    with channel.open("ab") as f:
        f.write(b'mary", "step": "b", "text": "2"}\n')
    assert reader.read() == [{"kind": "summary", "step": "b", "text": "2"}]
    assert reader.read() == []


def test_the_console_keeps_each_steps_reports_from_the_channel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = tmp_path / "channel.jsonl"
    monkeypatch.setenv(logs.CHANNEL_ENV, str(channel))
    out = io.StringIO()
    console = RunConsole(out, tmp_path / "logs", tty=False, channel=channel)
    timing = {"step": "split", "phases": {"data": 1.5}, "process_start": 1.0, "end": 3.0}
    _start(console, "split")
    console.write("    noise on stdout\n")
    logs.emit_summary("split", "3 splits, patient-disjoint")
    logs.emit_timing(timing)
    _end(console, "split")  # the end line reads the channel first: the summary is on it
    console.close()
    (step,) = console.steps
    assert step.timing == timing and step.summary == "3 splits, patient-disjoint"
    assert step.started_at > 0
    assert out.getvalue().splitlines()[-1].endswith("3 splits, patient-disjoint")
    log = (tmp_path / "logs" / "split.log").read_text().splitlines()
    assert log[0] == "noise on stdout"
    assert log[1] == "::cxrflow-summary:: split: 3 splits, patient-disjoint"
    assert log[2].startswith("::cxrflow-timing:: ") and json.loads(log[2][19:]) == timing


def test_the_console_keeps_steps_running_at_once_apart(tmp_path: Path) -> None:
    channel = tmp_path / "channel.jsonl"
    console = RunConsole(io.StringIO(), tmp_path / "logs", tty=False, channel=channel)
    _start(console, "model-0")
    _start(console, "model-1")
    lines = [
        {"kind": "summary", "step": "model_1", "text": "one"},
        {"kind": "timing", "step": "model_0", "report": {"step": "model_0", "seconds": 0.0}},
        {"kind": "summary", "step": "model_0", "text": "zero"},
    ]
    channel.write_text("".join(json.dumps(r) + "\n" for r in lines))
    _end(console, "model-1")
    _end(console, "model-0")
    # a late record (after the step's end) still lands on its step's record
    with channel.open("a") as f:
        f.write(json.dumps({"kind": "timing", "step": "model_1", "report": {"n": 1}}) + "\n")
    console.close()
    by_name = {s.name: s for s in console.steps}
    assert by_name["model_0"].summary == "zero" and by_name["model_1"].summary == "one"
    assert by_name["model_0"].timing == {"step": "model_0", "seconds": 0.0}
    assert by_name["model_1"].timing == {"n": 1}


def test_the_console_shows_progress_from_the_channel_while_following_it(tmp_path: Path) -> None:
    channel = tmp_path / "channel.jsonl"
    out = io.StringIO()
    console = RunConsole(out, tmp_path / "logs", tty=True, channel=channel)
    console.follow(interval=0.01)
    _start(console, "model-0")
    channel.write_text(
        json.dumps({"kind": "progress", "step": "model_0", "text": "head epoch 3/5 loss=0.4"})
        + "\n"
    )
    deadline = time.monotonic() + 10
    while "epoch 3/5" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "head epoch 3/5 loss=0.4" in out.getvalue()  # before the step ends
    _end(console, "model-0")
    console.close()
    assert "::cxrflow-progress:: model_0: head epoch 3/5 loss=0.4" in (
        (tmp_path / "logs" / "model_0.log").read_text()
    )
