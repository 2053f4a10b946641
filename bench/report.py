"""Turn ``bench/results/*.json`` into the Performance table of ``docs/performance.md``.

The table goes between ``<!-- bench:begin -->`` and ``<!-- bench:end -->`` in that file (nothing
else in the file changes). One block of rows per benchmark, with its target and verdict as the
JSON states them; a benchmark whose JSON is missing is named in a note instead. Benchmarks this
module does not know get their ``verdict`` entries as rows.

Usage: ``python bench/report.py [--results DIR] [--output PATH] [--print]`` (``--readme`` is an
older name of ``--output``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cxrflow.tables import format_table

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
OTHER_MACHINE = ("gpu",)
"""Benchmarks run elsewhere (``bench/gpu.sh``): not expected here, not in the header's hardware."""
EXPECTED = ("inference", "input_pipeline", "overhead", "ingest_scale")
"""The benchmarks ``make bench`` runs, in table order (bench/run.py)."""

Row = tuple[str, str, str, str]  # what, measured, target, verdict


def machine_info() -> dict[str, Any]:
    """This machine, for a benchmark's JSON: CPUs, CPU model, Python, platform."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        # other processes' load: absolute times mean little when it is high
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def write_result(out: str | Path, doc: Mapping[str, Any], show: str | None = "verdict") -> Path:
    """Write a benchmark's JSON to ``out`` (folders created) and print ``doc[show]``."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    if show is not None:
        print(json.dumps(doc[show], indent=2))
    return path


