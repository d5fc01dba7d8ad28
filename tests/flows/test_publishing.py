"""Secrets on every exit path, by construction: the flows build no final state and no
artifact themselves (flows/publishing.py does, redacted), the command lines print and
write nothing themselves (scripts/_common.py does, redacted), and every log record of the
process is redacted as it is made (tasks/redacting.py)."""

from __future__ import annotations

import ast
import logging
import secrets
import sys
from pathlib import Path

import pytest

from flows import publishing
from service_health.models import CheckResult, DiagnosticReport, Verdict
from tasks.redacting import remember

ROOT = Path(__file__).resolve().parents[2]
# What only flows/publishing.py may call in flows/, and scripts/_common.py in scripts/.
STATE_AND_ARTIFACT_CALLS = {
    "Completed", "Failed", "Cancelled", "Crashed", "State",
    "acreate_markdown_artifact", "acreate_table_artifact", "acreate_link_artifact",
    "create_markdown_artifact", "create_table_artifact", "create_link_artifact",
}  # fmt: skip
OUTPUT_CALLS = {"print", "write_text", "write", "dump", "pprint"}


def _calls(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            names.add(f.id if isinstance(f, ast.Name) else getattr(f, "attr", ""))
    return names


@pytest.mark.parametrize(
    "path",
    [p for p in sorted((ROOT / "flows").glob("*.py")) if p.name != "publishing.py"],
    ids=lambda p: p.name,
)
def test_flows_build_no_state_or_artifact_themselves(path: Path) -> None:
    assert not _calls(path) & STATE_AND_ARTIFACT_CALLS, "use flows/publishing.py"


@pytest.mark.parametrize(
    "path",
    [p for p in sorted((ROOT / "scripts").glob("*.py")) if p.name != "_common.py"],
    ids=lambda p: p.name,
)
def test_command_lines_output_only_through_common(path: Path) -> None:
    assert not _calls(path) & OUTPUT_CALLS, "use scripts/_common.py say/write_json"


SECRET = "pub-" + secrets.token_hex(8)
DB_PW = "dbpw-" + secrets.token_hex(8)


@pytest.fixture(scope="module", autouse=True)
def known() -> None:
    remember([SECRET, f"postgresql://u:{DB_PW}@db:5432/x"])


def test_final_state_message_and_data_are_redacted() -> None:
    """Message and data (the report a command line writes as JSON) carry no secret, even
    when a server echoed one into a finding."""
    check = CheckResult.failed("database", f"login refused for password {DB_PW}")
    report = DiagnosticReport(
        target="t",
        timestamp="2026-12-07T00:00:00Z",
        diagnostic_duration_seconds=1.0,
        overall_status=Verdict.CRITICAL,
        checks={"database": check},
        critical_issues=[f"server said: bad key {SECRET}"],
    )
    state = publishing.failed("Critical", f"t: critical - bad key {SECRET}", report)
    assert state.is_failed() and state.name == "Critical"
    data = state.data
    assert isinstance(data, DiagnosticReport)
    dumped = (state.message or "") + data.model_dump_json()
    assert SECRET not in dumped and DB_PW not in dumped, dumped
    assert "server said: bad key ***" in dumped
    table = publishing.completed("Healthy", "ok", [{"issue": f"echo {SECRET}"}]).data
    assert table == [{"issue": "echo ***"}]


def test_every_log_record_is_redacted_as_it_is_made() -> None:
    # A logger makes its records through the process's record factory (Logger._log calls
    # makeRecord), so the records Prefect's run logger would make are asked for directly:
    # what handlers, levels or propagation an earlier test left on that logger cannot
    # hide a record from this test.
    prefect_logger = logging.getLogger("prefect.flow_runs")
    url = "https://ops:pw9@api.example/?token=t0ken1"
    made = prefect_logger.makeRecord(
        prefect_logger.name, logging.INFO, __file__, 1, "key %s at %s", (SECRET, url), None
    )
    try:
        raise RuntimeError(f"database said: password {DB_PW} refused")
    except RuntimeError:
        failed = logging.getLogger("anything.else").makeRecord(
            "anything.else", logging.ERROR, __file__, 2, "probe failed", (), sys.exc_info()
        )
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
    text = formatter.format(made) + "\n" + formatter.format(failed)
    assert SECRET not in text and DB_PW not in text, text
    assert "pw9" not in text and "t0ken1" not in text, text
    assert "key *** at https://***@api.example/?token=***" in text
    assert "RuntimeError: database said: password *** refused" in text
    # And a record that went through a logger's whole path reaches its handler redacted.
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(handler.format(record))  # type: ignore[method-assign]
    private = logging.getLogger("tests.redaction.private")
    private.propagate, private.level = False, logging.INFO
    private.addHandler(handler)
    try:
        private.info("key %s", SECRET)
    finally:
        private.removeHandler(handler)
    assert seen == ["key ***"], seen
