"""Our SDK worker for `make bench-peers`: `jobqueue-grpc worker bench.peers.ourworker:make_worker`.

Environment: JOBQUEUE_ADDRESS, BENCH_QUEUE, BENCH_CONCURRENCY; BENCH_OUT, a file that gets this
process's count of jobs run and, for "latency" jobs, each job's enqueue -> handler-start seconds,
written at exit; BENCH_READY, a file created once its Lease stream is open. A "latency" job
carries its sender's wall-clock send time in its payload ({"t": epoch seconds}, from `loadgen
stamped`); the handler takes the time as it starts, as graphile-worker's side does
(bench/peers/graphile/bench.mjs), so both are measured alike.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import time
from pathlib import Path

from jobqueue_grpc import JobContext, Worker

_latencies: list[float] = []
_done = 0


def _dump() -> None:
    out = os.environ.get("BENCH_OUT")
    if out:
        with open(out, "w") as f:
            json.dump({"done": _done, "latencies": _latencies}, f)


class _Worker(Worker):
    """Creates BENCH_READY when its stream opens: with `serve --processes N` the streams are
    spread over processes whose open-stream gauges the benchmark cannot all read."""

    async def run(self) -> None:
        ready = os.environ.get("BENCH_READY")
        if ready:
            self._ready = asyncio.get_running_loop().create_task(self._mark(Path(ready)))
        await super().run()

    async def _mark(self, path: Path) -> None:
        await self.connected.wait()
        await asyncio.to_thread(path.touch)


def make_worker() -> Worker:
    worker = _Worker(
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
    async def latency(ctx: JobContext) -> None:
        global _done
        _latencies.append(time.time() - ctx.payload["t"])
        _done += 1

    atexit.register(_dump)
    return worker
