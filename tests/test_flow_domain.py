"""domain/limits.py: validation, defaults, the token bucket, a claim's room, the per-key take
and the held reason, as pure functions."""

from __future__ import annotations

import math

import pytest

from jobqueue_grpc.domain import limits as L
from jobqueue_grpc.domain.limits import QueueLimits


def test_active_and_defaults() -> None:
    assert not QueueLimits().active
    assert QueueLimits(fair_share=True).active
    assert QueueLimits(key_max_running=2).active
    d = L.with_defaults(QueueLimits(rate=0.5, key_rate=20))
    assert (d.burst, d.key_burst) == (1.0, 20.0)  # one second's worth, at least one token
    assert L.with_defaults(QueueLimits(rate=5, burst=2)).burst == 2


def test_validation_names_every_bad_field() -> None:
    bad = QueueLimits(max_running=-1, key_max_running=2_000_000, rate=math.inf, key_burst=3)
    assert {v.field for v in L.check_limits(bad)} == {
        "limits.max_running",
        "limits.key_max_running",
        "limits.rate",
        "limits.key_burst",
    }
    assert L.check_limits(QueueLimits(rate=0.5, burst=0.5))[0].field == "limits.burst"
    assert L.check_limits(QueueLimits(max_running=0, rate=10, burst=1)) == []
    assert L.concurrency_key_violation("k", "tenant-42:eu/a@b") is None
    assert L.concurrency_key_violation("k", "") is None  # none
    assert L.concurrency_key_violation("k", "a b") is not None
    assert L.concurrency_key_violation("k", "x" * 129) is not None


def test_the_bucket_refills_by_elapsed_time_up_to_the_burst() -> None:
    assert L.refill(0, burst=5, rate=2, elapsed=1.5) == 3
    assert L.refill(4, burst=5, rate=2, elapsed=10) == 5
    assert L.refill(1, burst=5, rate=2, elapsed=-3) == 1  # a clock step back adds nothing
    assert L.next_token_in(0.25, rate=4) == pytest.approx(0.1875)
    assert L.next_token_in(1.0, rate=4) == 0


def test_claim_room_names_the_limit_that_cut_it() -> None:
    lim = QueueLimits(max_running=10)
    assert L.claim_room(5, lim, running=2, tokens=None) == (5, None)
    assert L.claim_room(5, lim, running=8, tokens=None) == (2, L.HELD_BY_QUEUE)
    assert L.claim_room(5, lim, running=12, tokens=None) == (0, L.HELD_BY_QUEUE)
    assert L.claim_room(5, QueueLimits(rate=1), running=0, tokens=2.9) == (2, L.HELD_BY_RATE)
    assert L.claim_room(5, QueueLimits(rate=1), running=0, tokens=0.3) == (0, L.HELD_BY_RATE)


def test_key_take() -> None:
    assert L.key_take(QueueLimits(fair_share=True), running=7, tokens=None) == -1  # unbounded
    assert L.key_take(QueueLimits(key_max_running=2), running=1, tokens=None) == 1
    assert L.key_take(QueueLimits(key_max_running=2), running=3, tokens=None) == 0
    assert L.key_take(QueueLimits(key_max_running=5, key_rate=1), running=0, tokens=2.5) == 2
    assert L.key_take(QueueLimits(key_rate=1), running=0, tokens=0.9) == 0


def test_held_reason_order() -> None:
    lim = QueueLimits(max_running=1, key_max_running=1, rate=1, key_rate=1)
    kw = {"queue_running": 0, "queue_tokens": 5.0, "key_running": 0, "key_tokens": 5.0}
    assert L.held_reason(lim, **kw) == ""  # type: ignore[arg-type]
    assert L.held_reason(lim, **{**kw, "key_running": 1}) == L.HELD_BY_KEY  # type: ignore[arg-type]
    assert L.held_reason(lim, **{**kw, "queue_running": 1}) == L.HELD_BY_QUEUE  # type: ignore[arg-type]
    assert L.held_reason(lim, **{**kw, "queue_tokens": 0.5}) == L.HELD_BY_RATE  # type: ignore[arg-type]
    assert L.held_reason(lim, **{**kw, "key_tokens": 0.5}) == L.HELD_BY_RATE  # type: ignore[arg-type]
    # a job without a key is never held by a key's cap
    assert (
        L.held_reason(lim, queue_running=0, queue_tokens=5.0, key_running=None, key_tokens=None)
        == ""
    )
