"""The base of every parameter dataclass: unknown names and wrong types are one-line errors.

A notebook's parameters cell or a papermill `-p` can hold any value; the dataclasses check them
against their type hints when built, so a typo fails at the first cell instead of mid-training.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Self

from utils.core.errors import SessionlenError


class StrictParams:
    """Mixin for hyperparameter dataclasses: unknown keys and wrong types are one-line errors."""

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        """Build from a dict, rejecting unknown names (listing the valid ones) and wrong types."""
        valid = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise SessionlenError(
                f"unknown {cls.__name__} parameter(s) {', '.join(unknown)}; "
                f"valid names: {', '.join(valid)}"
            )
        return cls(**values)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if not _matches(value, hints[f.name]):
                raise SessionlenError(
                    f"{type(self).__name__} parameter {f.name}={value!r} has the wrong type; "
                    f"expected {_type_name(hints[f.name])}"
                )

    def to_dict(self) -> dict[str, Any]:
        """The parameters as a plain dict (for manifests and results rows)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return isinstance(value, (list, tuple)) and all(_matches(v, item) for v in value)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is Any:
        return True
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
