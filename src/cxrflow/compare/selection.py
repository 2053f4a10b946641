"""Which model runs to compare: read from a tracking store through :class:`RunSource`.

The only part of :mod:`cxrflow.compare` that reads anything; everything downstream of the
:class:`Selection` is pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cxrflow import names
from cxrflow.compare.rows import is_evaluated, version_matches
from cxrflow.tracking import RUN_ID_PATTERN


class RunSource(Protocol):
    """Read access to a tracking server (see :class:`cxrflow.tracking.RunStore`)."""

    uri: str

    def experiment_id(self, name: str) -> str | None:
        """The id of an experiment, or None."""
        ...

    def get(self, run_id: str) -> dict[str, Any] | None:
        """One run's record, or None."""
        ...

    def search(
        self, experiment_ids: Sequence[str], filter_string: str = "", on_page: Any = None
    ) -> list[dict[str, Any]]:
        """The records of the runs matching a filter, oldest first."""
        ...


@dataclass(frozen=True)
class Selection:
    """The model runs chosen for a comparison and how they were chosen."""

    records: list[dict[str, Any]]
    description: str
    versions: tuple[str, str] | None
    """The two data versions to compare (as the user named them), or None."""
    notes: tuple[str, ...] = ()


_MODEL_FILTER = f"tags.`{names.TAG_KIND}` = 'model'"
_SAFE_REF = re.compile(r"^[A-Za-z0-9._:@/+-]+$")


def _check_ref(ref: str, what: str) -> str:
    ref = ref.strip()
    if not _SAFE_REF.fullmatch(ref):
        raise ValueError(f"{what} {ref!r}: letters, digits and . _ : @ / + - only")
    return ref


def select_runs(
    source: RunSource,
    *,
    experiment: str,
    run_refs: Sequence[str] = (),
    data_versions: Sequence[str] = (),
    on_page: Callable[[int], Any] | None = None,
) -> Selection:
    """Find the evaluated model runs to compare.

    Args:
        source: The tracking server.
        experiment: The MLflow experiment searched for pipeline run ids, and for all runs
            when ``run_refs`` is empty.
        run_refs: MLflow run ids (a pipeline's parent run stands for its model runs) or pipeline
            run ids (the ``cxrflow.pipeline_run_id`` tag).
        data_versions: Two data versions (see :func:`version_matches`): keep only the runs on
            them, and compare the second against the first. Without them, a selection spanning
            exactly two data versions compares the later-named (or later-run) one against the
            other.
        on_page: Called with the number of runs of each page read (a progress bar).

    Raises:
        LookupError: No such experiment or run, or nothing evaluated on a named data version.
        ValueError: A malformed id, or not two data versions.
    """
    if data_versions and len(data_versions) != 2:
        raise ValueError(f"--data-versions takes two versions, got {len(data_versions)}")
    wanted = tuple(_check_ref(v, "data version") for v in data_versions)
    exp_id: str | None = None

    def experiment_id() -> str:
        nonlocal exp_id
        if exp_id is None:
            exp_id = source.experiment_id(experiment)
            if exp_id is None:
                raise LookupError(f"no MLflow experiment {experiment!r} at {source.uri}")
        return exp_id

    def model_runs(exp: str, pipeline_run: str | None = None) -> list[dict[str, Any]]:
        flt = _MODEL_FILTER
        if pipeline_run is not None:
            flt += f" and tags.`{names.TAG_PIPELINE_RUN}` = '{pipeline_run}'"
        return source.search([exp], flt, on_page)

    records: list[dict[str, Any]] = []
    if run_refs:
        for ref in (_check_ref(r, "run") for r in run_refs):
            run = source.get(ref) if re.fullmatch(RUN_ID_PATTERN, ref) else None
            if run is None:
                found = model_runs(experiment_id(), ref)
                if not found:
                    raise LookupError(
                        f"{ref}: no MLflow run of that id at {source.uri}, nor model runs of a "
                        f"pipeline run of that id in experiment {experiment!r}"
                    )
                records += found
                continue
            kind = run["tags"].get(names.TAG_KIND)
            if kind == "model":
                records.append(run)
            elif kind == "pipeline":
                records += model_runs(run["experiment_id"], run["tags"][names.TAG_PIPELINE_RUN])
            else:
                raise ValueError(
                    f"{ref}: this MLflow run is neither a cxrflow pipeline run nor a model run"
                )
        description = f"runs {', '.join(run_refs)}"
    else:
        records = model_runs(experiment_id())
        description = f"experiment {experiment!r}"
    unique = list({r["run_id"]: r for r in records}.values())
    evaluated = [r for r in unique if is_evaluated(r)]
    notes = []
    if len(evaluated) < len(unique):
        notes.append(
            f"{len(unique) - len(evaluated)} model run(s) without test metrics (never evaluated, "
            "or failed) left out"
        )
    if wanted:
        present = sorted({r["tags"].get(names.TAG_DATA_VERSION, "unknown") for r in evaluated})
        for v in wanted:
            if not any(version_matches(p, v) for p in present):
                raise LookupError(
                    f"no evaluated model run on data version {v!r} in {description}; versions "
                    f"there: {', '.join(present) or 'none'}"
                )
        evaluated = [
            r
            for r in evaluated
            if any(version_matches(r["tags"].get(names.TAG_DATA_VERSION, ""), v) for v in wanted)
        ]
        description += f", data versions {wanted[0]} and {wanted[1]}"
        return Selection(evaluated, description, (wanted[0], wanted[1]), tuple(notes))
    seen: list[str] = []
    for r in evaluated:
        v = r["tags"].get(names.TAG_DATA_VERSION, "unknown")
        if v not in seen:
            seen.append(v)
    pair = (seen[0], seen[1]) if len(seen) == 2 else None
    return Selection(evaluated, description, pair, tuple(notes))
