"""Flow control rules: a queue's limits, their validation and defaults, the token bucket, how
much one claim may take and why a waiting job is held. Pure functions; the store applies them
(store/sql/limits.sql repeats the refill and the per-key take in SQL, where 10,000 keys are;
tests/test_flow_domain.py checks that the two agree).

Semantics:
- `max_running`: at most N leases of the queue's jobs at once, across workers and replicas.
- `key_max_running`: at most N per concurrency key (jobs without a key are not capped per key).
- `rate`/`burst`: a token bucket per queue. A job start takes a token; tokens come back at
  `rate` per second up to `burst` (default: the rate, at least 1), refilled by elapsed time:
  tokens = min(burst, tokens + elapsed * rate). So over any window of T seconds at most
  burst + rate * T jobs start.
- `key_rate`/`key_burst`: the same per concurrency key.
- Any limit (or `fair_share`) turns on the flow-controlled claim: jobs are taken round-robin
  across concurrency keys within priority.
- Per kind: a queue may also have limits for one kind of its jobs (the same fields, counting only
  that kind's jobs: its running, its running per key, its starts, its starts per key). Both apply:
  a job of a limited kind starts only when its queue's limits and its kind's limits both allow it,
  and it counts against both. Jobs of other kinds see only the queue's limits. A claim takes each
  limited kind (and then the other kinds) in turn, rotating which goes first, each round-robin
  across keys; any kind limit turns on the flow-controlled claim for the queue.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from jobqueue_grpc.domain.errors import FieldViolation

CONCURRENCY_KEY_RE = re.compile(r"[A-Za-z0-9_.:/@-]{1,128}")
MAX_RUNNING_LIMIT = 1_000_000
MAX_RATE = 1_000_000.0

HELD_BY_KEY = "concurrency_key limit"
HELD_BY_QUEUE = "queue limit"
HELD_BY_RATE = "rate limit"
HELD_REASONS = (HELD_BY_KEY, HELD_BY_QUEUE, HELD_BY_RATE)

# The fair-share walk visits at most this many keys per claim (plus what the claim wants), so a
# claim's cost is bounded however many keys are waiting; the next claim goes on from where it
# stopped (queue_limits.key_cursor), so every key's turn comes.
KEY_WALK_EXTRA = 64
KEY_WALK_MAX = 2_000


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """A queue's flow control; None is no limit."""

    max_running: int | None = None
    key_max_running: int | None = None
    rate: float | None = None
    burst: float | None = None
    key_rate: float | None = None
    key_burst: float | None = None
    fair_share: bool = False

    @property
    def active(self) -> bool:
        """Whether the queue goes through the flow-controlled claim at all."""
        return self.fair_share or any(
            v is not None
            for v in (self.max_running, self.key_max_running, self.rate, self.key_rate)
        )


def concurrency_key_violation(field: str, key: str) -> FieldViolation | None:
    if key == "" or CONCURRENCY_KEY_RE.fullmatch(key):
        return None
    return FieldViolation(field, f"{field} must match {CONCURRENCY_KEY_RE.pattern}")


def check_limits(limits: QueueLimits, prefix: str = "limits.") -> list[FieldViolation]:
    """Every problem with limits as given (None: not set)."""
    out: list[FieldViolation] = []
    for name in ("max_running", "key_max_running"):
        v = getattr(limits, name)
        if v is not None and not 0 <= v <= MAX_RUNNING_LIMIT:
            out.append(FieldViolation(prefix + name, f"{name} must be 0..{MAX_RUNNING_LIMIT}"))
    for rate, burst in (("rate", "burst"), ("key_rate", "key_burst")):
        r, b = getattr(limits, rate), getattr(limits, burst)
        if r is not None and not (math.isfinite(r) and 0 < r <= MAX_RATE):
            out.append(
                FieldViolation(prefix + rate, f"{rate} must be above 0, at most {MAX_RATE:g}")
            )
        if b is not None:
            if r is None:
                out.append(FieldViolation(prefix + burst, f"{burst} needs {rate}"))
            elif not (math.isfinite(b) and 1 <= b <= MAX_RATE):
                out.append(FieldViolation(prefix + burst, f"{burst} must be 1..{MAX_RATE:g}"))
    return out


def with_defaults(limits: QueueLimits) -> QueueLimits:
    """Bursts default to one second's worth of the rate, at least 1 token."""
    burst, key_burst = limits.burst, limits.key_burst
    if limits.rate is not None and burst is None:
        burst = max(1.0, limits.rate)
    if limits.key_rate is not None and key_burst is None:
        key_burst = max(1.0, limits.key_rate)
    return QueueLimits(
        limits.max_running,
        limits.key_max_running,
        limits.rate,
        burst,
        limits.key_rate,
        key_burst,
        limits.fair_share,
    )


def refill(tokens: float, burst: float, rate: float, elapsed: float) -> float:
    """A token bucket `elapsed` seconds later (time never runs backwards here)."""
    return min(burst, tokens + max(0.0, elapsed) * rate)


def next_token_in(tokens: float, rate: float) -> float:
    """Seconds until the bucket holds a whole token (0 when it does)."""
    return 0.0 if tokens >= 1 else (1 - tokens) / rate


def claim_room(
    wanted: int, limits: QueueLimits, running: int, tokens: float | None
) -> tuple[int, str | None]:
    """How many jobs one claim may take from the queue, and the limit that kept it below
    `wanted` (None: nothing did). `running` is the queue's counted leases, `tokens` its bucket
    refilled to now (None without a rate)."""
    room, reason = wanted, None
    if limits.max_running is not None and limits.max_running - running < room:
        room, reason = max(0, limits.max_running - running), HELD_BY_QUEUE
    if tokens is not None and math.floor(tokens) < room:
        room, reason = max(0, math.floor(tokens)), HELD_BY_RATE
    return room, reason


def key_take(limits: QueueLimits, running: int, tokens: float | None) -> int:
    """How many jobs of one concurrency key a claim may start (claim_jobs_limited's `take`);
    -1 means no per-key bound."""
    take = -1
    if limits.key_max_running is not None:
        take = max(0, limits.key_max_running - running)
    if tokens is not None:
        t = max(0, math.floor(tokens))
        take = t if take < 0 else min(take, t)
    return take


def both_take(a: int, b: int) -> int:
    """Two `key_take`s that both apply (-1: no bound)."""
    if a < 0:
        return b
    if b < 0:
        return a
    return min(a, b)


def held_reason(
    limits: QueueLimits,
    *,
    queue_running: int,
    queue_tokens: float | None,
    key_running: int | None,
    key_tokens: float | None,
) -> str:
    """Why a waiting job would not start now ('' if no limit stops it). A key's own cap wins
    (it holds the job however the rest of the queue fares), then the queue's cap, then a rate."""
    if key_running is not None and key_take(limits, key_running, None) == 0:
        return HELD_BY_KEY
    if limits.max_running is not None and queue_running >= limits.max_running:
        return HELD_BY_QUEUE
    if queue_tokens is not None and queue_tokens < 1:
        return HELD_BY_RATE
    if key_tokens is not None and key_tokens < 1:
        return HELD_BY_RATE
    return ""
