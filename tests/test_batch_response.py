"""enqueue_batch_response's fast path for a uniform batch (results that differ in their ids
alone, joined as bytes) answers exactly what building each result answers, and steps aside for
any batch whose jobs differ in more than their ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import struct_pb2, timestamp_pb2

from jobqueue_grpc.api import convert
from jobqueue_grpc.domain.jobs import Limits
from jobqueue_grpc.gen.jobqueue.v1 import job_pb2
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2 as js

LIMITS = Limits(payload_max_bytes=1 << 20, default_max_attempts=5, default_lease_seconds=30.0)
AT = datetime(2026, 12, 3, 4, 5, 6, 789012, tzinfo=UTC)


def payload(**kv: object) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(kv)
    return s


def future() -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(AT + timedelta(hours=1))
    return t


BATCHES = {
    "plain": [js.EnqueueRequest(queue="q", kind="k") for _ in range(50)],
    "same payload": [js.EnqueueRequest(kind="k", payload=payload(a=1)) for _ in range(20)],
    "same settings": [
        js.EnqueueRequest(queue="q", kind="k", priority=3, max_attempts=9) for _ in range(20)
    ],
    "same run_at": [js.EnqueueRequest(kind="k", run_at=future()) for _ in range(20)],
    "payloads differ": [js.EnqueueRequest(kind="k", payload=payload(i=i)) for i in range(20)],
    "kinds differ": [js.EnqueueRequest(kind=f"k{i % 3}") for i in range(20)],
    "keys": [js.EnqueueRequest(kind="k", idempotency_key=f"key{i}") for i in range(20)],
    "concurrency keys": [js.EnqueueRequest(kind="k", concurrency_key="c") for _ in range(20)],
    "labelled": [js.EnqueueRequest(kind="k", metadata={"team": "x"}) for _ in range(20)],
}


@pytest.mark.parametrize("name", list(BATCHES))
def test_fast_path_answers_what_building_each_result_answers(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reqs = BATCHES[name]
    jobs = convert.new_jobs(reqs, LIMITS)
    created = [True] * len(reqs)
    fast = convert.enqueue_batch_response(reqs, jobs, created, AT, {})
    with monkeypatch.context() as m:
        m.setattr(convert, "_uniform_results", lambda template, ids: None)
        slow = convert.enqueue_batch_response(reqs, jobs, created, AT, {})
    assert fast == slow
    assert [r.job.id for r in fast.results] == jobs.ids
    assert all(r.created for r in fast.results)


def test_uniform_batches_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[int] = []
    real = convert._uniform_results

    def spy(template: object, ids: list[str]) -> object:
        taken.append(len(ids))
        return real(template, ids)  # type: ignore[arg-type]

    monkeypatch.setattr(convert, "_uniform_results", spy)
    for name in ("plain", "same payload", "same settings", "same run_at", "payloads differ"):
        reqs = BATCHES[name]
        convert.enqueue_batch_response(
            reqs, convert.new_jobs(reqs, LIMITS), [True] * len(reqs), AT, {}
        )
    assert taken == [50, 20, 20, 20]  # not the batch whose payloads differ


def test_an_id_of_another_length_steps_aside() -> None:
    assert convert._uniform_results(job_pb2.Job(kind="k"), ["short"]) is None
