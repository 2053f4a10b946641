"""Resolution and encodings of :class:`~cxrflow.config.sections.Params`: params.yaml + profile +
``KEY=VALUE`` overrides -> Params (:func:`load_params`, the one place configuration is
resolved), the KFP parameter encoding both ways, the flat MLflow form, the stable hash and the
JSON Schema for editors.
"""

from __future__ import annotations

import hashlib
import json
import re
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from cxrflow.config.base import ParamsError, _fail
from cxrflow.config.constants import PAPER
from cxrflow.config.sections import ModelSpec, Params, _paper_models

# ---------------------------------------------------------------------------------------------
# Resolution: params.yaml + profile + overrides -> Params


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` merged into ``base``: mappings recursively, anything else replaced."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=20"`` -> ``("train.epochs", 20)``; the value is read as YAML.

    Raises:
        ParamsError: Not ``KEY=VALUE``, or a value YAML cannot read.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not all(re.match(r"^[A-Za-z0-9_]+$", p) for p in key.split(".")):
        raise ParamsError(f"params: override {text!r}: expected KEY=VALUE, e.g. train.epochs=20")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ParamsError(f"params: {key}: cannot read value {raw!r} as YAML ({exc})") from None
    return key, value


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    head, _, rest = key.partition(".")
    out = dict(raw)
    if rest:
        inner = out.get(head)
        if inner is not None and not isinstance(inner, Mapping):
            raise _fail(head, f"is not a section; cannot set {key}")
        out[head] = _set_dotted(dict(inner or {}), rest, value)
    else:
        out[head] = value
    return out


def _with_default_models(raw: dict[str, Any]) -> dict[str, Any]:
    """A partial entry for one of the paper's models (``models: {model_3: {weights_path: x}}``)
    completes that model's defaults; the other default models stay. Sections need no such help:
    their missing keys take the field defaults."""
    models = raw.get("models")
    if not isinstance(models, Mapping):
        return raw
    paper = {k: v.model_dump(mode="json") for k, v in _paper_models().items()}
    merged = dict(paper)
    for key, entry in models.items():
        merged[key] = deep_merge(paper.get(key, {}), entry) if isinstance(entry, Mapping) else entry
    return {**raw, "models": merged}


def params_from_dict(
    raw: Mapping[str, Any],
    profile: str | None = None,
    overrides: Iterable[str] = (),
    *,
    context: Mapping[str, Any] | None = None,
) -> Params:
    """Resolve a raw mapping (the content of ``params.yaml``) into :class:`Params`.

    Args:
        raw: The file's content, with an optional ``profiles`` section and ``profile`` key (the
            selected profile). A mapping without ``profiles`` is taken as already resolved: its
            ``profile`` is then only the label of how it was resolved.
        profile: Overrides the file's ``profile`` key (``paper`` applies no profile).
        overrides: ``KEY=VALUE`` strings applied last (see :func:`parse_override`).
        context: Validation context (``{"kfp": True}`` at the KFP boundary only).

    Raises:
        ParamsError: Unknown key, unknown profile or invalid value, naming the dotted key.
    """
    raw = dict(raw)
    resolved = "profiles" not in raw
    profiles = raw.pop("profiles", None) or {}
    if not isinstance(profiles, Mapping):
        raise _fail("profiles", "must be a mapping")
    chosen = profile if profile is not None else raw.get("profile", PAPER)
    if not isinstance(chosen, str):
        raise _fail("profile", f"must be a profile name, got {chosen!r}")
    if chosen != PAPER and not (resolved and profile is None):
        if chosen not in profiles:
            raise _fail("profile", f"unknown profile {chosen!r}; available: {[PAPER, *profiles]}")
        raw = deep_merge(raw, profiles[chosen])
    raw["profile"] = chosen
    for item in overrides:
        key, value = parse_override(item)
        raw = _set_dotted(raw, key, value)
    merged = _with_default_models(raw)
    try:
        return Params.model_validate(merged, context=dict(context or {}))
    except ValidationError as exc:
        raise ParamsError(_format_errors(exc)) from None


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, ParamsError):
            lines.append(str(cause))
            continue
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "value_error":  # a validator's own message says what it got
            msg = msg.removeprefix("Value error, ")
        elif "input" in err and err["type"] not in ("missing",):
            msg = f"{msg}, got {err['input']!r}"
        lines.append(f"params: {key}: {msg}")
    return "; ".join(dict.fromkeys(lines))


def read_params_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a params file (``ParamsError`` if missing or not a mapping)."""
    p = Path(path)
    if not p.is_file():
        raise ParamsError(
            f"params: file not found: {p} (run from the project root or pass --params)"
        )
    raw = yaml.safe_load(p.read_text()) or {}
    if not isinstance(raw, Mapping):
        raise _fail(str(p), "top level must be a mapping")
    return dict(raw)


def load_params(
    path: str | Path = "params.yaml", profile: str | None = None, overrides: Iterable[str] = ()
) -> Params:
    """Load ``params.yaml`` and resolve it: profile (argument, else the file's ``profile``), then
    ``overrides``. This is the one place configuration is resolved.
    """
    return params_from_dict(read_params_file(path), profile, overrides)


def params_from_kfp(value: Mapping[str, Any]) -> Params:
    """Params from a KFP pipeline parameter (the resolved configuration as a dict).

    KFP carries numbers as floats and cannot carry null, so here, and only here, an integral
    float reads as an integer and ``""`` as null where a field may be null.
    """
    raw = dict(value)
    raw.pop("profiles", None)
    return params_from_dict(raw, None, (), context={"kfp": True})


def params_to_dict(params: BaseModel) -> dict[str, Any]:
    """Plain, JSON-able nested dict (section names as in params.yaml)."""
    return params.model_dump(mode="json")


def nulls_to_empty(obj: Any) -> Any:
    """Replace ``None`` by ``""`` recursively (KFP parameter values cannot be null)."""
    if isinstance(obj, dict):
        return {k: nulls_to_empty(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [nulls_to_empty(v) for v in obj]
    return "" if obj is None else obj


def params_to_kfp(params: Params) -> dict[str, Any]:
    """The resolved configuration as a KFP parameter value (nulls as ``""``)."""
    return typing.cast(dict[str, Any], nulls_to_empty(params_to_dict(params)))


def params_to_yaml(params: Params) -> str:
    """The resolved configuration as YAML (no ``profiles``: loading it applies nothing)."""
    head = (
        f"# cxrflow resolved params (profile {params.profile}, hash {params_hash(params)}).\n"
        "# Generated from params.yaml; edit params.yaml, not this file.\n"
    )
    return head + yaml.safe_dump(params_to_dict(params), sort_keys=False)


def flatten_params(params: BaseModel | Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten to ``{"train.batch_size": "20", ...}`` for MLflow params."""
    plain = params_to_dict(params) if isinstance(params, BaseModel) else dict(params)
    out: dict[str, str] = {}

    def walk(node: Any, pre: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{pre}.{k}" if pre else k)
        else:
            out[pre] = json.dumps(node) if isinstance(node, list | dict) else str(node)

    walk(plain, prefix)
    return out


def params_hash(params: Params) -> str:
    """Stable short hash of the resolved configuration (tags, cache keys, file names)."""
    blob = json.dumps(params_to_dict(params), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def params_json_schema() -> dict[str, Any]:
    """JSON Schema of ``params.yaml`` (sections, plus ``profile`` and ``profiles``), for editors."""
    schema = Params.model_json_schema(mode="validation")
    props = schema.setdefault("properties", {})
    props["profiles"] = {
        "type": "object",
        "description": "Named partial overrides of the sections above (e.g. demo, smoke).",
        "additionalProperties": {"type": "object"},
    }
    props["profile"] = {
        "type": "string",
        "default": PAPER,
        "description": "The selected profile (paper applies none).",
    }
    schema["title"] = "cxrflow params.yaml"
    return schema


def check_model_key(params: Params, key: str) -> ModelSpec:
    """The spec of ``key`` or a ParamsError naming the known keys."""
    if key not in params.models:
        raise _fail(f"models.{key}", f"unknown model key; params define {list(params.model_keys)}")
    return params.models[key]