def load_results(results_dir: Path) -> dict[str, dict[str, Any]]:
    """Every ``<name>.json`` in ``results_dir`` (unreadable files are skipped with a note)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(results_dir.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except ValueError as exc:
            print(f"report: skipping {path.name}: {exc}", file=sys.stderr)
            continue
        if isinstance(doc, dict):
            out[str(doc.get("benchmark") or path.stem)] = doc
    return out


def _ok(flag: Any) -> str:
    if flag is None:
        return ""
    return "yes" if flag else "**no**"


def _num(x: Any, digits: int = 0) -> str:
    if x is None:
        return "n/a"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if abs(v) >= 1000 and digits == 0:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * float(x):.1f} %"


def rows_input_pipeline(doc: Mapping[str, Any]) -> list[Row]:
    """Headroom of the streamed input over a training step, stalls, peak RSS."""
    rates, verdict, mem = doc["rates"], doc["verdict"], doc["memory"]
    prod, cons = rates["produced_images_per_s"], rates["consumed_images_per_s"]
    step = cons["train_step_from_memory"]
    size, batch = doc.get("image_size", 224), doc.get("batch_size", 20)
    rows: list[Row] = [
        (
            f"streamed from disk vs a Model_0 training step ({size} px, batch {batch}), images/s",
            f"{_num(prod['streamed_from_disk'])} vs {_num(step, 1)}: "
            f"**{_num(verdict['headroom'], 1)}x**",
            f">= {_num(verdict['min_headroom'])}x",
            _ok(verdict["headroom_ok"]),
        ),
        (
            "decoding every epoch instead (not used) vs the step, images/s",
            f"{_num(prod['decode_every_epoch'])} vs {_num(step, 1)}: "
            f"{_num(verdict['headroom_decode_every_epoch'], 1)}x",
            "",
            "",
        ),
        (
            "a step fed by the stream vs fed from memory, taking turns (stall: 1 - the median "
            "per-round ratio)",
            f"medians {_num(cons['train_step_fed_by_stream'], 1)} vs {_num(step, 1)} images/s; "
            f"stall {_pct(verdict['stall_fraction'])}",
            f"<= {_pct(verdict['max_stall'])}",
            _ok(verdict["step_never_waits"]),
        ),
        (
            f"training peak RSS at {_num(verdict['at_images'])} images: in memory vs streamed",
            f"{_num(verdict['peak_rss_array_mb'])} vs {_num(verdict['peak_rss_stream_mb'])} MB "
            f"({_num(verdict['peak_rss_ratio_array_vs_stream'], 1)}x)",
            "streamed flat in N",
            _ok(verdict["stream_rss_flat"]),
        ),
    ]
    if "array_peak_rss_mb_at_100k_extrapolated" in mem:
        rows.append(
            (
                "training peak RSS at 100k images, extrapolated: in memory vs streamed",
                f"{_num(mem['array_peak_rss_mb_at_100k_extrapolated'])} vs "
                f"{_num(mem['stream_peak_rss_mb_at_100k_extrapolated'])} MB "
                f"({_num(mem['array_mb_per_1k_images'])} vs "
                f"{_num(mem['stream_mb_per_1k_images'])} MB per 1k images)",
                "",
                "",
            )
        )
    return rows


def rows_overhead(doc: Mapping[str, Any]) -> list[Row]:
    """``make run`` wall time against the compute inside its steps, and where the rest goes."""
    c, parts = doc["compute_s"], doc["overhead_breakdown_s"]
    verdict = doc["verdict"]
    names = {
        "process_start_imports": "process start + imports",
        "data": "data work",
        "model_io": "model save/load",
        "tracking": "MLflow",
        "cli_and_runner": "CLI + runner",
        "other_in_steps": "other",
    }
    detail = ", ".join(f"{names.get(k, k)} {_num(v)} s" for k, v in parts.items())
    return [
        (
            f"`make run` ({doc.get('profile', 'demo')} profile): wall vs compute "
            "(training + evaluation + audit)",
            f"{_num(doc['wall_s'])} s vs {_num(c['total'])} s (train {_num(c['train'])}, "
            f"evaluate {_num(c['evaluate'])}, audit {_num(c['audit'])}): "
            f"**{_pct(doc['overhead_share'])} overhead**",
            f"<= {_pct(verdict['max_overhead_share'])}",
            _ok(verdict["overhead_ok"]),
        ),
        ("`make run` overhead, by kind", detail, "", ""),
    ]


def rows_ingest_scale(doc: Mapping[str, Any]) -> list[Row]:
    """Per size: seconds and peak RSS of ingest, validate and split."""
    verdict = doc["verdict"]
    rows: list[Row] = []
    for r in doc["results"]:
        stages = [s for s in ("ingest", "validate", "split") if isinstance(r.get(s), dict)]
        if stages:
            measured = "; ".join(
                f"{s} {_num(r[s]['seconds'], 1)} s, {_num(r[s]['peak_rss_tree_mb'])} MB"
                for s in stages
            )
        else:  # an older result: ingest only
            measured = f"ingest {_num(r['seconds'], 1)} s, {_num(r['peak_rss_tree_mb'])} MB"
        rows.append(
            (
                f"data steps at {_num(r['scale'])} phantom images: time, peak RSS",
                measured,
                f"< {_num(verdict['rss_limit_mb'])} MB",
                _ok(r["peak_rss_tree_mb"] < verdict["rss_limit_mb"]),
            )
        )
    ratios = verdict.get("throughput_ratio_by_stage") or {
        "ingest": verdict["throughput_ratio_largest_vs_smallest"]
    }
    rows.append(
        (
            "data steps: throughput at the largest vs the smallest size",
            ", ".join(f"{s} {_num(v, 2)}x" for s, v in ratios.items()),
            ">= 0.5x (linear)",
            _ok(verdict["linear"]),
        )
    )
    return rows


def rows_inference(doc: Mapping[str, Any]) -> list[Row]:
    """ms/image of the served model against the paper's K80, and the accuracy it costs."""
    t = doc["target"]
    model, engine = t["model"], t["engine"]
    rows: list[Row] = [
        (
            f"{model} {engine}: ms/image at batch 1 (batched), vs the paper's K80",
            f"{_num(t['ms_per_image_batch1'], 1)} ({_num(t.get('ms_per_image_batched'), 1)})"
            + (
                f"; TensorFlow fp32 {_num(t['tf_fp32_ms_per_image_batch1'], 1)}"
                if t.get("tf_fp32_ms_per_image_batch1") is not None
                else ""
            ),
            f"<= {_num(t['limit_ms'], 1)} ms",
            _ok(t.get("latency_met")),
        ),
        (
            f"accuracy lost by {engine}, points"
            + (
                ""
                if t.get("accuracy_representative", True)
                else " (random backbone without ImageNet weights: not representative)"
            ),
            _num(t["accuracy_drop_points"], 1),
            f"<= {_num(t['max_drop_points'], 1)}",
            _ok(t.get("accuracy_met")),
        ),
    ]
    small = t.get("small_cnn_accuracy_drop_points")
    if isinstance(small, Mapping):
        rows.append(
            (
                f"accuracy lost by {engine} on the trained small CNN, points [95 % CI]",
                f"{_num(small['value'], 1)} [{_num(small.get('ci95_low'), 1)}, "
                f"{_num(small.get('ci95_high'), 1)}]",
                f"<= {_num(t['max_drop_points'], 1)}",
                _ok(t.get("small_cnn_accuracy_met")),
            )
        )
    v = doc.get("verdict") or {}
    if v.get("fp32_gemm_gflops"):
        fractions = ", ".join(
            f"{m} {_num(v[f'{m}_tf_fp32_fraction_of_gemm'], 2)}"
            for m in ("resnet50", "small_cnn")
            if v.get(f"{m}_tf_fp32_fraction_of_gemm") is not None
        )
        rows.append(
            (
                "TensorFlow fp32 FLOP/s (batched) as a fraction of this machine's fp32 GEMM",
                f"{fractions} (GEMM {_num(v['fp32_gemm_gflops'])} GFLOP/s)",
                "",
                "",
            )
        )
    return rows


