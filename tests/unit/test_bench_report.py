"""The benchmark report: the Performance table from sample JSON, and the step timings behind it.

``bench/report.py`` turns ``bench/results/*.json`` into the table of ``docs/performance.md``
between two markers; ``bench/overhead.py`` splits a local run's wall time using the timing line each
step writes (:class:`cxrflow.steps.StepTimes`), which the local runner keeps per step.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


SIBLINGS = ("report", "inference")
"""Bench modules other bench scripts import as siblings (bench/ is their script directory)."""


def _load(name: str) -> ModuleType:
    # registered under their own names, with no sys.path edit
    module_name = name if name in SIBLINGS else f"bench_{name}"
    if name != "report" and "report" not in sys.modules:
        _load("report")
    if name == "int8_trained" and "inference" not in sys.modules:
        _load("inference")
    spec = importlib.util.spec_from_file_location(module_name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    if name in SIBLINGS:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


report = _load("report")

MACHINE = {"cpus": 2, "cpu_model": "Test CPU @ 2GHz", "python": "3.11", "platform": "Linux"}

INPUT_PIPELINE: dict[str, Any] = {
    "benchmark": "input_pipeline",
    "quick": False,
    "machine": MACHINE,
    "image_size": 224,
    "batch_size": 20,
    "rates": {
        "produced_images_per_s": {
            "decode_every_epoch": 61.0,
            "decode_once_to_disk": 64.0,
            "streamed_from_disk": 2450.0,
            "in_memory_arrays": 3100.0,
        },
        "consumed_images_per_s": {
            "train_step_from_memory": 40.0,
            "train_step_fed_by_stream": 39.0,
        },
        "headroom": {"streamed_from_disk": 61.25, "decode_every_epoch": 1.525},
        "stall_fraction": 0.025,
    },
    "memory": {
        "runs": [],
        "array_mb_per_1k_images": 140.0,
        "stream_mb_per_1k_images": 2.0,
        "array_peak_rss_mb_at_100k_extrapolated": 14800.0,
        "stream_peak_rss_mb_at_100k_extrapolated": 900.0,
    },
    "verdict": {
        "headroom": 61.25,
        "headroom_ok": True,
        "headroom_decode_every_epoch": 1.525,
        "stall_fraction": 0.025,
        "step_never_waits": True,
        "peak_rss_array_mb": 2300.0,
        "peak_rss_stream_mb": 720.0,
        "peak_rss_ratio_array_vs_stream": 3.19,
        "stream_rss_flat": True,
        "min_headroom": 3.0,
        "max_stall": 0.15,
        "at_images": 17520,
    },
    "when": "2026-12-01T10:00:00",
}

OVERHEAD: dict[str, Any] = {
    "benchmark": "overhead",
    "profile": "demo",
    "quick": False,
    "machine": MACHINE,
    "wall_s": 1000.0,
    "compute_s": {"train": 700.0, "evaluate": 90.0, "audit": 60.0, "total": 850.0},
    "overhead_share": 0.15,
    "overhead_breakdown_s": {
        "process_start_imports": 70.0,
        "data": 40.0,
        "model_io": 10.0,
        "tracking": 25.0,
        "other_in_steps": 1.0,
        "cli_and_runner": 4.0,
    },
    "verdict": {"overhead_share": 0.15, "overhead_ok": True, "max_overhead_share": 0.15},
    "when": "2026-12-01T11:00:00",
}

INGEST_SCALE: dict[str, Any] = {
    "benchmark": "ingest_scale",
    "machine": MACHINE,
    "results": [
        {
            "scale": n,
            "seconds": s,
            "images_per_s": n / s,
            "considered": n,
            "peak_rss_tree_mb": rss,
            "ingest": {"seconds": s, "images_per_s": n / s, "peak_rss_tree_mb": rss},
            "validate": {"seconds": 2.0, "images_per_s": n / 2.0, "peak_rss_tree_mb": 300.0},
            "split": {"seconds": 1.5, "images_per_s": n / 1.5, "peak_rss_tree_mb": 250.0},
        }
        for n, s, rss in ((1000, 3.0, 270.0), (100000, 60.0, 2000.0))
    ],
    "verdict": {
        "throughput_ratio_largest_vs_smallest": 5.0,
        "throughput_ratio_by_stage": {"ingest": 5.0, "validate": 100.0, "split": 100.0},
        "linear": True,
        "rss_limit_mb": 1536.0,
    },
    "when": "2026-12-01T12:00:00",
}


def _write(results: Path, *docs: dict[str, Any]) -> None:
    results.mkdir(parents=True, exist_ok=True)
    for doc in docs:
        (results / f"{doc['benchmark']}.json").write_text(json.dumps(doc))


def test_table_from_sample_results(tmp_path: Path) -> None:
    _write(tmp_path, INPUT_PIPELINE, OVERHEAD, INGEST_SCALE)
    block = report.render(report.load_results(tmp_path))
    assert "2 CPUs (Test CPU @ 2GHz), no GPU, 2026-12-01." in block
    lines = [line for line in block.splitlines() if line.startswith("| ")]
    header, rows = lines[0], lines[1:]
    assert header == "| benchmark | what | measured | target | ok |"
    assert all(row.count("|") == header.count("|") for row in rows)
    # in the order make bench runs them, each named once
    firsts = [row.split("|")[1].strip() for row in rows if row.split("|")[1].strip()]
    assert firsts == ["input_pipeline", "overhead", "ingest_scale"]
    assert "2,450 vs 40.0: **61.2x**" in block  # streamed vs consumed, headroom
    assert "2,300 vs 720 MB (3.2x)" in block
    assert "14,800 vs 900 MB" in block
    assert "1,000 s vs 850 s" in block and "**15.0 % overhead**" in block
    assert "process start + imports 70 s" in block and "MLflow 25 s" in block
    # 100k is over the RSS limit in this sample: that row says no, the others yes
    big = next(row for row in rows if "100,000 phantom images" in row)
    assert big.endswith("| **no** |")
    assert "validate 2.0 s, 300 MB" in big
    # the missing benchmark is named in a note, not a row
    assert "`inference`: no result yet (`bench/results/inference.json` is missing)." in block
    assert "inference |" not in block


def test_unknown_benchmark_shows_its_verdict_and_quick_runs_are_marked(tmp_path: Path) -> None:
    other = {
        "benchmark": "gpu_training",
        "quick": True,
        "when": "2026-12-02T09:00:00",
        "verdict": {"int8_ms_per_image": 31.5, "accuracy_drop_ok": True, "note": "k80 target"},
    }
    _write(tmp_path, other, {**OVERHEAD, "quick": True})
    (tmp_path / "broken.json").write_text("{not json")
    block = report.render(report.load_results(tmp_path))
    assert "| gpu_training (quick) | int8_ms_per_image | 32 |  |  |" in block
    assert "| accuracy_drop_ok |  |  | yes |" in block
    assert "| note | k80 target |  |  |" in block
    assert "`overhead` ran its quick variant" in block
    assert "2026-12-01 to 2026-12-02" in block
    assert "`input_pipeline`: no result yet" in block
    assert "`inference`: no result yet" in block


def test_inference_rows_from_its_target(tmp_path: Path) -> None:
    inference = {
        "benchmark": "inference",
        "machine": {"cpu_count": 2, "cpu_model": "AMD EPYC", "gpus": []},
        "target": {
            "model": "resnet50",
            "engine": "ort_int8",
            "ms_per_image_batch1": 38.26,
            "ms_per_image_batched": 20.0,
            "tf_fp32_ms_per_image_batch1": 90.0,
            "limit_ms": 42.7,
            "latency_met": True,
            "accuracy_drop_points": 0.5,
            "max_drop_points": 1.0,
            "accuracy_met": True,
            "accuracy_representative": True,
            "small_cnn_accuracy_drop_points": {"value": 0.83, "ci95_low": 0.0, "ci95_high": 1.93},
            "small_cnn_accuracy_met": True,
        },
        "verdict": {
            "fp32_gemm_gflops": 187.4,
            "resnet50_tf_fp32_fraction_of_gemm": 0.826,
            "small_cnn_tf_fp32_fraction_of_gemm": 0.848,
        },
        "when": "2026-12-01T09:00:00",
    }
    _write(tmp_path, inference)
    block = report.render(report.load_results(tmp_path))
    assert "on 2 CPUs (AMD EPYC), no GPU" in block
    assert (
        "| inference | resnet50 ort_int8: ms/image at batch 1 (batched), vs the paper's K80 | "
        "38.3 (20.0); TensorFlow fp32 90.0 | <= 42.7 ms | yes |"
    ) in block
    assert "| accuracy lost by ort_int8, points | 0.5 | <= 1.0 | yes |" in block
    assert (
        "| accuracy lost by ort_int8 on the trained small CNN, points [95 % CI] | 0.8 [0.0, 1.9] "
        "| <= 1.0 | yes |"
    ) in block
    assert "resnet50 0.83, small_cnn 0.85 (GEMM 187 GFLOP/s)" in block
    inference["target"]["accuracy_representative"] = False
    _write(tmp_path, inference)
    block = report.render(report.load_results(tmp_path))
    assert "points (random backbone without ImageNet weights: not representative) | 0.5" in block


def test_a_result_of_an_unexpected_shape_becomes_a_note(tmp_path: Path) -> None:
    _write(tmp_path, {"benchmark": "overhead", "verdict": {}})
    block = report.render(report.load_results(tmp_path))
    assert "`overhead.json` could not be read as expected" in block


def test_readme_changes_only_between_the_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    before = "# x\n\n## Performance\n\nintro\n\n"
    after = "\n\n## Layout\n\nrest\n"
    readme.write_text(before + f"{report.BEGIN}\nold table\n{report.END}" + after)
    assert report.update_readme(readme, "new table\n")
    text = readme.read_text()
    assert text == before + f"{report.BEGIN}\nnew table\n{report.END}" + after
    assert not report.update_readme(readme, "new table\n")  # idempotent
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="bench:begin"):
        report.update_readme(readme, "x")


def test_main_writes_the_readme(tmp_path: Path) -> None:
    _write(tmp_path / "results", INGEST_SCALE)
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{report.BEGIN}\n{report.END}\nb\n")
    args = ["--results", str(tmp_path / "results"), "--readme", str(readme)]
    assert report.main(args) == 0
    assert "data steps at 1,000 phantom images" in readme.read_text()


def test_the_default_output_is_docs_performance_with_its_markers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[Path] = []
    monkeypatch.setattr(report, "update_readme", lambda path, block: written.append(path))
    assert report.main(["--results", str(tmp_path)]) == 0
    assert written == [BENCH.parent / "docs" / "performance.md"]
    text = written[0].read_text()
    assert 0 <= text.find(report.BEGIN) < text.find(report.END)


# ------------------------------------------------------------------ the timings behind it


def test_step_times_nest_exclusively() -> None:
    from cxrflow.steps import StepTimes

    times = StepTimes("model_0")
    with times.phase("compute"):
        time.sleep(0.05)
        with times.phase("tracking"):
            time.sleep(0.05)
        time.sleep(0.02)
    rep = times.report()
    ph = rep["phases"]
    assert ph["compute"] == pytest.approx(0.07, abs=0.03)
    assert ph["tracking"] == pytest.approx(0.05, abs=0.03)
    assert sum(v for k, v in ph.items() if k != "startup") == pytest.approx(
        rep["seconds"], abs=0.01
    )
    assert rep["process_start"] <= rep["entry"] <= rep["end"]


def test_timed_module_counts_calls_and_context_managers() -> None:
    from contextlib import contextmanager

    from cxrflow.steps import StepTimes

    class Fake:
        TAG = "kept"

        @staticmethod
        def call() -> int:
            time.sleep(0.03)
            return 7

        @staticmethod
        @contextmanager
        def run() -> Any:
            time.sleep(0.03)
            yield "id"
            time.sleep(0.03)

    times = StepTimes("x")
    fake = times.timed(Fake, "tracking")
    assert fake.TAG == "kept" and fake.call() == 7
    with fake.run() as run_id:
        assert run_id == "id"
        time.sleep(0.05)  # the body is not tracking
    assert times.seconds["tracking"] == pytest.approx(0.09, abs=0.03)


def test_the_runner_keeps_each_steps_timing_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cxrflow import logs
    from pipelines.progress import RunConsole

    channel = tmp_path / "channel.jsonl"  # a step's timing reaches the runner through it
    monkeypatch.setenv(logs.CHANNEL_ENV, str(channel))
    console = RunConsole(io.StringIO(), tmp_path / "logs", tty=False, channel=channel)
    timing = {"step": "split", "phases": {"data": 1.5}, "process_start": 1.0, "end": 3.0}
    console.write("17:00:00.000 - INFO - Executing task 'split'\n")
    logs.emit_timing(timing)
    console.write("17:00:04.000 - INFO - Task 'split' finished with status SUCCESS\n")
    console.close()
    (step,) = console.steps
    assert step.timing == timing
    assert step.started_at > 0


def test_overhead_breakdown_from_a_runs_steps_json() -> None:
    overhead = _load("overhead")

    def step(name: str, start: float, seconds: float, phases: dict[str, float]) -> dict:
        timing = {
            "process_start": start + 0.5,  # kfp took 0.5 s to start the process
            "entry": start + 0.5 + phases.get("startup", 0.0),
            "end": start + seconds - 1.0,  # 1 s of teardown after the step returned
            "phases": phases,
        }
        return {"name": name, "status": "ok", "seconds": seconds, "started_at": start,
                "timing": timing}  # fmt: skip

    doc = {
        "steps": [
            step("ingest", 0.0, 10.0, {"startup": 1.0, "data": 6.0, "tracking": 1.5}),
            step(
                "model_0",
                10.0,
                50.0,
                {"startup": 1.0, "imports": 4.0, "compute": 40.0, "tracking": 2.0, "other": 1.5},
            ),
            step("evaluate", 60.0, 20.0, {"startup": 1.0, "compute": 15.0, "model_io": 2.5}),
            {"name": "finalize", "status": "ok", "seconds": 3.0, "started_at": 80.0},
        ]
    }
    r = overhead.breakdown(90.0, doc)
    assert r["compute_s"] == {"train": 40.0, "evaluate": 15.0, "audit": 0.0, "total": 55.0}
    assert r["overhead_share"] == pytest.approx(35.0 / 90.0)
    parts = r["overhead_breakdown_s"]
    # per step: 0.5 s dispatch + startup + imports + 1 s teardown
    assert parts["process_start_imports"] == pytest.approx(2.5 + 6.5 + 2.5)
    assert parts["data"] == 6.0 and parts["tracking"] == 3.5 and parts["model_io"] == 2.5
    assert parts["other_in_steps"] == pytest.approx(1.5 + 3.0)  # + the step with no timing
    assert parts["cli_and_runner"] == pytest.approx(90.0 - 83.0)
    assert sum(parts.values()) == pytest.approx(r["overhead_s"])


@pytest.mark.parametrize(
    ("body", "code"),
    [("pass", 0), ("sys.exit(3)", 3), ("raise ValueError('boom')", 1)],
)
def test_skipping_the_final_gc_keeps_the_exit_status_and_handlers(
    tmp_path: Path, body: str, code: int
) -> None:
    """The overhead cut in every step process: exit handlers still run, the status is kept."""
    import subprocess

    out = tmp_path / "handler.txt"
    script = "\n".join(
        [
            "import atexit, sys",
            "from cxrflow.steps import exit_without_final_gc",
            "exit_without_final_gc()",
            f"atexit.register(lambda: open({str(out)!r}, 'w').write('ran'))",
            body,
        ]
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == code, proc.stderr
    assert out.read_text() == "ran"


def test_a_benchmark_that_failed_in_the_run_is_noted(tmp_path: Path) -> None:
    _write(tmp_path, OVERHEAD)
    failed = {"overhead": "exit 1 (900 s)", "input_pipeline": "exit 2 (3 s)"}
    block = report.render(report.load_results(tmp_path), failed)
    assert "`overhead` failed in this run (exit 1 (900 s)); its rows are from its JSON" in block
    assert "`input_pipeline` failed in this run (exit 2 (3 s)); no rows." in block
    assert "**15.0 % overhead**" in block  # the JSON's rows are still shown


def test_the_int8_check_on_a_trained_resnet50_is_tabulated_with_its_interval() -> None:
    doc = {
        "benchmark": "int8_trained",
        "when": "2026-12-07T05:15:00+00:00",
        "machine": MACHINE,
        "target": {
            "model": "model_5",
            "engine": "ort_int8",
            "image_size": 96,
            "ms_per_image_batch1": 6.2,
            "ms_per_image_batched": 3.1,
            "tf_fp32_ms_per_image_batch1": 30.5,
            "accuracy_drop_points": {"value": 0.34, "ci95_low": -0.7, "ci95_high": 1.4},
            "max_drop_points": 1.0,
            "accuracy_met": True,
            "n_test": 290,
            "n_test_patients": 250,
        },
        "verdict": {"accuracy_met": True},
    }
    rows = report.RENDERERS["int8_trained"](doc)
    assert rows[0] == (
        "accuracy lost by ort_int8 on model_5 (trained ResNet-50, 96 px), 290 test images of "
        "250 patients (`bench/int8_trained.py` on Test CPU @ 2GHz, 2026-12-07), points [95 % CI]",
        "0.3 [-0.7, 1.4]",
        "<= 1.0",
        report._ok(True),
    )
    assert rows[1][1] == "6.2 (3.1); TensorFlow fp32 30.5"
    assert "int8_trained" not in report.EXPECTED  # it needs a finished real-data run


def test_the_int8_bench_finds_a_runs_trained_model(tmp_path: Path) -> None:
    int8 = _load("int8_trained")
    (tmp_path / "model-5" / "model").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no trained model_5"):
        int8.model_dir(tmp_path, "model_5")
    (tmp_path / "model-5" / "model" / "model.keras").write_bytes(b"x")
    assert int8.model_dir(tmp_path, "model_5") == tmp_path / "model-5" / "model"
