"""Run every benchmark under bench/ (each writes JSON to bench/results/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHES = ["ingest_scale.py"]


def main() -> int:
    here = Path(__file__).parent
    rc = 0
    for name in BENCHES:
        print(f"== {name}", file=sys.stderr)
        rc |= subprocess.run(
            [sys.executable, str(here / name), *sys.argv[1:]], check=False
        ).returncode
    return rc


if __name__ == "__main__":
    sys.exit(main())
