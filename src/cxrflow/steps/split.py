"""Step ``split``: undersample to the Dataset_1 counts and split by patient, GX-checked."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrflow import names
from cxrflow.jsonio import write_json_atomic
from cxrflow.steps.frame import step_frame
from cxrflow.steps.spec import Port, StepSpec, always

if TYPE_CHECKING:
    from cxrflow.config import Params


def run_split(
    params: Params,
    dataset: str | Path,
    splits: str | Path,
    pipeline_run_id: str | None = None,
) -> dict[str, Any]:
    """split: undersample to the Dataset_1 counts and split train/val/test by patient.

    Reads params ``split``, ``validate``. Fails if a patient lands in two splits or classes
    are out of balance tolerance (``validate.balance_tolerance``). Logs to the parent run of
    ``pipeline_run_id`` (default: the run that made the dataset). Cached: params and the
    dataset pin it.
    """
    with step_frame("split", params, dataset_dir=dataset, pipeline_run_id=pipeline_run_id) as ctx:
        with ctx.phase("imports"):
            from cxrflow.data.manifest import read_manifest
            from cxrflow.data.split import split_manifest, write_splits
            from cxrflow.data.validate import raise_on_failure, validate_splits
        out = Path(splits)
        ctx.prov  # noqa: B018 - a dataset without provenance fails first
        report_path = Path(dataset) / "ingest_report.json"
        links = (
            json.loads(report_path.read_text()).get("patient_links", [])
            if report_path.is_file()
            else []
        )
        with ctx.phase("data"):
            tables, report = split_manifest(read_manifest(dataset), params.split, links)
            write_splits(tables, report, out)
        parent = ctx.open_parent()
        ctx.tracking.log_artifact(parent, out / "split_report.json", "split")
        summaries = {}
        for name, table in tables.items():
            # Dataset_1 is checked against its undersampling targets; a capped Dataset_0
            # against its mean class count; an uncapped Dataset_0 keeps the paper's natural
            # imbalance.
            targets = _expected_counts(name, table, params)
            with ctx.phase("data"):
                summary = validate_splits(
                    table,
                    params.validate,
                    docs_dir=out / f"data_docs_{name}",
                    class_counts_expected=targets,
                    check_balance=targets is not None
                    or params.split.dataset_0_max_per_class is not None,
                )
            summaries[name] = summary.to_dict()
            write_json_atomic(out / f"validation_{name}.json", summaries[name])
            ctx.tracking.log_artifact(parent, out / f"validation_{name}.json", "split")
            raise_on_failure(summary)
        if report.confounds:
            ctx.tracking.set_tags(
                parent,
                {
                    names.confound_tag(k): "; ".join(v)[:4900]
                    for k, v in report.confounds.items()
                    if v
                },
            )
        figures = []
        for ds, per_split in report.counts.items():
            sizes = " / ".join(f"{sp} {sum(c.values())}" for sp, c in per_split.items())
            figures.append(f"{ds}: {sizes}")
        confounds = sum(len(v) for v in report.confounds.values())
        ctx.summary = "; ".join(figures) + (
            f"; {confounds} confound warning(s)" if confounds else ""
        )
    return {"report": report.to_dict(), "validation": summaries}


def _expected_counts(name: str, table: Any, params: Params) -> dict[str, int] | None:
    """The class counts a dataset is checked against: Dataset_1's undersampling targets, plus
    the controls Dataset_1_mixed adds (what it adds is its own, so it is not a target)."""
    from cxrflow.config import MIXED_DATASET
    from cxrflow.data.sources import CONTROL

    if name not in ("dataset_1", MIXED_DATASET):
        return None
    targets = dict(params.split.dataset_1_counts)
    if name == MIXED_DATASET:
        added = table.loc[table["cohort"] == CONTROL, "label"].value_counts()
        targets = {c: n + int(added.get(c, 0)) for c, n in targets.items()}
    return targets


def _show(result: dict[str, Any]) -> str:
    """The counts per dataset and split; confound warnings go to stderr."""
    for ds, warns in result["report"]["confounds"].items():
        for w in warns:
            print(f"WARNING {ds}: {w}", file=sys.stderr)
    return json.dumps(result["report"]["counts"], indent=2, sort_keys=True)


SPEC = StepSpec(
    name="split",
    run=run_split,
    kind="data",
    reads=("split", "validate"),
    inputs=("dataset",),
    outputs=(Port("splits", "Dataset", "data/splits"),),
    cache=always,
    after=("validate",),
    show=_show,
)
