"""The domain of the service-health tooling: observations in, judgments, plans and reports out.

Pure: no I/O, no Prefect, no network or database clients (tasks/ does the I/O, flows/
composes). What the service must answer is docs/health-contract.md.

Reading what was observed:
- observations: raw evidence (an HTTP exchange, an AWS call, a database probe), as data;
- endpoints: the registry's and MLflow's paths, the one list everything reads;
- fields, views, parsing: tolerant readers of the health contract's answers (never raise);
- aws_responses: tolerant readers of the boto3 answers (one reader per AWS operation);
- discipline: first, do no harm: which endpoints may be read, in what order, when to stop.

Judging the service (the diagnosis):
- assessment/: one module per component (api, breaker, dependencies, aws, metrics) turning
  observations into a CheckResult, and verdict (the report and its verdict);
- models: CheckResult, Finding, Verdict, DiagnosticReport (the seed's JSON names);
- details: the typed details of the checks the recovery reads (CheckResult.facts).

Recovering it:
- planning: the rules from a diagnosis to a RecoveryPlan, each step with its reason;
- recovery: the plan, its step kinds (with titles and effects), the recovery log, action
  results, the outcome and the result;
- action_rules: what the recovery actions conclude from what they saw (a reset refused, a
  target group's health, whether a failed ECS write may have applied);
- approval: an operator's approval of a plan, and whether it still holds.

Verifying the contract:
- contract/: the judges of the contract tests, their models, catalogue and rendering.

Telling people:
- rendering, recovery_rendering, markdown, log_lines: markdown artifacts, tables, terminal
  text and log lines; notifications: the automations that notify operators;
- redaction: secrets out of everything shown; settings: targets, thresholds and the
  defaults defined once.
"""
