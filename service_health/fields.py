"""Typed, tolerant field access on decoded JSON: wrong or missing values become None plus a
problem in words, never an exception."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any


def type_name(value: Any) -> str:
    """JSON-ish name of a decoded value's type, for problem messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


MAX_DEPTH = 32  # deeper objects are refused: no contract answer nests like that


def nested_deeper_than(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True when lists and objects in `value` nest more than `limit` levels (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Collection[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def short(value: Any, limit: int = 60) -> str:
    """repr of a value cut to `limit` characters, safe for any value."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):
        text = f"<{type_name(value)}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def to_datetime(value: Any) -> tuple[datetime | None, str | None]:
    """ISO 8601 text or epoch seconds to an aware UTC datetime: (value, problem)."""
    if isinstance(value, bool):
        return None, f"expected a timestamp, got {type_name(value)}"
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(float(value), UTC), None
        except (OverflowError, OSError, ValueError):
            return None, f"epoch value {short(value)} out of range"
    if not isinstance(value, str):
        return None, f"expected a timestamp, got {type_name(value)}"
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None, f"not an ISO 8601 timestamp: {short(value)}"
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC), "has no time zone (taken as UTC)"
    try:
        return parsed.astimezone(UTC), None
    except (OverflowError, ValueError):
        return None, f"timestamp {short(value)} out of range"


class FieldReader:
    """Reads fields of one JSON object; collects problems into a shared list."""

    def __init__(self, data: Any, problems: list[str], prefix: str = "") -> None:
        self.problems = problems
        self.prefix = prefix
        self.present = isinstance(data, Mapping)
        self.data: Mapping[str, Any] = data if isinstance(data, Mapping) else {}

    def _path(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def _problem(self, key: str, text: str) -> None:
        self.problems.append(f"`{self._path(key)}`: {text}")

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> Any:
        return self.data.get(key)

    def _get(self, key: str, required: bool, nullable: bool) -> tuple[bool, Any]:
        if key not in self.data:
            if required:
                self._problem(key, "missing")
            return False, None
        value = self.data[key]
        if value is None:
            if not nullable:
                self._problem(key, "is null")
            return False, None
        return True, value

    def string(self, key: str, required: bool = True, nullable: bool = False) -> str | None:
        found, value = self._get(key, required, nullable)
        if not found:
            return None
        if not isinstance(value, str):
            self._problem(key, f"expected string, got {type_name(value)}")
            return None
        return value

    def boolean(self, key: str, required: bool = True, nullable: bool = False) -> bool | None:
        found, value = self._get(key, required, nullable)
        if not found:
            return None
        if not isinstance(value, bool):
            self._problem(key, f"expected boolean, got {type_name(value)}")
            return None
        return value

    def number(self, key: str, required: bool = True, nullable: bool = False) -> float | None:
        found, value = self._get(key, required, nullable)
        if not found:
            return None
        # bool is an int subclass in Python but not a number in JSON.
        if isinstance(value, bool) or not isinstance(value, int | float):
            self._problem(key, f"expected number, got {type_name(value)}")
            return None
        try:
            number = float(value)
        except OverflowError:
            self._problem(key, "number too large")
            return None
        if not math.isfinite(number):
            self._problem(key, f"not a finite number: {short(value)}")
            return None
        return number

    def integer(self, key: str, required: bool = True, nullable: bool = False) -> int | None:
        number = self.number(key, required, nullable)
        if number is None:
            return None
        if not number.is_integer():
            self._problem(key, f"expected integer, got {short(self.data[key])}")
            return None
        return int(number)

    def obj(self, key: str, required: bool = True, nullable: bool = False) -> dict[str, Any] | None:
        found, value = self._get(key, required, nullable)
        if not found:
            return None
        if not isinstance(value, dict):
            self._problem(key, f"expected object, got {type_name(value)}")
            return None
        if nested_deeper_than(value):
            self._problem(key, f"nested more than {MAX_DEPTH} levels deep")
            return None
        return value

    def array(self, key: str, required: bool = True, nullable: bool = False) -> list[Any] | None:
        found, value = self._get(key, required, nullable)
        if not found:
            return None
        if not isinstance(value, list):
            self._problem(key, f"expected array, got {type_name(value)}")
            return None
        return value

    def choice(self, key: str, allowed: Collection[str], required: bool = True) -> str | None:
        """A string from a known set; an unknown value is kept as sent, with a problem."""
        value = self.string(key, required)
        if value is not None and value not in allowed:
            self._problem(
                key, f"unknown value {short(value)} (expected one of {', '.join(sorted(allowed))})"
            )
        return value

    def timestamp(self, key: str, required: bool = True, nullable: bool = False) -> datetime | None:
        found, value = self._get(key, required, nullable)
        if not found:
            return None
        parsed, problem = to_datetime(value)
        if problem is not None:
            self._problem(key, problem)
        return parsed

    def sub(self, key: str, required: bool = True, nullable: bool = False) -> FieldReader:
        """Reader for a nested object; absent (all None) when missing or not an object."""
        return FieldReader(self.obj(key, required, nullable), self.problems, f"{self._path(key)}.")
