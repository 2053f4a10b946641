"""Compile the pipeline to a KFP v2 IR YAML file."""

from __future__ import annotations

import logging
from pathlib import Path

from kfp import compiler

from components.images import image_notice
from cxrflow.config import Params
from pipelines.cxrflow_pipeline import build_pipeline

log = logging.getLogger(__name__)


def compile_pipeline(params: Params, output: str | Path) -> Path:
    """Write the compiled pipeline (defaults from ``params``) to ``output``."""
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(params), package_path=str(out))
    from cxrflow.weights import weights_warning

    weights = weights_warning(params)
    if weights:  # kfp.local runs it on this machine; submit and schedule create refuse it
        log.warning(weights)
    notice = image_notice()
    if notice:  # one line: a tag can move under KFP's cache, a digest cannot
        log.warning("%s", notice)
    return out
