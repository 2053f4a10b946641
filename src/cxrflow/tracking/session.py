"""Where tracking goes: the tracking URI, the experiment (and its MLflow 3 kind), the run's
source tags and the git commit of the code."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
"""MLflow 3's experiment type; unset, the UI may open the experiment as a GenAI one (traces)."""


EXPERIMENT_KIND = "custom_model_development"
"""The value the MLflow 3 UI shows as "Machine learning" (``genai_development``: GenAI)."""


SOURCE_NAME_TAG = "mlflow.source.name"


SOURCE_TYPE_TAG = "mlflow.source.type"


SOURCE_GIT_COMMIT_TAG = "mlflow.source.git.commit"
"""MLflow's own source tags: what fills the Source column of the runs page."""


def tracking_uri() -> str:
    """The tracking URI: ``MLFLOW_TRACKING_URI`` or the local sqlite default (made absolute)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    return "sqlite:///" + str(Path("mlruns.db").resolve())


def _artifact_root(uri: str) -> str | None:
    """Artifact root for new experiments: ``CXRFLOW_ARTIFACT_ROOT`` or next to a sqlite db."""
    env = os.environ.get("CXRFLOW_ARTIFACT_ROOT", "").strip()
    if env:
        return env
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def configure(experiment_name: str) -> str:
    """Point mlflow at the tracking server and experiment; returns the experiment id."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment_name)
    if exp is None:
        try:
            exp_id = mlflow.create_experiment(
                experiment_name,
                artifact_location=_artifact_root(uri),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        except Exception:  # created concurrently by a parallel step
            exp = mlflow.get_experiment_by_name(experiment_name)
            if exp is None:
                raise
            exp_id = exp.experiment_id
    else:
        exp_id = exp.experiment_id
        if EXPERIMENT_KIND_TAG not in (exp.tags or {}):  # made by an older cxrflow, or by hand
            mlflow.MlflowClient().set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=exp_id)
    return str(exp_id)


def source_tags() -> dict[str, str]:
    """MLflow's own source tags for a new run: the command, where it ran, the git commit.

    The runs page's Source column shows them (runs created through the client get none from
    MLflow). The name is the ``cxrflow`` command and its subcommands (``cxrflow ingest``);
    the type ``JOB`` in a Kubeflow pod, else ``LOCAL``; the commit is :func:`git_commit`'s,
    without its ``-dirty`` mark (``cxrflow.git_commit`` keeps it), and absent when unknown.
    """
    import sys

    words = ["cxrflow"]
    if sys.argv and Path(sys.argv[0]).name == "cxrflow":
        args = iter(sys.argv[1:])
        for word in args:  # the subcommands: after the global options, before the others
            if word in ("--params", "--profile", "--set"):
                next(args, None)
            elif (word.startswith("-") and len(words) > 1) or "/" in word or len(words) == 3:
                break
            elif not word.startswith("-"):
                words.append(word)
    tags = {
        SOURCE_NAME_TAG: " ".join(words),
        SOURCE_TYPE_TAG: "JOB" if os.environ.get("KFP_POD_NAME") else "LOCAL",
    }
    commit = git_commit().removesuffix("-dirty")
    if commit != "unknown":
        tags[SOURCE_GIT_COMMIT_TAG] = commit
    return tags


def git_commit() -> str:
    """The git commit of the code (``CXRFLOW_GIT_COMMIT`` in images, else ``git rev-parse``)."""
    env = os.environ.get("CXRFLOW_GIT_COMMIT", "").strip()
    if env:
        return env
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
        sha = out.stdout.strip()
        if out.returncode == 0 and sha:
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout.strip()
            return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"
