"""The floor: a bare workflow with the same timers as a dunning case and one no-op activity per
message sent. `python -m bench.floor_worker` runs its worker (TEMPORAL_ADDRESS, TASK_QUEUE)."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker


@activity.defn(name="noop")
async def noop(step: int) -> int:
    return step


@workflow.defn(name="FloorWorkflow")
class FloorWorkflow:
    @workflow.run
    async def run(self, offsets: list[int], lanes: int, messages_per_lane: int) -> int:
        start = workflow.now()

        async def lane() -> int:
            sent = 0
            for i, offset in enumerate(offsets):
                delay = start + timedelta(seconds=offset) - workflow.now()
                if delay > timedelta(0):
                    await workflow.sleep(delay)
                if i >= len(offsets) - messages_per_lane:
                    await workflow.execute_activity(
                        noop, i, start_to_close_timeout=timedelta(seconds=30)
                    )
                    sent += 1
            return sent

        results = await asyncio.gather(*(lane() for _ in range(lanes)))
        return sum(results)


async def main() -> None:
    client = await Client.connect(os.environ["TEMPORAL_ADDRESS"])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with Worker(client, task_queue=os.environ["TASK_QUEUE"], workflows=[FloorWorkflow],
                      activities=[noop]):
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
