"""Bad input, property-based: every reader, view and judge, then the real check tasks.

Beyond tests/domain/test_parsing_properties.py (arbitrary JSON never raises), these feed
input no serializer writes: 5,000-digit numbers, `NaN`, `1e400`, values nested 100,000
deep, invalid UTF-8, bodies over the 1 MiB cap, trickling bodies, redirects to other
hosts; and they check the other half of the promise: each bad case becomes a problem or a
finding with a clear message (one line, bounded, naming the field or endpoint), never an
exception. The counts of examples tried go to docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service_health import assessment, contract
from service_health.aws_responses import (
    read_alarms,
    read_db_instances,
    read_ecs_services,
    read_load_balancers,
    read_target_health,
)
from service_health.fields import to_datetime
from service_health.models import CheckResult, CheckStatus
from service_health.observations import AwsObservation, HttpObservation
from service_health.parsing import (
    breaker_state_from,
    parse_health,
    parse_health_status,
    parse_live,
    parse_metrics,
    parse_mlflow_health,
    parse_mlflow_search,
    parse_ready,
)
from service_health.recovery import parse_time
from service_health.redaction import Redactor, redact_url
from service_health.settings import ConfigError, EnvSettings, load_targets, resolve_target
from service_health.views import EndpointView
from tests.reliability.figures import record

PURE = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
THROUGH_TASKS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- hostile values --------------------------------------------------------------------------


class Raw(str):
    """A JSON token written as is (not quoted): numbers no serializer writes, broken text."""


HUGE_TOKENS = [
    "1" + "0" * 5000,  # beyond Python's int digits limit: json.loads refuses the whole body
    "-" + "9" * 400,  # an int too large for a float
    "123456789012345678901234567890",
    "9007199254740993",  # not exactly representable as a float
    "1e400",  # read as inf
    "-1e400",
    "1e-400",
    "NaN",
    "Infinity",
    "-Infinity",
    "-0",
    "2.5",
]
INVALID_UTF8 = [
    b"\xff\xfe",
    b"\xc3\x28",  # a truncated two-byte sequence
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\xc0\xaf",  # an overlong encoding of '/'
    b"\xf8\x88\x80\x80\x80",  # a five-byte sequence
]


def decoded(raw: bytes) -> str:
    """What the HTTP reader makes of a body: UTF-8 with replacement characters."""
    return raw.decode("utf-8", errors="replace")


def to_text(value: Any) -> str:
    """JSON text of `value`, `Raw` tokens verbatim."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{to_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_text(v) for v in value) + "]"
    return json.dumps(value)


def deep(depth: int, kind: str) -> Raw:
    """A value nested `depth` levels deep."""
    if kind == "list":
        return Raw("[" * depth + "1" + "]" * depth)
    return Raw('{"a":' * depth + "1" + "}" * depth)


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(HUGE_TOKENS).map(Raw)
    | st.sampled_from(INVALID_UTF8).map(lambda b: Raw(json.dumps("x" + decoded(b))))
    | st.sampled_from(["OPEN", "CLOSED", "HALF_OPEN", "healthy", "unhealthy", "2024-01-01T12:00"])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)
deep_values = st.builds(
    deep, st.sampled_from([64, 1_000, 100_000]), st.sampled_from(["list", "obj"])
)
any_value = json_values | deep_values


def plain(value: Any) -> Any:
    """The decoded form of a value with Raw tokens (what a parser sees), or a marker when
    the text is not JSON Python can read."""
    try:
        return json.loads(to_text(value))
    except (ValueError, RecursionError):
        return UNREADABLE


UNREADABLE = object()


# -- clear messages ----------------------------------------------------------------------------


def assert_clear(message: str, limit: int = 600) -> None:
    """One line, bounded, no traceback: something an on-call engineer can read."""
    assert isinstance(message, str) and message.strip(), message
    assert "\n" not in message, message
    assert len(message) <= limit, f"{len(message)} chars: {message[:200]}..."
    assert "Traceback" not in message, message


def assert_result_clear(result: CheckResult) -> None:
    result.model_dump_json()
    json.dumps(result.seed_json(), default=str)
    for finding in result.findings:
        assert_clear(finding.message, 1500)
    for component in result.components.values():
        assert_result_clear(component)


# -- a counter of examples, recorded as a figure ---------------------------------------------

SECTION = "Bad input"
examples: dict[str, int] = {}


@pytest.fixture
def counted(request: pytest.FixtureRequest) -> Iterator[Callable[[], None]]:
    """Call once per example; the test's count is recorded when it passes."""
    name = request.node.name
    examples[name] = 0

    def tick() -> None:
        examples[name] += 1

    yield tick
    what = " ".join((request.node.function.__doc__ or name).split("\n\n")[0].split())
    record(
        f"examples: {name.removeprefix('test_').replace('_', ' ')}",
        examples[name],
        detail=what,
        section=SECTION,
    )


