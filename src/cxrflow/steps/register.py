"""Step ``register``: the best allowed candidate as champion, or as challenger with the reason."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
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
    if decision.audit_override:
        tags[names.TAG_AUDIT_OVERRIDE] = "not audited; eligible by register.allow_unaudited"
    c = decision.comparison
    if c is not None:
        tags |= {
            names.TAG_PROMOTION_METRIC: params.register.ranked_by,
            names.TAG_PROMOTION_CHAMPION_VERSION: str(c.champion_version),
            names.TAG_PROMOTION_DIFFERENCE: f"{c.difference:.6f}",
            names.TAG_PROMOTION_CI_LOW: f"{c.ci_low:.6f}",
            names.TAG_PROMOTION_CI_HIGH: f"{c.ci_high:.6f}",
            names.TAG_PROMOTION_MCNEMAR_P: "" if c.p_value is None else f"{c.p_value:.6g}",
        }
    return tags


def candidate_score(m: ModelEvaluation, metric: str, score_on: str) -> float:
    """``metric`` of a candidate where ``register.score_on`` says: its test split, or an
    external source (NaN when the candidate was not scored there)."""
    if score_on == "test":
        value = m.figure(metric)
    else:
        value = ((m.figure("external") or {}).get(score_on) or {}).get(metric)
    return float("nan") if value is None else float(value)


def _external_images(
    dataset: str | Path, source: str, classes: list[str], size: int
) -> tuple[Any, Any, Any]:
    """Images, labels and patient ids of an external source, as evaluate scored them."""
    from cxrflow.data.manifest import read_manifest
    from cxrflow.external import external_arrays, external_rows

    ext = next(e for e in external_rows(read_manifest(dataset), classes) if e.source == source)
    return external_arrays(dataset, ext, classes, size)


def _champion_predictions(
    tracking: Any,
    model_name: str,
    version: int,
    dataset: str | Path,
    splits: str | Path,
    m: Any,
    score_on: str = "test",
) -> tuple[Any, Any, Any, dict[str, Any]]:
    """The champion's predicted labels on the test split of ``m``'s dataset (or on the
    external source ``score_on``), with those images' labels and patient ids, and the
    champion's metadata."""
    import numpy as np

    from cxrflow.steps.evaluate import load_test_split

    uri = f"models:/{model_name}/{version}"
    model, meta = tracking.load_model(uri)
    if not meta.get("classes") or not meta.get("image_size"):
        raise ValueError(
            f"{uri}: the champion has no cxrflow metadata (classes, image_size), so it cannot "
            "be evaluated on this test split; promote a version by hand with `cxrflow model "
            "promote VERSION --reason ...`"
        )
    classes, size = list(meta["classes"]), int(meta["image_size"])
    if score_on != "test":
        x, y, groups = _external_images(dataset, score_on, classes, size)
        proba = np.asarray(model.predict(x.astype(np.float32), verbose=0))
        return proba.argmax(axis=1), y, groups, meta
    test = load_test_split(dataset, splits, m.dataset, classes, size)
    proba = np.asarray(model.predict(test.x.astype(np.float32), verbose=0))
    return proba.argmax(axis=1), test.y, test.groups, meta


def compare_with_champion(
    params: Params,
    current: Mapping[str, Any],
    results: Mapping[str, ModelEvaluation],
    dataset: str | Path,
    splits: str | Path,
    tracking: Any,
) -> Any:
    """The current champion against each candidate on this run's test images.

    The champion (by version) is loaded and predicts the test split of the candidates'
    dataset, only when its classes and dataset are the candidates'; each comparison is the
    paired patient bootstrap of (candidate - champion) on ``register.metric`` with the
    evaluation's bootstrap settings, and McNemar's test.

    Returns:
        A :class:`cxrflow.register.Champion`.
    """
    import numpy as np

    from cxrflow.promotion import paired_difference
    from cxrflow.register import Champion, ChampionComparison
    from cxrflow.stats import mcnemar_pairs

    rp, ep = params.register, params.evaluate
    version = int(current["version"])
    champ_dataset = current["tags"].get(names.TAG_DATASET, "")
    keys = [k for k in rp.candidates if k in results]
    not_comparable: dict[str, str] = {}
    comparisons: dict[str, Any] = {}
    loaded: dict[str, tuple[Any, Any, Any, dict[str, Any]]] = {}
    external = rp.score_on != "test"
    for key in keys:
        m = results[key]
        if champ_dataset and champ_dataset != m.dataset and not external:
            not_comparable[key] = f"it was trained on {champ_dataset}, {key} on {m.dataset}"
            continue
        slot = rp.score_on if external else m.dataset
        if slot not in loaded:
            loaded[slot] = _champion_predictions(
                tracking, rp.model_name, version, dataset, splits, m, rp.score_on
            )
        champ_pred, y, groups, meta = loaded[slot]
        if list(meta.get("classes", [])) != list(m.classes):
            not_comparable[key] = f"its classes {meta.get('classes')} are not {list(m.classes)}"
            continue
        # the predictions evaluate made on the images compared: the external source's, or the
        # test split's
        scored = (
            ((m.figure("external") or {}).get(rp.score_on) or {}) if external else m.model_dump()
        )
        pred = np.asarray(scored.get("predictions") or [], dtype=int)
        if len(pred) != len(y):
            not_comparable[key] = (
                f"{key} predicted {len(pred)} test images, this test split has {len(y)}"
            )
            continue
        d = paired_difference(
            y,
            pred,
            champ_pred,
            groups,
            len(m.classes),
            rp.metric,
            n_boot=ep.bootstrap_samples,
            confidence=ep.confidence,
            seed=ep.seed,
        )
        (pair,) = mcnemar_pairs(y, {key: pred, "champion": champ_pred})
        comparisons[key] = ChampionComparison(
            champion_version=version,
            difference=d["difference"],
            ci_low=d["ci_low"],
            ci_high=d["ci_high"],
            p_value=float(pair["p_value"]),
            confidence=ep.confidence,
            n_test=d["n_test"],
        )
    return Champion(version, comparisons, not_comparable)


