"""Unit tests of the pure domain: validation, retry policy, cancel outcomes, page tokens."""

from __future__ import annotations

import base64
import json
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from jobqueue_grpc.domain import pagination
from jobqueue_grpc.domain.errors import FieldViolation, InvalidArgument
from jobqueue_grpc.domain.jobs import MAX_ATTEMPTS_LIMIT, MAX_PRIORITY, Limits, check_new_job
from jobqueue_grpc.domain.retry import FailureClass, decide_failure, decorrelated_jitter
from jobqueue_grpc.domain.states import (
    TERMINAL,
    WAITING,
    CancelOutcome,
    JobState,
    cancel_outcome,
)
from jobqueue_grpc.domain.validation import (
    IDEMPOTENCY_KEY_MAX,
    kind_violation,
    parse_uuid,
    queue_violation,
    raise_if,
)

LIMITS = Limits(payload_max_bytes=1024, default_max_attempts=5, default_lease_seconds=30.0)


def check(**overrides: object) -> list[FieldViolation]:
    fields: dict[str, object] = {
        "queue": "default",
        "kind": "send_email",
        "payload_bytes": 2,
        "priority": 0,
        "max_attempts": 0,
        "idempotency_key": "",
        "lease_seconds": None,
        "backoff_base": None,
        "backoff_cap": None,
    }
    fields.update(overrides)
    return check_new_job("", limits=LIMITS, **fields)  # type: ignore[arg-type]


# -- names ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["default", "a", "emails.v2", "q_1-x", "0", "a" * 64])
def test_good_queue_names(name: str) -> None:
    assert queue_violation("queue", name) is None


@pytest.mark.parametrize(
    "name", ["", "Emails", "a b", "a/b", "é", "a" * 65, "queue\n", "a:b", "*", "a\x00"]
)
def test_bad_queue_names(name: str) -> None:
    v = queue_violation("jobs[2].queue", name)
    assert v is not None
    assert v.field == "jobs[2].queue"


def test_kind_charset_and_length() -> None:
    assert kind_violation("kind", "send_email") is None
    assert kind_violation("kind", "k" * 128) is None
    long = kind_violation("kind", "k" * 129)
    assert long is not None and "must match" in long.description
    missing = kind_violation("kind", "")
    assert missing is not None and missing.description == "kind is required"
    upper = kind_violation("kind", "SendEmail")
    assert upper is not None and upper.field == "kind"


# -- ids ------------------------------------------------------------------------------------------
def test_parse_uuid_accepts_canonical_forms() -> None:
    u = uuid.uuid4()
    assert parse_uuid("id", str(u)) == u
    assert parse_uuid("id", str(u).upper()) == u


