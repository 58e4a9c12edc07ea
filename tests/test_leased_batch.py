"""add_leased_jobs (the lease hot path's shared-field template) writes exactly what building each
job alone with fill_leased_job writes, whatever varies between the jobs of a batch."""

from __future__ import annotations

import json
import uuid

from jobqueue_grpc._struct import to_dict
from jobqueue_grpc.api import convert
from jobqueue_grpc.domain.records import LeasedJob
from jobqueue_grpc.gen.jobqueue.v1 import worker_service_pb2 as w

NOW = 1_800_000_000.123456


def row(**changes: object) -> LeasedJob:
    base = LeasedJob(
        id=uuid.uuid4(), queue="q", kind="noop", payload="{}", priority=0, attempt=1,
        max_attempts=25, idempotency_key=None, lease_seconds=300.0, backoff_base=None,
        backoff_cap=None, last_sleep=None, lease_token=uuid.uuid4(), stream_id=uuid.uuid4(),
        worker_id="w1", errors="[]", progress=None, run_at_s=NOW - 5, created_at_s=NOW - 5,
        started_at_s=NOW, lease_expires_at_s=NOW + 300, metadata=None, traceparent=None,
        tracestate=None, concurrency_key=None,
    )  # fmt: skip
    return base._replace(**changes)


def one_by_one(leases: list[tuple[LeasedJob, float]]) -> w.LeasedJobs:
    out = w.LeasedJobs()
    for r, expires_at in leases:
        leased = out.jobs.add(lease_token=str(r.lease_token))
        convert.fill_leased_job(leased.job, r)
        convert.set_epoch(leased.lease_expires_at, expires_at)
    return out


def batched(leases: list[tuple[LeasedJob, float]]) -> w.LeasedJobs:
    out = w.LeasedJobs()
    convert.add_leased_jobs(
        out.jobs, ((r, str(r.id), str(r.lease_token), exp) for r, exp in leases)
    )
    return out


def ts(t: object) -> float:
    return float(t.seconds) + t.nanos / 1e9  # type: ignore[attr-defined]


def check(out: w.LeasedJobs, leases: list[tuple[LeasedJob, float]]) -> None:
    """Every message says what its row says (written apart from the code under test)."""
    assert len(out.jobs) == len(leases)
    for m, (r, expires_at) in zip(out.jobs, leases, strict=True):
        j = m.job
        assert (j.id, m.lease_token) == (str(r.id), str(r.lease_token))
        assert (j.queue, j.kind, j.priority) == (r.queue, r.kind, r.priority)
        assert (j.attempt, j.max_attempts, j.worker_id) == (r.attempt, r.max_attempts, r.worker_id)
        assert j.idempotency_key == (r.idempotency_key or "")
        assert j.concurrency_key == (r.concurrency_key or "")
        assert json.loads(r.payload) == to_dict(j.payload)
        assert (json.loads(r.progress) if r.progress else {}) == to_dict(j.progress)
        assert len(j.errors) == len(json.loads(r.errors))
        assert dict(j.metadata) == (json.loads(r.metadata) if r.metadata else {})
        assert abs(ts(j.run_at) - r.run_at_s) < 1e-6
        assert abs(ts(j.created_at) - r.created_at_s) < 1e-6
        assert abs(ts(j.started_at) - r.started_at_s) < 1e-6
        assert abs(ts(m.lease_expires_at) - expires_at) < 1e-6
        assert abs(j.lease_duration.seconds - r.lease_seconds) < 1


def test_a_uniform_batch() -> None:
    leases = [(row(run_at_s=NOW - i, created_at_s=NOW - i - 1), NOW + 300) for i in range(50)]
    assert batched(leases) == one_by_one(leases)
    check(batched(leases), leases)


def test_every_field_that_may_vary() -> None:
    errors = json.dumps([{"attempt": 1, "message": "boom", "at": "2026-01-01T00:00:00Z"}])
    variants = [
        {},
        {"queue": "other"},
        {"kind": "k2"},
        {"priority": 7},
        {"attempt": 3, "errors": errors},
        {"max_attempts": 2},
        {"worker_id": "w2"},
        {"started_at_s": NOW + 1},
        {"lease_seconds": 60.0, "lease_expires_at_s": NOW + 60},
        {"backoff_base": 1.5, "backoff_cap": 30.0},
        {"payload": '{"a": [1, 2, {"b": null}]}'},
        {"progress": '{"pct": 50}'},
        {"idempotency_key": "key-1"},
        {"metadata": '{"team": "x"}', "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
        {"concurrency_key": "k7"},
        {},  # back to the first template
    ]
    leases = [(row(**v), NOW + 300) for v in variants for _ in range(2)]
    # a lease extended since the claim: its expiry is not the template's
    leases.append((row(), NOW + 900))
    leases.append((row(), NOW + 300))
    assert batched(leases) == one_by_one(leases)
    check(batched(leases), leases)
