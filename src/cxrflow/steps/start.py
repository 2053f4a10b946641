"""Start points of training for DVC: what a model stage depends on besides the data.

Not a pipeline step: in DVC a model stage depends on ``models/<init>``, which is the model a
transfer starts from, or one of these descriptions (``models/scratch``, ``models/imagenet``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrflow.jsonio import write_json_atomic

if TYPE_CHECKING:
    from cxrflow.config import Params


START_FILE = "START.json"


def write_start_point(params: Params, kind: str, out_dir: str | Path) -> dict[str, Any]:
    """Describe a starting point of training (``scratch`` or ``imagenet``) in ``out_dir``.

    DVC's model stages depend on ``models/<init>``: a transfer on the model it starts from, the
    others on this description. For ``imagenet`` it records each configured weights file with
    its sha256, so replacing a weights file (a DVC-tracked artifact) reruns the models that
    load it (a remote one, ``s3://`` or ``dvc://``, by its pinned ``weights_sha256``); for
    ``scratch`` the training seed.
    """
    from cxrflow.config import INIT_IMAGENET, INIT_SCRATCH
    from cxrflow.data.manifest import file_sha256
    from cxrflow.weights import is_remote

    if kind not in (INIT_SCRATCH, INIT_IMAGENET):
        raise ValueError(f"a start point is {INIT_SCRATCH} or {INIT_IMAGENET}, got {kind!r}")
    users = {k: m for k, m in params.models.items() if m.init == kind}
    info: dict[str, Any] = {"init": kind, "models": sorted(users)}
    if kind == INIT_SCRATCH:
        info["seed"] = params.train.seed
    else:
        weights: dict[str, Any] = {}
        for key, spec in sorted(users.items()):
            path = spec.weights_path
            if is_remote(path):  # not fetched here: its pinned digest is its content
                weights[key] = {"path": path, "sha256": spec.weights_sha256}
                continue
            if path and not Path(path).is_file():
                raise FileNotFoundError(
                    f"models.{key}.weights_path: {path} does not exist (download the no-top "
                    "ImageNet weights once, then `dvc add` the file)"
                )
            weights[key] = {"path": path, "sha256": file_sha256(path) if path else None}
        info["weights"] = weights
    write_json_atomic(Path(out_dir) / START_FILE, info)
    return info
