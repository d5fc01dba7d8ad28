"""The seed-style command of the command-line benchmark is as light as the seed's script:
its clients, no Prefect and nothing of ours that imports it (the seed imports none)."""

from __future__ import annotations

from tests.helpers import packages_loaded


def test_the_seed_style_command_imports_no_prefect() -> None:
    assert packages_loaded("import bench.seed_command", {"prefect", "flows", "tasks"}) == []
