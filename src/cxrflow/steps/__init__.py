"""The pipeline steps: one module per step, each a function over directories and a ``SPEC``.

What the CLI, the DVC stages and the KFP components call: each step takes the whole resolved
:class:`~cxrflow.config.Params`, reads its inputs from directories, calls the pure library
functions, writes its outputs and records what it did in MLflow, inside
:func:`~cxrflow.steps.frame.step_frame` (timing, parent run, done mark, summary). The steps and
their order are :mod:`cxrflow.steps.registry`.
"""

from cxrflow.steps.audit import AUDIT_FILE, audit_figures, run_audit
from cxrflow.steps.evaluate import (
    MCNEMAR_FILE,
    METRICS_FILE,
    TestSplit,
    format_summary,
    load_test_split,
    run_evaluate,
)
from cxrflow.steps.export import run_export
from cxrflow.steps.finalize import run_finalize
from cxrflow.steps.frame import StepContext, exit_without_final_gc, step_frame, step_params
from cxrflow.steps.ingest import run_ingest
from cxrflow.steps.lineage import (
    PIPELINE_RUN_ENV,
    PROVENANCE_FILE,
    current_pipeline_run,
    log_report,
    new_pipeline_run_id,
    read_provenance,
    run_commit,
    split_digest,
)
from cxrflow.steps.register import REGISTERED_FILE, format_promotion, run_register
from cxrflow.steps.split import run_split
from cxrflow.steps.start import START_FILE, write_start_point
from cxrflow.steps.timing import COMPUTE_PHASES, StepTimes
from cxrflow.steps.train import MODEL_FILE, MODEL_INFO_FILE, checkpoint_dir, run_train
from cxrflow.steps.validate import DATA_DOCS_PAGE, run_validate, write_data_docs_page

__all__ = [
    "AUDIT_FILE",
    "COMPUTE_PHASES",
    "DATA_DOCS_PAGE",
    "MCNEMAR_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "MODEL_INFO_FILE",
    "PIPELINE_RUN_ENV",
    "PROVENANCE_FILE",
    "REGISTERED_FILE",
    "START_FILE",
    "StepContext",
    "StepTimes",
    "TestSplit",
    "audit_figures",
    "checkpoint_dir",
    "current_pipeline_run",
    "exit_without_final_gc",
    "format_promotion",
    "format_summary",
    "load_test_split",
    "log_report",
    "new_pipeline_run_id",
    "read_provenance",
    "run_audit",
    "run_commit",
    "run_evaluate",
    "run_export",
    "run_finalize",
    "run_ingest",
    "run_register",
    "run_split",
    "run_train",
    "run_validate",
    "split_digest",
    "step_frame",
    "step_params",
    "write_data_docs_page",
    "write_start_point",
]