def rows_int8_trained(doc: Mapping[str, Any]) -> list[Row]:
    """``bench/int8_trained.py``: int8 against fp32 on a network a pipeline run trained."""
    t = doc["target"]
    drop = t["accuracy_drop_points"]
    machine = doc.get("machine") or {}
    ran = f"`bench/int8_trained.py` on {machine.get('cpu_model') or 'an unrecorded CPU'}" + (
        f", {str(doc['when'])[:10]}" if doc.get("when") else ""
    )
    where = (
        f"{t['model']} (trained ResNet-50, {t['image_size']} px), {t['n_test']} test images of "
        f"{t['n_test_patients']} patients ({ran})"
    )
    return [
        (
            f"accuracy lost by {t['engine']} on {where}, points [95 % CI]",
            f"{_num(drop['value'], 1)} [{_num(drop.get('ci95_low'), 1)}, "
            f"{_num(drop.get('ci95_high'), 1)}]",
            f"<= {_num(t['max_drop_points'], 1)}",
            _ok(t.get("accuracy_met")),
        ),
        (
            f"{t['model']} {t['engine']}: ms/image at batch 1 (batched), {t['image_size']} px",
            f"{_num(t['ms_per_image_batch1'], 1)} ({_num(t['ms_per_image_batched'], 1)}); "
            f"TensorFlow fp32 {_num(t['tf_fp32_ms_per_image_batch1'], 1)}",
            "",
            "",
        ),
    ]


def rows_generic(doc: Mapping[str, Any]) -> list[Row]:
    """A benchmark this module does not know: its verdict's (or target's) entries."""
    verdict = doc.get("verdict", doc.get("target"))
    if not isinstance(verdict, Mapping):
        return [("(no verdict in the JSON)", "", "", "")]
    rows: list[Row] = []
    for key, value in verdict.items():
        if isinstance(value, bool):
            rows.append((key, "", "", _ok(value)))
        elif isinstance(value, int | float):
            rows.append((key, _num(value, 3 if abs(value) < 10 else 0), "", ""))
        elif isinstance(value, str):
            rows.append((key, value, "", ""))
    return rows


def rows_gpu(doc: Mapping[str, Any]) -> list[Row]:
    """``bench/gpu.sh`` (another machine): training img/s fp32 vs mixed precision, latency."""
    device = doc.get("device") or "GPU"
    cpus = (doc.get("machine") or {}).get("cpus")
    where = f"on {device}" + (f" ({cpus} CPUs)" if cpus else "") + f", {str(doc.get('when'))[:10]}"
    rows: list[Row] = []
    for arch, m in doc["models"].items():
        for key, speedup in m["mixed_speedup_train"].items():
            fp32 = m["train"][f"float32_{key}"]["images_per_s"]
            mixed = m["train"][f"mixed_float16_{key}"]["images_per_s"]
            rows.append(
                (
                    f"{arch} training img/s {key.replace('batch', 'batch ')}, fp32 / mixed "
                    f"precision {where}",
                    f"{_num(fp32)} / {_num(mixed)} ({_num(speedup, 2)}x)",
                    "",
                    "",
                )
            )
        inf = m["inference"]
        rows.append(
            (
                f"{arch} inference ms/image at batch 1 (batched), fp32 / mixed {where}",
                f"{_num(inf['float32']['batch1_mean_ms'], 2)} "
                f"({_num(inf['float32']['batched_mean_ms'], 2)}) / "
                f"{_num(inf['mixed_float16']['batch1_mean_ms'], 2)} "
                f"({_num(inf['mixed_float16']['batched_mean_ms'], 2)})",
                "",
                "",
            )
        )
    return rows


RENDERERS: dict[str, Callable[[Mapping[str, Any]], list[Row]]] = {
    "gpu": rows_gpu,
    "inference": rows_inference,
    "int8_trained": rows_int8_trained,
    "input_pipeline": rows_input_pipeline,
    "overhead": rows_overhead,
    "ingest_scale": rows_ingest_scale,
}