def run_register(
    params: Params,
    dataset: str | Path,
    splits: str | Path,
    evaluation: str | Path,
    registered: str | Path,
    audit_report: str | Path | None = None,
    pipeline_run_id: str | None = None,
) -> dict[str, Any]:
    """register: the best audited candidate; champion if it beats the champion on the same images.

    Otherwise it is registered as challenger, with the reason.

    Reads params ``register``, ``audit.block_promotion`` and the evaluation's bootstrap
    settings. :func:`cxrflow.register.decide_promotion` decides: a candidate that failed the
    shortcut audit (when ``audit.block_promotion``) is never promoted, and one that was not
    audited only with ``register.allow_unaudited`` (recorded on the version). The current
    champion is evaluated on this run's test split, and a candidate is promoted only when the
    lower bound of the paired patient-bootstrap interval of (candidate - champion) is above
    ``register.promotion_margin``. Aliases only, never the deprecated stages; every alias move
    is recorded in the registry (``cxrflow model history``). The decision is recorded on the
    parent run of ``pipeline_run_id`` (default: the run named in the evaluation's metrics).
    """
    with step_frame("register", params, pipeline_run_id=pipeline_run_id) as ctx:
        with ctx.phase("imports"):
            from cxrflow.promotion import move_alias
            from cxrflow.register import CHAMPION, decide_promotion
        tracking, rp = ctx.tracking, params.register
        results = Evaluation.read(evaluation).root
        audit = AuditReport({})
        if audit_report is not None and AuditReport.exists(audit_report):
            audit = AuditReport.read(audit_report)
        tracking.configure(params.tracking.experiment_name)
        current = tracking.alias_version(rp.model_name, rp.alias)
        champion = None
        if current is not None:
            with ctx.phase("champion"):
                champion = compare_with_champion(
                    params, current, results, dataset, splits, tracking
                )
        scores = {
            k: candidate_score(results[k], rp.metric, rp.score_on)
            for k in rp.candidates
            if k in results
        }
        decision = decide_promotion(
            scores,
            rp.candidates,
            {k: (audit.root[k].passed if k in audit.root else None) for k in rp.candidates},
            champion,
            metric=rp.ranked_by,
            margin=rp.promotion_margin,
            block_on_audit=params.audit.block_promotion,
            allow_unaudited=rp.allow_unaudited,
        )
        m = results[decision.model_key]
        alias = rp.alias if decision.role == CHAMPION else rp.challenger_alias
        before = current if alias == rp.alias else tracking.alias_version(rp.model_name, alias)
        version = tracking.register_model(
            m.model_uri,
            rp.model_name,
            alias,
            tags=_version_tags(params, m, decision, audit),
            description=f"{m.model_key} ({decision.role}): {decision.reason}",
        )
        move_alias(
            rp.model_name,
            alias,
            version,
            action="register",
            reason=f"{m.model_key}: {decision.reason}",
            previous=None if before is None else int(before["version"]),
            set_alias=False,
        )
        info = Registration(
            model_key=m.model_key,
            role=decision.role,
            reason=decision.reason,
            champion=m.model_key if decision.role == CHAMPION else None,
            previous_champion_version=None if current is None else current["version"],
            metric=rp.ranked_by,
            value=scores[m.model_key],
            model_name=rp.model_name,
            alias=alias,
            version=version,
            model_uri=f"models:/{rp.model_name}@{alias}",
            source_model_uri=m.model_uri,
            audit_passed=decision.audit_passed,
            eligible=list(decision.eligible),
            candidates=scores,
            audit={k: {"passed": v.passed, "reasons": v.reasons} for k, v in audit.root.items()},
            run_id=m.run_id,
            dataset=m.dataset,
            comparison={}
            if decision.comparison is None
            else {"metric": rp.metric, **asdict(decision.comparison)},
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
    c = registered.get("comparison") or {}
    if c:
        p = c.get("p_value")
        level = f"{100 * float(c.get('confidence', 0.95)):g}% CI"
        lines.append("")
        lines.append(
            format_table(
                ["against the champion", "value"],
                [
                    ["champion version", c["champion_version"]],
                    ["test images (both models)", c.get("n_test", "")],
                    [
                        f"{c.get('metric', registered.get('metric', ''))} difference "
                        "(candidate - champion)",
                        f"{c['difference']:+.4f}",
                    ],
                    [level, f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]"],
                    ["McNemar p", "n/a" if p is None else f"{p:.3g}"],
                ],
            )
        )
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
    reads=(
        "register",
        "audit.block_promotion",
        "evaluate.bootstrap_samples",
        "evaluate.confidence",
        "evaluate.seed",
        "tracking",
    ),
    # the champion is evaluated on this run's test split: the images and the split
    inputs=("dataset", "splits", "evaluation", "audit_report"),
    outputs=(Port("registered", "Artifact", "reports/register"),),
    optional=("audit_report",),
    io_retry=True,
    preload=("cxrflow.register", "cxrflow.promotion"),
    publish=_publish,
    dvc_outputs={"outs": [{"reports/register": {"cache": False}}]},
)
