"""Step ``validate``: the Great Expectations gate over the manifest."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrflow import names
from cxrflow.steps.frame import step_frame
from cxrflow.steps.spec import Port, StepSpec, always

if TYPE_CHECKING:
    from cxrflow.config import Params


DATA_DOCS_PAGE = "data_docs.html"


def run_validate(
    params: Params,
    dataset: str | Path,
    validation: str | Path,
    pipeline_run_id: str | None = None,
) -> dict[str, Any]:
    """validate: Great Expectations gate over the manifest; fails the run on any violation.

    Reads params ``validate``. Writes ``validation.json`` and the Data Docs site to
    ``validation`` and logs both to the parent MLflow run of ``pipeline_run_id`` (default: the
    run that made the dataset); the Data Docs validation page is the HTML artifact the KFP UI
    shows. Raises ``DataValidationError`` (naming each failed expectation with examples) when
    the suite fails, so nothing trains on bad data. Cached: params and the dataset pin it.
    """
    with step_frame(
        "validate", params, dataset_dir=dataset, pipeline_run_id=pipeline_run_id
    ) as ctx:
        with ctx.phase("imports"):
            from cxrflow.data.manifest import read_manifest
            from cxrflow.data.validate import raise_on_failure, validate_manifest
        out = Path(validation)
        out.mkdir(parents=True, exist_ok=True)
        ctx.prov  # noqa: B018 - a dataset without provenance fails before the suite runs
        with ctx.phase("data"):
            df = read_manifest(dataset)
            summary = validate_manifest(df, params.validate, docs_dir=out / "data_docs")
        from cxrflow.jsonio import write_json_atomic

        write_json_atomic(out / "validation.json", summary.to_dict())
        page = write_data_docs_page(out / "data_docs", out / DATA_DOCS_PAGE)
        parent = ctx.open_parent()
        ctx.tracking.log_artifact(parent, out / "validation.json", "validate")
        if page is not None:
            ctx.tracking.log_artifact(parent, page, "validate")
        if (out / "data_docs").is_dir():
            ctx.tracking.log_artifact(parent, out / "data_docs", "validate/data_docs")
        ctx.tracking.set_tags(parent, {names.TAG_VALIDATE_SUCCESS: str(summary.success)})
        raise_on_failure(summary)
        ctx.summary = f"{summary.evaluated} expectations passed on {len(df)} images"
    return summary.to_dict()


def write_data_docs_page(docs_dir: Path, target: Path) -> Path | None:
    """The newest Data Docs validation page as one self-contained HTML file (KFP's HTML viewer
    shows one file; GX's site is a folder). None when there are no Data Docs."""
    from cxrflow.htmlpack import inline_html

    pages = sorted((docs_dir / "validations").rglob("*.html")) if docs_dir.is_dir() else []
    if not pages:
        return None
    newest = max(pages, key=lambda p: p.stat().st_mtime)
    target.write_text(inline_html(newest), encoding="utf-8")
    return target


def _publish(result: Any, outputs: Mapping[str, Any]) -> None:
    # called whether or not the gate passed: the page matters most when it fails
    page = Path(outputs["validation"].path) / DATA_DOCS_PAGE
    if page.is_file():
        shutil.copyfile(page, outputs["data_docs"].path)


SPEC = StepSpec(
    name="validate",
    run=run_validate,
    kind="data",
    reads=("validate",),
    inputs=("dataset",),
    outputs=(Port("validation", "Artifact", "reports/validate"),),
    ui_outputs=(Port("data_docs", "HTML"),),
    cache=always,
    publish=_publish,
    show=lambda s: f"validation passed: {s.get('evaluated')} expectations",
)
