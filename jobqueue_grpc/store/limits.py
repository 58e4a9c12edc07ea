"""Flow control statements (store/sql/limits.sql): queue limits, counters, the flow-controlled
claim. The rules (how much a claim may take, the token bucket) are domain/limits.py's."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg
from asyncpg.pool import PoolConnectionProxy

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
        self._turn = 0  # which pass of a claim (a limited kind, or the rest) goes first

    async def limited_queues(self) -> frozenset[str]:
        return frozenset(r[0] for r in await self.pool.fetch(q("limited_queues")))

    async def get(self, queues: Sequence[str]) -> dict[str, QueueLimits]:
        """The queues' own limits (a queue limited only per kind has none)."""
        rows = await self.pool.fetch(q("get_queue_limits"), list(queues))
        return {r["queue"]: lim for r in rows if (lim := _limits(r)).active}

    async def get_kinds(self, queues: Sequence[str]) -> dict[str, list[tuple[str, QueueLimits]]]:
        """The queues' limits per kind, by kind."""
        out: dict[str, list[tuple[str, QueueLimits]]] = {}
        for r in await self.pool.fetch(q("get_kind_limits"), list(queues)):
            out.setdefault(r["queue"], []).append((r["kind"], _limits(r)))
        return out

    async def set(self, queue: str, limits: QueueLimits, kind: str | None = None) -> None:
        """Sets (or, when none is active, clears) a queue's limits, or with `kind` that kind's,
        and tells every replica. Setting recounts the queue's running jobs: each counts against
        the new limits."""
        async with self.pool.acquire() as conn, conn.transaction():
            lim = rules.with_defaults(limits)
            args = (
                lim.max_running,
                lim.key_max_running,
                lim.rate,
                lim.burst,
                lim.key_rate,
                lim.key_burst,
                lim.fair_share,
            )
            if kind is not None:
                await conn.execute(q("ensure_queue_limits"), queue)  # locks it: claims wait
                if limits.active:
                    await conn.execute(q("set_kind_limits"), queue, kind, *args)
                else:
                    await conn.execute(q("clear_kind_limits"), queue, kind)
            elif limits.active:
                await conn.execute(q("set_queue_limits"), queue, *args)
            else:
                await conn.execute(q("ensure_queue_limits"), queue)
                await conn.execute(q("unset_queue_limits"), queue)
            if await conn.fetchval(q("queue_limits_unused"), queue):
                await conn.execute(q("clear_queue_limits"), queue)
                await conn.execute(q("clear_all_kinds"), queue)
            else:
                await conn.execute(q("mark_running_counted"), queue)
                await conn.execute(q("recount_running"), queue)
                await conn.execute(q("recount_kind_running"), queue)
            await conn.execute(q("notify_limits"), queue)

    async def running_by_key(self, queues: Sequence[str]) -> dict[str, list[tuple[str, int]]]:
        out: dict[str, list[tuple[str, int]]] = {}
        for r in await self.pool.fetch(q("running_by_key"), list(queues)):
            out.setdefault(r["queue"], []).append((r["key"], r["running"]))
        return out

    async def held_reason(self, queue: str, key: str | None, kind: str | None = None) -> str:
        """Why a waiting job of `queue` with concurrency key `key` (and of `kind`) is held ('' if
        nothing): its queue's limits first, then its kind's."""
        why = await self._held(q("held_state"), queue, key)
        if not why and kind is not None:
            why = await self._held(q("kind_held_state"), queue, key, kind)
        return why

    async def _held(self, sql: str, queue: str, key: str | None, *kind: str) -> str:
        r = await self.pool.fetchrow(sql, queue, key, *kind)
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
        """The flow-controlled claim of one queue (None: the queue has no limits any more).
        Each limited kind the worker takes gets a pass (its limits and the queue's both apply),
        and the other kinds one pass together (the queue's limits only), rotating which goes
        first; job n goes to slot n."""
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
                kind_rows = await conn.fetch(q("lock_kind_limits"), queue)
                limited = [r["kind"] for r in kind_rows]
                passes: list[asyncpg.Record | None] = [
                    r for r in kind_rows if not kinds or r["kind"] in kinds
                ]
                if not kinds or not set(kinds) <= set(limited):
                    passes.append(None)  # the kinds without limits of their own
                self._turn += 1
                k = self._turn % len(passes) if passes else 0
                cursor = row["key_cursor"]
                for kr in passes[k:] + passes[:k]:
                    if room <= 0:
                        break
                    got = await self._pass(
                        conn,
                        out,
                        queue,
                        kinds,
                        limited,
                        slots[len(out.jobs) :],
                        room,
                        lim,
                        tokens,
                        cursor,
                        kr,
                        rate_wait,
                    )
                    room -= got
                    if tokens is not None:
                        tokens -= got
            if tokens is not None and lim.rate is not None and tokens < 1:
                rate_wait.append(rules.next_token_in(tokens, lim.rate))
            if rate_wait and len(out.jobs) < len(slots):
                out.retry_in = min(rate_wait)
        return out

    async def _pass(
        self,
        conn: PoolConnectionProxy[asyncpg.Record],
        out: LimitedClaim,
        queue: str,
        kinds: Sequence[str] | None,
        limited: list[str],
        slots: Sequence[tuple[uuid.UUID, str]],
        room: int,
        lim: QueueLimits,
        tokens: float | None,
        cursor: str | None,
        kr: asyncpg.Record | None,
        rate_wait: list[float],
    ) -> int:
        """One pass of a claim: one limited kind's jobs (kr), or the other kinds' (None)."""
        klim: QueueLimits | None = None
        ktokens: float | None = None
        if kr is not None:
            klim = _limits(kr)
            ktokens = _bucket(kr["tokens"], kr["elapsed"], klim.rate, klim.burst)
            kroom, kreason = rules.claim_room(room, klim, kr["running"], ktokens)
            if ktokens is not None and klim.rate is not None and ktokens < 1:
                rate_wait.append(rules.next_token_in(ktokens, klim.rate))
            if kreason is not None and kroom < room:
                out.held[kreason] = out.held.get(kreason, 0) + room - kroom
            room = kroom
            cursor = kr["key_cursor"]
            if room <= 0:
                return 0
        n = min(rules.KEY_WALK_MAX, room + rules.KEY_WALK_EXTRA)
        if kr is None:
            walked = await conn.fetch(q("walk_limited_keys"), queue, cursor, n)
        else:
            walked = await conn.fetch(q("walk_kind_keys"), queue, cursor, n, kr["kind"])
        keys: list[str] = []
        takes: list[int] = []
        key_tokens: list[float | None] = []
        kind_key_tokens: list[float | None] = []
        by_key = 0
        for w in walked:
            kt = _bucket(w["tokens"], w["elapsed"], lim.key_rate, lim.key_burst)
            take = rules.key_take(lim, w["running"], kt)
            kkt: float | None = None
            if klim is not None:
                kkt = _bucket(w["kind_tokens"], w["kind_elapsed"], klim.key_rate, klim.key_burst)
                take = rules.both_take(take, rules.key_take(klim, w["kind_running"], kkt))
            cursor = w["key"]
            if take == 0:
                by_key += 1
                if kt is not None and kt < 1 and lim.key_rate is not None:
                    rate_wait.append(rules.next_token_in(kt, lim.key_rate))
                if klim is not None and kkt is not None and kkt < 1 and klim.key_rate:
                    rate_wait.append(rules.next_token_in(kkt, klim.key_rate))
                continue
            keys.append(w["key"])
            takes.append(room if take < 0 else min(take, room))
            key_tokens.append(kt)
            kind_key_tokens.append(kkt)
            if len(keys) >= room:
                break
        rows = await conn.fetch(
            q("claim_jobs_limited"),
            queue,
            [kr["kind"]] if kr is not None else (list(kinds) if kinds else None),
            [s for s, _ in slots[:room]],
            [w for _, w in slots[:room]],
            keys,
            takes,
            key_tokens,
            room,
            tokens,
            cursor,
            room,
            limited if kr is None and limited else None,
            kr is not None,
        )
        jobs = [LeasedJob._make(r[:_N_LEASED]) for r in rows]
        if jobs or kr is not None:
            keyed = [r for r in rows if r["limit_key"] is not None]
            last = max(keyed, key=lambda r: r["limit_ord"])["limit_key"] if keyed else cursor
            await conn.execute(
                q("count_kind_claim"),
                queue,
                [j.kind for j in jobs],
                [r["limit_key"] for r in rows],
                kr["kind"] if kr is not None else None,
                ktokens,
                kind_key_tokens,
                keys,
                last,
            )
        out.jobs += jobs
        if by_key and len(jobs) < room:
            out.held[rules.HELD_BY_KEY] = out.held.get(rules.HELD_BY_KEY, 0) + min(
                by_key, room - len(jobs)
            )
        return len(jobs)
