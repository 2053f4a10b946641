"""Compile the pipeline to a KFP v2 IR YAML file."""

from __future__ import annotations

from pathlib import Path

from kfp import compiler

from cxrflow.config import Params
from pipelines.cxrflow_pipeline import build_pipeline


def compile_pipeline(params: Params, output: str | Path) -> Path:
    """Write the compiled pipeline (defaults from ``params``) to ``output``."""
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(params), package_path=str(out))
    return out