# -- 1. each field of each contract answer, broken one way at a time -------------------------

TS = "2024-01-01T12:00:00Z"
STATES = ("CLOSED", "OPEN", "HALF_OPEN")
HEALTH_STATES = ("healthy", "degraded", "unhealthy")

# Valid answers, and the kind of each field the readers must vouch for.
ANSWERS: dict[str, tuple[Callable[[HttpObservation], EndpointView], dict[str, Any]]] = {
    "/health": (
        parse_health,
        {
            "status": "healthy",
            "version": "1.4.2",
            "services": {"mlflow": "healthy", "redis": "healthy", "postgres": "healthy"},
            "timestamp": TS,
        },
    ),
    "/ready": (
        parse_ready,
        {
            "ready": True,
            "can_serve_traffic": True,
            "degraded_mode": False,
            "checks": [{"name": "database", "passed": True, "critical": True}],
        },
    ),
    "/live": (parse_live, {"alive": True, "timestamp": TS}),
    "/health/mlflow": (
        parse_mlflow_health,
        {
            "connected": True,
            "circuit_breaker_state": "CLOSED",
            "circuit_breaker_details": {
                "state": "CLOSED",
                "failure_count": 0,
                "time_until_retry": None,
                "recovery_attempts": 0,
            },
            "timestamp": TS,
        },
    ),
    "/health/status": (
        parse_health_status,
        {
            "service_name": "hokusai-registry",
            "overall_health": "healthy",
            "mlflow": {"status": {"connected": True}, "circuit_breaker": {"state": "CLOSED"}},
            "system_info": {"cpu_percent": 1.0, "memory_percent": 2.0},
            "timestamp": TS,
        },
    ),
}
FIELDS: dict[str, dict[str, str]] = {
    "/health": {
        "status": "enum:" + ",".join(HEALTH_STATES),
        "version": "str",
        "services": "obj",
        "services.mlflow": "enum:healthy,degraded,recovering,unhealthy",
        "services.redis": "enum:healthy,unhealthy",
        "services.postgres": "enum:healthy,unhealthy",
        "timestamp": "ts",
    },
    "/ready": {
        "ready": "bool",
        "can_serve_traffic": "bool",
        "degraded_mode": "bool",
        "checks": "list",
        "checks.0.name": "str",
        "checks.0.passed": "bool",
        "checks.0.critical": "bool",
    },
    "/live": {"alive": "bool", "timestamp": "ts"},
    "/health/mlflow": {
        "connected": "bool",
        "circuit_breaker_state": "enum:" + ",".join(STATES),
        "circuit_breaker_details": "obj",
        "circuit_breaker_details.state": "enum:" + ",".join(STATES),
        "circuit_breaker_details.failure_count": "int",
        "circuit_breaker_details.recovery_attempts": "int",
        "timestamp": "ts",
    },
    "/health/status": {
        "service_name": "str",
        "overall_health": "enum:" + ",".join(HEALTH_STATES),
        "mlflow": "obj",
        "system_info": "obj",
        "timestamp": "ts",
    },
}
FIELD_CASES = [(path, field) for path, fields in FIELDS.items() for field in fields]


def valid(kind: str, value: Any) -> bool:
    """Whether a decoded value is acceptable for a field of this kind."""
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind.startswith("enum:"):
        return isinstance(value, str) and value in kind[5:].split(",")
    if kind == "obj":
        return isinstance(value, dict)
    if kind == "list":
        return isinstance(value, list | dict)  # an object keyed by name is read, with a note
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        try:
            return math.isfinite(float(value)) and float(value).is_integer()
        except OverflowError:
            return False
    if kind == "ts":
        if isinstance(value, bool) or value is None:
            return False
        if isinstance(value, int | float):
            return to_datetime(value)[1] is None
        if isinstance(value, str):
            return to_datetime(value)[1] is None
        return False
    raise AssertionError(kind)


def replace(body: dict[str, Any], path: str, value: Any, delete: bool) -> dict[str, Any]:
    """A deep copy of body with the field at `path` replaced (or deleted)."""
    out = json.loads(json.dumps(body))
    *parents, leaf = path.split(".")
    node: Any = out
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if delete:
        del node[leaf]
    else:
        node[leaf] = value
    return out


def obs(path: str, text: str | None, code: int | None = 200, **kw: Any) -> HttpObservation:
    return HttpObservation(
        url=f"http://registry.test{path}",
        status_code=code,
        body_text=text,
        elapsed_ms=5.0,
        content_type="application/json",
        **kw,
    )


