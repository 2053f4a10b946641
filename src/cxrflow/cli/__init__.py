"""``cxrflow``: the one command-line program: every step, data, params, models, and the command
groups other packages add (``cxrflow pipeline ...`` from ``pipelines``).

What DVC stages and people call. Built with Typer; heavy libraries (TensorFlow, MLflow, Great
Expectations, kfp) are imported only by the commands that need them, so ``cxrflow --help`` is
instant. The configuration is resolved once per invocation (``--params``, ``--profile``,
``--set``) and passed whole to the step. A failure a user can cause ends with one line on
stderr, ``cxrflow: error: ...``, and a non-zero exit; ``--debug`` shows the traceback. No module
of this package imports the adapters (``pipelines``, ``components``): their commands arrive
through the ``cxrflow.cli`` entry point group (see :mod:`cxrflow.cli.program`).
"""

from __future__ import annotations

from cxrflow.cli.program import app, main

__all__ = ["app", "main"]
