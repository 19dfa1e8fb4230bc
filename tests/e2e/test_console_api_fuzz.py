"""The API fuzzed against its own OpenAPI document (schemathesis), on a running
`dunning console`: no 5xx, and every answer matches the document (status codes, content types,
response schemas). The account in the path is the key's own, so the operations really run."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks
from temporalio.testing import WorkflowEnvironment

from dunning.platform.db import Database
from tests.console_stack import ConsoleProcess, coded_client, start_console
from tests.helpers import make_account, real_activities, running_worker

ACCOUNT = "fuzzed"
QUEUE = "console-fuzz"
CODEC_KEYS = "fuzz:" + "1e" * 32


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory, sqlite_db: Database,
               temporal_env: WorkflowEnvironment) -> Iterator[ConsoleProcess]:
    tmp = tmp_path_factory.mktemp("fuzz")
    env = {
        "DUNNING_DATA_DIR": str(tmp),
        "DUNNING_DATABASE_URL": sqlite_db.url,
        "DUNNING_TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "DUNNING_TASK_QUEUE": QUEUE,
        "DUNNING_CODEC_KEYS": CODEC_KEYS,
    }
    with sqlite_db.session() as s:
        from dunning.platform.db.models import Account

        exists = s.get(Account, ACCOUNT) is not None
    if not exists:
        make_account(sqlite_db, ACCOUNT, balance=0, sms=False, schedule="0d,3d")
    yield from start_console(env, tmp)


@pytest.fixture(scope="module")
def fuzz_key(fuzz_stack: ConsoleProcess) -> str:
    return fuzz_stack.api_key(ACCOUNT)


CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_schema_conformance,
          checks.response_headers_conformance, checks.ignored_auth]


async def test_api_answers_as_documented(fuzz_stack, fuzz_key, sqlite_db, temporal_env,
                                         plivo_server, smtp_server):
    """With a worker, as in a running stack: the cases the fuzzer starts really run."""
    acts = real_activities(sqlite_db, plivo_server, smtp_server)
    async with running_worker(coded_client(temporal_env, CODEC_KEYS), QUEUE, acts):
        await asyncio.to_thread(_fuzz_every_operation, fuzz_stack, fuzz_key)


def _fuzz_every_operation(fuzz_stack: ConsoleProcess, fuzz_key: str) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_stack.url}/api/v1/openapi.json")
    base_url = f"{fuzz_stack.url}/api/v1"
    headers = {"Authorization": f"Bearer {fuzz_key}"}
    operations = []
    for result in schema.get_all_operations():
        operation = getattr(result, "ok", None)
        assert operation is not None, f"the document has an invalid operation: {result}"
        operations.append(operation())
    assert len(operations) >= 12

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            if "account_id" in (case.path_parameters or {}):
                case.path_parameters["account_id"] = ACCOUNT
            case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS)

        fuzz()