@PURE
@given(case=st.sampled_from(FIELD_CASES), value=any_value, delete=st.booleans())
def _one_broken_field(case: tuple[str, str], value: Any, delete: bool, tick: Any) -> None:
    path, field = case
    parse, body = ANSWERS[path]
    kind = FIELDS[path][field]
    broken = replace(body, field, value, delete)
    text = to_text(broken)
    view = parse(obs(path, text))
    tick()
    view.model_dump_json()
    for problem in view.problems:
        assert_clear(problem)
    decoded_value = None if delete else plain(value)
    leaf = field.rsplit(".", 1)[-1]
    if plain(broken) is UNREADABLE:
        # The body as a whole cannot be read (a 5,000-digit number, 100,000 levels deep).
        assert any(p.startswith("body") for p in view.problems), (text[:200], view.problems)
    elif delete or not valid(kind, decoded_value):
        # The field is named, or the object holding it when that one is refused as a whole.
        parts = field.split(".")
        named = {leaf} | {".".join(parts[:i]) for i in range(1, len(parts))}
        assert any(n in p for p in view.problems for n in named), (text[:300], view.problems)


def test_each_broken_field_is_named(counted: Callable[[], None]) -> None:
    """Every field of every contract answer, deleted or replaced by a hostile value: the
    reader names the field (or the unreadable body) in a one-line problem."""
    _one_broken_field(tick=counted)


# -- 2. whole bodies: hostile text, invalid UTF-8, truncation at the cap -----------------------

HTTP_READERS: list[Callable[[HttpObservation], EndpointView]] = [
    parse_health,
    parse_ready,
    parse_live,
    parse_mlflow_health,
    parse_health_status,
    parse_mlflow_search,
]
JUDGES: list[Callable[[HttpObservation], contract.Judgment]] = [
    contract.judge_basic_health,
    contract.judge_detailed_health,
    contract.judge_readiness,
    contract.judge_liveness,
    contract.judge_mlflow_health,
    contract.judge_circuit_breaker_details,
    contract.judge_service_status,
    contract.judge_metrics,
    lambda o: contract.judge_reset_refused(o, "with a wrong key"),
    lambda o: contract.judge_graceful_degradation(o, o, o, o),
]


def _with_invalid_utf8(text: str, raw: bytes, at: int) -> str:
    data = text.encode()
    at = at % (len(data) + 1)
    return decoded(data[:at] + raw + data[at:])


hostile_bodies = st.one_of(
    any_value.map(to_text),
    st.builds(
        _with_invalid_utf8,
        any_value.map(to_text),
        st.sampled_from(INVALID_UTF8),
        st.integers(min_value=0, max_value=400),
    ),
    st.binary(max_size=200).map(decoded),
    st.sampled_from(
        [
            "",
            "   ",
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
            '{"status": "healthy"',  # cut short
            '{"status": "healthy"}' + "x" * 100,
            "\ufeff" + '{"status": "healthy"}',  # a byte-order mark
            "null",
        ]
    ),
)


@PURE
@given(
    text=hostile_bodies,
    code=st.sampled_from([200, 201, 204, 301, 401, 404, 500, 503, 599]),
    truncated=st.booleans(),
)
def _whole_body(text: str, code: int, truncated: bool, tick: Any) -> None:
    extra: dict[str, Any] = {}
    if truncated:
        extra = {"body_truncated": True, "error": "body larger than 1048576 bytes"}
    o = obs("/health?detailed=true", text, code, **extra)
    tick()
    for parse in HTTP_READERS:
        view = parse(o)
        view.model_dump_json()
        for problem in view.problems:
            assert_clear(problem)
        _, reason = o.json_body()
        if reason is not None:
            assert view.problems, (parse.__name__, text[:100])
    for judge in JUDGES:
        judgment = judge(o)
        judgment.model_dump_json()
        for line in judgment.diff:
            assert_clear(line, 1000)
    metrics = parse_metrics(text)
    metrics.model_dump_json()
    for problem in metrics.problems:
        assert_clear(problem)


def test_hostile_bodies_reach_every_reader_and_judge(counted: Callable[[], None]) -> None:
    """Hostile whole bodies (arbitrary JSON with huge numbers and deep nesting, invalid
    UTF-8, HTML, cut-short and truncated-at-the-cap bodies) through the six readers, the
    metrics reader and every contract judge: no exception, one-line problems."""
    _whole_body(tick=counted)


# -- 3. AWS answers: every reader and every judgment ------------------------------------------

