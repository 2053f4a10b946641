"""Benchmark: ingest, validate and split at 1k, 10k and 100k phantom images (time, peak RSS).

Goal (issues 3 and 9): the data steps scale: time grows linearly with the number of images and
peak RSS stays under 1.5 GB at 100k. Each stage of each scale runs in a fresh subprocess
(ingest: the manifest from the images; validate: the Great Expectations manifest suite; split:
Dataset_0 and Dataset_1 by patient plus the split suite, as the pipeline's steps do), so that
its peak RSS (the process plus its worker processes) is its own. The verdict compares ratios
measured in the same run (throughput at the largest vs the smallest size), never absolute
times. The phantom images (Kermany layout) are generated once and cached in ``--workdir``; at
100k that takes a few minutes, and ``--sizes 1000 10000`` skips it.

Usage: ``python bench/ingest_scale.py [--sizes 1000 10000 100000] [--workdir DIR]``.
Writes ``bench/results/ingest_scale.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import (  # bench/report.py (scripts run with bench/ on the path)
    machine_info,
    write_result,
)

RSS_LIMIT_MB = 1536.0
MIN_THROUGHPUT_RATIO = 0.5  # images/s at the largest scale >= half of that at the smallest


def _kermany_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.jpeg") if p.is_file())


def prepare(workdir: Path, n_max: int, seed: int) -> Path:
    """Generate (once, cached) a phantom Kermany tree with at least ``n_max`` images."""
    from cxrflow.config import SynthParams
    from cxrflow.data.synthetic import generate_phantom

    for cached in sorted(workdir.glob(f"phantom-*-{seed}")):  # a larger tree serves too
        size = cached.name.split("-")[1]
        if size.isdigit() and int(size) >= n_max and (cached / ".complete").is_file():
            return cached / "kermany" / "chest_xray"
    src = workdir / f"phantom-{n_max}-{seed}"
    # Kermany gets 3 of the 4 classes; ~2 images per patient on average with max 3
    per_class = int(n_max / 3 / 2 * 1.08) + 10
    params = SynthParams(
        patients_per_class=per_class,
        images_per_patient_max=3,
        min_side=128,
        max_side=200,
        covid_lateral_fraction=0.0,
        seed=seed,
    )
    t0 = time.perf_counter()
    summary = generate_phantom(src, params)
    n = len(_kermany_files(summary.kermany_dir))
    if n < n_max:
        raise SystemExit(f"generated only {n} Kermany images, need {n_max}")
    print(f"generated {n} phantom images in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    (src / ".complete").write_text(str(n))
    return summary.kermany_dir


def subset(kermany: Path, n: int, dest: Path) -> Path:
    """Hard-link the first ``n`` images (sorted) into a fresh Kermany-layout tree."""
    if dest.exists():
        shutil.rmtree(dest)
    for f in _kermany_files(kermany)[:n]:
        rel = f.relative_to(kermany)
        (dest / rel.parent).mkdir(parents=True, exist_ok=True)
        os.link(f, dest / rel)
    return dest


def run_sampled(cmd: list[str], interval: float = 0.1) -> tuple[str, float]:
    """Run ``cmd``, sampling the summed RSS of it and all its descendants; returns (stdout, MB).

    ``getrusage(RUSAGE_CHILDREN)`` misses forkserver workers (they are not our children), so
    the process tree is sampled with psutil instead.
    """
    import psutil

    peak = 0
    with tempfile.TemporaryFile("w+") as out:
        proc = psutil.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL, text=True)
        while proc.poll() is None:
            total = 0
            try:
                procs = [proc, *proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for p in procs:
                with contextlib.suppress(psutil.NoSuchProcess):
                    total += p.memory_info().rss
            peak = max(peak, total)
            time.sleep(interval)
        if proc.returncode != 0:
            raise SystemExit(f"{cmd} failed with exit code {proc.returncode}")
        out.seek(0)
        return out.read(), peak / 2**20


def run_one(kermany: Path, out: Path, workers: int) -> dict:
    """Ingest in this process (called in a fresh subprocess); returns timing and peak RSS."""
    from cxrflow.config import IngestParams
    from cxrflow.data.ingest import ingest

    t0 = time.perf_counter()
    report = ingest(out, IngestParams(workers=workers), [("kermany", kermany)], origin="phantom")
    elapsed = time.perf_counter() - t0
    d = report.to_dict()
    return {
        "considered": d["considered"],
        "kept": d["kept"],
        "seconds": elapsed,
        "images_per_s": d["considered"] / elapsed,
        **_own_rss(),
        "workers": d["workers"],
    }


def _own_rss() -> dict[str, float]:
    return {
        "peak_rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        # misses forkserver workers: the parent samples the whole tree instead
        "peak_rss_children_rusage_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        / 1024.0,
    }


def run_validate(dataset: Path, out: Path) -> dict:
    """The validate step's work (the GX manifest suite, Data Docs included) in this process."""
    from cxrflow.config import ValidateParams
    from cxrflow.data.manifest import read_manifest
    from cxrflow.data.validate import validate_manifest

    t0 = time.perf_counter()
    df = read_manifest(dataset)
    summary = validate_manifest(df, ValidateParams(), docs_dir=out / "data_docs")
    elapsed = time.perf_counter() - t0
    return {
        "rows": len(df),
        "seconds": elapsed,
        "images_per_s": len(df) / elapsed,
        "expectations": summary.evaluated,
        "success": summary.success,
        **_own_rss(),
    }


