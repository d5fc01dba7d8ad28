"""Which action carries out which kind of plan step: the one registry of recovery actions.

An action module registers its adapter with `@action(StepKind.X)`: a coroutine taking the
step (as `prepare_step` left it) and the `ActionContext`, calling the module's task and
returning its result. `execute_step` dispatches through this table; every kind that is not
passive must be registered (tests/recovery/test_registry.py fails otherwise), so a missing
action fails in the tests, not when the step first runs in production.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

import httpx

from service_health.models import DiagnosticReport
from service_health.recovery import AnyActionResult, RecoveryStep, StepKind, passive_result
from service_health.settings import STABILIZATION_TIMEOUT_S, Target
from tasks import aws, http
from tasks.readonly import Write
from tasks.recovery.early import EarlyVerification

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient

Verify = Callable[[], Awaitable[DiagnosticReport | None]]


@dataclass(frozen=True)
class Writers:
    """The only clients that may change the service. Every other client of this project is
    read-only (tasks/readonly.py); these are reached through an ActionContext, which only
    the apply path builds (flows/recover.py `apply`), so a dry run, a diagnosis or a
    planning step cannot get one. Build them where the write is made, one per action run.
    """

    target: Target

    def ecs(self, *, idempotent: bool = False) -> ECSClient:
        """An ECS client that may write: UpdateService, TagResource, ... Without botocore
        retries unless `idempotent` (a write that may safely be sent twice, like a tag)."""
        return aws.ecs_write_client(self.target, idempotent=idempotent)

    def http(self, allow: Collection[Write]) -> httpx.AsyncClient:
        """An HTTP client that may send, besides GET/HEAD, exactly the (method, path)
        pairs in `allow`, e.g. {("POST", RESET)}; the target's request timeout."""
        return http.write_client("recover", self.target.thresholds.request_timeout_s, allow)


@dataclass(frozen=True)
class ActionContext:
    """What an action may need besides its step: the target, how long to wait, the final
    diagnosis (and the one the stabilisation wait may start early), and `writers`, the
    clients for its mutating calls (read with the ordinary, read-only clients of
    tasks/aws.py and tasks/http.py)."""

    target: Target  # secrets resolved (the API key for a reset)
    stabilization_timeout_s: float = STABILIZATION_TIMEOUT_S
    verify: Verify | None = None  # the final diagnosis, for the verify step
    early: EarlyVerification | None = None  # the final diagnosis taken during the wait
    writers: Writers = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "writers", Writers(self.target))


Action = Callable[[RecoveryStep, ActionContext], Awaitable[AnyActionResult]]

_ACTIONS: dict[StepKind, Action] = {}
ACTIONS: Mapping[StepKind, Action] = MappingProxyType(_ACTIONS)


def action(kind: StepKind) -> Callable[[Action], Action]:
    """Register the decorated coroutine as the action carrying out steps of `kind`."""

    def register(run: Action) -> Action:
        if kind.passive:
            raise ValueError(f"{kind} is passive: it only logs, no action carries it out")
        if kind in _ACTIONS:
            raise ValueError(f"{kind} already has an action ({_ACTIONS[kind].__qualname__})")
        _ACTIONS[kind] = run
        return run

    return register


async def execute_step(step: RecoveryStep, context: ActionContext) -> AnyActionResult:
    """Carry out one plan step through its action; the result is attributed to the step.

    Passive steps (escalate, skip) only log, with no I/O. Pass the step returned by
    `prepare_step`, never a blocked one.
    """
    if step.kind.passive:
        return passive_result(step)
    run = _ACTIONS.get(step.kind)
    if run is None:
        raise LookupError(f"no action is registered for step kind {step.kind}")
    result = await run(step, context)
    return result.numbered(step.number)
