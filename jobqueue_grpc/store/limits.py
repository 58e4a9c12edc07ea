"""Flow control statements (store/sql/limits.sql): queue limits, counters, the flow-controlled
claim. The rules (how much a claim may take, the token bucket) are domain/limits.py's."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from jobqueue_grpc.domain import limits as rules
from jobqueue_grpc.domain.limits import QueueLimits
from jobqueue_grpc.domain.records import LeasedJob
from jobqueue_grpc.store.errors import translated
from jobqueue_grpc.store.queries import q

_N_LEASED = len(LeasedJob._fields)


@dataclass(slots=True)
class LimitedClaim:
    """What one flow-controlled claim of a queue did."""

    jobs: list[LeasedJob] = field(default_factory=list)
    # slots (of those asked for) a limit kept empty, by domain/limits.py HELD_* reason
    held: dict[str, int] = field(default_factory=dict)
    retry_in: float | None = None  # a rate's next token: when claiming again may find more


def _limits(r: asyncpg.Record) -> QueueLimits:
    return QueueLimits(
        r["max_running"],
        r["key_max_running"],
        r["rate"],
        r["burst"],
        r["key_rate"],
        r["key_burst"],
        r["fair_share"],
    )


def _bucket(
    tokens: float | None, elapsed: float | None, rate: float | None, burst: float | None
) -> float | None:
    """A bucket refilled to now (a key's without a row yet is full); None without a rate."""
    if rate is None or burst is None:
        return None
    if tokens is None:
        return burst
    return rules.refill(tokens, burst, rate, elapsed or 0.0)


@translated
class LimitStore:
    def __init__(self, pool: asyncpg.Pool, claim_pool: asyncpg.Pool | None = None) -> None:
        self.pool = pool
        self.claim_pool = claim_pool or pool

    async def limited_queues(self) -> frozenset[str]:
        return frozenset(r[0] for r in await self.pool.fetch(q("limited_queues")))

    async def get(self, queues: Sequence[str]) -> dict[str, QueueLimits]:
        rows = await self.pool.fetch(q("get_queue_limits"), list(queues))
        return {r["queue"]: _limits(r) for r in rows}

    async def set(self, queue: str, limits: QueueLimits) -> None:
        """Sets (or, when none is active, clears) a queue's limits and tells every replica.
        Setting recounts the queue's running jobs: each counts against the new limits."""
        async with self.pool.acquire() as conn, conn.transaction():
            if limits.active:
                lim = rules.with_defaults(limits)
                await conn.execute(
                    q("set_queue_limits"),
                    queue,
                    lim.max_running,
                    lim.key_max_running,
                    lim.rate,
                    lim.burst,
                    lim.key_rate,
                    lim.key_burst,
                    lim.fair_share,
                )
                await conn.execute(q("mark_running_counted"), queue)
                await conn.execute(q("recount_running"), queue)
            else:
                await conn.execute(q("clear_queue_limits"), queue)
            await conn.execute(q("notify_limits"), queue)

    async def running_by_key(self, queues: Sequence[str]) -> dict[str, list[tuple[str, int]]]:
        out: dict[str, list[tuple[str, int]]] = {}
        for r in await self.pool.fetch(q("running_by_key"), list(queues)):
            out.setdefault(r["queue"], []).append((r["key"], r["running"]))
        return out

    async def held_reason(self, queue: str, key: str | None) -> str:
        """Why a waiting job of `queue` with concurrency key `key` is held ('' if nothing)."""
        r = await self.pool.fetchrow(q("held_state"), queue, key)
        if r is None:
            return ""
        lim = _limits(r)
        return rules.held_reason(
            lim,
            queue_running=r["queue_running"],
            queue_tokens=_bucket(r["tokens"], r["elapsed"], lim.rate, lim.burst),
            key_running=(r["key_running"] or 0) if key is not None else None,
            key_tokens=_bucket(r["key_tokens"], r["key_elapsed"], lim.key_rate, lim.key_burst)
            if key is not None
            else None,
        )

    async def claim(
        self,
        queue: str,
        kinds: Sequence[str] | None,
        slots: Sequence[tuple[uuid.UUID, str]],
    ) -> LimitedClaim | None:
        """The flow-controlled claim of one queue (None: the queue has no limits any more)."""
        out = LimitedClaim()
        async with self.claim_pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(q("lock_queue_limits"), queue)
            if row is None:
                return None
            lim = _limits(row)
            tokens = _bucket(row["tokens"], row["elapsed"], lim.rate, lim.burst)
            state = await conn.fetchrow(q("queue_running"), queue)
            assert state is not None
            running, paused = state
            if paused:
                return out
            room, reason = rules.claim_room(len(slots), lim, running, tokens)
            if reason is not None:
                out.held[reason] = len(slots) - room
            rate_wait: list[float] = []
            if room > 0:
                cursor = row["key_cursor"]
                walked = await conn.fetch(
                    q("walk_limited_keys"),
                    queue,
                    cursor,
                    min(rules.KEY_WALK_MAX, room + rules.KEY_WALK_EXTRA),
                )
                keys: list[str] = []
                takes: list[int] = []
                key_tokens: list[float | None] = []
                by_key = 0
                for k in walked:
                    kt = _bucket(k["tokens"], k["elapsed"], lim.key_rate, lim.key_burst)
                    take = rules.key_take(lim, k["running"], kt)
                    cursor = k["key"]
                    if take == 0:
                        by_key += 1
                        if kt is not None and kt < 1 and lim.key_rate is not None:
                            rate_wait.append(rules.next_token_in(kt, lim.key_rate))
                        continue
                    keys.append(k["key"])
                    takes.append(room if take < 0 else min(take, room))
                    key_tokens.append(kt)
                    if len(keys) >= room:
                        break
                rows = await conn.fetch(
                    q("claim_jobs_limited"),
                    queue,
                    list(kinds) if kinds else None,
                    [s for s, _ in slots[:room]],
                    [w for _, w in slots[:room]],
                    keys,
                    takes,
                    key_tokens,
                    room,
                    tokens,
                    cursor,
                    room,
                )
                out.jobs = [LeasedJob._make(r[:_N_LEASED]) for r in rows]
                if by_key and len(out.jobs) < room:
                    out.held[rules.HELD_BY_KEY] = min(by_key, room - len(out.jobs))
                if tokens is not None:
                    tokens -= len(out.jobs)
            if tokens is not None and lim.rate is not None and tokens < 1:
                rate_wait.append(rules.next_token_in(tokens, lim.rate))
            if rate_wait and len(out.jobs) < len(slots):
                out.retry_in = min(rate_wait)
        return out
