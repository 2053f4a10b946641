"""Regenerate the README's pictures from a finished cxrflow run.

Run from a checkout where ``make run`` finished (or name that folder with ``--run-dir``)::

    .venv/bin/python docs/pictures/make_pictures.py [--run-dir .] [--out docs/pictures]

It reads what the run left (``runs/<run>/steps.json``, ``mlruns.db``, ``mlartifacts/``,
``reports/compare/compare.html``) and writes:

- ``pipeline.png``: the DAG of the pipeline compiled now (``cxrflow pipeline compile`` with the
  run's profile, read back from the PipelineSpec YAML: nothing here names a step), each step
  coloured by its status in the run and labelled with its duration, over a timeline of the run.
- ``mlflow-runs.png`` and ``mlflow-model.png``: the MLflow UI (``mlflow server`` on 127.0.0.1,
  stopped at the end) showing the experiment's runs with the latest pipeline run expanded, and
  the registered model with its aliases.
- ``compare.png``: ``cxrflow compare``'s self-contained ``compare.html`` (written to a
  temporary folder first when the run folder has none): its top (models x metrics with CIs)
  and its audit-verdicts figure, zoomed out so that the widest table fits 1400 pixels.

Each PNG is 1400 pixels wide and kept under 400 kB.

Nothing is downloaded: the browser is the system's Chromium driven by Playwright (the project's
dev dependencies). Servers and temporary files are removed, also on error.

This file reads the arguments, calls each picture's module in turn and shrinks what they wrote:
:mod:`pipeline_picture` (over :mod:`pipeline_dag` and :mod:`finished_run`), :mod:`mlflow_pages`
and :mod:`compare_page` (both in :mod:`headless_browser`). Run as a file, Python puts this
folder first on ``sys.path``, which is how those sibling modules are found; a test puts it
there itself.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from compare_page import compare_html, compare_picture
from headless_browser import chromium
from mlflow_pages import mlflow_pictures
from pipeline_picture import pipeline_picture

HERE = Path(__file__).resolve().parent
MAX_BYTES = 400_000
"""Every picture is kept under this size (the README loads them all)."""


def keep_small(path: Path, limit: int = MAX_BYTES) -> int:
    """Re-save a PNG over ``limit`` bytes with a 256-colour palette; its size after."""
    from PIL import Image

    if path.stat().st_size > limit:
        with Image.open(path) as image:
            small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        small.save(path, optimize=True)
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    """Write the pictures; print one line per picture with its size."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path("."),
        help="a folder where `make run` finished (default: .)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE,
        help="where the PNGs go (default: docs/pictures, this script's folder)",
    )
    args = parser.parse_args(argv)
    run_dir, out = args.run_dir.resolve(), args.out.resolve()
    if not (run_dir / "mlruns.db").exists():
        raise SystemExit(f"no mlruns.db in {run_dir}: run `make run` there first")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cxrflow-pictures-") as name:
        tmp = Path(name)
        written = [pipeline_picture(run_dir, out, tmp)]
        with chromium() as browser:
            written += mlflow_pictures(browser, run_dir, out, tmp)
            written.append(compare_picture(browser, compare_html(run_dir, tmp), out))
    for path in written:
        print(f"{path}: {keep_small(path) / 1000:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
