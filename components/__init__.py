"""KFP v2 components: one per pipeline step, written from the step registry.

Every component receives the whole resolved configuration as one ``params`` dict and makes
one call, :func:`cxrflow.steps.component.run_component` (:mod:`components.factory`). Component
bodies import ``cxrflow`` inside the function because KFP ships the function source to the
container (or, locally, to a subprocess), where the project image provides the package. The
exit handler ``finalize`` is written by hand: it takes KFP's final pipeline status.
"""

from components.factory import make_component
from components.finalize import finalize

__all__ = ["finalize", "make_component"]
