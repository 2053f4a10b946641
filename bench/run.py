"""Run every benchmark under bench/ (each writes JSON to bench/results/), then the report table.

In order: ``inference.py``, ``input_pipeline.py``, ``overhead.py``, ``ingest_scale.py``. Each
runs in its own process; one that fails (or whose verdict fails: exit status 1) is reported and
the others still run. Then ``report.py`` rewrites the table in docs/performance.md from every
JSON in ``bench/results/``. Exit status: non-zero if any benchmark failed.

Usage: ``python bench/run.py [--quick] [--only NAME ...] [--skip NAME ...] [--no-report]``.
``--quick`` runs each benchmark's small variant (ingest_scale without 100k, overhead on the
smoke profile): minutes, for checking that they work, not for figures.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES: dict[str, tuple[list[str], list[str]]] = {
    # name: (arguments, arguments of the quick variant)
    "inference": ([], ["--quick"]),
    "input_pipeline": ([], ["--quick"]),
    "overhead": ([], ["--quick"]),
    "ingest_scale": ([], ["--sizes", "1000", "10000"]),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="each benchmark's small variant")
    ap.add_argument("--only", nargs="+", choices=sorted(BENCHES), default=None)
    ap.add_argument("--skip", nargs="+", choices=sorted(BENCHES), default=[])
    ap.add_argument("--no-report", action="store_true", help="leave docs/performance.md alone")
    args = ap.parse_args(argv)
    names = [n for n in (args.only or BENCHES) if n not in args.skip]
    outcome: dict[str, str] = {}
    for name in names:
        script = HERE / f"{name}.py"
        if not script.is_file():
            outcome[name] = f"skipped: bench/{name}.py is not there"
            print(f"== {name}: {outcome[name]}", file=sys.stderr)
            continue
        full, quick = BENCHES[name]
        cmd = [sys.executable, str(script), *(quick if args.quick else full)]
        print(f"== {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, check=False).returncode
        took = f"{time.perf_counter() - t0:.0f} s"
        outcome[name] = f"ok ({took})" if rc == 0 else f"FAILED: exit {rc} ({took})"
        print(f"== {name}: {outcome[name]}", file=sys.stderr, flush=True)
    report_rc = 0
    if not args.no_report:
        failed = [
            f"{n}={o.removeprefix('FAILED: ')}"
            for n, o in outcome.items()
            if o.startswith("FAILED")
        ]
        cmd = [sys.executable, str(HERE / "report.py"), *(["--failed", *failed] if failed else [])]
        report_rc = subprocess.run(cmd, check=False).returncode
        outcome["report"] = "ok" if report_rc == 0 else f"FAILED: exit {report_rc}"
    print("\n".join(f"{n:>15}: {o}" for n, o in outcome.items()), file=sys.stderr)
    failed = [n for n, o in outcome.items() if o.startswith("FAILED")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
