"""CPU per job of the Python SDK worker alone, without a server: `python bench/sdk_worker.py`.

Feeds a Worker's Lease session serialized LeaseResponse batches of no-op jobs (as the gRPC stream
would, parsing each on the event loop) and serializes what the worker sends back, so what is timed
is the SDK's own per-job work: decoding, JobContext, running the handler, batching the outcomes.
Prints microseconds of CPU per job (the best of --repeat runs).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobqueue_grpc import JobContext, Worker
from jobqueue_grpc import worker as worker_module
from jobqueue_grpc.gen.jobqueue.v1 import job_pb2
from jobqueue_grpc.gen.jobqueue.v1 import worker_service_pb2 as w


def batch(size: int) -> bytes:
    now = time.time()
    msg = w.LeaseResponse()
    for _ in range(size):
        leased = msg.jobs.jobs.add(lease_token=str(uuid.uuid4()))
        job = leased.job
        job.CopyFrom(
            job_pb2.Job(
                id=str(uuid.uuid4()),
                queue="bench",
                kind="noop",
                max_attempts=25,
                state=job_pb2.JOB_STATE_RUNNING,
                attempt=1,
                worker_id="w-1",
            )
        )
        job.payload.SetInParent()
        for ts in (job.run_at, job.created_at, job.updated_at, job.started_at):
            ts.FromNanoseconds(int(now * 1e9))
        job.lease_duration.seconds = 30
        leased.lease_expires_at.FromNanoseconds(int((now + 30) * 1e9))
    return msg.SerializeToString()


async def measure(jobs: int, size: int, kind: str) -> float:
    worker = Worker("unused:1", concurrency=size)

    @worker.handler("noop")
    async def noop(ctx: JobContext) -> None:
        pass

    @worker.handler("noop_yield")
    async def noop_yield(ctx: JobContext) -> None:
        await asyncio.sleep(0)

    @worker.handler("noop_sync")
    def noop_sync(ctx: JobContext) -> None:
        pass

    worker._loop = asyncio.get_running_loop()
    worker._stop = asyncio.Event()
    from concurrent.futures import ThreadPoolExecutor

    worker._threads = ThreadPoolExecutor(8)
    s = worker_module._Session(worker, None)
    msgs = [batch(size) for _ in range(jobs // size)]
    if kind != "noop":
        for i, raw in enumerate(msgs):
            m = w.LeaseResponse.FromString(raw)
            for j in m.jobs.jobs:
                j.job.kind = kind
            msgs[i] = m.SerializeToString()
    sent = 0
    t = time.process_time()
    for raw in msgs:
        worker._on_message(s, w.LeaseResponse.FromString(raw))
        await s.idle.wait()
        await asyncio.sleep(0)  # the flush scheduled by the last outcome
        while not s.outbox.empty():
            req: Any = s.outbox.get_nowait()
            sent += len(req.SerializeToString())
    spent = time.process_time() - t
    worker._threads.shutdown()
    assert sent > 0
    return spent / len(msgs) / size * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--jobs", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=100, help="jobs a LeaseResponse")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument(
        "--kind",
        default="noop",
        help="noop (async), noop_yield (async, suspends once) or noop_sync (thread)",
    )
    args = p.parse_args()
    runs = [asyncio.run(measure(args.jobs, args.batch, args.kind)) for _ in range(args.repeat)]
    print(f"{min(runs):.2f} us/job CPU (runs: {', '.join(f'{r:.2f}' for r in runs)})")


if __name__ == "__main__":
    main()
