"""Benchmark: ingest throughput and peak memory at 1k, 10k and 100k phantom images.

Goal (issue 3): the manifest is built in parallel with bounded memory: time grows linearly with
the number of images and peak RSS stays under 1.5 GB at 100k. Each scale is ingested in a fresh
subprocess so its peak RSS (the process plus its worker processes) is its own. The verdict
compares ratios measured in the same run (throughput at 100k vs 1k), never absolute times.

Usage: ``python bench/ingest_scale.py [--scales 1000 10000 100000] [--workdir DIR]``.
Writes ``bench/results/ingest_scale.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RSS_LIMIT_MB = 1536.0
MIN_THROUGHPUT_RATIO = 0.5  # images/s at the largest scale >= half of that at the smallest


def _kermany_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.jpeg") if p.is_file())


def prepare(workdir: Path, n_max: int, seed: int) -> Path:
    """Generate (once, cached) a phantom Kermany tree with at least ``n_max`` images."""
    from cxrflow.config import SynthParams
    from cxrflow.data.synthetic import generate_phantom

    src = workdir / f"phantom-{n_max}-{seed}"
    done = src / ".complete"
    if done.is_file():
        return src / "kermany" / "chest_xray"
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
    done.write_text(str(n))
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
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return {
        "considered": d["considered"],
        "kept": d["kept"],
        "seconds": elapsed,
        "images_per_s": d["considered"] / elapsed,
        "peak_rss_main_mb": self_mb,
        "peak_rss_children_rusage_mb": child_mb,  # misses forkserver workers
        "workers": d["workers"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--workdir", default=os.environ.get("CXRFLOW_BENCH_DIR", "/tmp/cxrflow-bench"))
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ingest_scale.json"))
    ap.add_argument("--_one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._one:
        print(json.dumps(run_one(Path(args._one[0]), Path(args._one[1]), args.workers)))
        return 0
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    kermany = prepare(work, max(args.scales), args.seed)
    results = []
    for n in sorted(args.scales):
        src = subset(kermany, n, work / f"subset-{n}")
        out = work / f"ingest-{n}"
        if out.exists():
            shutil.rmtree(out)
        cmd = [
            sys.executable,
            __file__,
            "--workers",
            str(args.workers),
            "--_one",
            str(src),
            str(out),
        ]
        stdout, tree_peak = run_sampled(cmd)
        r = json.loads(stdout.strip().splitlines()[-1])
        r["peak_rss_tree_mb"] = tree_peak
        r["scale"] = n
        results.append(r)
        print(
            f"{n:>7} images: {r['images_per_s']:.0f} img/s, peak RSS of the process tree "
            f"{r['peak_rss_tree_mb']:.0f} MB (main process alone {r['peak_rss_main_mb']:.0f} MB)",
            file=sys.stderr,
        )
        shutil.rmtree(out)
    small, large = results[0], results[-1]
    ratio = large["images_per_s"] / small["images_per_s"]
    verdict = {
        "throughput_ratio_largest_vs_smallest": ratio,
        "linear": ratio >= MIN_THROUGHPUT_RATIO,
        "max_peak_rss_tree_mb": max(r["peak_rss_tree_mb"] for r in results),
        "rss_under_limit": all(r["peak_rss_tree_mb"] < RSS_LIMIT_MB for r in results),
        "seconds_per_1k_images": {
            str(r["scale"]): 1000.0 * r["seconds"] / r["considered"] for r in results
        },
        "rss_limit_mb": RSS_LIMIT_MB,
    }
    doc = {
        "benchmark": "ingest_scale",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "results": results,
        "verdict": verdict,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(json.dumps(verdict, indent=2))
    return 0 if verdict["linear"] and verdict["rss_under_limit"] else 1


if __name__ == "__main__":
    sys.exit(main())
