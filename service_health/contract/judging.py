"""How a contract test is judged: the `Judge` that collects what was expected, what was
seen and one diff line per violation, and the helpers every judge shares. Pure."""

from __future__ import annotations

import json
from collections.abc import Iterable

from service_health.contract.models import Judgment
from service_health.fields import FieldReader, short, to_datetime
from service_health.observations import HttpObservation

TIMESTAMP = "ISO 8601 with a time zone (UTC)"
STATES = "CLOSED, OPEN or HALF_OPEN"
MISSING = object()  # a field absent from the body (None is a JSON null)


def shown(value: object) -> str:
    """A value as a diff shows it: missing, null, 'text', 12.5, {"a": 1}."""
    if value is MISSING:
        return "missing"
    if value is None:
        return "null"
    if isinstance(value, str):
        return short(value, 120)
    try:
        text = json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError, RecursionError):
        text = short(value, 120)
    return text if len(text) <= 120 else text[:117] + "..."


def answer(obs: HttpObservation) -> str:
    if not obs.answered:
        return f"no answer ({obs.failure_text()})"
    kind = f" ({obs.content_type})" if obs.content_type else ""
    return f"HTTP {obs.status_code}{kind}"


def excerpt(obs: HttpObservation, limit: int = 200) -> str:
    text = " ".join((obs.body_text or "").split())
    if not text:
        return "empty"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def codes_text(codes: tuple[int, ...]) -> str:
    return " or ".join(str(c) for c in codes)


class Judge:
    """Collects expected/actual per aspect and one diff line per violation."""

    def __init__(self, *observations: HttpObservation) -> None:
        self.j = Judgment(evidence=[o.label for o in observations])

    def record(self, aspect: str, expected: str, actual: object) -> None:
        """What the contract expects of an aspect and what was seen, without judging."""
        self.j.expected[aspect] = expected
        self.j.actual[aspect] = actual if isinstance(actual, str) else shown(actual)

    def expect(
        self, aspect: str, expected: str, actual: object, ok: bool, field: bool = False
    ) -> bool:
        """Record and judge an aspect; `field` names a body field (shown as `name`)."""
        self.record(aspect, expected, actual)
        if not ok:
            name = f"`{aspect}`" if field else aspect
            self.violation(f"{name}: expected {expected}; got {self.j.actual[aspect]}")
        return ok

    def violation(self, line: str) -> None:
        if line not in self.j.diff:
            self.j.diff.append(line)

    def problems(self, problems: Iterable[str]) -> None:
        for problem in problems:
            self.violation(problem)

    def usable(self, obs: HttpObservation, codes: tuple[int, ...], meaning: str) -> bool:
        """Record the status code; an answer that cannot be judged further ends the test.

        No answer, or an error status the contract does not allow for this endpoint, is one
        violation (plus the start of the body), not a list of every field it lacks.
        """
        self.record("HTTP status", meaning, answer(obs))
        if not obs.answered:
            self.violation(f"HTTP status: expected {codes_text(codes)}; got {answer(obs)}")
            return False
        code = obs.status_code or 0
        if code >= 400 and code not in codes:
            self.violation(f"HTTP status: expected {codes_text(codes)}; got {answer(obs)}")
            self.record("body", "JSON object", excerpt(obs))
            self.violation(f"body: {excerpt(obs)}")
            return False
        return True

    def json_object(self, obs: HttpObservation) -> dict[str, object] | None:
        body, reason = obs.json_body()
        if reason is None and not isinstance(body, dict):
            reason = f"a JSON {type(body).__name__}, not an object"
        if reason is not None:
            got = reason.removeprefix("body is ").removeprefix("body ")
            self.record("body", "a JSON object", got)
            self.violation(f"body: expected a JSON object; got {got}")
            return None
        obj: dict[str, object] = body
        return obj

    def opening(
        self,
        obs: HttpObservation,
        codes: tuple[int, ...],
        meaning: str,
        view_problems: Iterable[str],
    ) -> dict[str, object] | None:
        """The judges' common opening: a status code the contract allows (`codes`, what
        they mean), then a JSON object. None ends the test; then what the endpoint's reader
        found wrong (`view_problems`), but for the body itself, is kept as violations."""
        if not self.usable(obs, codes, meaning):
            return None
        body = self.json_object(obs)
        if body is None:
            self.problems(p for p in view_problems if not p.startswith("body"))
        return body

    def done(self) -> Judgment:
        return self.j


def raw(body: dict[str, object] | None, path: str) -> object:
    """body["a"]["b"] for "a.b"; MISSING where absent."""
    value: object = body if body is not None else {}
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return MISSING
        value = value[key]
    return value


def timestamp_problem(value: object) -> str | None:
    """Why a value is not an ISO 8601 UTC timestamp string, or None when it is one."""
    if value is MISSING:
        return f"missing (expected {TIMESTAMP})"
    if not isinstance(value, str):
        hint = " (epoch seconds?)" if isinstance(value, int | float) else ""
        return f"expected {TIMESTAMP}; got {shown(value)}{hint}"
    parsed, problem = to_datetime(value)
    if problem is None:
        return None
    why = "no time zone" if parsed is not None else problem
    return f"expected {TIMESTAMP}; got {shown(value)} ({why})"


def check_timestamp(
    j: Judge, body: dict[str, object], problems: list[str], key: str = "timestamp"
) -> None:
    """Judge body[key] as a timestamp; the reader's own words on it are replaced."""
    value = raw(body, key)
    j.record(key, TIMESTAMP, value)
    problems[:] = [p for p in problems if not p.startswith(f"`{key}`:")]
    why = timestamp_problem(value)
    if why is not None:
        problems.append(f"`{key}`: {why}")


def check_system_info(j: Judge, info: dict[str, object], prefix: str) -> None:
    """Numeric, finite cpu_percent and memory_percent (memory within 0..100)."""
    problems: list[str] = []
    fields = FieldReader(info, problems, f"{prefix}.")
    cpu = fields.number("cpu_percent")
    memory = fields.number("memory_percent")
    j.record(f"{prefix}.cpu_percent", "a number >= 0", raw(info, "cpu_percent"))
    j.record(f"{prefix}.memory_percent", "a number within 0..100", raw(info, "memory_percent"))
    j.problems(problems)
    if cpu is not None and cpu < 0:
        j.violation(f"`{prefix}.cpu_percent`: expected a number >= 0; got {cpu:g}")
    if memory is not None and not 0 <= memory <= 100:
        j.violation(f"`{prefix}.memory_percent`: expected a number within 0..100; got {memory:g}")
