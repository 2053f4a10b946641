"""The base every params section builds on: the :class:`ParamsError` naming a dotted key, and a
frozen pydantic model that forbids unknown keys and undoes Kubeflow Pipelines' parameter
encodings (integral floats, ``""`` for null) when validated with ``{"kfp": True}`` context.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationInfo, field_validator


class ParamsError(ValueError):
    """An unknown key, a wrong type or an out-of-range value in params (names the dotted key)."""


def _fail(key: str, msg: str) -> ParamsError:
    return ParamsError(f"params: {key}: {msg}")


class _Section(BaseModel):
    """Base of every params section: frozen, unknown keys forbidden, KFP decoding on demand."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _decode_kfp(cls, value: Any, info: ValidationInfo) -> Any:
        if info.context and info.context.get("kfp") and info.field_name:
            return _kfp_decode(cls.model_fields[info.field_name].annotation, value)
        return value


def _kfp_decode(tp: Any, value: Any) -> Any:
    """Undo KFP's parameter encodings for a value of annotated type ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return _kfp_decode(args[0], value)
    if origin in (typing.Union, types.UnionType):
        if value == "" and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _kfp_decode(inner[0], value) if len(inner) == 1 else value
    if tp is int or (isinstance(tp, type) and issubclass(tp, int) and tp is not bool):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value
    if origin is dict and isinstance(value, Mapping):
        return {k: _kfp_decode(args[1], v) for k, v in value.items()}
    if origin is tuple and isinstance(value, list | tuple):
        return [_kfp_decode(args[0], v) for v in value]
    return value


PositiveInt = Annotated[StrictInt, Field(ge=1)]
