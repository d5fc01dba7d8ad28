"""Render docs/reliability.md and docs/fault-matrix.md from the figures store.

    uv run python -m tests.reliability.documents          # after a test run: rewrite docs/

Each document embeds its entries (with the recording test's node id) as a JSON block at its
end. A rendering starts from those of the committed document, drops every entry whose test
has run since (passed or not: a test that passed records its entries again) or no longer
exists, and adds what the store holds for the tests that passed (figures.merge). So a failing
or skipped test removes its figures, and a partial run leaves the other tests' figures alone.
The documents hold no timestamps or durations of their own: the same results render the same
bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tests.reliability import figures
from tests.reliability.figures import FAULT_MATRIX, RELIABILITY, Entry, Store

DOCS = figures.ROOT / "docs"
COMMAND = "uv run python -m tests.reliability.documents"
NAMES = {RELIABILITY: "reliability.md", FAULT_MATRIX: "fault-matrix.md"}
_DATA_START, _DATA_END = "<!-- figures-json", "-->"


def previous(path: Path) -> list[Entry]:
    """The entries embedded in an earlier rendering (none if missing or unreadable)."""
    try:
        return previous_text(path.read_text(encoding="utf-8"))
    except OSError:
        return []


def previous_text(text: str) -> list[Entry]:
    """The entries embedded in a rendered document's text."""
    start = text.rfind(_DATA_START)
    if start < 0:
        return []
    block = text[start + len(_DATA_START) :]
    block = block[: block.find(_DATA_END)] if _DATA_END in block else block
    try:
        return [Entry(**item) for item in json.loads(block)]
    except (ValueError, TypeError):
        return []


def _cell(value: Any) -> str:
    text = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
    return text.replace("|", "\\|")


def _data_block(entries: list[Entry]) -> list[str]:
    data = json.dumps([asdict(e) for e in entries], indent=1, sort_keys=True)
    return [_DATA_START, data, _DATA_END, ""]


def render_reliability(entries: list[Entry]) -> str:
    """One table per section, sections in alphabetical order."""
    sections: dict[str, list[Entry]] = {}
    for entry in entries:
        sections.setdefault(entry.data["section"], []).append(entry)
    lines = [
        "# Reliability and security figures",
        "",
        "Recorded by the tests and rendered with `" + COMMAND + "`; do not edit by",
        "hand. A figure is here only if the test named under it passed (setup, call and",
        "teardown) the last time it ran: a test that fails or is skipped removes its figures.",
        "Add one from any test with",
        '`tests.reliability.figures.record("name", value, detail="...")`.',
        "",
    ]
    for section in sorted(sections):
        lines += [f"## {section}", "", "| figure | value | what it covers |", "|---|---:|---|"]
        for entry in sections[section]:
            d = entry.data
            detail = d.get("detail", "") + (f" (`{entry.test}`)" if entry.test else "")
            lines.append(f"| {_cell(d['name'])} | {_cell(d['value'])} | {_cell(detail)} |")
        lines.append("")
    return "\n".join(lines + _data_block(entries))


def render_fault_matrix(entries: list[Entry]) -> str:
    """One row per fault-matrix row whose test passed, with what that run observed."""
    rows = sorted(entries, key=lambda e: (e.data.get("order", 0), e.key))
    lines = [
        "# Fault matrix",
        "",
        "What `tests/reliability/test_fault_matrix.py` observed, row by row, in the last run",
        "of each row that passed: the fault(s) injected into the sandbox, then a diagnosis, a",
        "dry-run recovery and a real recovery, with every AWS call and HTTP request recorded.",
        "The checks listed are those the diagnosis reported not healthy with findings; the",
        "mutating calls are counted from the recorder (the test fails if the diagnosis or the",
        "dry run made any, or the recovery made one its plan does not name). A row that fails",
        f"or is skipped is removed. Rendered with `{COMMAND}`; do not edit by hand.",
        "",
        f"{len(rows)} rows.",
        "",
        "| fault(s) | verdict | checks with findings | plan | recovery outcome "
        "| mutating calls (diagnosis / dry run / recovery) | why |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in rows:
        d = entry.data
        cells = [
            d["label"],
            d["verdict"],
            ", ".join(d["findings"]) or "none",
            " → ".join(d["plan"]) or "nothing to do",
            d["outcome"],
            " / ".join(str(n) for n in d["mutations"]),
            d["why"],
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines.append("")
    return "\n".join(lines + _data_block(rows))


RENDER = {RELIABILITY: render_reliability, FAULT_MATRIX: render_fault_matrix}


def render(store: Store, docs: Path = DOCS) -> dict[str, str]:
    """Each document's text: the committed one's entries merged with the store's."""
    return {
        name: RENDER[doc](figures.merge(previous(docs / name), store, doc))
        for doc, name in NAMES.items()
    }


def write(store: Store, out: Path, docs: Path = DOCS) -> list[Path]:
    """Write the documents into `out`; the paths whose content changed."""
    changed = []
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render(store, docs).items():
        path = out / name
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", type=Path, help="the figures store (default build/figures)")
    p.add_argument("--docs", type=Path, default=DOCS, help="where the documents are")
    args = p.parse_args(argv)
    store = figures.read_store(args.build)
    if not store.tests:
        print(f"no test results in {figures.store_path(args.build)}: run the tests first")
        return 1
    for path in write(store, args.docs, args.docs):
        print(f"rewrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
