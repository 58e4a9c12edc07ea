"""PostgreSQL's share of a job, alone: CPU of the database's processes and WAL per job.

    .venv/bin/python bench/pgcost.py [--jobs 50000] [--batch 500] [--rounds 2]

No gRPC and no server: the store's own statements run from one process against a fresh
database each round. Jobs are inserted with the batch insert EnqueueBatch uses, then claimed
(claim_jobs, `--batch` slots a statement) and completed (complete_jobs) batch after batch, the
way the engine drives them. For each phase it prints the CPU seconds all of the cluster's
processes spent (backends, WAL writer, checkpointer...: the postmaster's live children plus the
children it has reaped) as microseconds per job, and the WAL bytes per job. The figures are
what a change to the schema or the statements buys at the database, without the noise of the
Python processes around it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobqueue_grpc.domain.jobs import NewJobs  # noqa: E402
from jobqueue_grpc.embedded import EmbeddedPostgres  # noqa: E402
from jobqueue_grpc.store import Store  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cluster_cpu(postmaster: int) -> float:
    """CPU seconds of the postmaster, its live children and the children it has reaped."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        if pid == postmaster:
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        elif ppid == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / TICK


async def wal(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))


def new_jobs(n: int) -> NewJobs:
    jobs = NewJobs()
    for _ in range(n):
        jobs.ids.append(str(uuid.uuid4()))
        jobs.queue.append("cost")
        jobs.kind.append("noop")
        jobs.payload_json.append("{}")
        jobs.priority.append(0)
        jobs.max_attempts.append(25)
        jobs.run_at.append(None)
        jobs.idempotency_key.append(None)
        jobs.lease_seconds.append(300.0)
        jobs.backoff_base.append(None)
        jobs.backoff_cap.append(None)
        jobs.concurrency_key.append(None)
        jobs.metadata_json.append(None)
        jobs.traceparent.append(None)
        jobs.tracestate.append(None)
    return jobs


async def one_round(url: str, postmaster: int, n: int, batch: int) -> dict[str, float]:
    store = await Store.connect(url)
    try:
        await store.migrate()
        for sql in ARGS.sql:
            await store.pool.execute(sql)
        async with store.pool.acquire() as conn:
            out: dict[str, float] = {}
            w0, c0 = await wal(conn), cluster_cpu(postmaster)
            for start in range(0, n, 1000):
                await store.jobs.insert_batch(new_jobs(min(1000, n - start)))
            w1, c1 = await wal(conn), cluster_cpu(postmaster)
            out["insert_us"], out["insert_wal_b"] = (c1 - c0) / n * 1e6, (w1 - w0) / n
            slots = [(uuid.uuid4(), "w")] * batch
            claim_s = settle_s = 0.0
            wc = ws = 0
            done = 0
            while True:
                w0, c0 = await wal(conn), cluster_cpu(postmaster)
                jobs = await store.leases.claim(["cost"], None, slots)
                w1, c1 = await wal(conn), cluster_cpu(postmaster)
                if not jobs:
                    break
                await store.leases.settle([(j.id, j.lease_token, None) for j in jobs], [], [])
                w2, c2 = await wal(conn), cluster_cpu(postmaster)
                claim_s, settle_s = claim_s + c1 - c0, settle_s + c2 - c1
                wc, ws = wc + w1 - w0, ws + w2 - w1
                done += len(jobs)
            assert done == n, (done, n)
            out["claim_us"], out["claim_wal_b"] = claim_s / n * 1e6, wc / n
            out["settle_us"], out["settle_wal_b"] = settle_s / n * 1e6, ws / n
            return out
    finally:
        await store.close()


async def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="jq-pgcost-"))
    pg = EmbeddedPostgres(
        tmp / "pg", settings={"synchronous_commit": "on", "fsync": "on", "shared_buffers": "256MB"}
    )
    admin = pg.start()
    try:
        postmaster = int((tmp / "pg" / "postmaster.pid").read_text().split()[0])
        rounds: list[dict[str, float]] = []
        for i in range(ARGS.rounds):
            conn = await asyncpg.connect(admin)
            await conn.execute(f"CREATE DATABASE cost{i}")
            await conn.close()
            url = urlunsplit(urlsplit(admin)._replace(path=f"/cost{i}"))
            t = time.monotonic()
            rounds.append(await one_round(url, postmaster, ARGS.jobs, ARGS.batch))
            print(f"round {i}: {time.monotonic() - t:.1f} s", file=sys.stderr)
        for key in rounds[0]:
            values = [r[key] for r in rounds]
            each = ", ".join(f"{v:.1f}" for v in values)
            print(f"{key:14} {statistics.median(values):8.1f}   ({each})")
    finally:
        pg.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--jobs", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--sql", action="append", default=[], help="run after migrating (variants)")
    ARGS = p.parse_args()
    asyncio.run(main())
