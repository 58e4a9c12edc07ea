"""Benchmark workers, run as `jobqueue-grpc worker bench.workers:make_worker`.

Environment: JOBQUEUE_ADDRESS, BENCH_QUEUE, BENCH_CONCURRENCY, BENCH_OUT (a file that gets this
process's counts and, in latency mode, every job's enqueue-to-receipt latency, at exit).
"""

from __future__ import annotations

import atexit
import json
import os
import time
from typing import Any

from jobqueue_grpc import JobContext, Worker

_latencies: list[float] = []
_done = 0


def _dump() -> None:
    out = os.environ.get("BENCH_OUT")
    if out:
        with open(out, "w") as f:
            json.dump({"done": _done, "latencies": _latencies}, f)


def make_worker() -> Worker:
    worker = Worker(
        os.environ.get("JOBQUEUE_ADDRESS", "127.0.0.1:50051"),
        queues=[os.environ.get("BENCH_QUEUE", "bench")],
        concurrency=int(os.environ.get("BENCH_CONCURRENCY", "100")),
        shutdown_timeout=10,
    )

    @worker.handler("noop")
    async def noop(ctx: JobContext) -> None:
        global _done
        _done += 1

    @worker.handler("latency")
    async def latency(ctx: JobContext) -> Any:
        global _done
        received = time.time()
        created = ctx.job.created_at.ToNanoseconds() / 1e9
        _latencies.append(received - created)
        _done += 1

    atexit.register(_dump)
    return worker
