"""Verify with a final diagnosis: the recovery succeeded only if it is healthy."""

from __future__ import annotations

from service_health.recovery import ActionResult, RecoveryStep, StepKind, verification_result
from tasks.recovery.registry import ActionContext, action


@action(StepKind.VERIFY)
async def _verify(step: RecoveryStep, context: ActionContext) -> ActionResult[None]:
    if context.verify is None:
        raise ValueError("the verify step needs a `verify` callable (the final diagnosis)")
    early = await context.early.take() if context.early is not None else None
    if early is None:
        return verification_result(step, await context.verify())
    result = verification_result(step, early)
    taken = " (taken between the stabilisation wait's last healthy /health answers)"
    entries = [e.model_copy(update={"details": e.details + taken}) for e in result.entries]
    return result.model_copy(update={"entries": entries})
