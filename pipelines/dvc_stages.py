"""``dvc.yaml`` written from the step registry: the same steps as the Kubeflow pipeline.

``python -m pipelines.dvc_stages`` rewrites ``dvc.yaml``; a test fails when the committed file
differs from what the registry gives. Each step with ``dvc`` is a stage named after it that
runs its CLI command on the resolved params, depends on its inputs' directories (and the
outputs of the steps it must follow), lists exactly the params sections it reads, and outputs
its directories; a step's ``dvc_deps`` add the data its params choose (ingest's source
roots). The model steps are one ``train@<key>`` stage per entry of params.yaml's
``models:`` (``foreach``); DVC-only stages: ``params`` (resolves the profile) and
``start@scratch|imagenet`` (what a model trained from scratch or ImageNet depends on).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cxrflow.steps.registry import STEPS
from cxrflow.steps.spec import BASE_MODEL, MODEL_INPUTS, StepSpec

RESOLVED = "build/params.resolved.yaml"
MODELS_DIR = "models"
HEADER = """\
# GENERATED from the step registry (src/cxrflow/steps/registry.py) by
# `python -m pipelines.dvc_stages`: edit the steps, not this file (a test compares them).
# The same steps as the Kubeflow pipeline, for `dvc repro` / `dvc exp run`.
#
# Profiles: the `params` stage resolves params.yaml (its `profile` key selects the profile) into
# build/params.resolved.yaml; every other stage reads exactly the keys it needs from that file.
# So `dvc exp run -S profile=smoke`, `-S train.epochs=20` or an edit inside a profile makes only
# the affected stages out of date. `-S` edits params.yaml's top level, which the selected
# profile may override (the profile wins, as it does for the CLI): to change a value a profile
# sets, use `-S profiles.<name>.<key>=...` (the CLI's `--set` applies after the profile).
# Models: one `train@<key>` per entry of params.yaml's `models:`; each depends on models/<init>:
# the model it transfers from, or the description of its start point (models/scratch,
# models/imagenet: the seed, the ImageNet weights' sha256).
# (A model added only inside a profile is trained by the KFP pipeline but not listed here:
# DVC reads `models:` from params.yaml's top level.)
# Data: `ingest` depends on each root of params.yaml's `data.sources` (with a local
# `data.registry`, on each root's .dvc file there), so that after `cxrflow data rollback v1` (or
# `git checkout v1 -- <root>.dvc && dvc checkout`) `dvc repro` reruns from ingest. After adding
# a source or a root to params.yaml, run the generator again. Phantom data (no sources) and a
# remote registry are pinned by params alone (data.synth, data.version).
"""


def _outputs_by_name() -> dict[str, str]:
    return {port.name: port.path for spec in STEPS for port in spec.outputs}


def _cmd(spec: StepSpec, paths: dict[str, str]) -> str:
    """The stage's CLI command: the step's command with its inputs and output."""
    words = ["cxrflow", "--params", RESOLVED, spec.name]
    if spec.per_model:
        words.append("${key}")
    for name in spec.inputs:
        if name in MODEL_INPUTS or name == BASE_MODEL:
            if "--models-dir" not in words:
                words += ["--models-dir", MODELS_DIR]
            continue
        words += [_option(name), paths[name]]
    (out,) = spec.outputs
    words += ["--out", out.path.replace("{key}", "${key}")]
    return " ".join(words)


def _option(name: str) -> str:
    for spec in STEPS:
        for port in spec.outputs:
            if port.name == name:
                return port.option
    raise KeyError(name)


def _stage(spec: StepSpec, paths: dict[str, str], params_yaml: Mapping[str, Any]) -> dict[str, Any]:
    # data the params choose first (what ingest reads), then the inputs and the gates
    deps: list[str] = list(spec.dvc_deps(params_yaml)) if spec.dvc_deps else []
    for name in spec.inputs:
        if name in MODEL_INPUTS:
            deps.append(MODELS_DIR)
        elif name == BASE_MODEL:
            deps.append(f"{MODELS_DIR}/${{item.init}}")
        else:
            deps.append(paths[name])
    for step in spec.after:
        deps += [p.path for p in next(s for s in STEPS if s.name == step).outputs]
    stage: dict[str, Any] = {"cmd": _cmd(spec, paths)}
    if deps:
        stage["deps"] = list(dict.fromkeys(deps))
    reads = [r.replace("{key}", "${key}") for r in spec.reads]
    stage["params"] = [{RESOLVED: reads}]
    outs = spec.dvc_outputs or {"outs": [p.path.replace("{key}", "${key}") for p in spec.outputs]}
    stage |= dict(outs)
    return stage


def dvc_stages(params_yaml: Mapping[str, Any]) -> dict[str, Any]:
    """The ``stages:`` of dvc.yaml (``params_yaml``: params.yaml's top level, as loaded)."""
    params_keys = list(params_yaml)
    paths = _outputs_by_name()
    stages: dict[str, Any] = {
        "params": {
            "cmd": f"cxrflow params resolve --out {RESOLVED}",
            "params": list(params_keys),
            "outs": [{RESOLVED: {"cache": False}}],
        }
    }
    for spec in STEPS:
        if not spec.dvc:
            continue
        if spec.per_model:
            stages["start"] = {
                "foreach": ["scratch", "imagenet"],
                "do": {
                    "cmd": f"cxrflow --params {RESOLVED} start ${{item}} --out models/${{item}}",
                    "params": [{RESOLVED: ["models", "train.seed"]}],
                    "outs": ["models/${item}"],
                },
            }
            stages[spec.name] = {"foreach": "${models}", "do": _stage(spec, paths, params_yaml)}
        else:
            stages[spec.name] = _stage(spec, paths, params_yaml)
    return stages


def render(params_yaml: Path) -> str:
    """dvc.yaml's text for the params file ``params_yaml``."""
    raw = yaml.safe_load(params_yaml.read_text())
    body = yaml.safe_dump({"stages": dvc_stages(raw)}, sort_keys=False, width=100)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    """Write dvc.yaml beside params.yaml (the repository root, or the folder given)."""
    root = Path((argv or sys.argv[1:] or ["."])[0])
    (root / "dvc.yaml").write_text(render(root / "params.yaml"))
    print(f"wrote {root / 'dvc.yaml'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
