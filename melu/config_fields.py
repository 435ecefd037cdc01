"""The machinery behind ``melu.config``: a setting declared once, checked on construction.

``setting(default, help)`` declares a dataclass field with its ``--help`` text; ``_Config``
converts and checks every field against its annotation (``Literal`` choices, numbers,
tuples) and runs the subclass's range checks, raising :class:`ConfigError` naming
``section.name``; ``field_types``/``help_of``/``describe`` let the CLI build its flags.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import types
import typing
from dataclasses import field
from typing import Any, ClassVar, Literal, TypeVar

from melu.errors import ConfigError

T = TypeVar("T")

# every int setting fits the int64 that torch and numpy compute with; a seed (a field named
# ``seed`` or ``*_seed``) also the 32 bits every generator takes, whatever it is mixed with
INT_RANGE = (-(2**63), 2**63 - 1)
SEED_RANGE = (0, 2**32 - 1)


def int_range(name: str) -> tuple[int, int]:
    """The range every int setting called ``name`` must lie in (before its own checks)."""
    return SEED_RANGE if name == "seed" or name.endswith("_seed") else INT_RANGE


def max_threads() -> int:
    """The most torch threads any setting may ask for: 4 per CPU (at least 4). More only
    thrashes: 10,000 threads took ~45 s to start and a load average above 80."""
    return 4 * max(os.cpu_count() or 1, 1)


def check_threads(value: int, name: str) -> int:
    """``value`` if it is a thread count in 1..max_threads(), else a ``ConfigError`` naming
    the setting ``name`` (a flag or an environment variable)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= max_threads():
        raise ConfigError(
            f"{name}={value!r}: torch threads must be 1..{max_threads()} (4 per CPU)", field=name
        )
    return value


def setting(default: Any, help: str) -> Any:
    """A dataclass field with its help text (shown by ``--help``)."""
    return field(default=default, metadata={"help": help})


def help_of(f: dataclasses.Field[Any]) -> str:
    """A field's help text ('' when it has none)."""
    return str(f.metadata.get("help", ""))


_HINTS: dict[str, dict[str, Any]] = {}


def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a config class's fields (cached per class)."""
    key = f"{cls.__module__}.{cls.__qualname__}"
    if key not in _HINTS:
        _HINTS[key] = typing.get_type_hints(cls)
    return _HINTS[key]


def _coerce(tp: Any, value: Any) -> tuple[bool, Any]:
    """(ok, value converted to ``tp``): ints and floats from any real number, tuples from lists."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value in typing.get_args(tp), value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return type(None) in typing.get_args(tp), None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(inner, value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False, value
        items = [_coerce(typing.get_args(tp)[0], v) for v in value]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        return ok, int(value) if ok else value
    if tp is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    return True, value


def describe(tp: Any) -> str:
    """What a value of ``tp`` must be, in words (for error messages)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return describe(inner) + " or null"
    if origin is tuple:
        return f"a list ({describe(typing.get_args(tp)[0])} each)"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


class _Config:
    """Mixin: validation on construction, ``to_dict`` / ``from_dict`` and ``replace``."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = field_types(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            ok, converted = _coerce(hints[f.name], value)
            self._require(ok, f.name, f"must be {describe(hints[f.name])} (got {value!r:.80})")
            low, high = int_range(f.name)
            for number in converted if isinstance(converted, tuple) else (converted,):
                if isinstance(number, int) and not isinstance(number, bool):
                    self._require(
                        low <= number <= high, f.name, f"must be in {low}..{high} (got {number})"
                    )
            object.__setattr__(self, f.name, converted)
        self._validate()

    def _validate(self) -> None:
        """Range and cross-field checks (subclasses)."""

    def _require(self, ok: bool, name: str, message: str) -> None:
        """Raise ConfigError('section.name message') unless ``ok``."""
        if not ok:
            where = f"{self.SECTION}.{name}" if self.SECTION else name
            raise ConfigError(f"{where} {message}", field=where)

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
        }

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})  # type: ignore[arg-type]
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}")
        return cls(**data)

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]
