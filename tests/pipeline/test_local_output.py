"""What a local kfp.local run prints and logs, on a tiny pipeline of two or three quick steps.

No ``from __future__ import annotations`` here: kfp reads the components' annotations as types.
"""

import io
import sys
from pathlib import Path

import pytest
from kfp import dsl

ROOT = Path(__file__).resolve().parents[2]

from pipelines.local import LocalRunResult, LocalStepError, run_local  # noqa: E402
from pipelines.progress import RunConsole, last_error_line, step_key  # noqa: E402

NOISE = ("noise on stdout", "noise on stderr")


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def prepare(n: int) -> int:
    """Print noise and a summary line."""
    import sys

    from cxrflow.logs import emit_summary

    print("noise on stdout")
    print("noise on stderr", file=sys.stderr)
    emit_summary("prepare", f"kept {n * 10} rows")
    return n * 10


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def train(rows: int) -> str:
    """Report progress the two ways a training step does, then a summary."""
    from cxrflow.logs import emit_progress, emit_summary

    for epoch in (1, 2):
        print(f"Epoch {epoch}/2")
        print("3/3 - 0s 5ms/step - accuracy: 0.5 - loss: 1.1 - val_accuracy: 0.4")
        emit_progress("train", f"epoch {epoch}/2 loss=1.1 val_accuracy=0.4")
    emit_summary("train", f"val_accuracy=0.40 on {rows} rows")
    return "model_1"


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def explode(rows: int) -> None:
    """Fail the way a step does."""
    print("noise on stdout")
    raise ValueError("boom: bad thing")


@dsl.pipeline(name="tiny")
def tiny(n: int = 2) -> str:
    rows = prepare(n=n).output
    return train(rows=rows).output


@dsl.pipeline(name="tiny-broken")
def tiny_broken(n: int = 2) -> None:
    explode(rows=prepare(n=n).output)


def _run(tmp: Path, pipeline, verbose: bool = False) -> tuple[LocalRunResult, str]:
    out = io.StringIO()
    before = sys.stdout, sys.stderr
    result = run_local(pipeline, {"n": 3}, tmp / "kfp", verbose=verbose, out=out)
    assert (sys.stdout, sys.stderr) == before
    return result, out.getvalue()


@pytest.fixture(scope="module")
def quiet_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalRunResult, str]:
    return _run(tmp_path_factory.mktemp("quiet"), tiny)


def test_console_shows_one_start_and_one_end_line_per_step(quiet_run) -> None:
    result, text = quiet_run
    lines = text.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["start", "prepare"],
        ["ok", "prepare"],
        ["start", "train"],
        ["ok", "train"],
        ["done", result.run_name],
    ]
    assert lines[1].endswith("kept 30 rows")
    assert lines[3].endswith("val_accuracy=0.40 on 30 rows")
    for hidden in (*NOISE, "executor_input", "KFP Executor", "Epoch", "{", "\x1b", "\r"):
        assert hidden not in text


def test_result_records_steps_champion_and_folders(quiet_run) -> None:
    result, text = quiet_run
    assert result.champion == "model_1"
    assert [(s.name, s.status) for s in result.steps] == [("prepare", "ok"), ("train", "ok")]
    assert all(s.seconds > 0 for s in result.steps)
    assert result.steps[0].summary == "kept 30 rows"
    # runs/kfp/<run>/... for kfp's outputs, runs/<run>/<step>.log for the logs
    assert result.run_dir == result.log_dir.parent / "kfp" / result.run_name
    assert result.run_dir.is_dir() and result.run_name.startswith("tiny-")
    assert result.log_dir.name == result.run_name
    assert str(result.log_dir) in text


def test_each_step_log_holds_its_full_output(quiet_run) -> None:
    result, _ = quiet_run
    assert sorted(p.name for p in result.log_dir.iterdir()) == [
        "pipeline.log",
        "prepare.log",
        "steps.json",
        "train.log",
        "warm-server.log",
    ]
    prepare_log = (result.log_dir / "prepare.log").read_text()
    for noise in NOISE:
        assert noise in prepare_log
    assert "executor_input" in prepare_log
    assert "::cxrflow-summary:: prepare: kept 30 rows" in prepare_log
    train_log = (result.log_dir / "train.log").read_text()
    assert "Epoch 2/2" in train_log and "noise" not in train_log
    assert "Executing task" in (result.log_dir / "pipeline.log").read_text()


