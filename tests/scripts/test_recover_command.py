"""The recovery command line's own flags."""

from __future__ import annotations

import pytest

from scripts import recover_service
from tasks.config import load_target


def test_approve_rollback_makes_this_run_allow_the_rollback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ALLOW_AUTOMATIC_ROLLBACK", raising=False)
    monkeypatch.setenv("API_URL", "http://127.0.0.1:9")
    assert not load_target(None).allow_automatic_rollback  # a rollback waits for approval
    assert not recover_service.parse_args([]).approve_rollback
    assert recover_service.parse_args(["--approve-rollback"]).approve_rollback
    # What main() does with the flag, before the flow resolves its target.
    monkeypatch.setenv("ALLOW_AUTOMATIC_ROLLBACK", "false")
    recover_service.approve_rollback_here()
    assert load_target(None).allow_automatic_rollback
