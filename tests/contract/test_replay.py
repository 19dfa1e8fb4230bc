"""Replay recorded histories (tests/histories/*.json) through the current DunningWorkflow, in
Temporal's sandbox. A change to the workflow that would break cases already running (different
commands for the same history) fails here: guard it with `workflow.patched(...)` instead (see
workflows/dunning.py). Re-record with `python -m tests.histories.record`."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.exceptions import ApplicationError
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from tests.histories.record import SCENARIOS
from workflows import ComplianceReplyWorkflow, DunningWorkflow

HISTORIES = sorted((Path(__file__).parents[1] / "histories").glob("*.json"))


def _history(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(f"replay-{path.stem}", path.read_text())


def test_every_scenario_has_a_recorded_history() -> None:
    assert {p.name.split(".")[0] for p in HISTORIES} >= set(SCENARIOS)


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_recorded_history_replays_deterministically(path: Path) -> None:
    history = _history(path)
    assert len(history.events) > (8 if path.name.startswith("compliance_reply") else 20)
    replayer = Replayer(workflows=[DunningWorkflow, ComplianceReplyWorkflow],
                        workflow_runner=SandboxedWorkflowRunner())
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure!r}"


@workflow.defn(name="DunningWorkflow", sandboxed=False)
class _ExtraTimerBeforeSends(DunningWorkflow):
    """An unpatched change: a short timer before every send."""

    @workflow.run
    async def run(self, raw: dict[str, Any]) -> dict[str, Any]:
        return await super().run(raw)

    async def _send(self, case: Any, step: int, channel: str) -> Any:
        await workflow.sleep(timedelta(milliseconds=1))
        return await super()._send(case, step, channel)


async def test_an_unpatched_change_fails_the_replay() -> None:
    history = _history(Path(__file__).parents[1] / "histories" / "full_schedule.json")
    replayer = Replayer(workflows=[_ExtraTimerBeforeSends],
                        workflow_runner=UnsandboxedWorkflowRunner())
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is not None
    assert "nondetermin" in repr(result.replay_failure).lower()


@workflow.defn(name="DunningWorkflow", sandboxed=False)
class _CurrencyUnpatched(DunningWorkflow):
    """The currency rule changed without its `iso-currency` patch: `eur` refused again."""

    @workflow.run
    async def run(self, raw: dict[str, Any]) -> dict[str, Any]:
        return await super().run(raw)

    def _parse(self, raw: Any) -> Any:
        from dunning.domain.contract import InputError, parse_case_input

        try:
            return parse_case_input(raw, iso_currency=False)
        except InputError as err:
            raise ApplicationError(f"invalid input: {err}", type="InvalidInput",
                                   non_retryable=True) from None


async def test_the_iso_currency_history_needs_its_patch() -> None:
    history = _history(Path(__file__).parents[1] / "histories" / "iso_currency.json")
    replayer = Replayer(workflows=[_CurrencyUnpatched],
                        workflow_runner=UnsandboxedWorkflowRunner())
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is not None