aws_keys = st.sampled_from(
    [
        "TargetHealthDescriptions", "Target", "Id", "Port", "TargetHealth", "State", "Reason",
        "LoadBalancers", "LoadBalancerName", "Code", "services", "serviceName", "status",
        "desiredCount", "runningCount", "pendingCount", "deployments", "rolloutState",
        "events", "message", "failures", "arn", "reason", "DBInstances",
        "DBInstanceIdentifier", "DBInstanceStatus", "MetricAlarms", "CompositeAlarms",
        "AlarmName", "StateValue", "loadBalancers", "targetGroupArn", "id", "createdAt",
    ]
)  # fmt: skip
aws_like = st.recursive(
    scalars.map(plain).filter(lambda v: v is not UNREADABLE),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(aws_keys, children, max_size=5)
    ),
    max_leaves=30,
)
aws_answers = st.one_of(st.none(), st.dictionaries(aws_keys, aws_like, max_size=4))


def _aws(service: str, operation: str, response: Any) -> AwsObservation:
    return AwsObservation(service=service, operation=operation, response=response)


@PURE
@given(response=aws_answers, names=st.lists(st.sampled_from(["hokusai-registry", "x"]), max_size=2))
def _aws_answer(response: dict[str, Any] | None, names: list[str], tick: Any) -> None:
    tick()
    problems: list[str] = []
    read_target_health(response).model_dump_json()
    for entry in read_load_balancers(response, problems):
        entry.model_dump_json()
    ecs = read_ecs_services(response)
    ecs.model_dump_json()
    for db in read_db_instances(response, problems):
        db.model_dump_json()
    for alarm in read_alarms(response, problems):
        alarm.model_dump_json()
    for service in ecs.for_names(names):
        service.describe()
    for problem in problems:
        assert_clear(problem)
    results = [
        assessment.assess_alb(
            _aws("elbv2", "describe_load_balancers", response),
            {"registry-tg": _aws("elbv2", "describe_target_health", response)},
        ),
        assessment.assess_ecs(_aws("ecs", "describe_services", response), names),
        assessment.assess_rds(_aws("rds", "describe_db_instances", response), names),
        assessment.assess_cloudwatch(_aws("cloudwatch", "describe_alarms", response)),
    ]
    results.append(assessment.assess_aws_infrastructure(dict(zip("abcd", results, strict=True))))
    for result in results:
        assert_result_clear(result)
        if response is None:
            assert result.status is CheckStatus.ERROR and result.findings


def test_aws_answers_never_break_readers_or_judgments(counted: Callable[[], None]) -> None:
    """AWS answers with wrong types at every level (the recovery's DescribeServices reader
    included): the readers and the ALB, ECS, RDS and CloudWatch judgments never raise."""
    _aws_answer(tick=counted)


# -- 4. small readers: states, times, URLs, targets files, redaction --------------------------


