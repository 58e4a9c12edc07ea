"""Benchmark workers, run as `jobqueue-grpc worker bench.workers:make_worker`.

Environment: JOBQUEUE_ADDRESS, BENCH_QUEUE, BENCH_CONCURRENCY, BENCH_OUT (a file that gets this
process's counts and, in latency mode, every job's enqueue-to-receipt latency, at exit) and
BENCH_PROGRESS (a file rewritten every 20 ms with "done last_done_time", so the benchmark can see
the end without querying the database it is measuring).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import time
from typing import Any

from jobqueue_grpc import JobContext, Worker

_latencies: list[float] = []
_to_claim: list[float] = []  # created_at -> started_at (the claim), for the breakdown
_done = 0
_last_done = 0.0


def _dump() -> None:
    out = os.environ.get("BENCH_OUT")
    if out:
        with open(out, "w") as f:
            json.dump({"done": _done, "latencies": _latencies, "to_claim": _to_claim}, f)


def _write_progress(path: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(f"{_done} {_last_done}")
    os.replace(path + ".tmp", path)


def make_worker() -> Worker:
    worker = Worker(
        os.environ.get("JOBQUEUE_ADDRESS", "127.0.0.1:50051"),
        queues=[os.environ.get("BENCH_QUEUE", "bench")],
        concurrency=int(os.environ.get("BENCH_CONCURRENCY", "100")),
        shutdown_timeout=10,
    )

    progress = os.environ.get("BENCH_PROGRESS")
    reporter: list[asyncio.Task[None]] = []

    async def report() -> None:
        assert progress is not None
        while True:
            _write_progress(progress)
            await asyncio.sleep(0.02)

    def count() -> None:
        global _done, _last_done
        _done += 1
        _last_done = time.time()
        if progress and not reporter:
            reporter.append(asyncio.get_running_loop().create_task(report()))

    @worker.handler("noop")
    async def noop(ctx: JobContext) -> None:
        count()

    @worker.handler("latency")
    async def latency(ctx: JobContext) -> Any:
        received = time.time()
        created = ctx.job.created_at.ToNanoseconds() / 1e9
        _latencies.append(received - created)
        _to_claim.append(ctx.job.started_at.ToNanoseconds() / 1e9 - created)
        count()

    atexit.register(_dump)
    return worker