def run_split(dataset: Path, out: Path) -> dict:
    """The split step's work (split by patient, write, the GX split suite) in this process."""
    from cxrflow.config import SplitParams, ValidateParams
    from cxrflow.data.manifest import read_manifest
    from cxrflow.data.split import split_manifest, write_splits
    from cxrflow.data.validate import validate_splits

    t0 = time.perf_counter()
    report_path = dataset / "ingest_report.json"
    links = json.loads(report_path.read_text()).get("patient_links", [])
    df = read_manifest(dataset)
    tables, report = split_manifest(df, SplitParams(), links)
    write_splits(tables, report, out)
    rows = {}
    for name, table in tables.items():
        validate_splits(
            table,
            ValidateParams(),
            docs_dir=out / f"data_docs_{name}",
            check_balance=name == "dataset_1",
        )
        rows[name] = len(table)
    elapsed = time.perf_counter() - t0
    return {
        "rows": len(df),
        "dataset_rows": rows,
        "seconds": elapsed,
        "images_per_s": len(df) / elapsed,
        **_own_rss(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sizes",
        "--scales",
        dest="sizes",
        type=int,
        nargs="+",
        default=[1000, 10000, 100000],
        help="numbers of images (default 1000 10000 100000; drop 100000 for a quick run)",
    )
    ap.add_argument("--workdir", default=os.environ.get("CXRFLOW_BENCH_DIR", "/tmp/cxrflow-bench"))
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ingest_scale.json"))
    ap.add_argument("--_one", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--_validate", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--_split", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._one:
        print(json.dumps(run_one(Path(args._one[0]), Path(args._one[1]), args.workers)))
        return 0
    if args._validate:
        print(json.dumps(run_validate(Path(args._validate[0]), Path(args._validate[1]))))
        return 0
    if args._split:
        print(json.dumps(run_split(Path(args._split[0]), Path(args._split[1]))))
        return 0
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    kermany = prepare(work, max(args.sizes), args.seed)
    prepare_s = time.perf_counter() - t0
    results = []
    for n in sorted(args.sizes):
        src = subset(kermany, n, work / f"subset-{n}")
        out = work / f"ingest-{n}"
        for d in (out, work / f"validate-{n}", work / f"split-{n}"):
            if d.exists():
                shutil.rmtree(d)
        me = [sys.executable, __file__, "--workers", str(args.workers)]
        stages = {
            "ingest": [*me, "--_one", str(src), str(out)],
            "validate": [*me, "--_validate", str(out), str(work / f"validate-{n}")],
            "split": [*me, "--_split", str(out), str(work / f"split-{n}")],
        }
        r: dict = {"scale": n}
        for stage, cmd in stages.items():
            stdout, tree_peak = run_sampled(cmd)
            st = json.loads(stdout.strip().splitlines()[-1])
            st["peak_rss_tree_mb"] = tree_peak
            r[stage] = st
        # the ingest figures stay at the top level, as before
        r.update({k: v for k, v in r["ingest"].items() if k not in r})
        r["seconds_total"] = sum(r[s]["seconds"] for s in stages)
        r["peak_rss_tree_mb"] = max(r[s]["peak_rss_tree_mb"] for s in stages)
        results.append(r)
        print(
            f"{n:>7} images: "
            + "; ".join(
                f"{s} {r[s]['seconds']:.1f} s ({r[s]['images_per_s']:.0f} img/s), "
                f"peak RSS {r[s]['peak_rss_tree_mb']:.0f} MB"
                for s in stages
            ),
            file=sys.stderr,
        )
        for d in (out, work / f"validate-{n}", work / f"split-{n}"):
            shutil.rmtree(d, ignore_errors=True)
    small, large = results[0], results[-1]
    ratio = large["images_per_s"] / small["images_per_s"]
    stage_ratios = {
        s: large[s]["images_per_s"] / small[s]["images_per_s"]
        for s in ("ingest", "validate", "split")
    }
    verdict = {
        "throughput_ratio_largest_vs_smallest": ratio,
        "throughput_ratio_by_stage": stage_ratios,
        "linear": all(v >= MIN_THROUGHPUT_RATIO for v in stage_ratios.values()),
        "max_peak_rss_tree_mb": max(r["peak_rss_tree_mb"] for r in results),
        "rss_under_limit": all(r["peak_rss_tree_mb"] < RSS_LIMIT_MB for r in results),
        "seconds_per_1k_images": {
            str(r["scale"]): 1000.0 * r["seconds"] / r["considered"] for r in results
        },
        "seconds_total_by_size": {str(r["scale"]): r["seconds_total"] for r in results},
        "rss_limit_mb": RSS_LIMIT_MB,
        "sizes": sorted(args.sizes),
    }
    doc = {
        "benchmark": "ingest_scale",
        "phantom_generation_s": prepare_s,
        "machine": machine_info(),
        "results": results,
        "verdict": verdict,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_result(args.out, doc)
    return 0 if verdict["linear"] and verdict["rss_under_limit"] else 1


if __name__ == "__main__":
    sys.exit(main())