def authority(url: str) -> str:
    """What precedes the path, query and fragment, once "scheme://" or "scheme:" is off."""
    rest = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*:(//)?|^//", "", url)
    return re.split(r"[/?#]", rest, maxsplit=1)[0]


urlish = st.one_of(
    st.text(max_size=60),
    st.builds(
        "{}://{}{}".format,
        st.sampled_from(["http", "https", "postgresql", "redis", "ftp", "", "HTTP"]),
        st.sampled_from(
            ["", "user:Zq9PASSWORD@", "us%er:p@Zq9PASSWORD@", "Zq9PASSWORD@", "[::1", "h:abc"]
        ),
        st.text(max_size=20),
    ),
)


@PURE
@given(value=json_values.map(plain), text=st.text(max_size=80), url=urlish)
def _small(value: Any, text: str, url: str, tick: Any) -> None:
    tick()
    _, problem = breaker_state_from(value)
    if problem is not None:
        assert_clear(problem)
    _, problem = to_datetime(value)
    if problem is not None:
        assert_clear(problem)
    parse_time(value)
    parse_time(text)
    redact_url(text)
    Redactor([text, "s3cr3t"]).obj(value)
    try:
        load_targets(text)
    except ConfigError as exc:
        assert_clear(str(exc))
    no_env = EnvSettings.model_construct()
    for key in ("api_url", "mlflow_url", "database_url", "redis_url", "aws_endpoint_url"):
        try:
            resolve_target(None, {}, no_env, {"api_url": "http://h", key: url})
        except ConfigError as exc:
            assert_clear(str(exc))
            if "Zq9PASSWORD@" in authority(url):  # credentials, also without the "//"
                assert "Zq9PASSWORD" not in str(exc), (url, str(exc))


def test_small_readers_never_raise(counted: Callable[[], None]) -> None:
    """Breaker states, timestamps (ISO text, epoch seconds of any size), recovery times,
    URLs to redact, targets-file text and URLs for every target field: values or a one-line
    ConfigError (passwords masked), never another exception."""
    _small(tick=counted)


# -- 5. through the real check tasks: a scripted loopback server ------------------------------

Answer = tuple[int, dict[str, str], bytes]  # status, headers, body
CAP = 1_048_576
KEY = "fuzz-api-key-0123456789"  # sent on the authenticated endpoints; must not travel
METRICS_TEXT = (
    "# TYPE mlflow_circuit_breaker_state gauge\nmlflow_circuit_breaker_state 0.0\n"
    "# TYPE mlflow_circuit_breaker_failures gauge\nmlflow_circuit_breaker_failures 0.0\n"
    "# TYPE mlflow_circuit_breaker_recovery_attempts gauge\n"
    "mlflow_circuit_breaker_recovery_attempts 0.0\n"
    "# TYPE http_requests_total counter\n"
    'http_requests_total{method="GET",path="/health",status="200"} 3.0\n'
)


def _json(body: Any, status: int = 200) -> Answer:
    return status, {"content-type": "application/json"}, to_text(body).encode()


def healthy_answers() -> dict[str, Answer]:
    detailed = {**ANSWERS["/health"][1], "system_info": {"cpu_percent": 1, "memory_percent": 2}}
    answers = {path: _json(body) for path, (_, body) in ANSWERS.items()}
    answers["/health?detailed=true"] = _json(detailed)
    answers["/metrics"] = (200, {"content-type": "text/plain"}, METRICS_TEXT.encode())
    answers["mlflow:/health"] = (200, {"content-type": "text/plain"}, b"OK")
    answers["mlflow:/api/2.0/mlflow/experiments/search"] = _json({"experiments": []})
    return answers


class ScriptedServer:
    """A real HTTP/1.1 server on loopback answering each path as scripted, byte for byte
    (no framework in the way: invalid UTF-8, 5,000-digit numbers, trickling bodies...).

    Runs its own event loop in a thread; `script` maps "path?query" (prefixed "mlflow:" on
    the MLflow port) to an answer, or to a coroutine function writing the answer itself.
    """

    def __init__(self) -> None:
        self.script: dict[str, Any] = {}  # Answer, or an async function writing one
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (port name, path, headers)
        self.loop = asyncio.new_event_loop()
        self.ports: dict[str, int] = {}
        self._servers: list[asyncio.Server] = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        for name in ("api", "mlflow", "elsewhere", "aws"):
            future = asyncio.run_coroutine_threadsafe(self._listen(name), self.loop)
            self.ports[name] = future.result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    async def _close(self) -> None:
        for server in self._servers:
            server.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    async def _listen(self, name: str) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await self._serve(name, reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, OSError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self._servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    async def _serve(
        self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *lines = head.split("\r\n")
        _, target, _ = request_line.split(" ", 2)
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines if h)
        }
        body = b""
        if int(headers.get("content-length", "0")):
            body = await reader.readexactly(int(headers["content-length"]))
        self.requests.append((name, target, headers))
        key = target if name == "api" else f"{name}:{target}"
        if name == "aws":
            key = f"aws:{aws_operation(target, headers, body)}"
        answer = self.script.get(key, (404, {"content-type": "text/plain"}, b"not found"))
        if callable(answer):
            await answer(writer)
            return
        status, extra, body = answer
        out = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
        out += [f"{k}: {v}" for k, v in extra.items()]
        writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()


def aws_operation(path: str, headers: dict[str, str], body: bytes) -> str:
    """The AWS operation of a request: JSON (X-Amz-Target), query (Action=) or CBOR (path)."""
    if "x-amz-target" in headers:
        return headers["x-amz-target"].rsplit(".", 1)[-1]
    if "/operation/" in path:
        return path.rsplit("/", 1)[-1]
    return parse_qs(body.decode("latin-1")).get("Action", ["?"])[0]


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedServer]:
    with ScriptedServer() as server:
        yield server


def fuzz_target(server: ScriptedServer, request_timeout_s: float = 2.0) -> Any:
    from service_health.settings import Target, Thresholds

    return Target(
        name="fuzz",
        api_url=server.url("api"),
        mlflow_url=server.url("mlflow"),
        replica_discovery="sample",
        samples=1,
        thresholds=Thresholds(request_timeout_s=request_timeout_s),
        api_key=KEY,
    )


def diagnose_checks(target: Any, deadline_s: float = 10.0) -> dict[str, CheckResult]:
    """The diagnose flow's own composition: every check task, concurrently, one deadline."""
    from flows.diagnose import run_checks

    return asyncio.run(run_checks(target, deadline_s))


def cited(results: dict[str, CheckResult], label: str, names: tuple[str, ...]) -> list[str]:
    """Messages of the findings of checks `names` resting on evidence `label`."""
    return [
        f.message
        for name in names
        for f in results[name].findings
        if label in f.evidence or label in f.message
    ]


ENDPOINT_KEYS = [*FIELDS, "/health?detailed=true", "/metrics"]
REDIRECTS = [301, 302, 303, 307, 308]


