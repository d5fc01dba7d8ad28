"""The recovery's I/O: one Prefect task per recovery action, one module per action family.

- breaker: reset the MLflow circuit breaker on each replica, then read it CLOSED;
- deployments: force a new ECS deployment, applied at most once;
- targets: the load balancer's target health per group;
- waits: wait for a rollout, for stabilisation, for MLflow to answer;
- verify: the final diagnosis;
- history: what ECS says about each service's past (the cooldown's clock);
- registry: which action carries out which kind of plan step (`execute_step`);
- aws_reads: the AWS reads the actions share.

Every task returns an ActionResult (success, recovery log entries, typed data) and never
raises on an expected failure (an HTTP error, an AWS error, a timeout): those are log
entries. The pure side (what to do, in which order, how the run ends, what an answer
means) is service_health.planning, service_health.recovery and
service_health.action_rules.

Adding an action: a step kind (with its title and effect) in service_health.recovery, a
planning rule in service_health.planning, and one module here whose adapter is decorated
with `@action(StepKind.X)`. Every module of this package is imported below, so that its
actions are registered before any step runs.
"""

from __future__ import annotations

import importlib
import pkgutil

from tasks.recovery.history import read_recovery_history
from tasks.recovery.registry import ACTIONS, ActionContext, execute_step

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ACTIONS", "ActionContext", "execute_step", "read_recovery_history"]