def render(
    results: Mapping[str, Mapping[str, Any]], failed: Mapping[str, str] | None = None
) -> str:
    """The Markdown between the markers: hardware and date, the table, notes.

    Args:
        results: Benchmark name -> its JSON.
        failed: Benchmarks that failed in the ``make bench`` run making this table -> how.
    """
    names = [n for n in EXPECTED if n in results] + sorted(set(results) - set(EXPECTED))
    notes: list[str] = []
    table: list[list[str]] = []
    for name in names:
        doc = results[name]
        try:
            rows = RENDERERS.get(name, rows_generic)(doc)
        except (KeyError, TypeError, ValueError) as exc:
            notes.append(f"`{name}.json` could not be read as expected ({exc!r}).")
            continue
        label = f"{name}" + (" (quick)" if doc.get("quick") else "")
        table += [[label if i == 0 else "", *row] for i, row in enumerate(rows)]
        if doc.get("quick"):
            notes.append(f"`{name}` ran its quick variant: smaller sizes, not the reference run.")
    for name in EXPECTED:
        if name not in results:
            notes.append(f"`{name}`: no result yet (`bench/results/{name}.json` is missing).")
    for name, how in (failed or {}).items():
        notes.append(
            f"`{name}` failed in this run ({how}); "
            + ("its rows are from its JSON as it stands." if name in results else "no rows.")
        )
    # the GPU benchmark runs on another machine: its rows name it; the header is this one's
    machines = [d.get("machine") or {} for n, d in results.items() if n not in OTHER_MACHINE]
    whens = sorted(
        str(d["when"]) for n, d in results.items() if d.get("when") and n not in OTHER_MACHINE
    )
    hw = _hardware(machines)
    load = _load(machines)
    busy = f" (1-minute load average up to {load:.1f} while they ran)" if load else ""
    head = [
        textwrap.fill(
            f"Measured by `make bench` on {hw}{_dates(whens)}{busy}. Each verdict compares "
            "figures from the same run; absolute times are this machine's. JSON in "
            "`bench/results/`.",
            width=100,
            break_on_hyphens=False,
        ),
        "",
    ]
    tail = [""] + [f"- {n}" for n in notes] if notes else []
    lines = format_table(["benchmark", "what", "measured", "target", "ok"], table).splitlines()
    return "\n".join(head + lines + tail) + "\n"


def _dates(whens: list[str]) -> str:
    if not whens:
        return ""
    first, last = whens[0][:10], whens[-1][:10]
    return f", {first}" if first == last else f", {first} to {last}"


def _load(machines: list[Mapping[str, Any]]) -> float | None:
    """The highest 1-minute load average any benchmark recorded (None if none did)."""
    seen = [
        float(m[k][0])
        for m in machines
        for k in ("load_average", "load_average_start", "load_average_end")
        if isinstance(m.get(k), list) and m[k]
    ]
    return max(seen) if seen else None


def _hardware(machines: list[Mapping[str, Any]]) -> str:
    """One description from every benchmark's ``machine`` (their keys differ a little)."""

    def first(*keys: str) -> Any:
        return next((m[k] for m in machines for k in keys if m.get(k)), None)

    if not any(machines):
        return "an unrecorded machine"
    cpus, cpu = first("cpus", "cpu_count"), first("cpu_model")
    gpus = first("gpus", "gpu")
    gpu = ", ".join(map(str, gpus)) if isinstance(gpus, list) else gpus
    return f"{cpus or '?'} CPUs" + (f" ({cpu})" if cpu else "") + f", {gpu or 'no GPU'}"


def update_readme(readme: Path, block: str) -> bool:
    """Replace what is between the markers in ``readme`` with ``block``; True if it changed.

    Raises:
        ValueError: The markers are missing or out of order.
    """
    text = readme.read_text(encoding="utf-8")
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{readme}: no {BEGIN} ... {END} section")
    new = text[: start + len(BEGIN)] + "\n" + block + text[end:]
    if new == text:
        return False
    readme.write_text(new, encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument(
        "--output",
        "--readme",
        dest="output",
        default=str(HERE.parent / "docs" / "performance.md"),
        help="the file whose table between the markers is rewritten (default: docs/performance.md)",
    )
    ap.add_argument("--print", action="store_true", help="print the table, change no file")
    ap.add_argument(
        "--failed", nargs="*", default=[], metavar="NAME=HOW", help="benchmarks that failed"
    )
    args = ap.parse_args(argv)
    failed = dict(item.partition("=")[::2] for item in args.failed)
    block = render(load_results(Path(args.results)), failed)
    if args.print:
        print(block)
        return 0
    changed = update_readme(Path(args.output), block)
    print(f"report: {args.output} {'updated' if changed else 'unchanged'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
