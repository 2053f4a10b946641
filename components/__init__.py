"""KFP v2 components: one per pipeline step, each a few lines around one library call.

Every component receives the whole resolved configuration as one ``params`` dict. Component
bodies import ``cxrflow`` inside the function because KFP ships the function source to the
container (or, locally, to a subprocess), where the project image provides the package. The
model components and evaluate follow ``params.models`` (:mod:`components.factory`). Images are
chosen at compile time (``CXRFLOW_IMAGE``, ``CXRFLOW_GPU_IMAGE``); they are build settings, not
pipeline parameters. The cacheable data steps (ingest, validate, split) take no per-run input;
the others take ``pipeline_run_id`` (KFP's run-id placeholder). Each resolves the run it belongs
to with :func:`cxrflow.steps.current_pipeline_run` (see ``pipelines/cxrflow_pipeline.py``).
"""

from components.factory import audit_component, evaluate_component, model_component
from components.finalize import finalize
from components.ingest import ingest
from components.register import register
from components.split import split
from components.validate import validate

__all__ = [
    "audit_component",
    "evaluate_component",
    "finalize",
    "ingest",
    "model_component",
    "register",
    "split",
    "validate",
]