@pytest.mark.parametrize(
    "value",
    [
        "",
        "nope",
        "1234",
        "0b9e0b1c-0000-0000-0000-00000000000",  # one digit short
        "0b9e0b1c00000000000000000000000a",  # no hyphens
        "{0b9e0b1c-0000-0000-0000-00000000000a}",
        "urn:uuid:0b9e0b1c-0000-0000-0000-00000000000a",
        "0b9e0b1c-0000-0000-0000-00000000000g",
        " 0b9e0b1c-0000-0000-0000-00000000000a",
    ],
)
def test_parse_uuid_rejects_malformed(value: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_uuid("id", value)
    assert info.value.reason == "MALFORMED_ID"
    assert [v.field for v in info.value.violations] == ["id"]


# -- a new job's limits ---------------------------------------------------------------------------
def test_a_good_job_has_no_violations() -> None:
    assert check() == []
    assert check(max_attempts=1, priority=-MAX_PRIORITY, idempotency_key="k" * 255) == []
    assert check(lease_seconds=1.0, backoff_base=0.0, backoff_cap=0.0) == []
    assert check(payload_bytes=LIMITS.payload_max_bytes) == []


def test_payload_over_the_limit_names_its_reason() -> None:
    (v,) = check(payload_bytes=LIMITS.payload_max_bytes + 1)
    assert v.field == "payload"
    assert v.reason == "PAYLOAD_TOO_LARGE"
    assert str(LIMITS.payload_max_bytes) in v.description


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"priority": MAX_PRIORITY + 1}, "priority"),
        ({"priority": -MAX_PRIORITY - 1}, "priority"),
        ({"max_attempts": -1}, "max_attempts"),
        ({"max_attempts": MAX_ATTEMPTS_LIMIT + 1}, "max_attempts"),
        ({"idempotency_key": "k" * (IDEMPOTENCY_KEY_MAX + 1)}, "idempotency_key"),
        ({"idempotency_key": "a\x00b"}, "idempotency_key"),
        ({"lease_seconds": 0.5}, "lease_duration"),
        ({"lease_seconds": 25 * 3600.0}, "lease_duration"),
        ({"backoff_base": -1.0}, "retry_policy.backoff_base"),
        ({"backoff_cap": 31 * 86400.0}, "retry_policy.backoff_cap"),
        ({"backoff_base": 10.0, "backoff_cap": 5.0}, "retry_policy.backoff_cap"),
    ],
)
def test_each_limit_is_checked(overrides: dict[str, object], field: str) -> None:
    violations = check(**overrides)
    assert [v.field for v in violations] == [field]
    assert violations[0].reason == "INVALID_ARGUMENT"


def test_every_violation_is_reported_with_the_batch_prefix() -> None:
    out = check_new_job(
        "jobs[7].",
        queue="Bad Queue",
        kind="",
        payload_bytes=LIMITS.payload_max_bytes * 2,
        priority=0,
        max_attempts=0,
        idempotency_key="",
        lease_seconds=None,
        backoff_base=None,
        backoff_cap=None,
        limits=LIMITS,
    )
    assert [v.field for v in out] == ["jobs[7].queue", "jobs[7].kind", "jobs[7].payload"]


def test_raise_if_takes_its_reason_from_the_first_violation() -> None:
    raise_if([])  # nothing to report: no error
    with pytest.raises(InvalidArgument) as info:
        raise_if(
            [
                FieldViolation("payload", "too big", reason="PAYLOAD_TOO_LARGE"),
                FieldViolation("kind", "x"),
            ],
            "batch rejected",
        )
    assert info.value.reason == "PAYLOAD_TOO_LARGE"
    assert info.value.message == "batch rejected: too big"
    assert len(info.value.violations) == 2


# -- retry ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("base", "cap"), [(1.0, 3600.0), (0.5, 4.0), (2.0, 2.0), (0.0, 10.0)])
def test_decorrelated_jitter_stays_in_bounds(base: float, cap: float) -> None:
    rng = random.Random(1234)
    prev: float | None = None
    seen = []
    for _ in range(2000):
        sleep = decorrelated_jitter(base, cap, prev, rng)
        upper = min(cap, max(base, (prev or base) * 3))
        assert base <= sleep <= upper
        seen.append(sleep)
        prev = sleep
    if 0 < base < cap:
        assert max(seen) > base  # it is random, not stuck at the floor


def test_first_retry_draws_from_base_to_three_times_base() -> None:
    rng = random.Random(7)
    draws = [decorrelated_jitter(1.0, 3600.0, None, rng) for _ in range(500)]
    assert all(1.0 <= d <= 3.0 for d in draws)
    assert max(draws) > 2.5 and min(draws) < 1.5


def test_jitter_grows_from_the_previous_sleep_until_the_cap() -> None:
    rng = random.Random(3)
    draws = [decorrelated_jitter(1.0, 50.0, 40.0, rng) for _ in range(500)]
    assert all(1.0 <= d <= 50.0 for d in draws)
    assert draws.count(50.0) > 0  # random(1, 120) is often above the cap


def test_retry_class_retries_with_jitter() -> None:
    d = decide_failure(
        attempt=1,
        max_attempts=5,
        failure_class=FailureClass.RETRY,
        base=1.0,
        cap=10.0,
        prev_sleep=None,
        rng=random.Random(1),
    )
    assert d.state is JobState.RETRYING
    assert not d.dead_letter
    assert 1.0 <= d.delay <= 3.0


