"""Slow path of the webhook parser: turn an untyped JSON tree into the parser's typed models.

`payload.py` first decodes a body straight into permissive `msgspec.Struct` models. msgspec
stops at the first type error and names only that one, so when that decode fails the body is
decoded again without a schema and walked here. Every value whose JSON type does not match
the model is reported with its exact path and dropped (set to the field's default), and the
rest is kept, so the same event-building code in `payload.py` can then run on the result
and report what is missing.

The walk is generic: it follows `msgspec.inspect` type information of the models, so the
models stay the single description of what the parser reads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar

import msgspec
import msgspec.inspect as mi

from wastats.whatsapp.events import Problem

S = TypeVar("S", bound=msgspec.Struct)

Gate = Callable[[type[msgspec.Struct], dict[str, Any]], Iterable[str]]
"""Given a model and the JSON object being read into it, the JSON keys not to read (for
example the `value` of a change that is not a `messages` change, whose shape is not ours)."""

PRESENT: Final = msgspec.Raw(b"true")
"""Stands in for a `msgspec.Raw` field: the parser only asks whether such a key was present."""

# Fields whose expectation reads better in domain words than as a list of JSON types.
_LABELS: Final[dict[str, str]] = {
    "timestamp": "Unix seconds",
    "expiration_timestamp": "Unix seconds",
}

_BAD: Final = object()
"""Returned for a value that did not match its type (already reported)."""


class Problems:
    """Problems found in one body, at most one per path.

    The typed models make a broken value look absent, so the event-building code may try to
    report "missing" at a path where the walk already said what was wrong; the first, more
    precise message wins.
    """

    __slots__ = ("_paths", "items")

    def __init__(self) -> None:
        self.items: list[Problem] = []
        self._paths: set[str] = set()

    def add(self, path: str, message: str) -> None:
        if path in self._paths:
            return
        self._paths.add(path)
        self.items.append(Problem(path=path, message=message))

    def has(self, path: str) -> bool:
        return path in self._paths


def describe(value: object) -> str:
    """A short, log-safe rendering of a JSON value for a problem message."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:40]) + "..."
    if isinstance(value, int):
        # str() of a huge int is slow and can raise (sys.int_info.default_max_str_digits).
        return repr(value) if -(10**18) < value < 10**18 else "a very large integer"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def clean(data: dict[str, Any], cls: type[S], path: str, problems: Problems, gate: Gate) -> S:
    """Build `cls` from a decoded JSON object, reporting and dropping mismatched values."""
    result = _clean_struct(data, _struct_info(cls), path, problems, gate)
    assert isinstance(result, cls)
    return result


@functools.cache
def _struct_info(cls: type[msgspec.Struct]) -> mi.StructType:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return info


def _clean_struct(
    data: dict[str, Any], info: mi.StructType, path: str, problems: Problems, gate: Gate
) -> msgspec.Struct:
    skipped = gate(info.cls, data)
    kwargs: dict[str, object] = {}
    for field in info.fields:
        key = field.encode_name
        if key not in data or key in skipped:
            continue
        label = _LABELS.get(key)
        value = _clean_value(data[key], field.type, f"{path}.{key}", label, problems, gate)
        if value is not _BAD:
            kwargs[field.name] = value
    result: msgspec.Struct = info.cls(**kwargs)
    return result


def _clean_value(
    value: object, t: mi.Type, path: str, label: str | None, problems: Problems, gate: Gate
) -> object:
    members = t.types if isinstance(t, mi.UnionType) else (t,)
    for member in members:
        # `type(...) is` rather than isinstance: JSON true must not pass as an integer.
        if isinstance(member, mi.NoneType):
            if value is None:
                return None
        elif isinstance(member, mi.StrType):
            if type(value) is str:
                return value
        elif isinstance(member, mi.IntType):
            if type(value) is int:
                return value
        elif isinstance(member, mi.BoolType):
            if type(value) is bool:
                return value
        elif isinstance(member, mi.StructType):
            if type(value) is dict:
                return _clean_struct(value, member, path, problems, gate)
        elif isinstance(member, mi.ListType):
            if type(value) is list:
                return _clean_list(value, member.item_type, path, problems, gate)
        elif isinstance(member, mi.RawType):
            return PRESENT
        else:  # pragma: no cover - a model uses a type this walk does not know
            raise TypeError(f"unsupported model type {member!r}")
    problems.add(path, f"expected {label or _expected(members)}, got {describe(value)}")
    return _BAD


def _clean_list(
    items: list[Any], item_type: mi.Type, path: str, problems: Problems, gate: Gate
) -> list[object]:
    # A broken element becomes None rather than disappearing so later paths keep their
    # index (`statuses[3]` must still mean the fourth element of the body).
    out: list[object] = []
    for i, item in enumerate(items):
        value = _clean_value(item, item_type, f"{path}[{i}]", None, problems, gate)
        out.append(None if value is _BAD else value)
    return out


_TYPE_WORDS: Final[dict[type[mi.Type], str]] = {
    mi.StrType: "a string",
    mi.IntType: "an integer",
    mi.BoolType: "a boolean",
    mi.StructType: "an object",
    mi.ListType: "a list",
}


def _expected(members: Iterable[mi.Type]) -> str:
    words = [_TYPE_WORDS[type(m)] for m in members if type(m) in _TYPE_WORDS]
    return " or ".join(words) or "a value"
