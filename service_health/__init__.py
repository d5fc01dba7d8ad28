"""Pure domain of the service-health tooling: observations in, judgment and reports out.

No I/O, no Prefect, no network clients. Modules: observations (raw evidence), views and
parsing (tolerant readers of the health contract), aws_responses (readers of boto3 answers),
models (check results, verdict, report), settings (targets), redaction, assessment (the
rules), rendering (markdown, tables, terminal text).
"""
