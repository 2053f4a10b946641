"""KFP v2 components: one per pipeline step, each a few lines around one library call.

Component bodies import ``cxrflow`` inside the function because KFP ships the function source
to the container (or, locally, to a subprocess), where the project image provides the package.
Images are chosen at compile time (``CXRFLOW_IMAGE``, ``CXRFLOW_GPU_IMAGE``); they are build
settings, not pipeline parameters.
"""

from components.evaluate import evaluate
from components.ingest import ingest
from components.models import model_0, model_1, model_2, model_3
from components.register import register
from components.split import split
from components.validate import validate

COMPONENTS = {
    "ingest": ingest,
    "validate": validate,
    "split": split,
    "model_0": model_0,
    "model_1": model_1,
    "model_2": model_2,
    "model_3": model_3,
    "evaluate": evaluate,
    "register": register,
}

__all__ = [
    "COMPONENTS",
    "evaluate",
    "ingest",
    "model_0",
    "model_1",
    "model_2",
    "model_3",
    "register",
    "split",
    "validate",
]
