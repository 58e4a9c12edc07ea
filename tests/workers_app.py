"""The worker the end-to-end tests run as real processes:

    jobqueue-grpc worker tests.workers_app:worker --address 127.0.0.1:PORT

Every execution is recorded as one JSON line appended to the file named by JQ_LOG (one write
per line, O_APPEND, so lines from many processes never interleave): the tests count executions
per job and check that no two executions of one job overlapped. JQ_CONCURRENCY sets the
worker's concurrency (default 10).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from jobqueue_grpc import JobCancelled, JobContext, Worker

_LOG = os.open(os.environ.get("JQ_LOG", os.devnull), os.O_WRONLY | os.O_APPEND | os.O_CREAT)

worker = Worker(
    os.environ.get("JOBQUEUE_ADDRESS", "127.0.0.1:50051"),
    queues=["default"],
    concurrency=int(os.environ.get("JQ_CONCURRENCY", "10")),
    worker_id=f"e2e-{os.getpid()}",
)


def record(event: str, ctx: JobContext, **extra: Any) -> None:
    line = {"event": event, "job": ctx.id, "attempt": ctx.attempt, "pid": os.getpid(), **extra}
    os.write(_LOG, (json.dumps(line) + "\n").encode())


@worker.handler("noop")
async def noop(ctx: JobContext) -> dict[str, Any]:
    start = time.time()
    await asyncio.sleep(0)
    record("run", ctx, start=start, end=time.time())
    return {"pid": os.getpid()}


@worker.handler("work")
async def work(ctx: JobContext) -> dict[str, Any]:
    """A few milliseconds of work (payload["ms"]), recorded when it is done."""
    await asyncio.sleep(float(ctx.payload.get("ms", 5)) / 1000)
    record("run", ctx, t=time.time())
    return {"pid": os.getpid(), "attempt": ctx.attempt}


@worker.handler("sleep")
async def sleep(ctx: JobContext) -> dict[str, Any]:
    """Sleeps payload["seconds"]; only on the first attempt if payload["first_only"]."""
    record("start", ctx, t=time.time())
    seconds = float(ctx.payload.get("seconds", 0))
    if ctx.attempt == 1 or not ctx.payload.get("first_only"):
        await asyncio.sleep(seconds)
    record("end", ctx, t=time.time())
    return {"pid": os.getpid(), "attempt": ctx.attempt}


@worker.handler("wait_cancel")
async def wait_cancel(ctx: JobContext) -> None:
    """Runs until cancelled: a cancel notice cancels this task."""
    record("start", ctx, t=time.time())
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        record("cancelled", ctx, requested=ctx.cancel_requested, t=time.time())
        raise


@worker.handler("wait_cancel_sync")
def wait_cancel_sync(ctx: JobContext) -> None:
    """A handler in a thread: it watches ctx.cancel_requested itself."""
    record("start", ctx, t=time.time())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if ctx.cancel_requested:
            record("cancelled", ctx, requested=True, t=time.time())
            raise JobCancelled(ctx.id)
        time.sleep(0.01)