def test_verbose_streams_everything_and_still_logs(tmp_path: Path) -> None:
    result, text = _run(tmp_path, tiny, verbose=True)
    for noise in (*NOISE, "executor_input", "Executing task"):
        assert noise in text
    assert "noise on stdout" in (result.log_dir / "prepare.log").read_text()


def test_failed_step_raises_one_line_naming_step_error_and_log(tmp_path: Path) -> None:
    out = io.StringIO()
    before = sys.stdout, sys.stderr
    with pytest.raises(LocalStepError) as caught:
        run_local(tiny_broken, {"n": 3}, tmp_path / "kfp", out=out)
    assert (sys.stdout, sys.stderr) == before
    err = caught.value
    message = str(err)
    assert "\n" not in message
    assert "explode" in message
    assert "ValueError: boom: bad thing" in message
    assert str(err.log_path) in message
    assert err.step == "explode"
    assert err.log_path == tmp_path / err.log_path.parent.name / "explode.log"
    log = err.log_path.read_text()
    assert "Traceback" in log and "noise on stdout" in log
    lines = out.getvalue().splitlines()
    assert lines[-1].split()[:2] == ["FAILED", "explode"]
    assert lines[-1].endswith("ValueError: boom: bad thing")
    assert len(lines) == 4


def _feed(
    console: RunConsole, task: str, body: list[str], reports: list[dict[str, str]] | None = None
) -> None:
    console.write(f"12:00:00.000 - INFO - Executing task \x1b[96m'{task}'\x1b[0m\n")
    console.write("".join(f"    {line}\n" for line in body))
    for report in reports or []:  # what the step sent through the runner's channel
        console.take(report)
    console.write(
        f"12:00:01.000 - INFO - Task \x1b[96m'{task}'\x1b[0m finished with status "
        "\x1b[92mSUCCESS\x1b[0m\n"
    )


def test_progress_rewrites_one_line_on_a_terminal(tmp_path: Path) -> None:
    out = io.StringIO()
    console = RunConsole(out, tmp_path / "logs", tty=True)
    keras = ["Epoch 1/5", "2/2 - 0s - accuracy: 0.5 - loss: 1.1", "Epoch 2/5"]
    _feed(console, "model-0", keras)
    console.close()
    text = out.getvalue()
    assert "\r\x1b[K" in text
    assert "epoch 1/5 accuracy=0.5 loss=1.1" in text
    shown = [line.rsplit("\r\x1b[K", 1)[-1] for line in text.split("\n") if line]
    assert [line.split()[:2] for line in shown] == [["start", "model_0"], ["ok", "model_0"]]
    assert (tmp_path / "logs" / "model_0.log").read_text().splitlines() == keras


def test_no_progress_lines_for_quick_steps_without_a_terminal(tmp_path: Path) -> None:
    out = io.StringIO()
    console = RunConsole(out, tmp_path / "logs", tty=False)
    progress = [{"kind": "progress", "step": "model_1", "text": f"epoch {e}/40"} for e in (1, 2)]
    _feed(console, "model-1", [], progress)
    console.close()
    assert len(out.getvalue().splitlines()) == 2


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["Traceback (most recent call last):", "ValueError: boom", ""], "ValueError: boom"),
        (
            ["x", "pkg.DataValidationError: 3 rows failed", "bye"],
            "pkg.DataValidationError: 3 rows failed",
        ),
        (["usage: cxrflow ...", "cxrflow: error: no profile x"], "cxrflow: error: no profile x"),
        (
            ["12:00 ERROR cxrflow.train: out of memory", "bye"],
            "12:00 ERROR cxrflow.train: out of memory",
        ),
        (["starting", "killed", "  "], "killed"),
    ],
)
def test_last_error_line(lines: list[str], expected: str) -> None:
    assert last_error_line(lines) == expected


def test_step_key_maps_kfp_task_names_back() -> None:
    assert step_key("model-0") == "model_0"
    assert step_key("ingest") == "ingest"


def test_streams_restored_and_other_errors_pass_through(tmp_path: Path) -> None:
    def interrupted() -> None:
        print("half a line", end="")
        raise KeyboardInterrupt

    def broken() -> None:
        raise RuntimeError("not a step")

    before = sys.stdout, sys.stderr
    with pytest.raises(KeyboardInterrupt):
        run_local(interrupted, {}, tmp_path / "kfp", out=io.StringIO())
    assert (sys.stdout, sys.stderr) == before
    with pytest.raises(RuntimeError, match="not a step"):
        run_local(broken, {}, tmp_path / "kfp", out=io.StringIO())
    assert (sys.stdout, sys.stderr) == before