@st.composite
def bad_answers(draw: st.DrawFn) -> tuple[str, Answer, bool]:
    """(endpoint, answer, bad): one endpoint's answer broken in one hostile way."""
    kind = draw(st.sampled_from(["field", "body", "utf8", "status", "redirect", "over-cap"]))
    if kind == "field":
        path, field = draw(st.sampled_from(FIELD_CASES))
        value, delete = draw(any_value), draw(st.booleans())
        broken = replace(ANSWERS[path][1], field, value, delete)
        bad = delete or plain(broken) is UNREADABLE or not valid(FIELDS[path][field], plain(value))
        return path, _json(broken), bad
    path = draw(st.sampled_from(ENDPOINT_KEYS))
    if kind == "body":
        return (
            path,
            (200, {"content-type": "application/json"}, to_text(draw(any_value)).encode()),
            True,
        )
    if kind == "utf8":
        raw = draw(st.sampled_from(INVALID_UTF8))
        _, headers, good = healthy_answers()[path]
        at = draw(st.integers(min_value=0, max_value=len(good)))
        return path, (200, headers, good[:at] + raw + good[at:]), True
    if kind == "status":
        code = draw(st.sampled_from([204, 400, 401, 403, 404, 418, 500, 502, 504, 599]))
        body = draw(st.sampled_from([b"", b"<html><h1>error</h1></html>", b'{"detail": "x"}']))
        return path, (code, {"content-type": "text/html"}, body), True
    if kind == "redirect":  # to another host (ELSEWHERE is replaced by its URL)
        return path, (draw(st.sampled_from(REDIRECTS)), {"location": "ELSEWHERE/steal"}, b""), True
    filler = b"x" * (CAP + 1)
    return path, (200, {"content-type": "application/json"}, b'{"status": "' + filler + b'"}'), True


CHECKS_OF = {
    "/health": ("api_connectivity", "health_endpoints"),
    "/health?detailed=true": ("health_endpoints",),
    "/ready": ("health_endpoints", "circuit_breaker"),
    "/live": ("health_endpoints",),
    "/health/mlflow": ("health_endpoints", "circuit_breaker"),
    "/health/status": ("health_endpoints",),
    "/metrics": ("service_metrics", "circuit_breaker"),
}


def test_bad_answers_through_the_check_tasks(
    prefect_server: str, scripted: ScriptedServer, counted: Callable[[], None]
) -> None:
    """One endpoint of a real loopback server answers badly (a broken field, a hostile
    body, invalid UTF-8 bytes, an error status, a redirect to another host, a body over the
    1 MiB cap); every check task of the diagnose flow runs on it: no task raises, and the
    bad answer is a finding citing the endpoint, with a one-line message."""
    target = fuzz_target(scripted)
    elsewhere = scripted.url("elsewhere")

    @THROUGH_TASKS
    @given(case=bad_answers())
    def one(case: tuple[str, Answer, bool]) -> None:
        path, (code, headers, body), bad = case
        scripted.script = healthy_answers()
        scripted.requests.clear()
        if "location" in headers:
            headers = {"location": headers["location"].replace("ELSEWHERE", elsewhere)}
        scripted.script[path] = (code, headers, body)
        results = diagnose_checks(target)
        counted()
        for name, result in results.items():
            assert not (result.error or "").startswith("check failed"), (name, result.error)
            assert result.status is not CheckStatus.ERROR or result.findings, name
            assert_result_clear(result)
        assert not [r for r in scripted.requests if r[0] == "elsewhere"], "redirect followed"
        if bad:
            label = f"GET {path}"
            assert cited(results, label, CHECKS_OF[path]), (path, code, body[:200], results)

    one()


