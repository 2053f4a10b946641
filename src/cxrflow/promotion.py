"""Promotion with people in the loop: the paired comparison with the champion, and alias moves
that are recorded (who, when, from which version to which, why) and can be reverted.

:func:`paired_difference` compares two models' predictions on the same test images with the
same patient bootstrap as ``evaluate`` (same resamples for the same seed). :func:`promote_version`,
:func:`rollback_champion` and :func:`alias_history` are what ``cxrflow model promote``,
``rollback`` and ``history`` call; the history lives in MLflow, one registered-model tag per
move (:func:`cxrflow.names.alias_move_tag`), so that it travels with the registry and needs no
other store. Every MLflow call goes through :mod:`cxrflow.tracking`.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from cxrflow import names

LABEL_METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro")
"""The promotion metrics: each depends on the predicted labels only."""


class PromotionError(ValueError):
    """A promotion, rollback or history request that cannot be done (one clear line)."""


# ------------------------------------------------------------------ paired comparison


def label_metric(y: np.ndarray, pred: np.ndarray, k: int, metric: str) -> float:
    """``metric`` of predicted labels, as :func:`cxrflow.stats.metric_summary` computes it.

    Macro averages run over all ``k`` classes; a class never predicted has precision 0, and a
    class absent from ``y`` contributes recall and F1 0 (the summary's rules).

    Raises:
        ValueError: ``metric`` is not one of :data:`LABEL_METRICS`.
    """
    if metric not in LABEL_METRICS:
        raise ValueError(f"{metric!r}: not a label metric ({', '.join(LABEL_METRICS)})")
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k).astype(float)
    tp = np.diag(cm)
    if metric == "accuracy":
        return float(tp.sum() / cm.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.nan_to_num(tp / cm.sum(axis=0))
        recall = np.nan_to_num(tp / cm.sum(axis=1))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    chosen = {"precision_macro": precision, "recall_macro": recall, "f1_macro": f1}[metric]
    return float(chosen.mean())


def paired_difference(
    y_true: Sequence[int] | np.ndarray,
    pred_a: Sequence[int] | np.ndarray,
    pred_b: Sequence[int] | np.ndarray,
    groups: Sequence[Any] | np.ndarray,
    n_classes: int,
    metric: str,
    *,
    n_boot: int,
    confidence: float,
    seed: int,
) -> dict[str, Any]:
    """``metric(a) - metric(b)`` on the same images, with a paired patient-bootstrap interval.

    Both models are scored on each resample of patients (the resamples of
    :func:`cxrflow.stats.patient_bootstrap_indices`, skipping those that lack a class present
    in the test split, as the evaluation does), so the interval is of the difference itself,
    not of two separate intervals.

    Args:
        y_true: True class indices of the test images.
        pred_a: Model a's predicted class indices (the candidate), same images and order.
        pred_b: Model b's predicted class indices (the champion).
        groups: Patient id of each image (the bootstrap unit).
        n_classes: Number of classes.
        metric: One of :data:`LABEL_METRICS`.
        n_boot: Bootstrap resamples.
        confidence: Interval coverage, e.g. 0.95.
        seed: Bootstrap seed.

    Returns:
        ``difference``, ``ci_low``, ``ci_high`` (NaN when no resample was usable), ``usable``,
        ``n_test``, ``n_patients``.

    Raises:
        ValueError: Mismatched lengths or no images.
    """
    from cxrflow.stats import patient_bootstrap_indices, percentile_bounds

    y, a, b = (np.asarray(v).astype(int).ravel() for v in (y_true, pred_a, pred_b))
    g = np.asarray(groups)
    if not len(y) or not (len(y) == len(a) == len(b) == len(g)):
        raise ValueError(
            f"paired comparison needs the same images: {len(y)} labels, {len(a)} and {len(b)} "
            f"predictions, {len(g)} patient ids"
        )
    k = n_classes
    present = np.bincount(y, minlength=k) > 0
    point = label_metric(y, a, k, metric) - label_metric(y, b, k, metric)
    boots = []
    for idx in patient_bootstrap_indices(g, n_boot, seed):
        if (np.bincount(y[idx], minlength=k)[present] == 0).any():
            continue
        boots.append(
            label_metric(y[idx], a[idx], k, metric) - label_metric(y[idx], b[idx], k, metric)
        )
    low, high = percentile_bounds(np.asarray(boots), confidence) if boots else (np.nan, np.nan)
    return {
        "difference": float(point),
        "ci_low": float(low),
        "ci_high": float(high),
        "usable": len(boots),
        "n_test": len(y),
        "n_patients": len(np.unique(g)),
    }


# ------------------------------------------------------------------------ alias moves


@dataclass(frozen=True)
class AliasMove:
    """One move of an alias, as recorded in the registry.

    Attributes:
        when: UTC time, ISO 8601.
        alias: ``champion``, ``challenger``...
        from_version: The version the alias pointed at before (None: it pointed nowhere).
        to_version: The version it points at now.
        action: ``register`` (the pipeline), ``promote`` or ``rollback`` (a person).
        reason: Why, in words.
        who: ``$CXRFLOW_USER``, else ``$USER``, else the login name.
        key: The registered-model tag holding it.
    """

    when: str
    alias: str
    from_version: int | None
    to_version: int
    action: str
    reason: str
    who: str
    key: str = ""


def current_user() -> str:
    """Who is moving an alias: ``$CXRFLOW_USER``, ``$USER``, else the login name."""
    for var in ("CXRFLOW_USER", "USER"):
        value = os.environ.get(var, "").strip()
        if value:
            return value
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def move_alias(
    model_name: str,
    alias: str,
    version: int,
    *,
    action: str,
    reason: str,
    previous: int | None = None,
    set_alias: bool = True,
) -> AliasMove:
    """Point ``alias`` at ``version`` (unless ``set_alias`` is False: already done) and record
    the move as a registered-model tag.

    Args:
        model_name: The registered model.
        alias: The alias moved.
        version: Where it points now.
        action: ``register``, ``promote`` or ``rollback``.
        reason: Why.
        previous: Where it pointed before (looked up when ``set_alias``).
        set_alias: Whether to move the alias here.
    """
    from cxrflow import tracking

    if set_alias:
        before = tracking.alias_version(model_name, alias)
        previous = None if before is None else int(before["version"])
        tracking.set_model_alias(model_name, alias, version)
    millis = int(time.time() * 1000)
    move = AliasMove(
        when=datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds"),
        alias=alias,
        from_version=previous,
        to_version=int(version),
        action=action,
        reason=reason[:4000],
        who=current_user(),
    )
    key = names.alias_move_tag(millis, alias)
    record = {k: v for k, v in asdict(move).items() if k != "key"}
    tracking.set_registered_model_tag(model_name, key, json.dumps(record, sort_keys=True))
    return AliasMove(**{**record, "key": key})


def parse_moves(tags: Mapping[str, str]) -> list[AliasMove]:
    """The alias moves among a registered model's tags, oldest first (unreadable ones skipped)."""
    moves = []
    for key in sorted(k for k in tags if k.startswith(names.TAG_ALIAS_MOVE_PREFIX)):
        try:
            record = json.loads(tags[key])
            moves.append(
                AliasMove(
                    when=str(record["when"]),
                    alias=str(record["alias"]),
                    from_version=None
                    if record.get("from_version") is None
                    else int(record["from_version"]),
                    to_version=int(record["to_version"]),
                    action=str(record.get("action", "")),
                    reason=str(record.get("reason", "")),
                    who=str(record.get("who", "")),
                    key=key,
                )
            )
        except (ValueError, KeyError, TypeError):
            continue
    return moves


def previous_champion(moves: Sequence[AliasMove], alias: str, current: int | None) -> int | None:
    """The version ``rollback`` returns ``alias`` to, from its recorded moves (a pure function).

    The moves form a stack: a promotion (or registration) pushes its version, a rollback pops
    one. The previous champion is the newest version on the stack below the current one that is
    not the current one.
    """
    stack: list[int] = []
    for m in moves:
        if m.alias != alias:
            continue
        if m.action == "rollback":
            while stack and stack[-1] != m.to_version:
                stack.pop()
            if not stack:
                stack.append(m.to_version)
        else:
            stack.append(m.to_version)
    while stack and stack[-1] == current:
        stack.pop()
    return stack[-1] if stack else None


def _model_name_exists(model_name: str) -> dict[str, Any]:
    from cxrflow import tracking

    if not tracking.tracking_store_exists():
        raise PromotionError(
            f"no MLflow tracking store at {tracking.tracking_uri()}: nothing is registered; set "
            "MLFLOW_TRACKING_URI to your tracking server"
        )
    model = tracking.registered_model(model_name)
    if model is None:
        raise PromotionError(
            f"no registered model {model_name!r} at {tracking.tracking_uri()}; run the pipeline "
            "first, or pass --name"
        )
    return model


def promote_version(
    model_name: str,
    alias: str,
    version: int,
    reason: str,
    *,
    override_audit: bool = False,
) -> AliasMove:
    """Point ``alias`` (the champion) at ``version`` by hand, recorded with the reason.

    Raises:
        PromotionError: No reason, unknown version, already the champion, or the version failed
            (or never had) the shortcut audit and ``override_audit`` is not given.
    """
    from cxrflow import tracking

    if not reason.strip():
        raise PromotionError("a promotion needs a reason: --reason '...'")
    _model_name_exists(model_name)
    mv = tracking.model_version(model_name, version)
    if mv is None:
        raise PromotionError(f"{model_name} has no version {version}")
    current = tracking.alias_version(model_name, alias)
    if current is not None and int(current["version"]) == int(version):
        raise PromotionError(f"version {version} of {model_name} is already @{alias}")
    verdict = mv["tags"].get(names.TAG_AUDIT_PASSED)
    if verdict != "true" and not override_audit:
        what = "failed the shortcut audit" if verdict == "false" else "was not audited"
        why = mv["tags"].get(names.TAG_AUDIT_REASONS, "")
        raise PromotionError(
            f"version {version} {what}{f' ({why})' if why else ''}: promoting it needs "
            "--override-audit and a --reason"
        )
    full_reason = reason.strip()
    tags = {
        names.TAG_PROMOTION: "champion",
        names.TAG_PROMOTION_REASON: full_reason[:4900],
        names.TAG_PROMOTED_BY: current_user(),
    }
    if verdict != "true":
        full_reason += f" [audit overridden: {'failed' if verdict == 'false' else 'not audited'}]"
        tags[names.TAG_AUDIT_OVERRIDE] = f"promote by {current_user()}: {reason.strip()}"[:4900]
    tracking.set_model_version_tags(model_name, version, tags)
    return move_alias(model_name, alias, int(version), action="promote", reason=full_reason)


def rollback_champion(model_name: str, alias: str, reason: str = "") -> AliasMove:
    """Point ``alias`` back at the previous champion (recorded; see :func:`previous_champion`).

    Raises:
        PromotionError: No champion, or no previous champion to return to.
    """
    from cxrflow import tracking

    model = _model_name_exists(model_name)
    current = tracking.alias_version(model_name, alias)
    if current is None:
        raise PromotionError(f"{model_name} has no @{alias}: nothing to roll back")
    now = int(current["version"])
    target = previous_champion(parse_moves(model["tags"]), alias, now)
    if target is None:
        raise PromotionError(
            f"{model_name}@{alias} is version {now} and has no previous {alias} to roll back to"
        )
    if tracking.model_version(model_name, target) is None:
        raise PromotionError(f"the previous {alias}, version {target}, no longer exists")
    text = reason.strip() or f"rollback of version {now}"
    return move_alias(model_name, alias, target, action="rollback", reason=text)


def follow_int8(model_name: str, move: AliasMove) -> str:
    """Move the int8 model's alias with the Keras one, so that ``<name>-int8@<alias>`` is always
    the export of ``<name>@<alias>``; returns what happened, in one line ("" when ``model_name``
    has no int8 model).

    The int8 version is the one tagged as exported from the version the alias now points at; if
    there is none (that version was never exported), the int8 alias is removed rather than left
    serving another version's model, and the line says how to export it.
    """
    from cxrflow import tracking

    int8 = names.int8_model_name(model_name)
    if tracking.registered_model(int8) is None:
        return ""
    source = f"{model_name}/{move.to_version}"
    version = tracking.find_model_version(int8, names.TAG_EXPORT_SOURCE_MODEL, source)
    if version is None:
        before = tracking.alias_version(int8, move.alias)
        tracking.delete_model_alias(int8, move.alias)
        was = "" if before is None else f" (was version {before['version']})"
        return (
            f"{int8}@{move.alias} removed{was}: version {move.to_version} has no int8 export; "
            f"make one with `cxrflow export --model models:/{source}`"
        )
    current = tracking.alias_version(int8, move.alias)
    if current is not None and int(current["version"]) == version:
        return f"{int8}@{move.alias}: already version {version} (the export of {source})"
    follow = move_alias(
        int8,
        move.alias,
        version,
        action=move.action,
        reason=f"follows {model_name}@{move.alias} -> version {move.to_version}: {move.reason}",
    )
    was = "nowhere" if follow.from_version is None else f"version {follow.from_version}"
    return f"{int8}@{move.alias}: {was} -> version {version} (the export of {source})"


def alias_history(model_name: str) -> list[AliasMove]:
    """Every recorded alias move of ``model_name``, oldest first.

    Raises:
        PromotionError: No tracking store, or no such registered model.
    """
    return parse_moves(_model_name_exists(model_name)["tags"])


def format_history(moves: Sequence[AliasMove]) -> str:
    """The moves as a table: when, alias, from, to, action, who, why."""
    from cxrflow.tables import format_table

    if not moves:
        return "no alias moves recorded\n"
    rows = [
        [
            m.when,
            m.alias,
            "-" if m.from_version is None else m.from_version,
            m.to_version,
            m.action,
            m.who,
            m.reason,
        ]
        for m in moves
    ]
    return format_table(["when", "alias", "from", "to", "action", "who", "why"], rows) + "\n"