def test_do_not_retry_dead_letters_even_with_attempts_left() -> None:
    d = decide_failure(
        attempt=1,
        max_attempts=5,
        failure_class=FailureClass.DO_NOT_RETRY,
        base=1.0,
        cap=10.0,
        prev_sleep=None,
    )
    assert (d.state, d.delay, d.dead_letter) == (JobState.FAILED, 0.0, True)


def test_retry_after_uses_the_given_delay() -> None:
    d = decide_failure(
        attempt=2,
        max_attempts=5,
        failure_class=FailureClass.RETRY_AFTER,
        base=1.0,
        cap=10.0,
        prev_sleep=2.0,
        retry_after=42.5,
    )
    assert (d.state, d.delay, d.dead_letter) == (JobState.RETRYING, 42.5, False)
    negative = decide_failure(
        attempt=2,
        max_attempts=5,
        failure_class=FailureClass.RETRY_AFTER,
        base=1.0,
        cap=10.0,
        prev_sleep=2.0,
        retry_after=-3.0,
    )
    assert negative.delay == 0.0


def test_retry_after_without_a_delay_falls_back_to_jitter() -> None:
    d = decide_failure(
        attempt=2,
        max_attempts=5,
        failure_class=FailureClass.RETRY_AFTER,
        base=1.0,
        cap=10.0,
        prev_sleep=2.0,
        rng=random.Random(5),
    )
    assert d.state is JobState.RETRYING
    assert 1.0 <= d.delay <= 6.0


@pytest.mark.parametrize("failure_class", list(FailureClass))
def test_last_attempt_dead_letters_whatever_the_class(failure_class: FailureClass) -> None:
    for attempt, max_attempts in [(5, 5), (1, 1), (6, 5)]:
        d = decide_failure(
            attempt=attempt,
            max_attempts=max_attempts,
            failure_class=failure_class,
            base=1.0,
            cap=10.0,
            prev_sleep=3.0,
            retry_after=1.0,
        )
        assert (d.state, d.dead_letter) == (JobState.FAILED, True)


# -- states and cancel outcomes -------------------------------------------------------------------
def test_terminal_and_waiting_partition_the_states() -> None:
    assert {s for s in JobState if s.terminal} == TERMINAL
    assert {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED} == TERMINAL
    assert {JobState.QUEUED, JobState.SCHEDULED, JobState.RETRYING} == WAITING
    assert set(JobState) == TERMINAL | WAITING | {JobState.RUNNING}


@pytest.mark.parametrize(
    ("state", "outcome"),
    [
        (JobState.QUEUED, CancelOutcome.CANCELLED),
        (JobState.SCHEDULED, CancelOutcome.CANCELLED),
        (JobState.RETRYING, CancelOutcome.CANCELLED),
        (JobState.RUNNING, CancelOutcome.CANCEL_REQUESTED),
        (JobState.SUCCEEDED, None),
        (JobState.FAILED, None),
        (JobState.CANCELLED, None),
    ],
)
def test_cancel_outcome_by_state(state: JobState, outcome: CancelOutcome | None) -> None:
    assert cancel_outcome(state) is outcome


# -- page tokens ----------------------------------------------------------------------------------
FILTERS = ("default", "send_email", 1)
SECRET = b"k" * 32


def test_page_token_round_trip() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    key = uuid.uuid4()
    token = pagination.encode(at, key, FILTERS, SECRET)
    assert pagination.decode(token, FILTERS, SECRET) == (at, key)
    assert "=" not in token  # url-safe, unpadded


def test_empty_token_means_the_first_page() -> None:
    assert pagination.decode("", FILTERS, SECRET) is None


def test_token_keeps_the_timezone_offset() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC) + timedelta(microseconds=1)
    got = pagination.decode(pagination.encode(at, uuid.UUID(int=5), (), SECRET), (), SECRET)
    assert got is not None and got[0] == at