def test_slow_trickling_body_and_redirect_with_credentials(
    prefect_server: str, scripted: ScriptedServer
) -> None:
    """A body trickling one byte at a time is cut at the request timeout and reported as a
    timeout; a redirect of an authenticated endpoint to another host is not followed, so the
    API key never reaches that host."""

    async def trickle(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
        while True:
            writer.write(b"1\r\n \r\n")
            await writer.drain()
            await asyncio.sleep(0.05)

    elsewhere = scripted.url("elsewhere")
    scripted.script = {
        **healthy_answers(),
        # /health, not /live: a /live that does not answer stops the MLflow-touching reads
        # (request discipline), and /health/status must still be read for its redirect.
        "/health": trickle,
        "/health/status": (307, {"location": f"{elsewhere}/steal"}, b""),
    }
    scripted.requests.clear()
    target = fuzz_target(scripted, request_timeout_s=1.0)
    results = diagnose_checks(target, deadline_s=8.0)
    health = cited(results, "GET /health", ("api_connectivity",))
    assert any("timeout" in m or "timed out" in m for m in health), health
    status = cited(results, "GET /health/status", ("health_endpoints",))
    assert any("307" in m for m in status), status
    assert [r for r in scripted.requests if r[0] == "elsewhere"] == []
    authorised = [r for r in scripted.requests if "authorization" in r[2]]
    assert {r[1] for r in authorised} <= {"/health/mlflow", "/health/status"}
    record(
        "redirect targets reached",
        0,
        section=SECTION,
        detail="redirects (301-308) of any endpoint, the authenticated ones included, to "
        "another host: never followed, so no credential travelled",
    )


# -- 6. AWS answers through botocore and the real AWS check tasks ----------------------------

ELB_NS = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/"
RDS_NS = "http://rds.amazonaws.com/doc/2014-10-31/"
TG_ARN = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/registry-tg/1"


def _xml(op: str, ns: str, result: str) -> bytes:
    return (
        f'<?xml version="1.0"?><{op}Response xmlns="{ns}"><{op}Result>{result}</{op}Result>'
        f"<ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata></{op}Response>"
    ).encode()


def healthy_aws(api_port: int) -> dict[str, Answer]:
    """A healthy answer for every AWS call the diagnosis makes, in each API's own protocol."""
    xml = {"content-type": "text/xml"}
    ecs = {
        "services": [
            {
                "serviceName": "hokusai-registry",
                "status": "ACTIVE",
                "desiredCount": 1,
                "runningCount": 1,
                "pendingCount": 0,
                "deployments": [{"status": "PRIMARY", "rolloutState": "COMPLETED"}],
                "loadBalancers": [{"targetGroupArn": TG_ARN}],
                "events": [{"message": "steady state"}],
            }
        ],
        "failures": [],
    }
    return {
        "aws:DescribeServices": (200, {"content-type": "application/x-amz-json-1.1"},
                                 to_text(ecs).encode()),
        "aws:DescribeTargetGroups": (200, xml, _xml("DescribeTargetGroups", ELB_NS,
            f"<TargetGroups><member><TargetGroupArn>{TG_ARN}</TargetGroupArn>"
            "<TargetGroupName>registry-tg</TargetGroupName></member></TargetGroups>")),
        "aws:DescribeTargetHealth": (200, xml, _xml("DescribeTargetHealth", ELB_NS,
            "<TargetHealthDescriptions><member><Target><Id>127.0.0.1</Id>"
            f"<Port>{api_port}</Port></Target><TargetHealth><State>healthy</State>"
            "</TargetHealth></member></TargetHealthDescriptions>")),
        "aws:DescribeLoadBalancers": (200, xml, _xml("DescribeLoadBalancers", ELB_NS,
            "<LoadBalancers><member><LoadBalancerName>registry-alb</LoadBalancerName>"
            "<State><Code>active</Code></State></member></LoadBalancers>")),
        "aws:DescribeDBInstances": (200, xml, _xml("DescribeDBInstances", RDS_NS,
            "<DBInstances><DBInstance><DBInstanceIdentifier>registry-db</DBInstanceIdentifier>"
            "<DBInstanceStatus>available</DBInstanceStatus></DBInstance></DBInstances>")),
        "aws:DescribeAlarms": (200, {"content-type": "application/cbor",
                                     "smithy-protocol": "rpc-v2-cbor"}, b"\xa0"),  # {}
    }  # fmt: skip


XML_LEAVES = ["TargetGroupArn", "TargetGroupName", "Id", "Port", "State", "Code",
              "LoadBalancerName", "DBInstanceIdentifier", "DBInstanceStatus", "member",
              "DBInstance", "TargetHealth"]  # fmt: skip
HOSTILE_TEXT = ["", "abc", "-1", "0", "70000", "99999999999999999999", "1e400", "NaN",
                "evil.example/steal?", "user@evil.example", "::1", "a b", "&amp;&lt;",
                "x" * 3000]  # fmt: skip
ECS_FIELDS = ["serviceName", "status", "desiredCount", "runningCount", "pendingCount",
              "deployments", "loadBalancers", "events"]  # fmt: skip


def _break_xml(body: bytes, leaf: str, text: str | None, raw: bytes) -> bytes:
    """The first <leaf> element's content replaced by `text` (escaped), or by raw bytes, or
    the element removed (text None and no raw bytes)."""
    start, end = body.find(f"<{leaf}>".encode()), body.find(f"</{leaf}>".encode())
    if start < 0 or end < 0:
        return body + raw
    close = end + len(f"</{leaf}>")
    if text is None and not raw:
        return body[:start] + body[close:]
    inner = raw or text.replace("&", "&amp;").replace("<", "&lt;").encode()  # type: ignore[union-attr]
    return body[: start + len(leaf) + 2] + inner + body[end:]


@st.composite
def bad_aws_answers(draw: st.DrawFn, api_port: int) -> tuple[str, Answer]:
    answers = healthy_aws(api_port)
    op = draw(st.sampled_from(sorted(answers)))
    status, headers, body = answers[op]
    kind = draw(st.sampled_from(["field", "garbage", "error"]))
    if kind == "field" and op == "aws:DescribeServices":
        ecs = json.loads(body)
        field = draw(st.sampled_from(ECS_FIELDS))
        if draw(st.booleans()):
            ecs["services"][0].pop(field)
        else:
            ecs["services"][0][field] = draw(any_value)
        return op, (status, headers, to_text(ecs).encode())
    if kind == "field" and headers["content-type"] == "text/xml":
        leaf = draw(st.sampled_from(XML_LEAVES))
        text = draw(st.none() | st.sampled_from(HOSTILE_TEXT))
        raw = draw(st.sampled_from([b"", b"", b"<", b"<x>", *INVALID_UTF8]))
        return op, (status, headers, _break_xml(body, leaf, text, raw))
    if kind == "error":
        code = draw(st.sampled_from(["AccessDenied", "ValidationError", "InvalidParameterValue",
                                     "ClusterNotFoundException", "x" * 300, ""]))  # fmt: skip
        message = draw(st.sampled_from(["", "denied", decoded(b"\xff\xfe"), "y" * 2000]))
        if headers["content-type"].startswith("application/x-amz-json"):
            error = to_text({"__type": code, "message": message}).encode()
        else:
            error = (f"<ErrorResponse><Error><Code>{code}</Code><Message>{message}</Message>"
                     "</Error></ErrorResponse>").encode()  # fmt: skip
        return op, (draw(st.sampled_from([400, 403, 404])), headers, error)
    junk = draw(
        st.sampled_from(
            [
                b"",
                b"<html>502</html>",
                b"{",
                b"\xff\xfe\x00",
                body[: len(body) // 2],
                b"<!DOCTYPE x [<!ENTITY a 'aaaaaaaaaa'>]><x>&a;&a;&a;</x>",
            ]
        )
        | st.binary(max_size=64)
    )
    return op, (status, headers, junk)


AWS_CHECKS = ("alb", "ecs", "rds", "cloudwatch", "circuit_breaker")


def test_bad_aws_answers_through_botocore_and_the_check_tasks(
    prefect_server: str, scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch,
    counted: Callable[[], None],
) -> None:  # fmt: skip
    """One AWS call of a real loopback endpoint answers badly (a field of the wrong type or
    missing, a hostile value such as port 70000 or a target Id pointing at another host,
    an error code, unparseable XML/JSON/CBOR, invalid UTF-8) and botocore parses it; the
    ALB, ECS, RDS, CloudWatch and circuit-breaker tasks (replicas discovered from these
    answers) never raise, and every failed call is a finding naming the AWS operation."""
    from service_health.settings import Target
    from tasks import checks
    from tasks.evidence import Evidence

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    # One set of boto3 clients for every example (each Evidence would build its own, at
    # about 0.1 s a client): the answers, not the clients, are what varies.
    from tasks import aws

    made: dict[Any, Any] = {}
    make_client = aws.make_client
    monkeypatch.setattr(
        aws,
        "make_client",
        lambda *a: made[a[1:]] if a[1:] in made else made.setdefault(a[1:], make_client(*a)),
    )
    target = Target(
        name="fuzz-aws",
        api_url=scripted.url("api"),
        aws_region="us-east-1",
        aws_endpoint_url=scripted.url("aws"),
        ecs_cluster="hokusai",
        ecs_services=["hokusai-registry"],
        alb_names=["registry-alb"],
        target_groups=["registry-tg"],
        rds_instances=["registry-db"],
        alarm_prefix="hokusai-",
    )

    async def run() -> dict[str, CheckResult]:
        async with Evidence(target, KEY) as ev:
            found = await asyncio.gather(
                checks.check_alb(ev), checks.check_ecs(ev), checks.check_rds(ev),
                checks.check_cloudwatch(ev), checks.check_circuit_breaker(ev),
            )  # fmt: skip
            return dict(zip(AWS_CHECKS, found, strict=True))

    @THROUGH_TASKS
    @given(case=bad_aws_answers(api_port=scripted.ports["api"]))
    def one(case: tuple[str, Answer]) -> None:
        op, answer = case
        scripted.script = {**healthy_answers(), **healthy_aws(scripted.ports["api"])}
        scripted.script[op] = answer
        scripted.requests.clear()
        results = asyncio.run(run())
        counted()
        for result in results.values():
            assert_result_clear(result)
            if result.status is CheckStatus.ERROR:
                assert any(":" in label for f in result.findings for label in f.evidence), result
        # Whatever the target registrations say, the key went to the registry port only.
        keyed = [r for r in scripted.requests if "Bearer" in r[2].get("authorization", "")]
        assert all(r[0] == "api" for r in keyed), keyed

    one()
