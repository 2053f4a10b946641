"""Container images for the components, chosen at compile time.

For each variant (``cpu`` for every step, ``gpu`` for the train steps) the first that applies:

1. ``CXRFLOW_IMAGE`` / ``CXRFLOW_GPU_IMAGE``: whatever the caller names.
2. The record ``make image`` writes (``build/image.json`` in the working directory, or the path
   in ``CXRFLOW_IMAGE_RECORD``): the built image by digest, ``<repository>@sha256:...``, so that
   every task of a compiled pipeline runs exactly the image that was built (KFP caching assumes
   the image behind a task never changes; a tag can move).
3. The release tag (``ghcr.io/cxrflow/cxrflow:0.1.0``, ``...-gpu``); :func:`image_notice` gives
   the one line ``pipeline compile`` prints about it.

``CPU_IMAGE`` and ``GPU_IMAGE`` are resolved when this module is imported (the components bind
them when they are written), which reads the small record file when there is one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

IMAGE_ENV = {"cpu": "CXRFLOW_IMAGE", "gpu": "CXRFLOW_GPU_IMAGE"}
RECORD_ENV = "CXRFLOW_IMAGE_RECORD"
DEFAULT_RECORD = Path("build") / "image.json"


@dataclass(frozen=True)
class ImageChoice:
    """The image of one variant and where it came from (``env``, ``record`` or ``tag``)."""

    variant: str
    image: str
    source: str
    why: str = ""


def record_path(environ: Mapping[str, str] | None = None) -> Path:
    """The image record's path: ``CXRFLOW_IMAGE_RECORD`` or ``build/image.json``."""
    env = os.environ if environ is None else environ
    return Path(env.get(RECORD_ENV, "").strip() or DEFAULT_RECORD)


def _recorded_image(path: Path, variant: str) -> tuple[str | None, str]:
    """(``repo@sha256:...`` or None, why not) from the record at ``path``."""
    if not path.is_file():
        return None, f"no image record at {path}: `make image` writes it"
    try:
        entry = json.loads(path.read_text())["images"][variant]
        repository, digest = str(entry["repository"]), str(entry["digest"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"no {variant} image in {path}"
    if not digest.startswith("sha256:") or not repository:
        return None, f"the {variant} entry of {path} has no sha256 digest"
    return f"{repository}@{digest}", ""


def resolve_image(variant: str, tag: str, environ: Mapping[str, str] | None = None) -> ImageChoice:
    """The image of ``variant`` (``cpu`` or ``gpu``): the environment, the record, or ``tag``.

    Args:
        variant: ``cpu`` or ``gpu``.
        tag: The release tag used when neither the environment nor the record names one.
        environ: Environment to read (default: ``os.environ``).

    Returns:
        The image reference, its source, and why the tag was used when it was.
    """
    env = os.environ if environ is None else environ
    named = env.get(IMAGE_ENV[variant], "").strip()
    if named:
        return ImageChoice(variant, named, "env")
    image, why = _recorded_image(record_path(env), variant)
    if image is not None:
        return ImageChoice(variant, image, "record")
    return ImageChoice(variant, tag, "tag", why)


def image_notice(choices: Iterable[ImageChoice] | None = None) -> str | None:
    """One line naming the variants that fall back to a tag (None when all are pinned).

    Args:
        choices: The choices to describe (default: the ones ``CPU_IMAGE`` and ``GPU_IMAGE``
            were made from, i.e. what the components of this process use).
    """
    tagged = [c for c in (CHOICES.values() if choices is None else choices) if c.source == "tag"]
    if not tagged:
        return None
    whys = sorted({c.why for c in tagged})
    uses = ", ".join(f"{c.variant} steps use the tag {c.image}" for c in tagged)
    return f"images not pinned by digest ({'; '.join(whys)}): {uses}"


CHOICES: dict[str, ImageChoice] = {}
"""variant -> the choice behind ``CPU_IMAGE`` / ``GPU_IMAGE``."""


def choose_image(variant: str, tag: str) -> str:
    """Resolve ``variant`` from ``os.environ`` (see :func:`resolve_image`) and remember why."""
    CHOICES[variant] = resolve_image(variant, tag)
    return CHOICES[variant].image


CPU_IMAGE = choose_image("cpu", "ghcr.io/cxrflow/cxrflow:0.1.0")
GPU_IMAGE = choose_image("gpu", "ghcr.io/cxrflow/cxrflow:0.1.0-gpu")
