"""Counts for the gauges /metrics serves, read from the database at scrape time."""

from __future__ import annotations

import asyncpg

from jobqueue_grpc.store.queries import q


async def queue_depth(
    pool: asyncpg.Pool,
) -> tuple[list[tuple[str, str, int]], list[tuple[str, int]], list[str]]:
    """(queue, state, count) for unfinished jobs, (queue, count) of dead letters, and the names
    of queues that have a settings row."""
    async with pool.acquire(timeout=5) as conn:
        depth = await conn.fetch(q("queue_depth"), timeout=5)
        dead = await conn.fetch(q("dead_letter_depth"), timeout=5)
        named = await conn.fetch(q("queue_settings_names"), timeout=5)
    return (
        [(r["queue"], r["state"], r["n"]) for r in depth],
        [(r["queue"], r["n"]) for r in dead],
        [r["name"] for r in named],
    )