def _raw_token(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode()


@pytest.mark.parametrize(
    "token",
    [
        "not a token",
        "!!!!",
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        _raw_token([1, 2, 3]),
        _raw_token({"t": "2026-01-01T00:00:00+00:00"}),
        _raw_token({"t": "yesterday", "k": str(uuid.uuid4()), "f": "x"}),
        _raw_token({"t": 5, "k": str(uuid.uuid4()), "f": "x"}),
        _raw_token({"t": "2026-01-01T00:00:00+00:00", "k": "nope", "f": "x"}),
    ],
)
def test_forged_tokens_are_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        pagination.decode(token, FILTERS, SECRET)
    assert info.value.reason == "INVALID_PAGE_TOKEN"
    assert [v.field for v in info.value.violations] == ["page_token"]


def test_a_token_for_other_filters_is_refused() -> None:
    token = pagination.encode(datetime.now(UTC), uuid.uuid4(), FILTERS, SECRET)
    with pytest.raises(InvalidArgument) as info:
        pagination.decode(token, ("other", "send_email", 1), SECRET)
    assert info.value.reason == "INVALID_PAGE_TOKEN"


def test_a_tampered_fingerprint_or_naive_time_is_refused() -> None:
    token = pagination.encode(datetime.now(UTC), uuid.uuid4(), FILTERS, SECRET)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    body = json.loads(raw[: -pagination.MAC_BYTES])
    body["f"] = "0" * 12
    tampered = json.dumps(body, separators=(",", ":")).encode() + raw[-pagination.MAC_BYTES :]
    with pytest.raises(InvalidArgument):
        pagination.decode(base64.urlsafe_b64encode(tampered).decode(), FILTERS, SECRET)
    naive = pagination.encode(datetime(2026, 1, 1), uuid.uuid4(), FILTERS, SECRET)
    with pytest.raises(InvalidArgument):
        pagination.decode(naive, FILTERS, SECRET)


def _signed_token(body: bytes, secret: bytes = SECRET) -> str:
    """A token made the way the server makes them, around any body."""
    mac = pagination._mac(secret, body)
    return base64.urlsafe_b64encode(body + mac).decode().rstrip("=")


def test_a_well_formed_token_signed_with_another_key_is_refused() -> None:
    at, key = datetime.now(UTC), uuid.uuid4()
    forged = pagination.encode(at, key, FILTERS, b"another key" * 3)
    with pytest.raises(InvalidArgument) as info:
        pagination.decode(forged, FILTERS, SECRET)
    assert info.value.reason == "INVALID_PAGE_TOKEN"
    # and the same cursor without any MAC, as README's made-up tokens would be
    plain = _raw_token({"t": at.isoformat(), "k": str(key), "f": pagination._fingerprint(FILTERS)})
    with pytest.raises(InvalidArgument):
        pagination.decode(plain, FILTERS, SECRET)


@pytest.mark.parametrize(
    "body",
    [
        b'{"t": "2026-01-01T00:00:00+00:00", "k": 5, "f": "x"}',
        b'{"t": "2026-01-01T00:00:00+00:00", "k": ["a"], "f": "x"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"t": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001,
        b"\xff\xfe",
        b"null",
    ],
    ids=["int k", "list k", "deep list", "deep object", "not utf-8", "null"],
)
def test_bodies_that_are_not_cursors_are_refused_even_when_signed(
    body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past the length cap, so that the nesting reaches the JSON parser.
    monkeypatch.setattr(pagination, "MAX_TOKEN_CHARS", 10**7)
    with pytest.raises(InvalidArgument) as info:
        pagination.decode(_signed_token(body), FILTERS, SECRET)
    assert info.value.reason == "INVALID_PAGE_TOKEN"


def test_oversized_tokens_are_refused_unread() -> None:
    with pytest.raises(InvalidArgument):
        pagination.decode("A" * 10_000_000, FILTERS, SECRET)
