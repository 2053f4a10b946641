"""Step ``register``: the best allowed candidate as champion, or as challenger with the reason."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrflow import names
from cxrflow.artifacts import AuditReport, Evaluation, ModelEvaluation, Registration
from cxrflow.steps.audit import verdict_tags
from cxrflow.steps.frame import step_frame
from cxrflow.steps.spec import Port, StepSpec
from cxrflow.tables import format_table

if TYPE_CHECKING:
    from cxrflow.config import Params


REGISTERED_FILE = Registration.FILE
METRIC_TAGS = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc_macro")
"""The test figures a registered version carries as ``cxrflow.metric.<name>`` tags."""


def champion_score(tags: Mapping[str, str], metric: str) -> float | None:
    """The current champion's score on ``metric`` from its version's tags (None if untagged)."""
    tag = tags.get(names.metric_tag(metric)) or tags.get(names.legacy_metric_tag(metric))
    return float(tag) if tag else None


def _version_tags(
    params: Params, m: ModelEvaluation, decision: Any, audit: AuditReport
) -> dict[str, str]:
    from cxrflow.config import params_hash

    metric = params.register.metric
    tags = {
        names.TAG_MODEL_KEY: m.model_key,
        names.legacy_metric_tag(metric): f"{m.figure(metric):.6f}",
        names.TAG_RUN_ID: m.run_id,
        names.TAG_DATASET: m.dataset,
        names.TAG_DATA_VERSION: m.data_version,
        names.TAG_MANIFEST_HASH: m.manifest_hash,
        names.TAG_PIPELINE_RUN: m.pipeline_run_id,
        names.TAG_PARAMS_HASH: params_hash(params),
        names.TAG_PROMOTION: decision.role,
        names.TAG_PROMOTION_REASON: decision.reason[:4900],
        **{
            names.metric_tag(k): f"{float(m.figure(k)):.6f}"
            for k in METRIC_TAGS
            if m.figure(k) is not None
        },
    }
    verdict = audit.root.get(m.model_key)
    if verdict is not None:
        tags |= verdict_tags(verdict.passed, verdict.reasons)
    return tags


def run_register(
    params: Params,
    evaluation: str | Path,
    registered: str | Path,
    audit_report: str | Path | None = None,
    pipeline_run_id: str | None = None,
) -> dict[str, Any]:
    """register: the best candidate that passed the audit becomes champion if it beats the
    current champion by the margin; otherwise it is registered as challenger, with the reason.

    Reads params ``register``, ``audit``. :func:`cxrflow.register.decide_promotion` decides:
    a candidate that failed the shortcut audit (when ``audit.block_promotion``) is never
    promoted. Aliases only, never the deprecated stages. The decision is recorded on the
    parent run of ``pipeline_run_id`` (default: the run named in the evaluation's metrics).
    """
    with step_frame("register", params, pipeline_run_id=pipeline_run_id) as ctx:
        with ctx.phase("imports"):
            from cxrflow.register import CHAMPION, decide_promotion
        tracking, rp = ctx.tracking, params.register
        results = Evaluation.read(evaluation).root
        audit = AuditReport({})
        if audit_report is not None and AuditReport.exists(audit_report):
            audit = AuditReport.read(audit_report)
        tracking.configure(params.tracking.experiment_name)
        current = tracking.alias_version(rp.model_name, rp.alias)
        decision = decide_promotion(
            {k: float(results[k].figure(rp.metric)) for k in rp.candidates if k in results},
            rp.candidates,
            {k: (audit.root[k].passed if k in audit.root else None) for k in rp.candidates},
            None if current is None else champion_score(current["tags"], rp.metric),
            metric=rp.metric,
            margin=rp.promotion_margin,
            block_on_audit=params.audit.block_promotion,
        )
        m = results[decision.model_key]
        alias = rp.alias if decision.role == CHAMPION else rp.challenger_alias
        version = tracking.register_model(
            m.model_uri,
            rp.model_name,
            alias,
            tags=_version_tags(params, m, decision, audit),
            description=f"{m.model_key} ({decision.role}): {decision.reason}",
        )
        info = Registration(
            model_key=m.model_key,
            role=decision.role,
            reason=decision.reason,
            champion=m.model_key if decision.role == CHAMPION else None,
            previous_champion_version=None if current is None else current["version"],
            metric=rp.metric,
            value=float(m.figure(rp.metric)),
            model_name=rp.model_name,
            alias=alias,
            version=version,
            model_uri=f"models:/{rp.model_name}@{alias}",
            source_model_uri=m.model_uri,
            audit_passed=decision.audit_passed,
            eligible=list(decision.eligible),
            candidates={
                k: float(results[k].figure(rp.metric)) for k in rp.candidates if k in results
            },
            audit={k: {"passed": v.passed, "reasons": v.reasons} for k, v in audit.root.items()},
            run_id=m.run_id,
            dataset=m.dataset,
        )
        info.write(registered)
        tracking.set_tags(m.run_id, {names.TAG_PROMOTION: decision.role})
        run_key = pipeline_run_id or m.pipeline_run_id
        parent = (
            tracking.find_parent_run(params.tracking.experiment_name, run_key) if run_key else None
        )
        if parent is not None:
            tracking.set_tags(
                parent,
                {
                    names.TAG_CHAMPION: info.champion or "none",
                    names.TAG_PROMOTION: f"{m.model_key} -> {alias}",
                    names.TAG_PROMOTION_REASON: decision.reason[:4900],
                },
            )
            ctx.parent = parent
        ctx.summary = (
            f"{m.model_key} -> models:/{rp.model_name}@{alias} (version {version}): "
            f"{decision.reason}"
        )
    return info.model_dump()


def format_promotion(registered: Mapping[str, Any]) -> str:
    """The audit verdicts and the promotion decision, plainly (the end of a run's output)."""
    lines = [""]
    audit = registered.get("audit") or {}
    if audit:
        rows = [
            [
                key,
                "passed" if v["passed"] else "FAILED",
                "; ".join(v.get("reasons", [])) or "all tests within thresholds",
            ]
            for key, v in audit.items()
        ]
        lines.append(format_table(["candidate", "shortcut audit", "why"], rows))
        if not any(v["passed"] for v in audit.values()):
            lines.append("")
            lines.append("NO MODEL PASSED THE SHORTCUT AUDIT: none was promoted to champion.")
    lines.append("")
    lines.append(
        f"{registered['model_key']} -> models:/{registered['model_name']}@{registered['alias']} "
        f"(version {registered['version']}): {registered['reason']}"
    )
    return "\n".join(lines) + "\n"


def _publish(info: Mapping[str, Any] | None, outputs: Mapping[str, Any]) -> None:
    if info is not None:
        outputs["registered"].metadata.update(
            {k: info[k] for k in ("model_uri", "version", "role", "reason", "model_key")}
        )


SPEC = StepSpec(
    name="register",
    run=run_register,
    kind="record",
    reads=("register", "audit.block_promotion", "tracking"),
    inputs=("evaluation", "audit_report"),
    outputs=(Port("registered", "Artifact", "reports/register"),),
    optional=("audit_report",),
    io_retry=True,
    preload=("cxrflow.register",),
    publish=_publish,
    dvc_outputs={"outs": [{"reports/register": {"cache": False}}]},
)
