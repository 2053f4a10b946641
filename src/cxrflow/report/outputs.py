"""Where one pipeline run's step outputs are, and reading them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOCAL_RUNS = Path("runs/kfp")
"""Where ``cxrflow pipeline run --local`` (``make run``) keeps its runs unless told otherwise."""


@dataclass(frozen=True)
class RunOutputs:
    """Where one run's step outputs are."""

    dataset: Path
    splits: Path
    evaluation: Path
    audit: Path | None
    registered: Path | None

    @classmethod
    def latest(cls, root: str | Path = LOCAL_RUNS) -> tuple[Path, RunOutputs]:
        """The newest complete run under ``root`` (by modification time) and its outputs: what
        ``cxrflow report`` and ``cxrflow export`` use when given no run.

        Raises:
            FileNotFoundError: No complete run there; the message says what to do.
        """
        runs = sorted(
            (p for p in Path(root).glob("*") if p.is_dir()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for run in runs:
            try:
                return run, cls.from_kfp_run(run)
            except FileNotFoundError:
                continue
        raise FileNotFoundError(
            f"no complete cxrflow run under {root}: run `make run` first, or give --run-dir "
            "(or the step outputs)"
        )

    @classmethod
    def from_kfp_run(cls, run_dir: str | Path) -> RunOutputs:
        """Locate the step outputs inside a ``kfp.local`` run directory."""
        root = Path(run_dir)

        def one(pattern: str) -> Path | None:
            hits = sorted(root.glob(pattern))
            return hits[-1] if hits else None

        dataset = one("ingest/dataset")
        splits = one("split/splits")
        evaluation = one("evaluate/evaluation")
        if dataset is None or splits is None or evaluation is None:
            raise FileNotFoundError(
                f"{root}: not a complete cxrflow run (need ingest/dataset, split/splits, "
                "evaluate/evaluation)"
            )
        return cls(
            dataset, splits, evaluation, one("audit/audit_report"), one("register/registered")
        )


def data_of_run(
    run_dir: Path | None, dataset: Path | None, splits: Path | None
) -> tuple[Path, Path, Path | None]:
    """The ingest and split outputs to use: both given, else those of ``run_dir``, else those
    of the newest local run (:meth:`RunOutputs.latest`), which is returned third so that the
    caller can say which (None when the caller named the data).

    Raises:
        ValueError: A mix of ``run_dir`` and paths, or one path without the other.
        FileNotFoundError: No complete run where one was looked for.
    """
    if dataset is not None and splits is not None:
        if run_dir is not None:
            raise ValueError("give --run-dir or --dataset and --splits, not both")
        return dataset, splits, None
    if dataset is not None or splits is not None:
        raise ValueError("give --dataset and --splits together (or --run-dir)")
    if run_dir is None:
        newest, outputs = RunOutputs.latest()
        return outputs.dataset, outputs.splits, newest
    outputs = RunOutputs.from_kfp_run(run_dir)
    return outputs.dataset, outputs.splits, None


def _read(artifact: Any, path: Path | None) -> Any:
    """A step's typed output file as plain data (None where the step left none)."""
    if not artifact.exists(path):
        return None
    return artifact.read(path).model_dump(mode="json")


def _load(path: Path | None, name: str) -> Any:
    if path is None or not (path / name).is_file():
        return None
    return json.loads((path / name).read_text())
