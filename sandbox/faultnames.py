"""The sandbox's fault names (kept import-light for the command line)."""

FAULTS = (
    "mlflow-down",
    "mlflow-slow",
    "mlflow-errors",
    "breaker-stuck-open",
    "registry-wedged",
    "registry-hung",
    "redis-down",
    "postgres-down",
    "ecs-tasks-crashed",
    "alb-targets-unhealthy",
    "ecs-rollout-stalled",
    "bad-deploy",
    "aws-throttling",
    "latency",
)
LATENCY_COMPONENTS = ("registry", "alb", "mlflow", "postgres", "redis", "aws")
# bad-deploy: the new revision's tasks exit at start, or never pass their health check.
BAD_DEPLOY_MODES = ("crash", "unhealthy")
