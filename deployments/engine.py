"""The flow-run process of this project's deployments: `python -m deployments.engine`.

The process worker starts it (prefect.yaml sets the work pool's `command` job variable)
instead of Prefect's own `python -m prefect.engine`. The two differ in one point only:
Prefect's engine ends by returning the run's *result*, which for a Failed-type final state
means raising its data. The flows here end Failed on purpose with a verdict as data
(`Critical` with its DiagnosticReport, a `Failed` recovery with its RecoveryResult, an
`Incomplete` fleet with its table): Prefect then logs "Unexpected result for failed state"
with a traceback in the worker's log and the process exits 1, and the worker reports it as a
crashed infrastructure. Here the engine returns the final *state* instead:

- a run that reached a final state of its own exits 0; its state (name, message, data) and
  artifacts on the server are exactly those Prefect's engine records;
- a run that failed by raising (a bug: the state's data is the exception) exits 1 as with
  Prefect's engine, its traceback already in the run's logs;
- aborts, pauses, cancellations and crashes go through Prefect's own signal handling.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any
from uuid import UUID


def exit_code(state: Any) -> int:
    """0 for a final state the flow returned; 1 for a crash or an exception raised."""
    if state is None or not state.is_final() or state.is_crashed():
        return 1
    if state.is_failed() and isinstance(_data(state), BaseException):
        return 1
    return 0


def _data(state: Any) -> Any:
    from prefect.results import ResultRecord

    data = state.data
    return data.result if isinstance(data, ResultRecord) else data


def main(argv: list[str]) -> int:
    # Private to Prefect 3.7, as used by `python -m prefect.engine`: the control channel
    # through which the worker asks for a graceful cancellation.
    from prefect._internal.control_listener import configure_from_env
    from prefect.engine import handle_engine_signals
    from prefect.flow_engine import flow_run_logger, load_flow, load_flow_run, run_flow

    flow_run_id = UUID(argv[1] if len(argv) > 1 else os.environ["PREFECT__FLOW_RUN_ID"])
    configure_from_env()
    with handle_engine_signals(flow_run_id):
        flow_run = load_flow_run(flow_run_id=flow_run_id)
        logger = flow_run_logger(flow_run=flow_run)
        try:
            flow = load_flow(flow_run)
        except Exception:
            logger.error("Unexpected exception encountered when trying to load flow",
                         exc_info=True)  # fmt: skip
            raise
        state: Any = run_flow(
            flow, flow_run=flow_run, error_logger=logger,  # type: ignore[arg-type]
            return_type="state",
        )  # fmt: skip
        if asyncio.iscoroutine(state):
            # On this (main) thread's loop, as Prefect's engine does, so that its SIGTERM
            # bridge can be installed.
            state = asyncio.run(state)
        return exit_code(state)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
