"""A Python worker: `jobqueue-grpc worker examples.worker:worker` (server on localhost:50051)."""

from __future__ import annotations

import asyncio
from typing import Any

from jobqueue_grpc import DoNotRetry, JobContext, RetryAfter, Worker

worker = Worker("localhost:50051", queues=["default"], concurrency=10)


@worker.handler("send_email")
async def send_email(ctx: JobContext) -> dict[str, Any]:
    to = ctx.payload.get("to")
    if not isinstance(to, str) or "@" not in to:
        raise DoNotRetry(f"not an address: {to!r}")  # dead-letters at once
    await ctx.progress({"step": "sending"})
    await asyncio.sleep(0.1)  # a cancel notice cancels this await
    return {"sent_to": to}


@worker.handler("resize_image")
def resize_image(ctx: JobContext) -> dict[str, Any]:
    """Plain functions run in a thread pool; they poll for cancellation themselves."""
    for step in range(3):
        ctx.raise_if_cancelled()
        ctx.progress_sync({"step": step})
    if ctx.attempt < 2:
        raise RetryAfter(1.0, "the image store is warming up")
    return {"ok": True}


if __name__ == "__main__":
    worker.run_sync()
