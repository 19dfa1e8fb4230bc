"""Running a uvicorn server inside a bigger process (`dunning up`, the demo, tests): serve until
a stop event, then shut down gracefully."""

from __future__ import annotations

import asyncio

import uvicorn


async def serve_until(server: uvicorn.Server, stop: asyncio.Event | None) -> None:
    """Serve until `stop` is set; without one, until the server's own SIGINT/SIGTERM handling
    ends it."""
    if stop is None:
        await server.serve()
        return
    task = asyncio.create_task(server.serve())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopper.cancel()
    await task


__all__ = ["serve_until"]
